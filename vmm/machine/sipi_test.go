package machine_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

// With in-kernel LAPICs a secondary vCPU starts in wait-for-SIPI
// (KVM_MP_STATE_UNINITIALIZED) and runs only when the BSP sends it INIT
// and SIPI through its LAPIC: the AP enters real mode at the SIPI vector's
// page. It stays there across the halt probe's kicks (it is not halted
// with interrupts off). Negative control: a BSP that sends nothing leaves
// the AP waiting.
func TestAPWaitsForSIPI(t *testing.T) {
	// BSP, real mode at 0x1000: x2APIC ICR (MSR 0x830) to APIC ID 1:
	// INIT (0x4500), then STARTUP with vector 3 (0x4603: the AP starts at
	// 0300:0000); then sti; hlt; jmp.
	sipi := []byte{
		0x66, 0xb9, 0x30, 0x08, 0, 0, // mov $0x830, %ecx
		0x66, 0xba, 0x01, 0, 0, 0, // mov $1, %edx
		0x66, 0xb8, 0x00, 0x45, 0, 0, // mov $0x4500, %eax
		0x0f, 0x30, // wrmsr
		0x66, 0xb8, 0x03, 0x46, 0, 0, // mov $0x4603, %eax
		0x0f, 0x30, // wrmsr
		0xfb, 0xf4, 0xeb, 0xfd, // sti; hlt; jmp hlt
	}
	for _, tc := range []struct {
		name  string
		bsp   []byte
		start bool
	}{
		{"INIT and SIPI", sipi, true},
		{"no SIPI", idleHalt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvmtest.Require(t)
			m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 2, IRQChip: machine.IRQChipSplit})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			mem := m.Memory()
			if err := mem.Write(0x1000, tc.bsp); err != nil {
				t.Fatal(err)
			}
			if err := mem.Write(0x3000, []byte{0xe6, 0x12, 0xfb, 0xf4, 0xeb, 0xfd}); err != nil { // out %al, $0x12; sti; hlt; jmp
				t.Fatal(err)
			}
			bsp, ap := m.VCPUs()[0], m.VCPUs()[1]
			if st, err := ap.MPState(); err != nil || st != kvmext.MPStateUninitialized {
				t.Fatalf("AP mp_state %d (%v), want wait-for-SIPI", st, err)
			}
			if st, err := bsp.MPState(); err != nil || st != kvmext.MPStateRunnable {
				t.Fatalf("BSP mp_state %d (%v), want runnable", st, err)
			}
			for _, v := range m.VCPUs() {
				s, err := v.GetSregs()
				if err != nil {
					t.Fatal(err)
				}
				s.ApicBase |= 1 << 10 // x2APIC
				if v == bsp {
					s.CS.Base, s.CS.Selector = 0, 0
				}
				if err := v.SetSregs(s); err != nil {
					t.Fatal(err)
				}
			}
			enableLAPIC(t, bsp)
			if err := bsp.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2, RSP: 0x8000}); err != nil {
				t.Fatal(err)
			}
			var ran atomic.Int32
			done := make(chan struct{}, 1)
			m.Bus().Register(0x12, 1, machine.PIOFunc(func(v *machine.VCPU, _ uint16, _ bool, _ []byte) error {
				if v.ID == 1 {
					ran.Add(1)
					done <- struct{}{}
				}
				return nil
			}))
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			ended := make(chan error, 2)
			m.Start(ctx, func(_ *machine.VCPU, err error) { ended <- err })
			if tc.start {
				select {
				case <-done:
				case err := <-ended:
					t.Fatalf("a vCPU ended: %v", err)
				case <-ctx.Done():
					t.Fatal("the AP never ran")
				}
			}
			// Past two halt probes: nothing ends, and without the SIPI
			// the AP has not run.
			select {
			case err := <-ended:
				t.Fatalf("a vCPU ended: %v", err)
			case <-time.After(450 * time.Millisecond):
			}
			want := int32(0)
			if tc.start {
				want = 1
			}
			if n := ran.Load(); n != want {
				t.Errorf("the AP ran its code %d times, want %d", n, want)
			}
		})
	}
}
