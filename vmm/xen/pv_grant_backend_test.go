package xen

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// flagsV1 returns v1 entry ref's flags.
func (e *pvEnv) flagsV1(ref int) uint16 {
	return binary.LittleEndian.Uint16(e.d.pv.gntEntries()[8*ref:])
}

// Dom0's backends map a domain's v1 grants: every entry that is not
// granted to dom0 as asked is refused with an error (never a panic), a
// mapping is the frame's bytes with GTF_reading/writing set while it
// lasts, and a writable one holds the frame's writable type.
func TestBackendGrantsV1(t *testing.T) {
	e := newPVEnv(t)
	g := e.d.x.BackendGrants()
	e.grantV1(8, gtfPermitAccess, 0, e.mfn(0x40))
	e.grantV1(9, gtfPermitAccess|gtfReadonly, 0, e.mfn(0x42))
	e.grantV1(10, gtfPermitAccess, 2, e.mfn(0x40))
	e.grantV1(11, gtfPermitAccess, 0, e.mfn(pvL2))
	e.grantV1(12, 0, 0, e.mfn(0x40))
	e.grantV1(13, gtfPermitAccess, 0, 1<<40)
	e.grantV1(14, gtfPermitAccess, 0, e.frames.XenFrame(0))
	e.grantV1(15, 2, 0, e.mfn(0x40)) // GTF_accept_transfer
	for _, tc := range []struct {
		name     string
		dom      uint16
		ref      uint32
		writable bool
		want     error
	}{
		{"no such domain", 99, 8, false, errSrch},
		{"dom0's own grant", 0, 8, false, errInval},
		{"ref past the table", 1, 1 << 20, false, errInval},
		{"last ref plus one", 1, 512, false, errInval},
		{"an invalid entry", 1, 12, false, errInval},
		{"a transfer entry", 1, 15, false, errInval},
		{"granted to domain 2", 1, 10, false, errInval},
		{"read-only mapped writable", 1, 9, true, errInval},
		{"a frame that is not RAM", 1, 13, false, errInval},
		{"a Xen-window frame", 1, 14, false, errInval},
		{"a page table mapped writable", 1, 11, true, errInval},
	} {
		page, release, err := g.Map(tc.dom, tc.ref, tc.writable)
		if !errors.Is(err, tc.want) || page != nil || release != nil {
			t.Errorf("%s: Map = %d bytes, %v, want %v", tc.name, len(page), err, tc.want)
		}
	}
	for ref := 8; ref <= 15; ref++ {
		if f := e.flagsV1(ref); f&(gtfReading|gtfWriting) != 0 {
			t.Errorf("refused entry %d left flags %#x", ref, f)
		}
	}
	if e.typeOf(pvL2) != "L2/1" {
		t.Errorf("page table's type after refused writable map: %s", e.typeOf(pvL2))
	}

	// A page table may be mapped read-only, as Xen allows.
	_, rel, err := g.Map(1, 11, false)
	if err != nil {
		t.Fatalf("page table read-only: %v", err)
	}
	rel()

	copy(e.ram[0x40000:], "guest bytes")
	before := e.typeOf(0x40) // the guest's own writable mapping
	page, relR, err := g.Map(1, 8, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != machine.PageSize || string(page[:11]) != "guest bytes" {
		t.Fatalf("read mapping: %d bytes %q", len(page), page[:11])
	}
	if f := e.flagsV1(8); f != gtfPermitAccess|gtfReading {
		t.Errorf("read-mapped flags %#x, want reading", f)
	}
	wpage, relW, err := g.Map(1, 8, true)
	if err != nil {
		t.Fatal(err)
	}
	copy(wpage[100:], "from the backend")
	if string(e.ram[0x40000+100:0x40000+116]) != "from the backend" {
		t.Error("a write through the mapping is not in guest memory")
	}
	if f := e.flagsV1(8); f != gtfPermitAccess|gtfReading|gtfWriting {
		t.Errorf("write-mapped flags %#x, want reading|writing", f)
	}
	if before != "writable/1" || e.typeOf(0x40) != "writable/2" {
		t.Errorf("type of a frame mapped writable: %s", e.typeOf(0x40))
	}
	wantRet(t, "PIN_L1 of a frame dom0 maps writable", e.pinL1(0x40), errno(xenabi.EINVAL))
	wantRet(t, "set_version while dom0 maps a grant", e.setVersion(2), errno(xenabi.EBUSY))
	relW()
	relW() // a second release does nothing
	if f := e.flagsV1(8); f != gtfPermitAccess|gtfReading {
		t.Errorf("flags after the writable mapping went: %#x, want reading", f)
	}
	if e.typeOf(0x40) != before {
		t.Errorf("type after the writable mapping went: %s", e.typeOf(0x40))
	}
	relR()
	if f := e.flagsV1(8); f != gtfPermitAccess {
		t.Errorf("flags after the last mapping went: %#x", f)
	}
	if n := len(e.d.pv.gnt.foreign); n != 0 {
		t.Errorf("%d pins left", n)
	}

	// The domain gone: its grants no longer map.
	e.d.Release()
	if _, _, err := g.Map(1, 8, false); !errors.Is(err, errSrch) {
		t.Errorf("Map of a released domain: %v", err)
	}
}

// setVersion runs GNTTABOP_set_version.
func (e *pvEnv) setVersion(v uint32) int64 {
	op := uint64(pvBuf + 0x600)
	binary.LittleEndian.PutUint32(e.ram[op:], v)
	return e.call(20, gnttabSetVersion, op, 1)
}

// v2: the entry's flags are left alone and the status frame carries
// GTF_reading/writing, each entry's half of its word only.
func TestBackendGrantsV2(t *testing.T) {
	e := newPVEnv(t)
	g := e.d.x.BackendGrants()
	wantRet(t, "set_version 2", e.setVersion(2), 0)
	t2 := e.d.pv.gntEntries()
	put := func(ref int, flags, dom uint16, mfn uint64) {
		binary.LittleEndian.PutUint16(t2[16*ref+2:], dom)
		binary.LittleEndian.PutUint64(t2[16*ref+8:], mfn)
		binary.LittleEndian.PutUint16(t2[16*ref:], flags)
	}
	status, err := e.d.mem.Slice(e.frames.XenFrame(gntStatusFrame)<<12, machine.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	st := func(ref int) uint16 { return binary.LittleEndian.Uint16(status[2*ref:]) }
	put(8, gtfPermitAccess, 0, e.mfn(0x40))
	put(9, gtfPermitAccess|gtfReadonly, 0, e.mfn(0x41))
	put(10, gtfPermitAccess, 1, e.mfn(0x41))
	if _, _, err := g.Map(1, 9, true); err == nil {
		t.Error("v2 read-only entry mapped writable")
	}
	if _, _, err := g.Map(1, 10, false); err == nil {
		t.Error("v2 entry granted to domain 1 mapped by dom0")
	}
	if _, _, err := g.Map(1, 256, false); err == nil {
		t.Error("v2 ref past the table (256 entries in a frame) mapped")
	}
	copy(e.ram[0x41000:], "v2 read-only")
	page, relR, err := g.Map(1, 9, false)
	if err != nil || string(page[:12]) != "v2 read-only" {
		t.Fatalf("v2 read mapping: %q, %v", page[:12], err)
	}
	_, relW, err := g.Map(1, 8, true)
	if err != nil {
		t.Fatal(err)
	}
	if st(8) != gtfReading|gtfWriting || st(9) != gtfReading {
		t.Errorf("status 8 %#x 9 %#x, want reading|writing and reading", st(8), st(9))
	}
	if f := binary.LittleEndian.Uint16(t2[16*8:]); f != gtfPermitAccess {
		t.Errorf("v2 entry flags changed: %#x", f)
	}
	relW()
	if st(8) != 0 || st(9) != gtfReading {
		t.Errorf("after release of 8: status 8 %#x 9 %#x", st(8), st(9))
	}
	relR()
	if st(9) != 0 {
		t.Errorf("after release of 9: status %#x", st(9))
	}
}

// The guest ends a grant (gnttab_end_foreign_access_ref's cmpxchg of the
// flags, refused while GTF_reading/writing are set) while a backend
// goroutine maps and releases it: the guest never ends it under a
// mapping, and once ended it never maps again.
func TestBackendGrantsEndRace(t *testing.T) {
	e := newPVEnv(t)
	g := e.d.x.BackendGrants()
	e.grantV1(8, gtfPermitAccess, 0, e.mfn(0x40))
	w := (*uint32)(unsafe.Pointer(&e.d.pv.gntEntries()[8*8]))
	var ended, mappedAfterEnd atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 20000 {
			page, rel, err := g.Map(1, 8, true)
			if err != nil {
				continue
			}
			if ended.Load() {
				mappedAfterEnd.Store(true)
			}
			page[0]++
			rel()
		}
	})
	for i := 0; !ended.Load() && i < 1_000_000; i++ {
		old := atomic.LoadUint32(w)
		if uint16(old)&(gtfReading|gtfWriting) != 0 {
			continue
		}
		if atomic.CompareAndSwapUint32(w, old, old&^0xffff) {
			ended.Store(true)
		}
	}
	wg.Wait()
	if mappedAfterEnd.Load() {
		t.Error("an ended grant was mapped")
	}
	if !ended.Load() {
		t.Log("the guest never found the grant unmapped")
	}
}
