package xlcfg

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func decode(t *testing.T, in string, overrides ...string) (*Config, error) {
	t.Helper()
	f, err := Parse("x.cfg", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Override(overrides); err != nil {
		t.Fatal(err)
	}
	return Decode(f, "/etc/xen")
}

func TestDecodeDefaults(t *testing.T) {
	c, err := decode(t, "name = 'g'\nkernel = '/boot/k'\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Name: "g", Type: "pv", MemoryMiB: 32, MaxMemMiB: 32, VCPUs: 1, MaxVCPUs: 1, Kernel: "/boot/k",
		OnPoweroff: Destroy, OnReboot: Restart, OnWatchdog: Destroy, OnCrash: Destroy, OnSoftReset: SoftReset}
	c.set = nil
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("got %+v\nwant %+v", *c, want)
	}
}

func TestDecode(t *testing.T) {
	for _, c := range []struct {
		name, in  string
		overrides []string
		check     func(*Config) bool
	}{
		{"xtf", xtfExample, nil, func(c *Config) bool {
			return c.Name == "test-pv64-example" && c.Type == "pv" && c.MemoryMiB == 128 && c.MaxMemMiB == 128 &&
				c.VCPUs == 1 && c.Kernel == "/opt/xtf/tests/example/test-pv64-example" && len(c.Warnings) == 0
		}},
		{"quoted and hex numbers, as strtol", "memory = '0x40'\nvcpus = ' 1'\nmaxmem = 0100\n", nil, func(c *Config) bool {
			return c.MemoryMiB == 64 && c.VCPUs == 1 && c.MaxMemMiB == 64
		}},
		{"a number where a string goes", "name = 42", nil, func(c *Config) bool { return c.Name == "42" }},
		{"builder generic", "builder = 'generic'", nil, func(c *Config) bool { return c.Type == "pv" }},
		{"builder hvm", "builder = 'hvm'", nil, func(c *Config) bool { return c.Type == "hvm" }},
		{"type pvh", "type = 'pvh'", nil, func(c *Config) bool { return c.Type == "pvh" }},
		{"type and builder agree", "type = 'hvm'\nbuilder='hvm'\nfirmware_override = '/x/test-hvm64-example'",
			nil, func(c *Config) bool { return c.Type == "hvm" && c.FirmwareOverride == "/x/test-hvm64-example" }},
		{"relative kernel: the file's directory", "kernel = 'k/vmlinuz'\nramdisk='initrd'", nil, func(c *Config) bool {
			return c.Kernel == "/etc/xen/k/vmlinuz" && c.Ramdisk == "/etc/xen/initrd"
		}},
		{"relative kernel on the command line: the current directory", "kernel = 'a'", []string{"kernel='b/k'"},
			func(c *Config) bool { return c.Kernel == "b/k" }},
		{"cmdline", "cmdline = 'test=hello'", nil, func(c *Config) bool { return c.Cmdline == "test=hello" }},
		{"root and extra", "root = '/dev/xvda1 ro'\nextra = 'console=hvc0'", nil, func(c *Config) bool {
			return c.Cmdline == "root=/dev/xvda1 ro console=hvc0"
		}},
		{"root", "root = '/dev/xvda1'", nil, func(c *Config) bool { return c.Cmdline == "root=/dev/xvda1" }},
		{"extra", "extra = 'a b'", nil, func(c *Config) bool { return c.Cmdline == "a b" }},
		{"cmdline wins over root and extra, with a warning", "cmdline='c'\nroot='r'\nextra='e'", nil, func(c *Config) bool {
			return c.Cmdline == "c" && len(c.Warnings) == 1 && strings.Contains(c.Warnings[0], "in favour of cmdline=")
		}},
		{"actions", "on_poweroff='preserve'\non_reboot='destroy'\non_watchdog='coredump-destroy'\non_crash='rename-restart'\non_soft_reset='coredump-restart'",
			nil, func(c *Config) bool {
				return c.OnPoweroff == Preserve && c.OnReboot == Destroy && c.OnWatchdog == CoredumpDestroy &&
					c.OnCrash == RenameRestart && c.OnSoftReset == CoredumpRestart
			}},
		{"an action set is recorded as set", "on_crash = 'destroy'", nil, func(c *Config) bool {
			s, ok := c.Setting("on_crash")
			_, rebootSet := c.Setting("on_reboot")
			return ok && s.Line == 1 && !rebootSet && c.Action("on_crash") == Destroy && c.Action("on_reboot") == Restart
		}},
		{"devices", "disk = [ 'phy:/dev/vg/g,xvda,w', 1 ]\nvif = []", nil, func(c *Config) bool {
			return reflect.DeepEqual(c.Disks, []string{"phy:/dev/vg/g,xvda,w", "1"}) && len(c.VIFs) == 0
		}},
		{"unknown keys: one warning", "max_event_channels = 4096\nloader = 'generic'\nhap = 1\nhap = 0\nviridian = 1",
			[]string{"pci = []"}, func(c *Config) bool {
				return len(c.Warnings) == 1 &&
					c.Warnings[0] == "ignoring keys runvm does not use: max_event_channels (line 1), hap (line 3), viridian (line 5), pci (argument 1)"
			}},
		{"maxvcpus", "vcpus = 2\nmaxvcpus = 4", nil, func(c *Config) bool { return c.VCPUs == 2 && c.MaxVCPUs == 4 }},
		{"override memory", "memory = 128", []string{"memory = 64"}, func(c *Config) bool { return c.MemoryMiB == 64 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := decode(t, c.in, c.overrides...)
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(cfg) {
				t.Errorf("unexpected %+v", *cfg)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, c := range []struct {
		name, in string
		line     int
		want     string
	}{
		{"memory list", "\nmemory = [ 1 ]", 2, "memory: want a number, got a list"},
		{"memory word", "memory = 'lots'", 1, `memory = "lots": not a number`},
		{"memory with unit", "memory = '128M'", 1, `memory = "128M": not a number`},
		{"memory zero", "memory = 0", 1, "memory = 0: want 1 to"},
		{"memory negative", "memory = '-1'", 1, "memory = -1: want 1 to"},
		{"memory huge", "memory = 0xffffffffffffffffff", 1, "out of range"},
		{"memory +=", "memory = 1\nmemory += 2", 2, "+= does not work with numbers"},
		{"vcpus zero", "vcpus = 0", 1, "vcpus = 0: want 1 to 65536"},
		{"maxvcpus below vcpus", "vcpus = 4\nmaxvcpus = 2", 2, "maxvcpus = 2 is less than vcpus = 4"},
		{"maxmem below memory", "memory = 64\nmaxmem = 32", 2, "maxmem = 32 is less than memory = 64"},
		{"name list", "name = ['a']", 1, "name: want a string, got a list"},
		{"kernel list", "kernel = []", 1, "kernel: want a string, got a list"},
		{"bad type", "type = 'xen'", 1, `type = "xen": want "pv", "pvh" or "hvm"`},
		{"type prefix", "type = 'h'", 1, `type = "h"`},
		{"bad builder", "builder = 'linux'", 1, `builder = "linux": want "generic"`},
		{"contradiction", "type = 'pv'\nbuilder = 'hvm'", 2, `builder = "hvm" contradicts type = "pv"`},
		{"bad action", "on_crash = 'explode'", 1, `on_crash = "explode": want one of destroy, restart,`},
		{"action list", "on_reboot = ['destroy']", 1, "on_reboot: want a string, got a list"},
		{"disk string", "disk = 'phy:/dev/x,xvda,w'", 1, `disk: want a list, like disk = [ "phy:/dev/x,xvda,w" ]`},
		{"nested disk", "disk = [ [ 'a' ] ]", 1, "disk: item 1 is a list"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := decode(t, c.in)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want an *Error", err, err)
			}
			if e.Line != c.line || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %q, want line %d and %q", err, c.line, c.want)
			}
		})
	}
}

func TestParseLong(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"128", 128, true}, {"0x80", 128, true}, {"0X1f", 31, true}, {"010", 8, true}, {"0", 0, true},
		{"  7", 7, true}, {"-3", -3, true}, {"+3", 3, true}, {"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true}, {"9223372036854775808", 0, false},
		{"", 0, false}, {"0x", 0, false}, {"08", 0, false}, {"1_000", 0, false}, {"0b1", 0, false},
		{"12 ", 0, false}, {"--1", 0, false}, {"1e3", 0, false}, {"0o7", 0, false},
	} {
		n, err := parseLong(c.in)
		if (err == nil) != c.ok || (c.ok && n != c.want) {
			t.Errorf("parseLong(%q) = %d, %v; want %d, ok %v", c.in, n, err, c.want, c.ok)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "g.cfg")
	os.WriteFile(path, []byte("name = 'g'\nkernel = 'vmlinuz'\nmemory = 64\n"), 0o644)
	c, err := Load(path, []string{"memory = 128"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != filepath.Join(dir, "vmlinuz") || c.MemoryMiB != 128 {
		t.Errorf("got %+v", *c)
	}

	var e *Error
	if _, err := Load(filepath.Join(dir, "missing.cfg"), nil); err == nil || errors.As(err, &e) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Load(dir, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	big := filepath.Join(dir, "big.cfg")
	os.WriteFile(big, make([]byte, MaxFileSize+1), 0o644)
	if _, err := Load(big, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
	if _, err := Load(path, []string{"memory = x"}); !errors.As(err, &e) || e.Source != CommandLine {
		t.Errorf("bad override: %v", err)
	}
}
