package machine_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// Real-mode guest programs, loaded at 0x1000.
var (
	// outLoop: out %al, $0x10; jmp back to the out. Every iteration is one
	// exit, which the counter device counts.
	outLoop = []byte{0xe6, 0x10, 0xeb, 0xfc}
	// haltThenLoop: sti; hlt; then outLoop.
	haltThenLoop = []byte{0xfb, 0xf4, 0xe6, 0x10, 0xeb, 0xfc}
)

// guard bounds every wait, so that a broken protocol fails the test
// instead of hanging it; nothing is timed against it.
const guard = 2 * time.Minute

// rig is a one-vCPU machine in real mode whose port 0x10 counts exits.
type rig struct {
	m     *machine.Machine
	v     *machine.VCPU
	count atomic.Uint64
	tick  chan struct{} // signalled after every count
	// onOut, if set, runs in the port 0x10 handler on the vCPU's thread
	// with the new count; an error ends the vCPU.
	onOut func(v *machine.VCPU, n uint64) error
	ended chan error // what ended the vCPU, once
	ctx   context.Context
	stop  context.CancelFunc
}

func newRig(t *testing.T, code []byte) *rig {
	t.Helper()
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Memory().Write(0x1000, code); err != nil {
		t.Fatal(err)
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
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	r := &rig{m: m, v: v, tick: make(chan struct{}, 1), ended: make(chan error, 1)}
	m.Bus().Register(0x10, 1, machine.PIOFunc(func(v *machine.VCPU, _ uint16, _ bool, _ []byte) error {
		n := r.count.Add(1)
		select {
		case r.tick <- struct{}{}:
		default:
		}
		if r.onOut != nil {
			return r.onOut(v, n)
		}
		return nil
	}))
	r.ctx, r.stop = context.WithTimeout(context.Background(), guard)
	t.Cleanup(r.stop)
	return r
}

func (r *rig) start() {
	r.m.Start(r.ctx, func(_ *machine.VCPU, err error) { r.ended <- err })
}

// waitCount waits until the guest made at least n exits on port 0x10.
func (r *rig) waitCount(t *testing.T, n uint64) {
	t.Helper()
	for r.count.Load() < n {
		select {
		case <-r.tick:
		case <-r.ctx.Done():
			t.Fatalf("the guest made %d exits, want %d", r.count.Load(), n)
		}
	}
}

// waitEnded waits for the vCPU's thread to return and says with what.
func (r *rig) waitEnded(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.ended:
		return err
	case <-time.After(guard):
		t.Fatal("the vCPU did not end")
		return nil
	}
}

func wantState(t *testing.T, v *machine.VCPU, want machine.VCPUState) {
	t.Helper()
	if got := v.State(); got != want {
		t.Fatalf("vCPU state %s, want %s", got, want)
	}
}

// outsideCalls are the methods any goroutine may use on a vCPU that is not
// running, each as one call.
func outsideCalls(v *machine.VCPU) map[string]func() error {
	return map[string]func() error{
		"GetRegs":  func() error { _, err := v.GetRegs(); return err },
		"SetRegs":  func() error { return v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}) },
		"GetSregs": func() error { _, err := v.GetSregs(); return err },
		"SetSregs": func() error {
			s, err := v.GetSregs()
			if err != nil {
				return err
			}
			return v.SetSregs(s)
		},
		"TSC":    func() error { _, err := v.TSC(); return err },
		"SetTSC": func() error { return v.SetTSC(1 << 40) },
		"TSCKHz": func() error { _, err := v.TSCKHz(); return err },
	}
}

// threadCalls are the methods for the vCPU's own thread only.
func threadCalls(v *machine.VCPU) map[string]func() error {
	return map[string]func() error{
		"Regs":             func() error { _, err := v.Regs(); return err },
		"SetRegsDirty":     v.SetRegsDirty,
		"Paging":           func() error { _, err := v.Paging(); return err },
		"Block":            v.Block,
		"SetInterruptible": v.SetInterruptible,
	}
}

func wantStateError(t *testing.T, what string, err error, sentinel error, state machine.VCPUState) {
	t.Helper()
	var se *machine.StateError
	if !errors.Is(err, sentinel) || !errors.As(err, &se) || se.VCPU != 0 || se.State != state {
		t.Errorf("%s: %v, want a StateError for vCPU 0 (%s) wrapping %q", what, err, state, sentinel)
	}
}

// A pause waits until the vCPU is parked; parked, its registers can be
// read and written; running, every such call is refused with a typed
// error, and the thread-only calls are refused to every other goroutine;
// an unpause lets it run on.
func TestPauseParksUnpauseResumes(t *testing.T) {
	r := newRig(t, outLoop)
	r.start()
	r.waitCount(t, 1)

	wantState(t, r.v, machine.VCPURunning)
	for name, call := range outsideCalls(r.v) {
		wantStateError(t, name+" while running", call(), machine.ErrNotParked, machine.VCPURunning)
	}
	if err := r.v.SetCPUID(&kvm.CPUID{}); !errors.Is(err, machine.ErrNotParked) {
		t.Errorf("SetCPUID while running: %v", err)
	}
	for name, call := range threadCalls(r.v) {
		wantStateError(t, name+" from another thread", call(), machine.ErrNotOwnThread, machine.VCPURunning)
	}

	if err := r.m.Pause(r.ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, r.v, machine.VCPUParked)
	if !r.v.Parked() {
		t.Error("Parked() is false for a parked vCPU")
	}
	regs, err := r.v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	// Never in the middle of the out: either before it or past it (the
	// exit was completed before parking).
	if regs.RIP != 0x1000 && regs.RIP != 0x1002 {
		t.Errorf("parked at rip %#x, want 0x1000 or 0x1002", regs.RIP)
	}
	for name, call := range outsideCalls(r.v) {
		if name == "SetRegs" {
			continue // it would move the guest; checked below
		}
		if err := call(); err != nil {
			t.Errorf("%s while parked: %v", name, err)
		}
	}
	for name, call := range threadCalls(r.v) {
		wantStateError(t, name+" while parked", call(), machine.ErrNotOwnThread, machine.VCPUParked)
	}
	regs.RAX = 0x5a
	if err := r.v.SetRegs(regs); err != nil {
		t.Fatal(err)
	}
	n := r.count.Load()

	r.m.Unpause()
	// Unpause hands the vCPU back to its thread before it returns.
	if _, err := r.v.GetRegs(); !errors.Is(err, machine.ErrNotParked) {
		t.Errorf("GetRegs right after Unpause: %v", err)
	}
	r.waitCount(t, n+1)
	r.stop()
	if err := r.waitEnded(t); err != nil {
		t.Fatalf("stopped vCPU ended with %v", err)
	}
}

// On its own thread, an exit handler may use the thread-only methods and
// the ioctl methods alike, and sees the registers of the exit.
func TestOwnThreadAccess(t *testing.T) {
	r := newRig(t, outLoop)
	errs := make(chan error, 1)
	r.onOut = func(v *machine.VCPU, n uint64) error {
		if n > 1 {
			return nil
		}
		regs, err := v.Regs()
		if err == nil && ((regs.RIP != 0x1000 && regs.RIP != 0x1002) || regs.RAX&0xff != 0x5a) {
			err = fmt.Errorf("sync registers rip %#x rax %#x are not the exit's", regs.RIP, regs.RAX)
		}
		if err == nil {
			err = v.SetRegsDirty()
		}
		if err == nil {
			var p machine.Paging
			if p, err = v.Paging(); err == nil && p.CR0&(1<<31) != 0 {
				err = errors.New("paging on in real mode")
			}
		}
		if err == nil {
			_, err = v.GetRegs()
		}
		if err == nil {
			_, err = v.TSC()
		}
		errs <- err
		return nil
	}
	if err := r.v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2, RAX: 0x5a}); err != nil {
		t.Fatal(err)
	}
	r.start()
	select {
	case err := <-errs:
		if err != nil {
			t.Fatalf("on the vCPU's thread: %v", err)
		}
	case <-r.ctx.Done():
		t.Fatal("no exit")
	}
}

// RequestPause from an exit handler parks the vCPU before it enters the
// guest again, with the exit completed; Pause there would wait for itself
// and is refused.
func TestPauseFromExitHandler(t *testing.T) {
	r := newRig(t, outLoop)
	selfWait := make(chan error, 1)
	r.onOut = func(v *machine.VCPU, n uint64) error {
		if n == 3 {
			v.Machine().RequestPause()
			selfWait <- v.Machine().Pause(context.Background())
		}
		return nil
	}
	r.start()
	if err := <-selfWait; !errors.Is(err, machine.ErrWaitOnOwnThread) {
		t.Errorf("Pause on the vCPU's own thread: %v", err)
	}
	if err := r.m.WaitPaused(r.ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, r.v, machine.VCPUParked)
	if n := r.count.Load(); n != 3 {
		t.Errorf("the guest made %d exits, want exactly 3", n)
	}
	regs, err := r.v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if regs.RIP != 0x1002 {
		t.Errorf("parked at rip %#x, want 0x1002 (past the completed out)", regs.RIP)
	}
	r.m.Unpause()
	r.waitCount(t, 4)
}

// A pause requested before Start makes the vCPU start parked: its
// registers are usable at once, and it runs only when unpaused.
func TestStartParked(t *testing.T) {
	r := newRig(t, outLoop)
	r.m.RequestPause()
	r.start()
	wantState(t, r.v, machine.VCPUParked)
	if err := r.v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	if err := r.m.WaitPaused(r.ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.count.Load(); n != 0 {
		t.Fatalf("a vCPU started parked made %d exits", n)
	}
	r.m.Unpause()
	r.waitCount(t, 1)
}

// A stop while parked ends the vCPU without running it again; an ended
// vCPU's registers stay readable until the machine is closed.
func TestStopWhileParked(t *testing.T) {
	r := newRig(t, outLoop)
	r.start()
	r.waitCount(t, 1)
	if err := r.m.Pause(r.ctx); err != nil {
		t.Fatal(err)
	}
	n := r.count.Load()
	r.stop()
	if err := r.waitEnded(t); err != nil {
		t.Fatalf("ended with %v", err)
	}
	wantState(t, r.v, machine.VCPUEnded)
	if got := r.count.Load(); got != n {
		t.Errorf("a parked vCPU ran while stopping: %d -> %d exits", n, got)
	}
	if _, err := r.v.GetRegs(); err != nil {
		t.Errorf("GetRegs on an ended vCPU: %v", err)
	}
	if err := r.m.Pause(context.Background()); err != nil {
		t.Errorf("Pause of an ended vCPU: %v", err)
	}
	r.m.Unpause() // no effect on an ended vCPU
	wantState(t, r.v, machine.VCPUEnded)
	if err := r.m.Close(); err != nil {
		t.Fatal(err)
	}
	wantState(t, r.v, machine.VCPUClosed)
	_, err := r.v.GetRegs()
	wantStateError(t, "GetRegs after Close", err, machine.ErrClosed, machine.VCPUClosed)
}

// A vCPU blocked in Block (here, a halt with interrupts enabled) is taken
// out of it by a pause, runs on after the unpause, and ends on a stop.
func TestBlockPauseAndStop(t *testing.T) {
	for _, stopWhileBlocked := range []bool{false, true} {
		r := newRig(t, haltThenLoop)
		halted := make(chan struct{}, 1)
		blockErr := make(chan error, 1)
		r.v.Halt = func(v *machine.VCPU) error {
			halted <- struct{}{}
			err := v.Block()
			blockErr <- err
			return err
		}
		r.start()
		<-halted
		if stopWhileBlocked {
			r.stop()
			if err := r.waitEnded(t); err != nil {
				t.Fatalf("ended with %v", err)
			}
			if err := <-blockErr; err != nil {
				t.Errorf("Block: %v", err)
			}
			wantState(t, r.v, machine.VCPUEnded)
			if n := r.count.Load(); n != 0 {
				t.Errorf("the guest ran past its hlt: %d exits", n)
			}
			continue
		}
		if err := r.m.Pause(r.ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-blockErr; err != nil {
			t.Errorf("Block: %v", err)
		}
		regs, err := r.v.GetRegs()
		if err != nil || regs.RIP != 0x1002 {
			t.Errorf("parked after hlt at rip %#x (%v), want 0x1002", regs.RIP, err)
		}
		r.m.Unpause()
		r.waitCount(t, 1)
	}
}

// Many goroutines pausing, unpausing and reading registers at once leave
// the vCPU consistent: every call either succeeds or is refused with the
// documented error, and a final pause parks it and an unpause runs it.
func TestConcurrentPauseUnpause(t *testing.T) {
	r := newRig(t, outLoop)
	r.start()
	r.waitCount(t, 1)
	var wg sync.WaitGroup
	var pauses, withdrawn atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				switch rng.IntN(3) {
				case 0:
					err := r.m.Pause(r.ctx)
					switch {
					case err == nil:
						pauses.Add(1)
					case errors.Is(err, machine.ErrUnpaused):
						withdrawn.Add(1)
					default:
						t.Errorf("Pause: %v", err)
						return
					}
				case 1:
					r.m.Unpause()
				case 2:
					if _, err := r.v.GetRegs(); err != nil && !errors.Is(err, machine.ErrNotParked) {
						t.Errorf("GetRegs: %v", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d pauses parked the vCPU, %d were withdrawn", pauses.Load(), withdrawn.Load())
	if err := r.m.Pause(r.ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, r.v, machine.VCPUParked)
	if _, err := r.v.GetRegs(); err != nil {
		t.Fatal(err)
	}
	n := r.count.Load()
	r.m.Unpause()
	r.waitCount(t, n+1)
}

// A vCPU that ended (here, a device error crashed it) reports so: Ended,
// parked, a crash report, registers readable; a wait for it to pause
// returns at once.
func TestEndedVCPU(t *testing.T) {
	r := newRig(t, outLoop)
	r.onOut = func(*machine.VCPU, uint64) error { return errors.New("device on fire") }
	r.start()
	err := r.waitEnded(t)
	var ce *machine.CrashError
	if !errors.As(err, &ce) || ce.VCPU != 0 || !strings.Contains(ce.Reason, "device on fire") || ce.Regs == nil {
		t.Fatalf("ended with %v, want a crash report", err)
	}
	wantState(t, r.v, machine.VCPUEnded)
	if !r.v.Parked() {
		t.Error("an ended vCPU is not reported parked")
	}
	if err := r.m.WaitPaused(r.ctx); err != nil {
		t.Errorf("WaitPaused: %v", err)
	}
	if _, err := r.v.GetRegs(); err != nil {
		t.Errorf("GetRegs: %v", err)
	}
}

// A wait for a pause nobody requested fails instead of waiting forever.
func TestWaitPausedWithoutPause(t *testing.T) {
	r := newRig(t, outLoop)
	r.start()
	r.waitCount(t, 1)
	err := r.m.WaitPaused(r.ctx)
	wantStateError(t, "WaitPaused", err, machine.ErrUnpaused, machine.VCPURunning)
}

// The TSC methods on a vCPU that is not running: the frequency is known,
// the TSC counts, and a write is accepted (applied, except on hosts that
// ignore guest TSC writes, as PVM does).
func TestTSC(t *testing.T) {
	r := newRig(t, outLoop)
	khz, err := r.v.TSCKHz()
	if err != nil || khz == 0 {
		t.Fatalf("TSCKHz = %d, %v", khz, err)
	}
	t0, err := r.v.TSC()
	if err != nil {
		t.Fatal(err)
	}
	ahead := t0 + uint64(khz)*1000*3600 // an hour ahead
	if err := r.v.SetTSC(ahead); err != nil {
		t.Fatal(err)
	}
	t1, err := r.v.TSC()
	if err != nil || t1 < t0 {
		t.Fatalf("TSC %#x, then %#x (%v)", t0, t1, err)
	}
	if t1 < ahead {
		t.Logf("this host ignores writes to the guest TSC")
	}
}

// Registers written back through the sync area during an IN exit reach
// the guest, but whether the IN's data or the written-back %rax ends up in
// %eax depends on the host: on PVM, where this guest runs emulated, the
// written-back %rax wins; KVM's fast port-I/O path (VMX, SVM) loads the
// registers before it completes the IN, by its source. So a handler that
// writes registers back writes the IN's result into %rax as well, as the
// hypercall code does.
func TestINCompletionWithDirtyRegs(t *testing.T) {
	code := []byte{
		0x66, 0xe5, 0xe2, // in $0xe2, %eax
		0x66, 0xe7, 0x11, // out %eax, $0x11
		0x66, 0x89, 0xd8, // mov %ebx, %eax
		0x66, 0xe7, 0x11, // out %eax, $0x11
	}
	r := newRig(t, code)
	r.m.Bus().Register(0xe2, 1, machine.PIOFunc(func(v *machine.VCPU, _ uint16, write bool, data []byte) error {
		regs, err := v.Regs()
		if err != nil {
			return err
		}
		regs.RAX, regs.RBX = 0x22222222, 0x33333333
		binary.LittleEndian.PutUint32(data, 0x11111111)
		return v.SetRegsDirty()
	}))
	var seen []uint32
	r.m.Bus().Register(0x11, 1, machine.PIOFunc(func(_ *machine.VCPU, _ uint16, _ bool, data []byte) error {
		seen = append(seen, binary.LittleEndian.Uint32(data))
		if len(seen) == 2 {
			return errors.New("done")
		}
		return nil
	}))
	r.start()
	r.waitEnded(t)
	if len(seen) != 2 || (seen[0] != 0x11111111 && seen[0] != 0x22222222) || seen[1] != 0x33333333 {
		t.Fatalf("guest saw eax then ebx %#x; want 0x11111111 or 0x22222222, then the written-back 0x33333333", seen)
	}
	winner := "the IN's data"
	if seen[0] == 0x22222222 {
		winner = "the written-back %rax"
	}
	t.Logf("on this host %s ends up in %%eax", winner)
}

// OnClose hooks run once, after the vCPU threads returned and while guest
// memory is still mapped.
func TestOnClose(t *testing.T) {
	r := newRig(t, outLoop)
	r.start()
	r.waitCount(t, 1)
	var runs int
	r.m.OnClose(func() {
		runs++
		wantState(t, r.v, machine.VCPUEnded)
		b := make([]byte, len(outLoop))
		if err := r.m.Memory().Read(0x1000, b); err != nil || !bytes.Equal(b, outLoop) {
			t.Errorf("guest memory in the hook: % x, %v", b, err)
		}
	})
	if err := r.m.Close(); err != nil {
		t.Fatal(err)
	}
	r.m.Close()
	if runs != 1 {
		t.Errorf("hook ran %d times, want once", runs)
	}
	wantState(t, r.v, machine.VCPUClosed)
}

// Memory regions are added before Start only.
func TestAddRegionBeforeStart(t *testing.T) {
	r := newRig(t, outLoop)
	if _, err := r.m.AddRegion("early", 0x10000000, machine.PageSize); err != nil {
		t.Fatalf("before Start: %v", err)
	}
	r.m.RequestPause()
	r.start()
	if _, err := r.m.AddRegion("late", 0x20000000, machine.PageSize); err == nil {
		t.Error("a region was added to a started machine")
	}
}
