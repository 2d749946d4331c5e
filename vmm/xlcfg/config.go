package xlcfg

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxFileSize bounds a configuration file; xl's own are a few hundred bytes.
const MaxFileSize = 1 << 20

// Action is what the toolstack does when the guest shuts down for a given
// reason (xl.cfg(5) on_poweroff and friends).
type Action string

// The actions xl knows (tools/xl/xl_parse.c, action_on_shutdown_names).
const (
	Destroy         Action = "destroy"
	Restart         Action = "restart"
	RenameRestart   Action = "rename-restart"
	Preserve        Action = "preserve"
	CoredumpDestroy Action = "coredump-destroy"
	CoredumpRestart Action = "coredump-restart"
	SoftReset       Action = "soft-reset"
)

var actions = []Action{Destroy, Restart, RenameRestart, Preserve, CoredumpDestroy, CoredumpRestart, SoftReset}

// ActionKeys are the on_* keys, in xl.cfg(5)'s order.
var ActionKeys = []string{"on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset"}

// Config is a domain configuration as xl builds it from a file
// (tools/xl/xl_parse.c, parse_config_data), for the keys xlcfg knows;
// defaults are xl's and libxl's. It marshals to JSON with xl's key names.
type Config struct {
	Name string `json:"name"`
	// Type is "pv", "pvh" or "hvm": from type, or from the older builder
	// ("generic" is pv, "hvm" hvm); pv when neither is set (xl on x86).
	Type      string `json:"type"`
	MemoryMiB int64  `json:"memory"` // MiB; default 32, libxl's
	MaxMemMiB int64  `json:"maxmem"` // MiB; default memory
	VCPUs     int    `json:"vcpus"`  // default 1
	MaxVCPUs  int    `json:"maxvcpus"`
	// Kernel and Ramdisk are paths. A relative path in the file is taken
	// relative to the file's directory (xl takes it relative to its
	// current directory); one given by a KEY=VALUE argument stays relative
	// to the current directory.
	Kernel  string `json:"kernel,omitempty"`
	Ramdisk string `json:"ramdisk,omitempty"`
	// Cmdline is cmdline, or else "root=ROOT EXTRA" from root and extra,
	// as xl combines them.
	Cmdline     string `json:"cmdline,omitempty"`
	OnPoweroff  Action `json:"on_poweroff"`   // default destroy
	OnReboot    Action `json:"on_reboot"`     // default restart
	OnWatchdog  Action `json:"on_watchdog"`   // default destroy
	OnCrash     Action `json:"on_crash"`      // default destroy
	OnSoftReset Action `json:"on_soft_reset"` // default soft-reset
	// Disks and VIFs are the disk and vif lists' specifications, unparsed.
	Disks []string `json:"disk,omitempty"`
	VIFs  []string `json:"vif,omitempty"`
	// FirmwareOverride is an HVM guest's firmware (XTF's HVM tests boot
	// this way), as written.
	FirmwareOverride string `json:"firmware_override,omitempty"`

	// Warnings are what the configuration does that xl would accept but
	// that has no effect here, one line each: the keys xlcfg does not use
	// (named in one line), root and extra given with cmdline.
	Warnings []string `json:"-"`

	set map[string]Setting
}

// Action returns the action for an on_* key.
func (c *Config) Action(key string) Action {
	switch key {
	case "on_poweroff":
		return c.OnPoweroff
	case "on_reboot":
		return c.OnReboot
	case "on_watchdog":
		return c.OnWatchdog
	case "on_crash":
		return c.OnCrash
	case "on_soft_reset":
		return c.OnSoftReset
	}
	return ""
}

// Setting returns the assignment that gave key its value, if the
// configuration set it rather than leaving it to its default.
func (c *Config) Setting(key string) (Setting, bool) {
	s, ok := c.set[key]
	return s, ok
}

// ignored are keys xl reads (or XTF writes) that have no effect on what
// runvm builds, so a warning about them would be noise: XTF's PV files set
// loader="generic" "for before Xen 4.10", and xl does not read it.
var ignored = map[string]bool{"loader": true}

// Load reads the configuration file at path, applies the KEY=VALUE
// overrides and decodes it. A file it cannot read is a plain error; a
// syntax error or a value it cannot use is an *Error.
func Load(path string, overrides []string) (*Config, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	if st, err := fh.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a domain configuration", path, MaxFileSize)
	}
	f, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	if err := f.Override(overrides); err != nil {
		return nil, err
	}
	return Decode(f, filepath.Dir(path))
}

// Decode builds the configuration a parsed file describes, with relative
// paths in the file taken relative to dir.
func Decode(f *File, dir string) (*Config, error) {
	d := &decoder{f: f, c: &Config{set: make(map[string]Setting)}}
	c := d.c
	c.Name = d.str("name")
	c.Type = d.domainType()
	c.MemoryMiB = d.num("memory", 1, 1<<40, 32)
	c.MaxMemMiB = d.num("maxmem", 1, 1<<40, c.MemoryMiB)
	c.VCPUs = int(d.num("vcpus", 1, 1<<16, 1))
	c.MaxVCPUs = int(d.num("maxvcpus", 1, 1<<16, int64(c.VCPUs)))
	c.Kernel = d.path("kernel", dir)
	c.Ramdisk = d.path("ramdisk", dir)
	c.Cmdline = d.cmdline()
	c.OnPoweroff = d.action("on_poweroff", Destroy)
	c.OnReboot = d.action("on_reboot", Restart)
	c.OnWatchdog = d.action("on_watchdog", Destroy)
	c.OnCrash = d.action("on_crash", Destroy)
	c.OnSoftReset = d.action("on_soft_reset", SoftReset)
	c.Disks = d.strList("disk")
	c.VIFs = d.strList("vif")
	c.FirmwareOverride = d.str("firmware_override")
	if d.err != nil {
		return nil, d.err
	}
	if c.MaxMemMiB < c.MemoryMiB {
		s, _ := c.Setting("maxmem")
		return nil, errAt(s, "maxmem = %d is less than memory = %d", c.MaxMemMiB, c.MemoryMiB)
	}
	if c.MaxVCPUs < c.VCPUs {
		s, _ := c.Setting("maxvcpus")
		return nil, errAt(s, "maxvcpus = %d is less than vcpus = %d", c.MaxVCPUs, c.VCPUs)
	}
	d.unknown()
	return c, nil
}

func errAt(s Setting, format string, args ...any) error {
	return &Error{Source: s.Source, Line: s.Line, Msg: fmt.Sprintf(format, args...)}
}

// decoder reads typed values; the first error sticks.
type decoder struct {
	f   *File
	c   *Config
	err error
}

// lookup returns key's setting and records it as used.
func (d *decoder) lookup(key string) (Setting, bool) {
	s, ok := d.f.Lookup(key)
	if ok {
		d.c.set[key] = s
	}
	return s, ok && d.err == nil
}

func (d *decoder) fail(s Setting, format string, args ...any) {
	if d.err == nil {
		d.err = errAt(s, format, args...)
	}
}

// str reads a string; a number is its text, as in xl.
func (d *decoder) str(key string) string {
	s, ok := d.lookup(key)
	if !ok {
		return ""
	}
	if s.Value.Kind == List {
		d.fail(s, "%s: want a string, got a list", key)
		return ""
	}
	return s.Value.Text
}

// num reads a number in [lo, hi] as xl does (strtol with base 0: 0x for
// hex, a leading 0 for octal; a quoted number is a number).
func (d *decoder) num(key string, lo, hi, def int64) int64 {
	s, ok := d.lookup(key)
	if !ok {
		return def
	}
	switch {
	case s.Value.Kind == List:
		d.fail(s, "%s: want a number, got a list", key)
		return def
	case s.Append:
		d.fail(s, "%s: += does not work with numbers", key)
		return def
	}
	n, err := parseLong(s.Value.Text)
	switch {
	case err != nil:
		d.fail(s, "%s = %s: %v", key, s.Value, err)
	case n < lo || n > hi:
		d.fail(s, "%s = %d: want %d to %d", key, n, lo, hi)
	default:
		return n
	}
	return def
}

// parseLong reads a number as C's strtol with base 0 does, and wants all of
// s to be the number.
func parseLong(s string) (int64, error) {
	t := strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if t != "" && (t[0] == '+' || t[0] == '-') {
		neg, t = t[0] == '-', t[1:]
	}
	base := 10
	switch {
	case len(t) > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X') && strings.IndexByte("0123456789abcdefABCDEF", t[2]) >= 0:
		base, t = 16, t[2:]
	case len(t) > 1 && t[0] == '0':
		base, t = 8, t[1:]
	}
	if t == "" || t[0] == '+' || t[0] == '-' {
		return 0, errors.New("not a number")
	}
	u, err := strconv.ParseUint(t, base, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, errors.New("out of range")
		}
		return 0, errors.New("not a number")
	}
	if u > 1<<63-1 && !(neg && u == 1<<63) {
		return 0, errors.New("out of range")
	}
	if neg {
		return -int64(u), nil
	}
	return int64(u), nil
}

// path reads a path; a relative one from the file is taken relative to dir.
func (d *decoder) path(key, dir string) string {
	p := d.str(key)
	s, _ := d.c.Setting(key)
	if p == "" || filepath.IsAbs(p) || s.Source == CommandLine {
		return p
	}
	return filepath.Join(dir, p)
}

func (d *decoder) domainType() string {
	typ := ""
	if t := d.str("type"); d.has("type") {
		switch t {
		case "pv", "pvh", "hvm":
			typ = t
		default:
			s, _ := d.c.Setting("type")
			d.fail(s, "type = %q: want \"pv\", \"pvh\" or \"hvm\"", t)
		}
	}
	if b := d.str("builder"); d.has("builder") {
		s, _ := d.c.Setting("builder")
		bt := ""
		switch b {
		case "generic":
			bt = "pv"
		case "hvm":
			bt = "hvm"
		default:
			d.fail(s, "builder = %q: want \"generic\" (pv) or \"hvm\"; type = is the newer key", b)
		}
		if typ != "" && bt != "" && typ != bt {
			d.fail(s, "builder = %q contradicts type = %q", b, typ)
		}
		if typ == "" {
			typ = bt
		}
	}
	if typ == "" {
		typ = "pv"
	}
	return typ
}

func (d *decoder) has(key string) bool {
	_, ok := d.c.Setting(key)
	return ok
}

// cmdline combines cmdline, root and extra as xl does (parse_cmdline).
func (d *decoder) cmdline() string {
	cmdline, root, extra := d.str("cmdline"), d.str("root"), d.str("extra")
	switch {
	case d.has("cmdline"):
		if d.has("root") || d.has("extra") {
			d.c.Warnings = append(d.c.Warnings, "ignoring root= and extra= in favour of cmdline=, as xl does")
		}
		return cmdline
	case d.has("root") && d.has("extra"):
		return "root=" + root + " " + extra
	case d.has("root"):
		return "root=" + root
	}
	return extra
}

func (d *decoder) action(key string, def Action) Action {
	if _, ok := d.f.Lookup(key); !ok {
		return def
	}
	a := Action(d.str(key))
	for _, known := range actions {
		if a == known {
			return a
		}
	}
	s, _ := d.c.Setting(key)
	names := make([]string, len(actions))
	for i, a := range actions {
		names[i] = string(a)
	}
	d.fail(s, "%s = %q: want one of %s", key, a, strings.Join(names, ", "))
	return def
}

// strList reads a list of strings (numbers count as strings).
func (d *decoder) strList(key string) []string {
	s, ok := d.lookup(key)
	if !ok {
		return nil
	}
	if s.Value.Kind != List {
		d.fail(s, "%s: want a list, like %s = [ %s ]", key, key, s.Value)
		return nil
	}
	out := make([]string, 0, len(s.Value.List))
	for i, item := range s.Value.List {
		if item.Kind == List {
			d.fail(s, "%s: item %d is a list; want strings", key, i+1)
			return nil
		}
		out = append(out, item.Text)
	}
	return out
}

// known are the keys Decode reads.
var known = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range []string{"name", "type", "builder", "memory", "maxmem", "vcpus", "maxvcpus",
		"kernel", "ramdisk", "cmdline", "root", "extra", "disk", "vif", "firmware_override"} {
		m[k] = true
	}
	for _, k := range ActionKeys {
		m[k] = true
	}
	return m
}()

// unknown names, in one warning line, the keys Decode does not read.
func (d *decoder) unknown() {
	seen := map[string]bool{}
	var names []string
	for _, s := range d.f.Settings {
		if known[s.Key] || ignored[s.Key] || seen[s.Key] {
			continue
		}
		seen[s.Key] = true
		where := fmt.Sprintf("line %d", s.Line)
		if s.Source == CommandLine {
			where = fmt.Sprintf("argument %d", s.Line)
		}
		names = append(names, fmt.Sprintf("%s (%s)", s.Key, where))
	}
	if len(names) > 0 {
		d.c.Warnings = append(d.c.Warnings, "ignoring keys runvm does not use: "+strings.Join(names, ", "))
	}
}
