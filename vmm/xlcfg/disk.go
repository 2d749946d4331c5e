package xlcfg

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxDiskSpec bounds one disk specification; xl's are a line.
const MaxDiskSpec = 4096

// Disk is one disk = [...] entry interpreted as xl does
// (docs/man/xl-disk-configuration.5.pod, tools/libs/util/libxlu_disk_l.l,
// libxl__device_disk_dev_number), for the raw images the block backend
// serves.
type Disk struct {
	Target   string `json:"target"`   // the image file, as written
	Vdev     string `json:"vdev"`     // e.g. "xvda"
	Devid    int    `json:"devid"`    // virtual-device, e.g. 51712 for xvda
	Writable bool   `json:"writable"` // access rw (the default)
	CDROM    bool   `json:"cdrom"`    // devtype=cdrom
	Discard  bool   `json:"discard"`  // discard (the default) or no-discard
}

// ParseDisk interprets one disk specification: key=value items (target,
// format, vdev, access, devtype, backendtype, and the discard, no-discard
// and cdrom flags) and positional ones, filled in the order target,
// format, vdev, access, the format skipped after a deprecated target
// prefix (phy:, file:, aio:, tap:aio:, raw:), as xl's parser does.
// target= takes the rest of the specification. Only raw images are
// accepted.
func ParseDisk(spec string) (Disk, error) {
	d := Disk{Writable: true, Discard: true}
	if len(spec) > MaxDiskSpec {
		return d, fmt.Errorf("disk specification longer than %d bytes", MaxDiskSpec)
	}
	var (
		target, format, vdev, access string
		haveTarget, haveFormat       bool
		haveVdev, haveAccess         bool
		deprecatedPrefix             bool
	)
	setVdev := func(v string) error {
		if name, ok := strings.CutSuffix(v, ":cdrom"); ok {
			v, d.CDROM = name, true
		}
		if haveVdev {
			return fmt.Errorf("vdev given twice")
		}
		vdev, haveVdev = v, true
		return nil
	}
	rest := spec
	for rest != "" {
		item := strings.TrimLeft(rest, " \t\n")
		if v, ok := strings.CutPrefix(item, "target="); ok {
			if haveTarget {
				return d, errors.New("target given twice")
			}
			target, haveTarget = v, true
			break
		}
		item, rest, _ = strings.Cut(item, ",")
		item = strings.TrimRight(item, " \t\n")
		key, val, isKV := strings.Cut(item, "=")
		if isKV && validKey(key) {
			var err error
			switch key {
			case "format":
				if haveFormat {
					return d, errors.New("format given twice")
				}
				format, haveFormat = val, true
			case "vdev":
				err = setVdev(val)
			case "access":
				if haveAccess {
					return d, errors.New("access given twice")
				}
				access, haveAccess = val, true
			case "devtype":
				switch val {
				case "cdrom":
					d.CDROM = true
				case "disk":
					d.CDROM = false
				default:
					err = fmt.Errorf("devtype %q: want disk or cdrom", val)
				}
			case "backendtype":
				if val != "phy" && val != "qdisk" {
					err = fmt.Errorf("backendtype %q: only phy (a raw image served by the VMM) is supported", val)
				}
			default:
				err = fmt.Errorf("unknown parameter %q", key)
			}
			if err != nil {
				return d, err
			}
			continue
		}
		switch item {
		case "discard":
			d.Discard = true
			continue
		case "no-discard":
			d.Discard = false
			continue
		case "cdrom":
			d.CDROM = true
			continue
		case "":
			if rest == "" {
				continue // a trailing comma
			}
		}
		// A positional parameter.
		switch {
		case !haveTarget:
			t, dep, err := stripPrefix(item)
			if err != nil {
				return d, err
			}
			target, haveTarget, deprecatedPrefix = t, true, dep
			if dep && strings.HasPrefix(item, "raw:") {
				format, haveFormat = "raw", true
			}
		case !deprecatedPrefix && !haveFormat:
			format, haveFormat = item, true
		case !haveVdev:
			if err := setVdev(item); err != nil {
				return d, err
			}
		case !haveAccess:
			access, haveAccess = item, true
		default:
			return d, fmt.Errorf("too many positional parameters at %q", item)
		}
	}
	switch format {
	case "", "raw":
	case "qcow", "qcow2", "vhd", "qed", "empty":
		return d, fmt.Errorf("format %s: only raw images are supported", format)
	default:
		return d, fmt.Errorf("unknown format %q", format)
	}
	switch access {
	case "", "w", "rw":
		d.Writable = true
	case "r", "ro":
		d.Writable = false
	default:
		return d, fmt.Errorf("unknown access %q: want r, ro, w or rw", access)
	}
	if target == "" {
		return d, errors.New("no target (an empty drive is not supported)")
	}
	if strings.ContainsRune(target, 0) {
		return d, errors.New("target contains a NUL byte")
	}
	if !haveVdev || vdev == "" {
		return d, errors.New("no vdev")
	}
	devid, err := VdevDevid(vdev)
	if err != nil {
		return d, err
	}
	d.Target, d.Vdev, d.Devid = target, vdev, devid
	return d, nil
}

// validKey reports whether key looks like a parameter name
// ([a-z][-a-z0-9]*), as xl's lexer tells key=value from a positional
// target that contains '='.
func validKey(key string) bool {
	if key == "" || key[0] < 'a' || key[0] > 'z' {
		return false
	}
	for _, c := range []byte(key) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// stripPrefix removes a deprecated target prefix ("phy:/dev/x"); it
// reports whether there was one and refuses those needing what the VMM
// has not (other formats, hotplug scripts).
func stripPrefix(t string) (string, bool, error) {
	for _, p := range []string{"tap:aio:", "tap2:aio:", "tapdisk:aio:", "phy:", "file:", "aio:", "raw:"} {
		if v, ok := strings.CutPrefix(t, p); ok {
			return v, true, nil
		}
	}
	for _, p := range []string{"qcow:", "qcow2:", "vhd:", "tap:qcow2:", "tap:vhd:"} {
		if strings.HasPrefix(t, p) {
			return "", false, fmt.Errorf("target prefix %s: only raw images are supported", p)
		}
	}
	for _, p := range []string{"iscsi:", "nbd:", "enbd:", "drbd:"} {
		if strings.HasPrefix(t, p) {
			return "", false, fmt.Errorf("target prefix %s: hotplug scripts are not supported", p)
		}
	}
	return t, false, nil
}

// VdevDevid returns the virtual-device number of a vdev as Linux and
// libxl number them (libxl__device_disk_dev_number): xvdX[N] is
// (202 << 8) | (disk << 4) | N for disks below 16 and partitions below
// 16, else (1 << 28) | (disk << 8) | N (disks to 32767, partitions to
// 255); hdX[N] (4 disks, partitions to 63) is major 3 for hda/hdb and 22
// for hdc/hdd, (disk & 1) << 6 | N; sdX[N] (16 disks, partitions to 15)
// is (8 << 8) | (disk << 4) | N. Disk letters count a, …, z, aa, ab, …;
// a partition has no leading zero and is not 0.
func VdevDevid(vdev string) (int, error) {
	bad := func(why string) (int, error) { return 0, fmt.Errorf("vdev %q: %s", vdev, why) }
	for _, f := range []struct {
		prefix           string
		maxDisk, maxPart int
		number           func(disk, part int) int
	}{
		{"xvd", 0x7fff, 255, func(disk, part int) int {
			if disk < 16 && part < 16 {
				return 202<<8 | disk<<4 | part
			}
			return 1<<28 | disk<<8 | part
		}},
		{"hd", 3, 63, func(disk, part int) int {
			major := 3
			if disk >= 2 {
				major = 22
			}
			return major<<8 | (disk&1)<<6 | part
		}},
		{"sd", 15, 15, func(disk, part int) int { return 8<<8 | disk<<4 | part }},
	} {
		s, ok := strings.CutPrefix(vdev, f.prefix)
		if !ok {
			continue
		}
		i, disk := 0, -1
		for i < len(s) && s[i] >= 'a' && s[i] <= 'z' {
			disk = (disk+1)*26 + int(s[i]-'a')
			if disk > f.maxDisk {
				return bad(fmt.Sprintf("more than %d %s disks", f.maxDisk+1, f.prefix))
			}
			i++
		}
		if disk < 0 {
			return bad("no disk letter")
		}
		part := 0
		if p := s[i:]; p != "" {
			if p[0] == '0' {
				return bad("partition 0 or with a leading zero")
			}
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > f.maxPart || strings.ContainsAny(p, "+-") {
				return bad(fmt.Sprintf("partition %q: want 1 to %d", p, f.maxPart))
			}
			part = n
		}
		return f.number(disk, part), nil
	}
	return bad("want xvdX, hdX or sdX, with an optional partition number")
}

// ParseDisks interprets every disk = [...] entry; two disks may not have
// the same vdev number.
func (c *Config) ParseDisks() ([]Disk, error) {
	var out []Disk
	seen := map[int]string{}
	for i, spec := range c.Disks {
		d, err := ParseDisk(spec)
		if err != nil {
			return nil, fmt.Errorf("disk %d (%q): %w", i+1, spec, err)
		}
		if o, dup := seen[d.Devid]; dup {
			return nil, fmt.Errorf("disk %d (%q): vdev %s is device %d, as %s is", i+1, spec, d.Vdev, d.Devid, o)
		}
		seen[d.Devid] = d.Vdev
		out = append(out, d)
	}
	return out, nil
}
