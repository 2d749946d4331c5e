package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
)

// runvm run --disk SPEC attaches disks as create's disk = [...] does: the
// stub's blkfront writes its pattern through the ring into the image.
func TestRunDisk(t *testing.T) {
	kvmtest.Require(t)
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runvm(t, "run", "--runtime-dir", t.TempDir(), "--mem", "16M",
		"--disk", "vdev=xvda, format=raw, access=rw, target="+img, "--cmdline", "test=blkfront")
	if code != exitPoweroff || !strings.Contains(out, "Test result: SUCCESS") {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// The stub's pattern: word i of sector s in cycle 1 is 1<<48 | s<<16 | i.
	for _, w := range []struct{ s, i uint64 }{{0, 0}, {0, 63}, {1, 5}} {
		if v := binary.LittleEndian.Uint64(got[w.s*512+w.i*8:]); v != 1<<48|w.s<<16|w.i {
			t.Errorf("sector %d word %d = %#x, want the stub's pattern", w.s, w.i, v)
		}
	}
}

// Bad --disk specifications are usage errors before anything runs; an
// image that cannot be opened fails the create with the backend's reason.
func TestRunDiskErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "d.raw")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	for _, c := range []struct {
		name  string
		disks []string
		code  int
		want  string
		kvm   bool
	}{
		{"qcow2", []string{"format=qcow2, vdev=xvda, target=" + img}, exitUsage, "only raw images", false},
		{"bad vdev", []string{"vdev=floppy, target=" + img}, exitUsage, `vdev "floppy"`, false},
		{"same vdev twice", []string{"vdev=xvda, target=" + img, "vdev=xvda, access=r, target=" + img}, exitUsage, "vdev xvda is device 51712", false},
		{"unknown key", []string{"vdev=xvda, colour=red, target=" + img}, exitUsage, "unknown parameter", false},
		{"missing image", []string{"vdev=xvda, target=" + filepath.Join(dir, "none.raw")}, exitError, "none.raw", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.kvm {
				kvmtest.Require(t)
			}
			args := []string{"run", "--runtime-dir", t.TempDir(), "--mem", "16M"}
			for _, d := range c.disks {
				args = append(args, "--disk", d)
			}
			code, _, errs := runvm(t, append(args, "--cmdline", "test=blkfront")...)
			if code != c.code || !strings.Contains(errs, c.want) {
				t.Errorf("exit %d (want %d), stderr %q (want %q)", code, c.code, errs, c.want)
			}
			// The last line is runvm's error (the backend's log lines
			// may come before it).
			lines := strings.Split(strings.TrimSpace(errs), "\n")
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, "runvm run: ") || !strings.Contains(last, c.want) {
				t.Errorf("last line of stderr %q", last)
			}
			if strings.Contains(errs, "goroutine") {
				t.Errorf("a Go stack:\n%s", errs)
			}
		})
	}
}
