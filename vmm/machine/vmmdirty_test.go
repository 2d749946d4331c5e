package machine

import (
	"slices"
	"testing"
)

func collectedPages(t *testing.T, m *Memory) []uint64 {
	t.Helper()
	b, err := m.CollectVMMDirty("ram")
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	b.Pages(func(i uint64) bool { out = append(out, i); return true })
	return out
}

// Every accessor that hands out guest memory for writing marks its pages;
// reads mark nothing; a collection reports what was marked since the one
// before the last.
func TestVMMDirtyAccessors(t *testing.T) {
	for _, c := range []struct {
		name string
		op   func(m *Memory, p Paging) error
		want []uint64
	}{
		{"Write across a page boundary", func(m *Memory, p Paging) error { return m.Write(0x9ff8, make([]byte, 16)) }, []uint64{9, 10}},
		{"Slice", func(m *Memory, p Paging) error { _, err := m.Slice(0xb010, 8); return err }, []uint64{0xb}},
		{"Page", func(m *Memory, p Paging) error { _, err := m.Page(0xc123); return err }, []uint64{0xc}},
		{"WriteVirt", func(m *Memory, p Paging) error { return m.WriteVirt(p, 0x400010, []byte{1}) }, []uint64{5}},
		{"WriteVirtChecked", func(m *Memory, p Paging) error {
			return m.WriteVirtChecked(p, 0xffffffff80001000, []byte{1})
		}, []uint64{0x201}},
		{"VirtRange", func(m *Memory, p Paging) error {
			return m.VirtRange(p, 0x400000, 4, func([]byte) error { return nil })
		}, []uint64{5}},
		// Negative controls: reads and walks mark nothing.
		{"Read", func(m *Memory, p Paging) error { return m.Read(0x9000, make([]byte, 8192)) }, nil},
		{"ReadVirt", func(m *Memory, p Paging) error { return m.ReadVirt(p, 0x400000, make([]byte, 8)) }, nil},
		{"Translate", func(m *Memory, p Paging) error { _, err := m.Translate(p, 0x400000); return err }, nil},
		{"TranslateWrite", func(m *Memory, p Paging) error { _, err := m.TranslateWrite(p, 0x400000); return err }, nil},
		{"L1Entry", func(m *Memory, p Paging) error { _, err := m.L1Entry(p, 0x400000); return err }, nil},
		{"a failed Write", func(m *Memory, p Paging) error {
			if m.Write(4<<20-4, make([]byte, 8)) == nil {
				t.Error("a write past the end succeeded")
			}
			return nil
		}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, p := testSpace(t)
			if err := c.op(m, p); err != nil {
				t.Fatal(err)
			}
			if got := collectedPages(t, m); !slices.Equal(got, c.want) {
				t.Errorf("first collection %v, want %v", got, c.want)
			}
			// Reported again by the next collection (the write may land
			// after the first one), then no more.
			if got := collectedPages(t, m); !slices.Equal(got, c.want) {
				t.Errorf("second collection %v, want %v", got, c.want)
			}
			if got := collectedPages(t, m); len(got) != 0 {
				t.Errorf("third collection %v, want none", got)
			}
		})
	}
}

// A kept range is in every collection until released, and once more
// after; writes through an alias count for the page behind it.
func TestVMMDirtyKeepAndAlias(t *testing.T) {
	ram := make([]byte, 64*PageSize)
	m := NewMemory(Region{Name: "ram", GPA: 0, Mem: ram},
		Region{Name: "alias", GPA: 1 << 30, Mem: ram[16*PageSize : 32*PageSize], Alias: true})
	_, release, err := m.Keep(3*PageSize+100, PageSize)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if got := collectedPages(t, m); !slices.Equal(got, []uint64{3, 4}) {
			t.Fatalf("collection %d while kept: %v, want [3 4]", i, got)
		}
	}
	release()
	release()
	if got := collectedPages(t, m); !slices.Equal(got, []uint64{3, 4}) {
		t.Errorf("after release: %v, want [3 4]", got)
	}
	collectedPages(t, m)
	if got := collectedPages(t, m); len(got) != 0 {
		t.Errorf("long after release: %v, want none", got)
	}
	if err := m.Write(1<<30+2*PageSize, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if got := collectedPages(t, m); !slices.Equal(got, []uint64{18}) {
		t.Errorf("write through the alias: %v, want [18]", got)
	}
	if _, err := m.CollectVMMDirty("alias"); err == nil {
		t.Error("an alias has its own dirty set")
	}
	if _, err := m.CollectVMMDirty("nope"); err == nil {
		t.Error("a region that does not exist has a dirty set")
	}
}
