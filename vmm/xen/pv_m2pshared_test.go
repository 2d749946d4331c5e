package xen

import (
	"encoding/binary"
	"log/slog"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
)

// NewDomain maps the M2P's entries from the process's shared copy
// (m2pTemplate), from the process's second domain on, and writes only the
// last page's tail: a domain whose RAM ends mid-page (a restore takes its
// size from the stream's P2M, which need not be a multiple of 2 MiB) reads
// each frame's PFN up to its last and all ones after it, whether its M2P
// was mapped or (the process's first domain) written; the VMM's
// MMU_MACHPHYS_UPDATE store lands in the domain's own copy, and a domain
// made later starts from the original.
func TestM2PSharedTail(t *testing.T) {
	kvmtest.Require(t)
	const nr = 8447 // the M2P's last page holds 255 entries and 257 invalid ones
	newDom := func(id uint16) *Domain {
		m, err := machine.New(machine.Config{MemSize: nr * machine.PageSize, NumVCPUs: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		frames, err := physmap.ForDomain(id, nr)
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewDomain(Config{Machine: m, ID: id, Frames: frames, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Release)
		return d
	}
	check := func(d *Domain, changed map[uint64]uint64) {
		t.Helper()
		m2p := d.pv.m2p
		if len(m2p) != 17*machine.PageSize {
			t.Fatalf("M2P of %d bytes, want 17 pages", len(m2p))
		}
		for i := uint64(0); i < uint64(len(m2p))/8; i++ {
			want := i
			if i >= nr {
				want = ^uint64(0)
			}
			if v, ok := changed[i]; ok {
				want = v
			}
			if got := binary.LittleEndian.Uint64(m2p[8*i:]); got != want {
				t.Fatalf("dom%d: M2P entry of PFN %#x is %#x, want %#x", d.id, i, got, want)
			}
		}
	}
	a := newDom(3)
	if !a.pv.m2pShared && m2pDomains.Load() != 1 {
		t.Fatal("the M2P of a domain that is not the process's first was written, not mapped from the shared copy")
	}
	check(a, nil)
	store64(a.pv.m2p[8*42:], 0xabc) // what MMU_MACHPHYS_UPDATE stores
	check(a, map[uint64]uint64{42: 0xabc})
	b := newDom(4)
	if !b.pv.m2pShared {
		t.Fatal("the M2P of the process's second domain was written, not mapped from the shared copy")
	}
	check(b, nil)
	check(a, map[uint64]uint64{42: 0xabc})
}
