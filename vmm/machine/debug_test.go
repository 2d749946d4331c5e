package machine_test

import (
	"context"
	"errors"
	"testing"

	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

// SetGuestDebug follows the ownership rules of the other ioctl methods:
// allowed before Start, while parked and from the vCPU's own thread,
// refused with ErrNotParked from elsewhere while the vCPU runs.
func TestSetGuestDebugOwnership(t *testing.T) {
	r := newRig(t, outLoop)
	step := machine.GuestDebug{Control: machine.DebugEnable | machine.DebugSingleStep}
	if err := r.v.SetGuestDebug(machine.GuestDebug{}); err != nil {
		t.Fatalf("before Start: %v", err)
	}
	fromThread := make(chan error, 1)
	r.onOut = func(v *machine.VCPU, n uint64) error {
		if n == 2 {
			fromThread <- v.SetGuestDebug(machine.GuestDebug{})
		}
		return nil
	}
	r.start()
	r.waitCount(t, 3)
	if err := <-fromThread; err != nil {
		t.Errorf("from the vCPU's thread: %v", err)
	}
	wantStateError(t, "SetGuestDebug while running", r.v.SetGuestDebug(step), machine.ErrNotParked, machine.VCPURunning)
	if err := r.v.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantState(t, r.v, machine.VCPUParked)
	// Parked: single-step one instruction at a time.
	if err := r.v.SetGuestDebug(step); err != nil {
		t.Fatalf("parked: %v", err)
	}
	pcs := make(chan uint64, 8)
	r.v.Debug = func(v *machine.VCPU, e *kvmext.DebugExit) error {
		pcs <- e.PC
		v.RequestPause()
		return nil
	}
	regs, err := r.v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		r.v.Unpause()
		pc := <-pcs
		if err := r.v.Pause(context.Background()); err != nil {
			t.Fatal(err)
		}
		after, err := r.v.GetRegs()
		if err != nil {
			t.Fatal(err)
		}
		if pc != after.RIP || (pc != 0x1000 && pc != 0x1002) {
			t.Errorf("step %d: exit at %#x, RIP %#x, was %#x", i, pc, after.RIP, regs.RIP)
		}
		regs = after
	}
	if err := r.v.SetGuestDebug(machine.GuestDebug{}); err != nil {
		t.Fatal(err)
	}
	r.m.Close()
	if err := r.v.SetGuestDebug(step); !errors.Is(err, machine.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// The probe answers, and what it says holds on a machine: this host's
// measurements are logged.
func TestProbeGuestDebug(t *testing.T) {
	newRig(t, outLoop) // KVM required
	s, err := machine.ProbeGuestDebug()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this host: %+v", s)
	if !s.SingleStep {
		t.Error("single-step does not work; every KVM host tested so far supports it")
	}
	again, _ := machine.ProbeGuestDebug()
	if again != s {
		t.Errorf("a second probe says %+v", again)
	}
}
