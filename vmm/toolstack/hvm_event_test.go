package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// runEventGuest boots hvmtest.EventGuest and returns how many upcalls
// its handler counted and whether vCPU 0's upcall_pending was left set.
func runEventGuest(t *testing.T, kind builder.ContainerKind, mode int, clear bool, want uint32) (uint32, bool) {
	t.Helper()
	kvmtest.Require(t)
	d, err := CreateHVM(HVMConfig{Name: "ev", Kind: kind,
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
// once per 0->1 edge (the same handler runs once), through the LAPIC, and
// the callback GSI through the IO-APIC while upcall_pending stays set (a
// handler that EOIs without clearing it is entered again). Negative
// controls: with no vector registered, with the LAPIC software-disabled
// for the upcall vector, and with the GSI's IO-APIC pin masked, the event
// stays pending and nothing is taken.
func TestHVMEventDelivery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		kind        builder.ContainerKind
		mode        int
		clear       bool
		want        uint32
		wantCount   func(uint32) bool
		wantPending bool
	}{
		{"callback vector", builder.KindHVM, hvmtest.EvtCallback, true, 1, func(n uint32) bool { return n == 1 }, false},
		{"callback vector is level", builder.KindHVM, hvmtest.EvtCallback, false, 5, func(n uint32) bool { return n >= 5 }, true},
		{"upcall vector", builder.KindHVM, hvmtest.EvtUpcall, true, 1, func(n uint32) bool { return n == 1 }, false},
		{"upcall vector is an edge", builder.KindHVM, hvmtest.EvtUpcall, false, 5, func(n uint32) bool { return n == 1 }, true},
		{"no vector registered", builder.KindHVM, hvmtest.EvtNone, true, 1, func(n uint32) bool { return n == 0 }, true},
		{"upcall vector, LAPIC disabled", builder.KindHVM, hvmtest.EvtUpcallLAPICOff, true, 1, func(n uint32) bool { return n == 0 }, true},
		{"callback GSI", builder.KindHVM, hvmtest.EvtGSI, true, 1, func(n uint32) bool { return n == 1 }, false},
		{"callback GSI is level", builder.KindHVM, hvmtest.EvtGSI, false, 5, func(n uint32) bool { return n >= 5 }, true},
		{"callback GSI, pin masked", builder.KindHVM, hvmtest.EvtGSIMasked, true, 1, func(n uint32) bool { return n == 0 }, true},
		{"callback GSI on PVH (no IO-APIC)", builder.KindPVH, hvmtest.EvtGSI, true, 1, func(n uint32) bool { return n == 0 }, true},
		{"upcall vector on PVH", builder.KindPVH, hvmtest.EvtUpcall, true, 1, func(n uint32) bool { return n == 1 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, pending := runEventGuest(t, tc.kind, tc.mode, tc.clear, tc.want)
			if !tc.wantCount(n) || pending != tc.wantPending {
				t.Fatalf("%d upcalls, upcall_pending %v; want pending %v", n, pending, tc.wantPending)
			}
		})
	}
}

// pvhvmSuspend starts hvmtest.PVHVMGuest in a domain with a xenstored,
// waits for its first upcall, and suspends it as libxl does a guest with
// PV drivers: control/shutdown = "suspend", which the test answers for
// the guest's watch by setting hvmtest.EvtGo; the guest's own
// SHUTDOWN_suspend then completes the suspend.
func pvhvmSuspend(t *testing.T, skipCallback bool) *HVMDomain {
	t.Helper()
	return pvhvmSuspendMode(t, hvmtest.EvtCallback, skipCallback)
}

// pvhvmSuspendMode is pvhvmSuspend of hvmtest.PVHVMGuestMode(mode).
func pvhvmSuspendMode(t *testing.T, mode int, skipCallback bool) *HVMDomain {
	t.Helper()
	d, store := startHVM(t, pvhImage(hvmtest.PVHVMGuestMode(mode, 0xf3, skipCallback), true))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitWord(t, d, hvmtest.EvtCounter, 1)
	done := make(chan error, 1)
	go func() { done <- d.Suspend(ctx) }()
	for {
		if v, err := store.Read("/local/domain/3/control/shutdown"); err == nil && v == "suspend" {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("suspend returned before the guest was asked: %v", err)
		case <-ctx.Done():
			t.Fatal("control/shutdown was never written")
		case <-time.After(time.Millisecond):
		}
	}
	d.m.Memory().Write(hvmtest.EvtGo, []byte{1})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); st.State != Suspended || st.Exit.Reason != xenabi.ShutdownSuspend {
		t.Fatalf("after the suspend: %+v", st)
	}
	return d
}

// waitWord waits until the guest's word at gpa is at least want.
func waitWord(t *testing.T, d *HVMDomain, gpa uint64, want uint32) {
	t.Helper()
	b := make([]byte, 4)
	for deadline := time.Now().Add(time.Minute); ; {
		d.m.Memory().Read(gpa, b)
		if binary.LittleEndian.Uint32(b) >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's word at %#x is %d, never %d", gpa, binary.LittleEndian.Uint32(b), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// finish waits for the PVHVM guest to power off and returns its
// SCHEDOP_shutdown(SHUTDOWN_suspend) result and its upcall count.
func finish(t *testing.T, d *HVMDomain) (result int32, upcalls uint32) {
	t.Helper()
	st := waitHVM(t, d, "the end", func(st Status) bool { return st.State.Ended() })
	if st.State != Shutdown || st.Exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("ended %+v, want a poweroff", st)
	}
	b := make([]byte, 8)
	d.m.Memory().Read(hvmtest.EvtResult, b[:4])
	d.m.Memory().Read(hvmtest.EvtCounter, b[4:])
	return int32(binary.LittleEndian.Uint32(b)) - 0x100, binary.LittleEndian.Uint32(b[4:])
}

// PVHVM suspend (claim 10): the guest suspends itself after the
// control/shutdown handshake, with no start_info. A fast resume returns 1
// in the same domain, its callback vector and event channels kept (its
// second event arrives with nothing redone); a resume without --fast
// returns 0, and so does a resume in a new domain after a save, where the
// guest redoes shared_info, the callback vector and its event channel and
// gets its second event. Negative control: a guest that skips re-setting
// the callback vector in the new domain gets no more events (its event
// stays pending, upcall_pending set, nothing injected).
func TestHVMPVHVMSuspendResume(t *testing.T) {
	t.Run("fast", func(t *testing.T) {
		d := pvhvmSuspend(t, false)
		if err := d.Resume(true); err != nil {
			t.Fatal(err)
		}
		if ret, n := finish(t, d); ret != 1 || n != 2 {
			t.Fatalf("SCHEDOP_shutdown returned %d, %d upcalls; want 1, 2", ret, n)
		}
	})
	t.Run("slow, same domain", func(t *testing.T) {
		d := pvhvmSuspend(t, false)
		if err := d.Resume(false); err != nil {
			t.Fatal(err)
		}
		if ret, n := finish(t, d); ret != 0 || n != 2 {
			t.Fatalf("SCHEDOP_shutdown returned %d, %d upcalls; want 0, 2", ret, n)
		}
	})
	for _, tc := range []struct {
		name         string
		mode         int
		skipCallback bool
		wantUpcalls  uint32
		// resetLAPIC: the restored LAPIC is put back to its reset
		// state before the guest runs, as a restore that dropped the
		// LAPIC records would leave it (the negative control of the
		// two cases above it).
		resetLAPIC bool
	}{
		{"new domain", hvmtest.EvtCallback, false, 2, false},
		{"new domain, callback not re-set", hvmtest.EvtCallback, true, 1, false},
		// The guest enabled its LAPIC (and programmed the IO-APIC pin)
		// at boot only: events reach it in the new domain because the
		// save carried the LAPIC and IOAPIC records.
		{"new domain, upcall vector", hvmtest.EvtUpcall, false, 2, false},
		{"new domain, callback GSI", hvmtest.EvtGSI, false, 2, false},
		{"new domain, upcall vector, LAPIC not restored", hvmtest.EvtUpcall, false, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := pvhvmSuspendMode(t, tc.mode, tc.skipCallback)
			file := saveHVM(t, d)
			d.Destroy()
			n, err := RestoreHVM(bytes.NewReader(file), HVMRestoreConfig{ID: 4, Store: xenstore.New(nil)})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Destroy()
			if cb, _ := n.Xen.Param(hvm.ParamCallbackIRQ); cb != 0 {
				t.Fatalf("CALLBACK_IRQ %#x in the new domain: it is not in Xen's stream", cb)
			}
			if tc.resetLAPIC {
				v := n.m.VCPUs()[0]
				l, err := v.GetLAPIC()
				if err != nil {
					t.Fatal(err)
				}
				binary.LittleEndian.PutUint32(l.Regs[0xf0:], 0xff) // SVR: software-disabled
				if err := v.SetLAPIC(l); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			if err := n.Unpause(); err != nil {
				t.Fatal(err)
			}
			ret, got := finish(t, n)
			if ret != 0 || got != tc.wantUpcalls {
				t.Fatalf("SCHEDOP_shutdown returned %d, %d upcalls; want 0, %d", ret, got, tc.wantUpcalls)
			}
			if pending := n.Xen.UpcallPending(0); pending != (tc.skipCallback || tc.resetLAPIC) {
				t.Fatalf("upcall_pending %v at the end", pending)
			}
		})
	}
}

// A guest that suspends itself in a domain run in the foreground (Run, no
// owner to resume it) ends with reason suspend rather than waiting for
// ever.
func TestHVMGuestSuspendForeground(t *testing.T) {
	var c code32
	c.Imm(0xbc, testStack)         // mov $stack, %esp
	c.Imm(0xb9, hvm.HypercallMSR)  // mov $msr, %ecx
	c.Imm(0xb8, testPage)          // mov $page, %eax
	c.Emit(0x31, 0xd2, 0x0f, 0x30) // xor %edx, %edx; wrmsr
	c.StoreWord(testReason, xenabi.ShutdownSuspend)
	c.Imm(0xbb, xenabi.SchedopShutdown)        // mov $SCHEDOP_shutdown, %ebx
	c.Imm(0xb9, testReason)                    // mov $reason, %ecx
	c.Call(testPage, xenabi.HypervisorSchedOp) //
	c.Emit(0xfa, 0xf4)                         // cli; hlt
	e, _ := runHVM(t, builder.KindHVM, pvhImage(c.B, true))
	if e.Crash != nil || e.Reason != xenabi.ShutdownSuspend {
		t.Fatalf("exit %v, want shutdown (suspend)", e)
	}
}
