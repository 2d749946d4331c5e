package machine_test

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

// BenchmarkCallbackVector measures a vector the VMM injects itself on a
// vCPU with an in-kernel LAPIC (KVM_SET_VCPU_EVENTS, the global callback
// vector's path) into a guest waiting in the kernel's HLT: raise it, kick
// the vCPU, the guest's handler runs and reports on a port. The baseline,
// measured in the same run, is a kick alone (the vCPU leaves the kernel's
// HLT and goes back). It reports both per op, their ratio and the exits
// per op of each.
func BenchmarkCallbackVector(b *testing.B) {
	g := newChipGuest(b, machine.IRQChipSplit, idleHalt)
	var pending atomic.Bool
	g.v.PendingInterrupt = func(*machine.VCPU) (uint8, bool) {
		if pending.Load() {
			return 0x30, true
		}
		return 0, false
	}
	g.m.Bus().Register(0x11, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		pending.Store(false)
		g.handler <- struct{}{}
		return nil
	}))
	g.start()
	exits := func() uint64 { return g.v.TotalExits() + g.v.Exits(kvmext.ExitIntr) }
	time.Sleep(10 * time.Millisecond) // into the HLT
	n := b.N
	e0, t0 := exits(), time.Now()
	for range n {
		before := g.v.Exits(kvmext.ExitIntr)
		g.v.Interrupt()
		for g.v.Exits(kvmext.ExitIntr) == before {
			runtime.Gosched()
		}
	}
	baseNS, baseExits := float64(time.Since(t0).Nanoseconds())/float64(n), float64(exits()-e0)/float64(n)
	time.Sleep(time.Millisecond)
	e0 = exits()
	b.ResetTimer()
	for range n {
		pending.Store(true)
		g.v.Interrupt()
		select {
		case <-g.handler:
		case <-g.ctx.Done():
			b.Fatal("the handler did not run")
		}
	}
	b.StopTimer()
	injNS, injExits := float64(b.Elapsed().Nanoseconds())/float64(n), float64(exits()-e0)/float64(n)
	b.ReportMetric(baseNS, "kick-ns/op")
	b.ReportMetric(injNS, "inject-ns/op")
	b.ReportMetric(injNS/baseNS, "inject/kick")
	b.ReportMetric(baseExits, "exits/kick")
	b.ReportMetric(injExits, "exits/inject")
}
