package toolstack

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// runEventGuest boots hvmtest.EventGuest and returns how many upcalls
// its handler counted and whether vCPU 0's upcall_pending was left set.
func runEventGuest(t *testing.T, mode int, clear bool, want uint32) (uint32, bool) {
	t.Helper()
	kvmtest.Require(t)
	d, err := CreateHVM(HVMConfig{Name: "ev", Kind: builder.KindHVM,
		Image: pvhImage(hvmtest.EventGuest(mode, 0xf3, clear, want), true), MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Destroy()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := d.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.Crash != nil || e.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v, want poweroff", e)
	}
	b := make([]byte, 4)
	if err := d.m.Memory().Read(hvmtest.EvtCounter, b); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b), d.Xen.UpcallPending(0)
}

// An event on an IPI port reaches the guest at the vector it registered,
// each way Xen offers a vector (xen-hvm-pvh.md §6.2): the global callback
// vector is offered while upcall_pending stays set (a handler that does
// not clear it is entered again and again), the per-vCPU upcall vector
// once per 0->1 edge (the same handler runs once). Negative control: with
// no vector registered the event stays pending and nothing is injected.
func TestHVMEventDelivery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mode        int
		clear       bool
		want        uint32
		wantCount   func(uint32) bool
		wantPending bool
	}{
		{"callback vector", hvmtest.EvtCallback, true, 1, func(n uint32) bool { return n == 1 }, false},
		{"callback vector is level", hvmtest.EvtCallback, false, 5, func(n uint32) bool { return n >= 5 }, true},
		{"upcall vector", hvmtest.EvtUpcall, true, 1, func(n uint32) bool { return n == 1 }, false},
		{"upcall vector is an edge", hvmtest.EvtUpcall, false, 5, func(n uint32) bool { return n == 1 }, true},
		{"no vector registered", hvmtest.EvtNone, true, 1, func(n uint32) bool { return n == 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, pending := runEventGuest(t, tc.mode, tc.clear, tc.want)
			if !tc.wantCount(n) || pending != tc.wantPending {
				t.Fatalf("%d upcalls, upcall_pending %v; want pending %v", n, pending, tc.wantPending)
			}
		})
	}
}
