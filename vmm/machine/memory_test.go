package machine

import (
	"encoding/binary"
	"errors"
	"testing"
)

// A 4 MiB address space with a 4-level table at 0x1000 mapping:
// VA 0xffffffff80000000 + 2 MiB large page -> GPA 0x200000,
// VA 0x400000 (4 KiB page)                  -> GPA 0x5000.
func testSpace(t testing.TB) (*Memory, Paging) {
	ram := make([]byte, 4<<20)
	m := NewMemory(Region{Name: "ram", GPA: 0, Mem: ram})
	put := func(gpa, v uint64) { binary.LittleEndian.PutUint64(ram[gpa:], v) }
	const l4, l3hi, l2hi, l3lo, l2lo, l1lo = 0x1000, 0x2000, 0x3000, 0x6000, 0x7000, 0x8000
	va := uint64(0xffffffff80000000)
	put(l4+((va>>39)&511)*8, l3hi|3)
	put(l3hi+((va>>30)&511)*8, l2hi|3)
	put(l2hi+((va>>21)&511)*8, 0x200000|0x83)
	put(l4, l3lo|3)
	put(l3lo, l2lo|3)
	put(l2lo+2*8, l1lo|3)   // VA 0x400000..0x5fffff
	put(l1lo+0*8, 0x5000|3) // VA 0x400000
	return m, Paging{CR0: cr0PG, CR3: l4, CR4: cr4PAE, EFER: eferLMA}
}

func TestTranslate(t *testing.T) {
	m, p := testSpace(t)
	for _, c := range []struct {
		va, gpa uint64
		ok      bool
	}{
		{0xffffffff80000000, 0x200000, true},
		{0xffffffff80012345, 0x212345, true},
		{0xffffffff801fffff, 0x3fffff, true},
		{0x400000, 0x5000, true},
		{0x400abc, 0x5abc, true},
		{0x401000, 0, false},           // L1 entry not present
		{0xffffffff80200000, 0, false}, // next 2 MiB not mapped
		{0x0000100000000000, 0, false}, // L4 slot empty
		{0x8000000000000000, 0, false}, // non-canonical
		{0xffff800000000000 - 1, 0, false},
	} {
		gpa, err := m.Translate(p, c.va)
		if c.ok && (err != nil || gpa != c.gpa) {
			t.Errorf("Translate(%#x) = %#x, %v; want %#x", c.va, gpa, err, c.gpa)
		}
		if !c.ok && !errors.Is(err, ErrFault) {
			t.Errorf("Translate(%#x) = %#x, %v; want ErrFault", c.va, gpa, err)
		}
	}
	if gpa, err := m.Translate(Paging{}, 0x1234); err != nil || gpa != 0x1234 {
		t.Errorf("paging off: %#x %v", gpa, err)
	}
}

func TestTranslateTableOutsideMemory(t *testing.T) {
	m, p := testSpace(t)
	p.CR3 = 0x7fff_f000 // beyond RAM
	if _, err := m.Translate(p, 0x400000); !errors.Is(err, ErrFault) {
		t.Fatalf("got %v, want ErrFault", err)
	}
}

func TestVirtRangeAllOrNothing(t *testing.T) {
	m, p := testSpace(t)
	// The last 2 bytes of the mapped large page, then 2 unmapped ones.
	var calls int
	err := m.VirtRange(p, 0xffffffff801ffffe, 4, func([]byte) error { calls++; return nil })
	if !errors.Is(err, ErrFault) || calls != 0 {
		t.Fatalf("err %v after %d pieces; want ErrFault before any", err, calls)
	}
	buf := []byte("xenresum") // exactly up to the end of the mapping
	if err := m.WriteVirt(p, 0xffffffff801ffff8, buf); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if err := m.ReadVirt(p, 0xffffffff801ffff8, got[:8]); err != nil || string(got[:8]) != "xenresum" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if err := m.ReadVirt(p, ^uint64(0)-2, got); !errors.Is(err, ErrFault) {
		t.Errorf("wrapping range: %v", err)
	}
}

func TestSliceBounds(t *testing.T) {
	m := NewMemory(Region{Name: "ram", GPA: 0x1000, Mem: make([]byte, 0x2000)})
	for _, c := range []struct{ gpa, n uint64 }{{0, 1}, {0x3000, 1}, {0x2fff, 2}, {0x1000, 1 << 63}} {
		if _, err := m.Slice(c.gpa, c.n); !errors.Is(err, ErrFault) {
			t.Errorf("Slice(%#x, %#x) = %v, want ErrFault", c.gpa, c.n, err)
		}
	}
	if s, err := m.Slice(0x2fff, 1); err != nil || len(s) != 1 {
		t.Errorf("last byte: %v", err)
	}
}

// FuzzTranslate: no guest-controlled table contents or address may make the
// walker panic or return an address outside memory without an error.
func FuzzTranslate(f *testing.F) {
	f.Add(uint64(0xffffffff80001234), uint64(0x1000), []byte{0x83, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, va, cr3 uint64, table []byte) {
		ram := make([]byte, 64<<10)
		for i := 0; i+len(table) <= len(ram) && len(table) > 0; i += 4096 {
			copy(ram[i:], table)
		}
		m := NewMemory(Region{Name: "ram", Mem: ram})
		p := Paging{CR0: cr0PG, CR3: cr3, CR4: cr4PAE, EFER: eferLMA}
		_ = m.ReadVirt(p, va, make([]byte, 16))
	})
}
