package xlcfg

import (
	"strings"
	"testing"
)

func TestParseDisk(t *testing.T) {
	xvda := Disk{Target: "/img/a.raw", Vdev: "xvda", Devid: 51712, Writable: true, Discard: true}
	with := func(f func(*Disk)) Disk { d := xvda; f(&d); return d }
	for _, tc := range []struct {
		name, spec string
		want       Disk
	}{
		{"positional, four", "/img/a.raw,raw,xvda,rw", xvda},
		{"positional, format empty", "/img/a.raw,,xvda,w", xvda},
		{"positional, read-only", "/img/a.raw,raw,xvda,r", with(func(d *Disk) { d.Writable = false })},
		{"positional, ro", "/img/a.raw,raw,xvda,ro", with(func(d *Disk) { d.Writable = false })},
		{"positional, default access", "/img/a.raw,raw,xvda", xvda},
		{"deprecated phy: prefix skips the format", "phy:/img/a.raw,xvda,w", xvda},
		{"deprecated file: prefix", "file:/img/a.raw,xvda,r", with(func(d *Disk) { d.Writable = false })},
		{"tap:aio: prefix", "tap:aio:/img/a.raw,xvda,w", xvda},
		{"raw: prefix", "raw:/img/a.raw,xvda,w", xvda},
		{"key=value", "vdev=xvda, target=/img/a.raw", xvda},
		{"key=value, all", "format=raw, vdev=xvda, access=rw, target=/img/a.raw", xvda},
		{"target= takes the rest", "vdev=xvda,target=/img/a,b=c.raw", with(func(d *Disk) { d.Target = "/img/a,b=c.raw" })},
		{"mixed", "/img/a.raw, vdev=xvda, access=ro", with(func(d *Disk) { d.Writable = false })},
		{"devtype=cdrom", "/img/a.raw,raw,xvda,r,devtype=cdrom", with(func(d *Disk) { d.Writable, d.CDROM = false, true })},
		{"vdev:cdrom", "/img/a.raw,raw,xvda:cdrom,r", with(func(d *Disk) { d.Writable, d.CDROM = false, true })},
		{"cdrom flag", "cdrom,/img/a.raw,raw,xvda,r", with(func(d *Disk) { d.Writable, d.CDROM = false, true })},
		{"no-discard", "/img/a.raw,raw,xvda,w,no-discard", with(func(d *Disk) { d.Discard = false })},
		{"backendtype=phy", "backendtype=phy,/img/a.raw,raw,xvda", xvda},
		{"trailing comma", "/img/a.raw,raw,xvda,rw,", xvda},
		{"xvdb", "/i,raw,xvdb", Disk{Target: "/i", Vdev: "xvdb", Devid: 51728, Writable: true, Discard: true}},
		{"xvda1", "/i,raw,xvda1", Disk{Target: "/i", Vdev: "xvda1", Devid: 51713, Writable: true, Discard: true}},
		{"hda", "/i,raw,hda", Disk{Target: "/i", Vdev: "hda", Devid: 768, Writable: true, Discard: true}},
		{"sdb2", "/i,raw,sdb2", Disk{Target: "/i", Vdev: "sdb2", Devid: 8<<8 | 1<<4 | 2, Writable: true, Discard: true}},
	} {
		got, err := ParseDisk(tc.spec)
		if err != nil || got != tc.want {
			t.Errorf("%s: ParseDisk(%q) = %+v, %v; want %+v", tc.name, tc.spec, got, err, tc.want)
		}
	}
}

func TestParseDiskErrors(t *testing.T) {
	for _, tc := range []struct{ name, spec, want string }{
		{"qcow2", "/i,qcow2,xvda", "format qcow2: only raw images are supported"},
		{"format=vhd", "format=vhd,vdev=xvda,target=/i", "format vhd: only raw"},
		{"qcow2: prefix", "qcow2:/i,xvda", "target prefix qcow2:: only raw"},
		{"unknown format", "/i,vmdk,xvda", `unknown format "vmdk"`},
		{"bad access", "/i,raw,xvda,rwx", `unknown access "rwx"`},
		{"no vdev", "/i,raw", "no vdev"},
		{"no target", "vdev=xvda", "no target"},
		{"empty cdrom", ",raw,xvdc:cdrom,r", "no target"},
		{"too many", "/i,raw,xvda,rw,extra", "too many positional parameters"},
		{"unknown key", "/i,raw,xvda,colo-host=x", `unknown parameter "colo-host"`},
		{"bad devtype", "/i,raw,xvda,devtype=floppy", "devtype"},
		{"backendtype tap", "/i,raw,xvda,backendtype=tap", "backendtype"},
		{"vdev twice", "/i,raw,xvda,vdev=xvdb", "vdev given twice"},
		{"bad vdev", "/i,raw,vda", "want xvdX, hdX or sdX"},
		{"script prefix", "iscsi:iqn.x,xvda", "hotplug scripts"},
		{"huge", strings.Repeat("a", MaxDiskSpec+1), "longer than"},
	} {
		_, err := ParseDisk(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseDisk(%q) error %v, want %q", tc.name, tc.spec, err, tc.want)
		}
	}
}

func TestVdevDevid(t *testing.T) {
	for _, tc := range []struct {
		vdev string
		want int // -1: refused
	}{
		{"xvda", 202 << 8},
		{"xvdb", 202<<8 | 16},
		{"xvda15", 202<<8 | 15},
		{"xvdp", 202<<8 | 15<<4},
		{"xvdq", 1<<28 | 16<<8},           // disk 16: extended
		{"xvda16", 1<<28 | 16},            // partition 16: extended
		{"xvdz", 1<<28 | 25<<8},           // disk 25
		{"xvdaa", 1<<28 | 26<<8},          // disk 26
		{"xvdba", 1<<28 | 52<<8},          // disk 52
		{"xvdaa255", 1<<28 | 26<<8 | 255}, // the last partition
		{"xvdavlh", 1<<28 | 0x7fff<<8},    // disk 32767, the last
		{"xvdavli", -1},                   // disk 32768
		{"xvda256", -1},
		{"xvda0", -1},
		{"xvda01", -1},
		{"xvda+1", -1},
		{"xvd", -1},
		{"xvd1", -1},
		{"xvdA", -1},
		{"hda", 3 << 8},
		{"hdb", 3<<8 | 64},
		{"hdc", 22 << 8},
		{"hdd1", 22<<8 | 64 | 1},
		{"hda63", 3<<8 | 63},
		{"hda64", -1},
		{"hde", -1},
		{"sda", 8 << 8},
		{"sdp15", 8<<8 | 15<<4 | 15},
		{"sdq", -1},
		{"sda16", -1},
		{"51712", -1},
		{"", -1},
	} {
		got, err := VdevDevid(tc.vdev)
		if tc.want < 0 {
			if err == nil {
				t.Errorf("VdevDevid(%q) = %d, want an error", tc.vdev, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("VdevDevid(%q) = %#x, %v; want %#x", tc.vdev, got, err, tc.want)
		}
	}
}

func TestParseDisks(t *testing.T) {
	c := &Config{Disks: []string{"/a,raw,xvda", "phy:/b,xvdb,r"}}
	ds, err := c.ParseDisks()
	if err != nil || len(ds) != 2 || ds[1].Devid != 51728 || ds[1].Writable {
		t.Fatalf("ParseDisks = %+v, %v", ds, err)
	}
	c.Disks = append(c.Disks, "/c,raw,xvda")
	if _, err := c.ParseDisks(); err == nil || !strings.Contains(err.Error(), "disk 3") {
		t.Errorf("duplicate vdev: %v", err)
	}
}

// FuzzParseDisk: any specification is interpreted or refused, never a
// panic; an accepted one names a target and a device number its vdev
// gives again.
func FuzzParseDisk(f *testing.F) {
	for _, s := range []string{
		"/img/a.raw,raw,xvda,rw", "phy:/dev/vg/g,xvda,w", "vdev=xvda, target=/path, format=raw, access=rw",
		"/i,raw,xvdc:cdrom,r,devtype=cdrom", ",,,", "target=", "xvdaaaaaaaa", "/i,raw,hdd63,no-discard",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		d, err := ParseDisk(spec)
		if err != nil {
			return
		}
		if d.Target == "" {
			t.Fatalf("%q: accepted without a target", spec)
		}
		if n, err := VdevDevid(d.Vdev); err != nil || n != d.Devid || n <= 0 {
			t.Fatalf("%q: vdev %q devid %d, again %d %v", spec, d.Vdev, d.Devid, n, err)
		}
	})
}
