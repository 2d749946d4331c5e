package machine_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// templateWord is the content of the test's templates: each 8-byte word
// is its offset / 8 + 0x1000.
func templateWord(b []byte, off uint64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], (off+uint64(i))/8+0x1000)
	}
}

// templateCopier, in real mode at 0x1000: copies the word at 0x11000 to
// 0x12000 (ds = 0x1000), reports on port 0x10 and spins.
var templateCopier = []byte{
	0xb8, 0x00, 0x10, // mov $0x1000, %ax
	0x8e, 0xd8, // mov %ax, %ds
	0xa1, 0x00, 0x10, // mov 0x1000, %ax (ds:0x1000 = 0x11000)
	0xa3, 0x00, 0x20, // mov %ax, 0x2000 (ds:0x2000 = 0x12000)
	0xe6, 0x10, // out %al, $0x10
	0xeb, 0xfe, // jmp .
}

func word(t *testing.T, m *machine.Machine, gpa uint64) uint64 {
	t.Helper()
	b := make([]byte, 8)
	if err := m.Memory().Read(gpa, b); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b)
}

// A template mapped over part of a region reads as the template, to the
// VMM and to the guest; writes, the guest's and the VMM's, stay in that
// machine (another machine mapping the same template reads the
// original); memory around the mapping keeps its content; a template
// grown later keeps its first bytes. Mapping is refused when it is not
// page-aligned, runs past the region, names no region (or an alias) or
// comes after Start.
func TestMapTemplate(t *testing.T) {
	kvmtest.Require(t)
	tpl := machine.NewTemplate("test", templateWord)
	newMachine := func() *machine.Machine {
		m, err := machine.New(machine.Config{MemSize: 0x80000, NumVCPUs: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	a := newMachine()
	if err := a.Memory().Write(0xf000, []byte{0xa5}); err != nil {
		t.Fatal(err)
	}
	if err := a.Memory().Write(0x14000, []byte{0x5a}); err != nil {
		t.Fatal(err)
	}
	if err := a.MapTemplate("ram", 0x10000, 0x4000, tpl); err != nil {
		t.Fatal(err)
	}
	for _, off := range []uint64{0, 0x8, 0x1000, 0x3ff8} {
		if got, want := word(t, a, 0x10000+off), off/8+0x1000; got != want {
			t.Errorf("word at template offset %#x: %#x, want %#x", off, got, want)
		}
	}
	if got := word(t, a, 0xf000) & 0xff; got != 0xa5 {
		t.Errorf("the byte below the mapping became %#x", got)
	}
	if got := word(t, a, 0x14000) & 0xff; got != 0x5a {
		t.Errorf("the byte above the mapping became %#x", got)
	}

	// The guest reads the template and writes over it.
	if err := a.Memory().Write(0x1000, templateCopier); err != nil {
		t.Fatal(err)
	}
	v := a.VCPUs()[0]
	s, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	reported := make(chan struct{}, 1)
	a.Bus().Register(0x10, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		select {
		case reported <- struct{}{}:
		default:
		}
		return nil
	}))
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	a.Start(ctx, nil)
	select {
	case <-reported:
	case <-ctx.Done():
		t.Fatal("the guest never reported")
	}
	if err := a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := word(t, a, 0x12000), uint64(0x1000/8+0x1000); got != want {
		t.Fatalf("after the guest's copy: %#x at 0x12000, want %#x (the word it read at 0x11000)", got, want)
	}
	if err := a.Memory().Write(0x13000, []byte{0xee}); err != nil {
		t.Fatal(err)
	}
	if err := a.MapTemplate("ram", 0, 0x1000, tpl); err == nil || !strings.Contains(err.Error(), "started") {
		t.Errorf("mapping after Start: %v", err)
	}

	// A second machine, and the template grown: the original content.
	b := newMachine()
	if err := b.MapTemplate("ram", 0x10000, 0x8000, tpl); err != nil {
		t.Fatal(err)
	}
	for _, off := range []uint64{0x2000, 0x3000, 0x4000, 0x7ff8} {
		if got, want := word(t, b, 0x10000+off), off/8+0x1000; got != want {
			t.Errorf("second machine, template offset %#x: %#x, want %#x (another machine's write leaked, or growing changed it)", off, got, want)
		}
	}
	if got, want := word(t, a, 0x13000)&0xff, uint64(0xee); got != want {
		t.Errorf("the first machine's own write: %#x", got)
	}

	for _, tc := range []struct {
		name      string
		region    string
		off, size uint64
	}{
		{"unaligned offset", "ram", 0x800, 0x1000},
		{"unaligned size", "ram", 0, 0x1800},
		{"empty", "ram", 0, 0},
		{"past the end", "ram", 0x7f000, 0x2000},
		{"offset past the end", "ram", 0x100000, 0x1000},
		{"no such region", "nosuch", 0, 0x1000},
	} {
		if err := b.MapTemplate(tc.region, tc.off, tc.size, tpl); err == nil {
			t.Errorf("%s: mapped", tc.name)
		}
	}
	if err := b.AddAlias("alias", 0x100000, "ram", 0, 0x10000); err != nil {
		t.Fatal(err)
	}
	if err := b.MapTemplate("alias", 0, 0x1000, tpl); err == nil {
		t.Error("mapped over an alias")
	}
	if _, _, err := tpl.Grow(0x1800); err == nil {
		t.Error("grown to a size that is not whole pages")
	}
}
