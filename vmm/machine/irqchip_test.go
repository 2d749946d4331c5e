package machine_test

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

func newChipMachine(t *testing.T, c machine.IRQChip) *machine.Machine {
	t.Helper()
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1, IRQChip: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestIRQChipModes(t *testing.T) {
	for _, tc := range []struct {
		chip        machine.IRQChip
		lapic, ioap bool
	}{
		{machine.IRQChipNone, false, false},
		{machine.IRQChipFull, true, true},
		{machine.IRQChipSplit, true, false},
	} {
		t.Run(tc.chip.String(), func(t *testing.T) {
			m := newChipMachine(t, tc.chip)
			if m.HasLAPIC() != tc.lapic || m.IRQChip() != tc.chip {
				t.Errorf("HasLAPIC %v IRQChip %v", m.HasLAPIC(), m.IRQChip())
			}
			check := func(what string, err error, ok bool) {
				t.Helper()
				if ok && err != nil {
					t.Errorf("%s: %v", what, err)
				}
				if !ok && !errors.Is(err, machine.ErrNoIRQChip) {
					t.Errorf("%s: %v, want ErrNoIRQChip", what, err)
				}
			}
			_, err := m.SetIRQLine(3, false)
			check("SetIRQLine", err, tc.ioap)
			_, err = m.GetIRQChip()
			check("GetIRQChip", err, tc.ioap)
			_, err = m.GetPIT()
			check("GetPIT", err, tc.ioap)
			_, err = m.SignalMSI(0, 0x30)
			check("SignalMSI", err, tc.lapic)
			_, err = m.VCPUs()[0].GetLAPIC()
			check("GetLAPIC", err, tc.lapic)
			_, err = m.NewLevelIRQ(5, nil)
			check("NewLevelIRQ", err, tc.ioap)
			if tc.ioap {
				if _, err := m.SetIRQLine(machine.NrGSIs, true); err == nil {
					t.Error("SetIRQLine past the IO-APIC's pins was taken")
				}
			}
		})
	}
}

func TestIRQChipStateRoundTrip(t *testing.T) {
	m := newChipMachine(t, machine.IRQChipFull)
	s, err := m.GetIRQChip()
	if err != nil {
		t.Fatal(err)
	}
	if s.IOAPIC.BaseAddress != 0xfec00000 {
		t.Errorf("IO-APIC at %#x", s.IOAPIC.BaseAddress)
	}
	s.IOAPIC.Redirtbl[5] = 0x0100_0000_0000_8031 // level, vector 0x31, dest 1
	s.IOAPIC.ID = 1
	s.PIC[0].IMR, s.PIC[1].IMR = 0xab, 0xcd
	if err := m.SetIRQChip(s); err != nil {
		t.Fatal(err)
	}
	got, err := m.GetIRQChip()
	if err != nil {
		t.Fatal(err)
	}
	if got.IOAPIC.Redirtbl[5] != s.IOAPIC.Redirtbl[5] || got.IOAPIC.ID != 1 || got.PIC[0].IMR != 0xab || got.PIC[1].IMR != 0xcd {
		t.Errorf("irqchip read back %+v, wrote %+v", got, s)
	}

	pit, err := m.GetPIT()
	if err != nil {
		t.Fatal(err)
	}
	pit.Channels[0].Count, pit.Channels[0].Mode = 0x1234, 2
	if err := m.SetPIT(pit); err != nil {
		t.Fatal(err)
	}
	if p, err := m.GetPIT(); err != nil || p.Channels[0].Count != 0x1234 || p.Channels[0].Mode != 2 {
		t.Errorf("PIT channel 0 read back %+v (%v)", p.Channels[0], err)
	}

	v := m.VCPUs()[0]
	l, err := v.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	if ver := binary.LittleEndian.Uint32(l.Regs[0x30:]); ver&0xff != 0x14 {
		t.Errorf("LAPIC version %#x", ver)
	}
	binary.LittleEndian.PutUint32(l.Regs[0x80:], 0x20) // TPR
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	if l, err := v.GetLAPIC(); err != nil || binary.LittleEndian.Uint32(l.Regs[0x80:]) != 0x20 {
		t.Errorf("TPR read back %#x (%v)", binary.LittleEndian.Uint32(l.Regs[0x80:]), err)
	}

	if err := v.SetMPState(kvmext.MPStateHalted); err != nil {
		t.Fatal(err)
	}
	if st, err := v.MPState(); err != nil || st != kvmext.MPStateHalted {
		t.Errorf("mp_state %d (%v), want halted", st, err)
	}
	e, err := v.Events()
	if err != nil {
		t.Fatal(err)
	}
	e.I.Inject, e.I.Nr = 1, 0x40
	e.Flags = 0
	if err := v.SetEvents(e); err != nil {
		t.Fatal(err)
	}
	if e, err := v.Events(); err != nil || e.I.Inject != 1 || e.I.Nr != 0x40 {
		t.Errorf("events read back %+v (%v)", e.I, err)
	}
}

// chipGuest is a real-mode guest on a machine with irqchip c: its IVT
// sends vectors 0x30 to 0x3f to a handler at 0x2000 that counts on port
// 0x11 and returns; its code at 0x1000 is code.
type chipGuest struct {
	*rig
	handled atomic.Uint64
	handler chan struct{}
}

func newChipGuest(t testing.TB, c machine.IRQChip, code []byte) *chipGuest {
	t.Helper()
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1, IRQChip: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	mem := m.Memory()
	if err := mem.Write(0x1000, code); err != nil {
		t.Fatal(err)
	}
	if err := mem.Write(0x2000, []byte{0xe6, 0x11, 0xcf}); err != nil { // out %al, $0x11; iret
		t.Fatal(err)
	}
	for vec := 0x30; vec < 0x40; vec++ {
		if err := mem.Write(uint64(4*vec), []byte{0x00, 0x20, 0, 0}); err != nil { // 0000:2000
			t.Fatal(err)
		}
	}
	v := m.VCPUs()[0]
	s, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2, RSP: 0x8000}); err != nil {
		t.Fatal(err)
	}
	g := &chipGuest{rig: &rig{m: m, v: v, tick: make(chan struct{}, 1), ended: make(chan error, 1)}, handler: make(chan struct{}, 16)}
	m.Bus().Register(0x10, 1, machine.PIOFunc(func(v *machine.VCPU, _ uint16, _ bool, _ []byte) error {
		n := g.count.Add(1)
		select {
		case g.tick <- struct{}{}:
		default:
		}
		if g.onOut != nil {
			return g.onOut(v, n)
		}
		return nil
	}))
	m.Bus().Register(0x11, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		g.handled.Add(1)
		g.handler <- struct{}{}
		return nil
	}))
	g.ctx, g.stop = context.WithTimeout(context.Background(), guard)
	t.Cleanup(g.stop)
	return g
}

// enableLAPIC software-enables vCPU 0's LAPIC (SVR bit 8), as a guest
// does before it takes LAPIC interrupts.
func enableLAPIC(t *testing.T, v *machine.VCPU) {
	t.Helper()
	l, err := v.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(l.Regs[0xf0:], 0x1ff)
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
}

// waitHandled waits until the guest's handler ran n times in all.
func (g *chipGuest) waitHandled(t testing.TB, n uint64) {
	t.Helper()
	for g.handled.Load() < n {
		select {
		case <-g.handler:
		case <-g.ctx.Done():
			t.Fatalf("the guest's handler ran %d times, want %d", g.handled.Load(), n)
		}
	}
}

// idleHalt: sti; hlt; jmp to the hlt: a guest that waits for interrupts
// in the kernel's HLT.
var idleHalt = []byte{0xfb, 0xf4, 0xeb, 0xfd}

func TestSignalMSIReachesGuest(t *testing.T) {
	g := newChipGuest(t, machine.IRQChipSplit, idleHalt)
	// Negative control: a software-disabled LAPIC (its reset state)
	// takes no MSI.
	if ok, err := g.m.SignalMSI(0, 0x30); err != nil || ok {
		t.Fatalf("MSI to a disabled LAPIC: delivered %v, %v", ok, err)
	}
	enableLAPIC(t, g.v)
	if ok, err := g.m.SignalMSI(1, 0x30); err != nil || ok {
		t.Errorf("MSI to APIC ID 1 (no such vCPU): delivered %v, %v", ok, err)
	}
	g.start()
	if ok, err := g.m.SignalMSI(0, 0x31); err != nil || !ok {
		t.Fatalf("MSI: delivered %v, %v", ok, err)
	}
	g.waitHandled(t, 1)
	// A second one, with the first never EOIed, is accepted into the
	// IRR; whether it is taken before an EOI depends on what the host's
	// LAPIC keeps in service (KVM_GET_LAPIC on PVM shows the ISR clear),
	// so the test logs what it sees.
	if ok, err := g.m.SignalMSI(0, 0x30); err != nil || !ok {
		t.Fatalf("second MSI: delivered %v, %v", ok, err)
	}
	if err := g.m.Pause(g.ctx); err != nil {
		t.Fatal(err)
	}
	l, err := g.v.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after two MSIs and no EOI: ISR[32..63] %#x IRR[32..63] %#x, handler ran %d times",
		binary.LittleEndian.Uint32(l.Regs[0x110:]), binary.LittleEndian.Uint32(l.Regs[0x210:]), g.handled.Load())
}

func TestSetIRQLineReachesGuest(t *testing.T) {
	for _, masked := range []bool{false, true} {
		name := "unmasked"
		if masked {
			name = "masked"
		}
		t.Run(name, func(t *testing.T) {
			g := newChipGuest(t, machine.IRQChipFull, idleHalt)
			enableLAPIC(t, g.v)
			s, err := g.m.GetIRQChip()
			if err != nil {
				t.Fatal(err)
			}
			// GSI 17 reaches the IO-APIC only (GSIs below 16 reach
			// the PIC pair too, whose latch KVM reports as a delivery).
			s.IOAPIC.Redirtbl[17] = 0x32 // edge, fixed, physical, dest 0
			if masked {
				s.IOAPIC.Redirtbl[17] |= 1 << 16
			}
			if err := g.m.SetIRQChip(s); err != nil {
				t.Fatal(err)
			}
			g.start()
			ok, err := g.m.SetIRQLine(17, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.m.SetIRQLine(17, false); err != nil {
				t.Fatal(err)
			}
			if masked {
				if ok {
					t.Error("a masked pin delivered")
				}
				// Give the guest the chance to take what it must not.
				time.Sleep(20 * time.Millisecond)
				if n := g.handled.Load(); n != 0 {
					t.Errorf("the guest took %d interrupts from a masked pin", n)
				}
				return
			}
			if !ok {
				t.Error("an unmasked pin reported no delivery")
			}
			g.waitHandled(t, 1)
		})
	}
}

func TestLevelIRQResamples(t *testing.T) {
	g := newChipGuest(t, machine.IRQChipFull, idleHalt)
	// Vector 0x33's handler EOIs through the x2APIC EOI MSR (real mode
	// cannot reach the xAPIC page): xor %eax,%eax; xor %edx,%edx;
	// mov $0x80b,%ecx; wrmsr; out %al,$0x11; iret.
	eoiHandler := []byte{0x66, 0x31, 0xc0, 0x66, 0x31, 0xd2, 0x66, 0xb9, 0x0b, 0x08, 0, 0, 0x0f, 0x30, 0xe6, 0x11, 0xcf}
	if err := g.m.Memory().Write(0x2100, eoiHandler); err != nil {
		t.Fatal(err)
	}
	if err := g.m.Memory().Write(4*0x33, []byte{0x00, 0x21, 0, 0}); err != nil {
		t.Fatal(err)
	}
	enableLAPIC(t, g.v)
	sr, err := g.v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	sr.ApicBase |= 1 << 10 // x2APIC mode
	if err := g.v.SetSregs(sr); err != nil {
		t.Fatal(err)
	}
	s, err := g.m.GetIRQChip()
	if err != nil {
		t.Fatal(err)
	}
	s.IOAPIC.Redirtbl[9] = 0x8033 // level, vector 0x33, dest 0
	if err := g.m.SetIRQChip(s); err != nil {
		t.Fatal(err)
	}
	// The source's condition holds for three interrupts: each EOI finds
	// it still set and asserts again, until it is not.
	var left atomic.Int32
	left.Store(3)
	var lp atomic.Pointer[machine.LevelIRQ]
	eois := make(chan struct{}, 8)
	l, err := g.m.NewLevelIRQ(9, func() {
		if left.Add(-1) > 0 {
			if err := lp.Load().Assert(); err != nil {
				t.Error(err)
			}
		}
		eois <- struct{}{}
	})
	lp.Store(l)
	if err != nil {
		t.Fatal(err)
	}
	g.start()
	if err := l.Assert(); err != nil {
		t.Fatal(err)
	}
	g.waitHandled(t, 3)
	for range 3 {
		select {
		case <-eois:
		case <-g.ctx.Done():
			t.Fatal("no resample after an EOI")
		}
	}
	// Negative control: with the condition gone the line stays low.
	time.Sleep(20 * time.Millisecond)
	if n := g.handled.Load(); n != 3 {
		t.Errorf("the guest took %d interrupts, want 3", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPendingInterruptWithLAPIC(t *testing.T) {
	// cli; mov $50, %cx; 1: out %al, $0x10; loop 1b; sti; hlt; jmp hlt
	code := []byte{0xfa, 0xb9, 50, 0, 0xe6, 0x10, 0xe2, 0xfc, 0xfb, 0xf4, 0xeb, 0xfd}
	g := newChipGuest(t, machine.IRQChipSplit, code)
	var pending atomic.Bool
	g.v.PendingInterrupt = func(*machine.VCPU) (uint8, bool) {
		if pending.Load() {
			return 0x34, true
		}
		return 0, false
	}
	g.onOut = func(v *machine.VCPU, n uint64) error {
		if n == 1 {
			pending.Store(true) // raised while the guest has IF = 0
		}
		return nil
	}
	g.m.Bus().Register(0x11, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		pending.Store(false) // the handler consumed it
		g.handled.Add(1)
		g.handler <- struct{}{}
		return nil
	}))
	g.start()
	g.waitHandled(t, 1)
	if g.count.Load() != 50 {
		t.Errorf("the interrupt was taken after %d of the guest's 50 exits with IF = 0", g.count.Load())
	}
	if g.v.InterruptRetries() == 0 {
		t.Error("no retry was set while the guest had interrupts disabled")
	}
	if g.v.Injected() != 1 {
		t.Errorf("%d injections, want 1", g.v.Injected())
	}
	time.Sleep(10 * time.Millisecond)
	if n := g.handled.Load(); n != 1 {
		t.Errorf("the handler ran %d times", n)
	}
}

// With an in-kernel LAPIC KVM handles HLT itself; a vCPU that halts with
// interrupts disabled is found by the periodic probe and ends with the
// report a HLT exit gives. Negative control: one that halts with
// interrupts enabled waits.
func TestHaltWithInterruptsDisabledLAPIC(t *testing.T) {
	for _, tc := range []struct {
		name  string
		code  []byte
		crash bool
	}{
		{"cli; hlt", []byte{0xfa, 0xf4, 0xeb, 0xfd}, true},
		{"sti; hlt", idleHalt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newChipGuest(t, machine.IRQChipSplit, tc.code)
			g.start()
			if !tc.crash {
				select {
				case err := <-g.ended:
					t.Fatalf("an idle vCPU ended: %v", err)
				case <-time.After(3 * 200 * time.Millisecond): // three probes
				}
				return
			}
			var ce *machine.CrashError
			if err := g.waitEnded(t); !errors.As(err, &ce) || !strings.Contains(ce.Reason, "HLT with interrupts disabled") {
				t.Fatalf("ended with %v", err)
			}
		})
	}
}
