package acpi

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/xentools"
)

const (
	testBase = 0xfc001000
	testRSDP = 0xfc00f000
)

func build(t *testing.T) *Tables {
	t.Helper()
	tb, err := Build(testBase, testRSDP)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// table returns the table at gpa in tb.Blob, by its header's length.
func table(t *testing.T, tb *Tables, gpa uint64) []byte {
	t.Helper()
	off := gpa - tb.Base
	n := binary.LittleEndian.Uint32(tb.Blob[off+4:])
	return tb.Blob[off : off+uint64(n)]
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestLayout(t *testing.T) {
	tb := build(t)
	le := binary.LittleEndian
	for name, at := range map[string]uint64{"RSDT": tb.RSDT, "XSDT": tb.XSDT, "FACP": tb.FADT, "DSDT": tb.DSDT} {
		b := table(t, tb, at)
		if string(b[:4]) != name || sum(b) != 0 || string(b[10:13]) != "Xen" {
			t.Errorf("%s at %#x: signature %q, checksum sum %d", name, at, b[:4], sum(b))
		}
	}
	if tb.FACS%64 != 0 || string(table(t, tb, tb.FACS)[:4]) != "FACS" {
		t.Errorf("FACS at %#x", tb.FACS)
	}
	r := tb.RSDP
	if string(r[:8]) != "RSD PTR " || sum(r[:20]) != 0 || sum(r) != 0 || r[15] != 2 ||
		uint64(le.Uint32(r[16:])) != tb.RSDT || le.Uint64(r[24:]) != tb.XSDT {
		t.Errorf("RSDP % x", r)
	}
	f := table(t, tb, tb.FADT)
	for _, c := range []struct {
		what      string
		got, want uint64
	}{
		{"length", uint64(len(f)), 244},
		{"revision", uint64(f[8]), 4},
		{"FIRMWARE_CTRL", uint64(le.Uint32(f[36:])), tb.FACS},
		{"X_FIRMWARE_CTRL", le.Uint64(f[132:]), tb.FACS},
		{"X_DSDT", le.Uint64(f[140:]), tb.DSDT},
		{"SCI_INT", uint64(le.Uint16(f[46:])), 9},
		{"PM1a_EVT_BLK", uint64(le.Uint32(f[56:])), 0xb000},
		{"PM1a_CNT_BLK", uint64(le.Uint32(f[64:])), 0xb004},
		{"PM_TMR_BLK", uint64(le.Uint32(f[76:])), 0xb008},
		{"X_PM1a_CNT_BLK", le.Uint64(f[172+4:]), 0xb004},
		{"RESET_REG", le.Uint64(f[116+4:]), 0xcf9},
		{"RESET_VALUE", uint64(f[128]), 6},
	} {
		if c.got != c.want {
			t.Errorf("FADT %s = %#x, want %#x", c.what, c.got, c.want)
		}
	}
	d := table(t, tb, tb.DSDT)
	for _, want := range [][]byte{
		{0x08, '\\', '_', 'S', '3', '_', 0x12, 0x06, 0x04, 0x01, 0x01, 0x00, 0x00},
		{0x08, '\\', '_', 'S', '4', '_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00},
		{0x08, '\\', '_', 'S', '5', '_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00},
	} {
		if !bytes.Contains(d, want) {
			t.Errorf("DSDT lacks % x", want)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	for _, c := range [][2]uint64{{0xfc001001, testRSDP}, {1 << 32, testRSDP}, {testBase, testRSDP + 1}, {testBase, 1 << 32}} {
		if _, err := Build(c[0], c[1]); err == nil {
			t.Errorf("Build(%#x, %#x) succeeded", c[0], c[1])
		}
	}
}

// TestIASL disassembles every table with ACPICA's iasl (Debian's
// acpica-tools, which make deps unpacks), as an OS's ACPI interpreter
// would read them: each must
// disassemble without errors and say what Xen's tables say. (iasl does
// not take a bare RSDP; TestLayout checks it.)
func TestIASL(t *testing.T) {
	// iasl from the packages make deps unpacks, else an installed one;
	// without either the test skips (fails under CI, as xentools does).
	iasl := filepath.Join(xentools.Root(), "usr/bin/iasl")
	if _, err := os.Stat(iasl); err != nil {
		if iasl, err = exec.LookPath("iasl"); err != nil {
			iasl = xentools.Command(t, "usr/bin/iasl").Path
		}
	}
	tb := build(t)
	dir := t.TempDir()
	for _, c := range []struct {
		file string
		data []byte
		want []string
	}{
		{"dsdt.dat", table(t, tb, tb.DSDT), []string{`Name (\_S3, Package (0x04)`, `Name (\_S4, Package (0x04)`, `Name (\_S5, Package (0x04)`, `One,`}},
		{"facp.dat", table(t, tb, tb.FADT), []string{`PM1A Control Block Address : 0000B004`, `PM1A Event Block Address : 0000B000`,
			`PM Timer Block Address : 0000B008`, `SCI Interrupt : 0009`, `Value to cause reset : 06`}},
		{"facs.dat", table(t, tb, tb.FACS), []string{`Signature : "FACS"`, `Version : 01`}},
		{"xsdt.dat", table(t, tb, tb.XSDT), []string{`ACPI Table Address   0 : 00000000FC0010`}},
		{"rsdt.dat", table(t, tb, tb.RSDT), []string{`ACPI Table Address   0 : FC0010`}},
	} {
		t.Run(c.file, func(t *testing.T) {
			path := filepath.Join(dir, c.file)
			if err := os.WriteFile(path, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(iasl, "-d", path).CombinedOutput()
			if err != nil || regexp.MustCompile(`(?i)\berror\b|\bwarning\b|checksum.*incorrect`).Match(out) {
				t.Fatalf("iasl -d %s: %v\n%s", c.file, err, out)
			}
			dsl, err := os.ReadFile(strings.TrimSuffix(path, ".dat") + ".dsl")
			if err != nil {
				t.Fatal(err)
			}
			text := regexp.MustCompile(`[ \t]+`).ReplaceAllString(string(dsl), " ")
			for _, w := range c.want {
				if !strings.Contains(text, regexp.MustCompile(`[ \t]+`).ReplaceAllString(w, " ")) {
					t.Errorf("%s's disassembly lacks %q:\n%s", c.file, w, dsl)
				}
			}
		})
	}
}
