package toolstack

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

func TestPauseUnpause(t *testing.T) {
	d, con := create(t, nil, "test=hypercall-loop n=200000")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "loop: start")
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.Machine().VCPUs()[0]
	r1, err := v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	n1 := d.Xen.HypercallCount(xenabi.HypervisorXenVersion)
	time.Sleep(20 * time.Millisecond)
	r2, _ := v.GetRegs()
	if r1.RIP != r2.RIP || d.Xen.HypercallCount(xenabi.HypervisorXenVersion) != n1 {
		t.Fatalf("paused domain ran: rip %#x -> %#x", r1.RIP, r2.RIP)
	}
	// Paused state is consistent: RIP is never left on a trapping
	// instruction whose exit was already handled.
	if !d.Kernel.Contains(r1.RIP) && (r1.RIP < d.Layout.HypercallPage || r1.RIP >= d.Layout.HypercallPage+4096) {
		t.Errorf("paused RIP %#x outside the kernel", r1.RIP)
	}
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v, %v", exit, err)
	}
	requireSuccess(t, result{console: con.String()})
}

func TestDestroyRunningDomain(t *testing.T) {
	d, con := create(t, nil, "test=hypercall-loop n=100000000")
	d.Unpause()
	waitFor(t, con, "loop: start")
	done := make(chan error)
	go func() { done <- d.Destroy() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("destroying a running domain hung")
	}
}

// A vCPU blocked with events enabled (SCHEDOP_block, a PV kernel's idle)
// blocks without spinning; a pause takes it out of the block, and it runs
// on after the unpause.
func TestHaltBlocksAndPauses(t *testing.T) {
	d, con := create(t, nil, "test=hlt sti=1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d.Unpause()
	v := d.Machine().VCPUs()[0]
	waitFor(t, con, "hlt: blocking with events enabled")
	time.Sleep(20 * time.Millisecond)
	exits := v.TotalExits()
	time.Sleep(50 * time.Millisecond)
	if v.TotalExits() != exits {
		t.Fatalf("a blocked vCPU kept exiting: %d -> %d", exits, v.TotalExits())
	}
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v", exit, err)
	}
	if !strings.Contains(con.String(), "hlt: woke up") {
		t.Errorf("console:\n%s", con)
	}
}
