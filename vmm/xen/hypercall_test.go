package xen

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// fakeCPU is a vCPU for handler tests: registers and paging as a trap
// would leave them, and counts of what the handlers asked of it.
type fakeCPU struct {
	id     int
	regs   kvm.Regs
	paging machine.Paging
	fail   error // returned by every thread-only method when set

	dirty, blocks     int
	wakes, interrupts int
	onBlock           func() // runs inside Block
	// woken: a Wake or Interrupt no Block has consumed yet; the next
	// Block returns at once, as machine.VCPU's does.
	woken bool
}

func (f *fakeCPU) Index() int { return f.id }

func (f *fakeCPU) Regs() (*kvm.Regs, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	return &f.regs, nil
}

func (f *fakeCPU) SetRegsDirty() error {
	if f.fail != nil {
		return f.fail
	}
	f.dirty++
	return nil
}

func (f *fakeCPU) Paging() (machine.Paging, error) {
	if f.fail != nil {
		return machine.Paging{}, f.fail
	}
	return f.paging, nil
}

func (f *fakeCPU) Block() error {
	if f.fail != nil {
		return f.fail
	}
	if f.woken {
		f.woken = false
		return nil
	}
	f.blocks++
	if f.onBlock != nil {
		f.onBlock()
	}
	return nil
}

func (f *fakeCPU) Wake()      { f.wakes++; f.woken = true }
func (f *fakeCPU) Interrupt() { f.interrupts++; f.woken = true }

// fakeVM counts pause requests; WaitPaused returns what wait says.
type fakeVM struct {
	pauses int
	wait   func() error
}

func (f *fakeVM) RequestPause() { f.pauses++ }

func (f *fakeVM) WaitPaused(context.Context) error {
	if f.wait != nil {
		return f.wait()
	}
	return nil
}

// The guest's address space in handler tests is pvEnv's: virtual
// [0, 2 MiB) mapped to the domain's RAM, nothing above.
const (
	ramSize  = 2 << 20            // the domain's RAM
	buf      = 0x10000            // a guest buffer
	unmapped = 0x200000           // no level-2 entry
	noncanon = 0x8000000000000000 // not canonical
	straddle = ramSize - 2        // the last 2 mapped bytes
)

// env is a ring-3 domain (pvEnv's) with two fake vCPUs in guest kernel
// mode.
type env struct {
	t    *testing.T
	d    *Domain
	cpus []*fakeCPU
	vm   *fakeVM
	ram  []byte
	con  bytes.Buffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, vm: &fakeVM{}}
	pe, cpus := newRing3Env(t, 2, &e.con, e.vm)
	e.d, e.cpus, e.ram = pe.d, cpus, pe.ram
	return e
}

// call makes hypercall nr on vCPU 0.
func (e *env) call(nr uint64, args ...uint64) int64 { return e.callOn(0, nr, args...) }

func (e *env) callOn(vcpu int, nr uint64, args ...uint64) int64 {
	e.t.Helper()
	var a [5]uint64
	copy(a[:], args)
	ret, err := e.d.hypercall(e.cpus[vcpu], nr, a)
	if err != nil {
		e.t.Fatalf("%s: VMM failure %v", HypercallName(nr), err)
	}
	return ret
}

// put writes b into guest memory at the (identity-mapped) address va.
func (e *env) put(va uint64, b []byte) { copy(e.ram[va:], b) }

func (e *env) u32(va uint64) uint32 { return binary.LittleEndian.Uint32(e.ram[va:]) }

func le32(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func le64(vs ...uint64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func wantRet(t *testing.T, what string, got, want int64) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %s, want %s", what, formatRet(got), formatRet(want))
	}
}

// console_io is Xen's answer to an unprivileged domain (xsm_console_io's
// XSM_PRIV): -EPERM for every command, whatever the buffer, and nothing
// reaches the console (a PV guest's console is its console ring).
func TestConsoleIO(t *testing.T) {
	const nr = xenabi.HypervisorConsoleIO
	for _, c := range []struct {
		name       string
		cmd        uint64
		count, ptr uint64
	}{
		{"write", xenabi.ConsoleioWrite, 5, buf},
		{"count is 32 bits", xenabi.ConsoleioWrite, 1<<32 | 5, buf},
		{"zero count, bad pointer", xenabi.ConsoleioWrite, 0, unmapped},
		{"unmapped", xenabi.ConsoleioWrite, 4, unmapped},
		{"non-canonical", xenabi.ConsoleioWrite, 4, noncanon},
		{"runs off the mapping", xenabi.ConsoleioWrite, 4, straddle},
		{"huge count", xenabi.ConsoleioWrite, 0x7fffffff, buf},
		{"read", xenabi.ConsoleioRead, 16, buf},
		{"read into a bad buffer", xenabi.ConsoleioRead, 16, unmapped},
		{"unknown command", 99, 1, buf},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.put(buf, []byte("hello, world"))
			wantRet(t, "console_io", e.call(nr, c.cmd, c.count, c.ptr), -xenabi.EPERM)
			if e.con.Len() != 0 {
				t.Errorf("console got %q", e.con.String())
			}
			if got := string(e.ram[buf : buf+5]); got != "hello" {
				t.Errorf("guest buffer now %q", got)
			}
		})
	}
}

func TestSchedOpShutdown(t *testing.T) {
	const nr = xenabi.HypervisorSchedOp
	reason := func(e *env, r uint32) uint64 { e.put(buf, le32(r)); return buf }
	for _, c := range []struct {
		name    string
		calls   func(e *env) int64 // returns the last call's result
		want    int64
		state   State
		reason  uint32
		rdx     uint64
		pauses  int
		latched int64
	}{
		{"poweroff", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownPoweroff))
		}, 0, Shutdown, xenabi.ShutdownPoweroff, 0, 1, -1},
		{"suspend records vCPU 0's rdx", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownSuspend), 0x100123)
		}, 0, Shutdown, xenabi.ShutdownSuspend, 0x100123, 1, -1},
		{"suspend from vCPU 1 records no rdx", func(e *env) int64 {
			return e.callOn(1, nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownSuspend), 0x100123)
		}, 0, Shutdown, xenabi.ShutdownSuspend, 0, 1, -1},
		{"the first reason wins", func(e *env) int64 {
			e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownReboot))
			return e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownPoweroff))
		}, 0, Shutdown, xenabi.ShutdownReboot, 0, 1, -1},
		{"shutdown_code latches the reason", func(e *env) int64 {
			e.call(nr, xenabi.SchedopShutdownCode, reason(e, xenabi.ShutdownCrash))
			e.call(nr, xenabi.SchedopShutdownCode, reason(e, xenabi.ShutdownReboot)) // the first latch wins
			return e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownPoweroff))
		}, 0, Shutdown, xenabi.ShutdownCrash, 0, 1, xenabi.ShutdownCrash},
		{"shutdown_code alone does not shut down", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdownCode, reason(e, xenabi.ShutdownReboot))
		}, 0, Running, 0, 0, 0, xenabi.ShutdownReboot},
		{"invalid reason", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdown, reason(e, xenabi.ShutdownMax+1))
		}, -xenabi.EINVAL, Running, 0, 0, 0, -1},
		{"invalid latched reason", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdownCode, reason(e, 77))
		}, -xenabi.EINVAL, Running, 0, 0, 0, -1},
		{"bad pointer", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdown, unmapped)
		}, -xenabi.EFAULT, Running, 0, 0, 0, -1},
		{"non-canonical pointer", func(e *env) int64 {
			return e.call(nr, xenabi.SchedopShutdownCode, noncanon)
		}, -xenabi.EFAULT, Running, 0, 0, 0, -1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			wantRet(t, "sched_op", c.calls(e), c.want)
			x := e.d.Exit()
			if x.State != c.state || x.Reason != c.reason || x.SuspendRDX != c.rdx {
				t.Errorf("exit %v (reason %d, rdx %#x), want %v (reason %d, rdx %#x)", x, x.Reason, x.SuspendRDX, c.state, c.reason, c.rdx)
			}
			if e.vm.pauses != c.pauses {
				t.Errorf("%d pause requests, want %d", e.vm.pauses, c.pauses)
			}
			if e.d.codeLatch != c.latched {
				t.Errorf("latched %d, want %d", e.d.codeLatch, c.latched)
			}
		})
	}
}

func TestSchedOpOthers(t *testing.T) {
	const nr = xenabi.HypervisorSchedOp
	t.Run("yield", func(t *testing.T) {
		e := newEnv(t)
		wantRet(t, "yield", e.call(nr, xenabi.SchedopYield), 0)
		if e.cpus[0].blocks != 0 {
			t.Error("yield blocked")
		}
	})
	for _, c := range []struct{ nr, want int64 }{
		{xenabi.SchedopRemoteShutdown, -xenabi.EPERM},
		{xenabi.SchedopPinOverride, -xenabi.EPERM},
		{xenabi.SchedopWatchdog, -xenabi.ENOSYS},
		{99, -xenabi.ENOSYS},
	} {
		wantRet(t, fmt.Sprintf("sched_op(%d)", c.nr), newEnv(t).call(nr, uint64(c.nr), buf), c.want)
	}
	// block: with an upcall pending it returns at once; otherwise it
	// sleeps. Either way it returns 0 with evtchn_upcall_mask cleared
	// (vcpu_block_enable_events), so the upcall is taken as it returns.
	for _, pending := range []bool{true, false} {
		e := newEnv(t)
		cpu := e.cpus[0]
		vi := &e.d.SharedInfo().Vcpu_info[0]
		vi.Upcall_mask = 1
		raise := func() { vi.Upcall_pending = 1 }
		if pending {
			raise()
		} else {
			cpu.onBlock = raise
		}
		wantRet(t, "block", e.call(nr, xenabi.SchedopBlock), 0)
		wantBlocks := map[bool]int{true: 0, false: 1}[pending]
		if cpu.blocks != wantBlocks || vi.Upcall_mask != 0 {
			t.Errorf("pending %v: %d blocks (want %d), upcall mask %d", pending, cpu.blocks, wantBlocks, vi.Upcall_mask)
		}
	}
}

// SCHEDOP_block and SCHEDOP_poll sleep when nothing is pending even if
// the vCPU was woken before the call (an event marked while it ran, then
// taken, masked or cleared by the guest): the stale wake must not end the
// sleep at once, or a PV idle loop spins.
func TestBlockAfterStaleWake(t *testing.T) {
	const nr = xenabi.HypervisorSchedOp
	for _, c := range []struct {
		name string
		args []uint64
	}{
		{"block", []uint64{xenabi.SchedopBlock}},
		{"poll", []uint64{xenabi.SchedopPoll, buf}},
	} {
		for _, stale := range []func(*fakeCPU){(*fakeCPU).Wake, (*fakeCPU).Interrupt} {
			e := newEnv(t)
			e.put(buf+0x100, le32(3, 5))
			e.put(buf, append(le64(buf+0x100), append(le32(2, 0), le64(0)...)...))
			cpu := e.cpus[0]
			stale(cpu)
			wantRet(t, c.name, e.call(nr, c.args...), 0)
			if cpu.blocks != 1 {
				t.Errorf("%s after a stale wake: %d blocks, want 1", c.name, cpu.blocks)
			}
		}
	}
}

func TestSchedOpPoll(t *testing.T) {
	const nr = xenabi.HypervisorSchedOp
	const ports = buf + 0x100
	for _, c := range []struct {
		name    string
		list    uint64
		n       uint32
		timeout uint64
		pending bool // port 5 pending beforehand
		want    int64
		blocks  int
	}{
		{"pending port returns at once", ports, 2, 0, true, 0, 0},
		{"nothing pending blocks", ports, 2, 0, false, 0, 1},
		{"expired deadline returns at once", ports, 2, 1, false, 0, 0},
		{"too many ports", ports, 129, 0, false, -xenabi.EINVAL, 0},
		{"bad port list", unmapped, 2, 0, false, -xenabi.EFAULT, 0},
		{"no ports, bad list", unmapped, 0, 0, false, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.put(ports, le32(3, 5))
			e.put(buf, append(le64(c.list), append(le32(c.n, 0), le64(c.timeout)...)...))
			if c.pending {
				e.d.SharedInfo().Evtchn_pending[0] |= 1 << 5
			}
			wantRet(t, "poll", e.call(nr, xenabi.SchedopPoll, buf), c.want)
			if e.cpus[0].blocks != c.blocks {
				t.Errorf("%d blocks, want %d", e.cpus[0].blocks, c.blocks)
			}
			if e.d.polling[0].Load() {
				t.Error("still marked polling")
			}
		})
	}
	wantRet(t, "poll with a bad argument", newEnv(t).call(nr, xenabi.SchedopPoll, unmapped), -xenabi.EFAULT)
}

func TestXenVersion(t *testing.T) {
	const nr = xenabi.HypervisorXenVersion
	for _, c := range []struct {
		name string
		cmd  uint64
		arg  uint64
		want int64
		out  []byte // expected at arg
	}{
		{"version", xenabi.XenverVersion, 0, VersionMajor<<16 | VersionMinor, nil},
		{"extraversion", xenabi.XenverExtraversion, buf, 0, []byte(Extraversion + "\x00")},
		{"capabilities", xenabi.XenverCapabilities, buf, 0, []byte(Capabilities + "\x00")},
		{"changeset", xenabi.XenverChangeset, buf, 0, []byte("xenresume\x00")},
		{"compile_info", xenabi.XenverCompileInfo, buf, 0, []byte("go\x00")},
		{"platform_parameters", xenabi.XenverPlatformParameters, buf, 0, le64(HypervisorVirtStart)},
		{"get_features", xenabi.XenverGetFeatures, buf, 0, le32(0, PVFeatures)},
		{"pagesize", xenabi.XenverPagesize, 0, machine.PageSize, nil},
		{"guest_handle", xenabi.XenverGuestHandle, buf, 0, append(make([]byte, 15), 1)},
		{"commandline", xenabi.XenverCommandline, buf, -xenabi.EPERM, nil},
		{"unknown", 99, buf, -xenabi.ENOSYS, nil},
		{"extraversion, unmapped", xenabi.XenverExtraversion, unmapped, -xenabi.EFAULT, nil},
		{"capabilities, non-canonical", xenabi.XenverCapabilities, noncanon, -xenabi.EFAULT, nil},
		{"capabilities, off the mapping", xenabi.XenverCapabilities, ramSize - 16, -xenabi.EFAULT, nil},
		{"get_features, unmapped", xenabi.XenverGetFeatures, unmapped, -xenabi.EFAULT, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			wantRet(t, "xen_version", e.call(nr, c.cmd, c.arg), c.want)
			if c.out != nil && !bytes.Equal(e.ram[c.arg:c.arg+uint64(len(c.out))], c.out) {
				t.Errorf("wrote %q, want %q", e.ram[c.arg:c.arg+uint64(len(c.out))], c.out)
			}
		})
	}
	e := newEnv(t)
	e.put(buf, le32(1))
	wantRet(t, "get_features(1)", e.call(nr, xenabi.XenverGetFeatures, buf), -xenabi.EINVAL)
}

func TestEventChannelOp(t *testing.T) {
	const nr = xenabi.HypervisorEventChannelOp
	e := newEnv(t)
	op := func(cmd uint64, arg []byte) int64 {
		e.put(buf, make([]byte, 32))
		e.put(buf, arg)
		return e.call(nr, cmd, buf)
	}
	dom := func(d uint16, rest ...byte) []byte {
		return append(binary.LittleEndian.AppendUint16(nil, d), rest...)
	}
	// A loopback pair: alloc_unbound, then bind_interdomain, which sets
	// the new port pending and, on the 0 to 1 change, interrupts vCPU 0.
	wantRet(t, "alloc_unbound", op(EvtchnopAllocUnbound, dom(xenabi.DomidSelf, 0xf0, 0x7f)), 0)
	a := e.u32(buf + 4)
	wantRet(t, "bind_interdomain", op(EvtchnopBindInterdomain, append(dom(xenabi.DomidSelf, 0, 0), le32(a)...)), 0)
	b := e.u32(buf + 8)
	if a == 0 || b == 0 || a == b || !e.d.portPending(b) || e.cpus[0].interrupts != 1 {
		t.Fatalf("ports %d %d, pending %v, %d interrupts", a, b, e.d.portPending(b), e.cpus[0].interrupts)
	}
	wantRet(t, "send", op(EvtchnopSend, le32(a)), 0)
	// status
	wantRet(t, "status", op(EvtchnopStatus, append(dom(xenabi.DomidSelf, 0, 0), le32(a)...)), 0)
	if st, peer := e.u32(buf+8), e.u32(buf+20); st != StatInterdomain || peer != b {
		t.Errorf("status of %d: state %d peer %d", a, st, peer)
	}
	// IPI and VIRQ ports; a VIRQ binds once per vCPU.
	wantRet(t, "bind_ipi", op(EvtchnopBindIPI, le32(1)), 0)
	ipi := e.u32(buf + 4)
	wantRet(t, "bind_virq", op(EvtchnopBindVIRQ, le32(VIRQTimer, 1)), 0)
	wantRet(t, "bind_virq again", op(EvtchnopBindVIRQ, le32(VIRQTimer, 1)), -xenabi.EEXIST)
	wantRet(t, "bind_vcpu of an IPI port", op(EvtchnopBindVCPU, le32(ipi, 0)), -xenabi.EINVAL)
	wantRet(t, "bind_vcpu", op(EvtchnopBindVCPU, le32(a, 1)), 0)
	// unmask delivers a port that became pending while masked.
	si := e.d.SharedInfo()
	si.Evtchn_mask[0] |= 1 << a
	si.Vcpu_info[1].Upcall_pending = 0
	wantRet(t, "send to a masked port", op(EvtchnopSend, le32(b)), 0)
	if e.cpus[1].interrupts != 0 {
		t.Error("a masked port interrupted its vCPU")
	}
	wantRet(t, "unmask", op(EvtchnopUnmask, le32(a)), 0)
	if e.cpus[1].interrupts != 1 {
		t.Errorf("unmask of a pending port: %d interrupts of vCPU 1, want 1", e.cpus[1].interrupts)
	}
	wantRet(t, "close", op(EvtchnopClose, le32(b)), 0)
	wantRet(t, "send on a closed port", op(EvtchnopSend, le32(b)), -xenabi.EINVAL)

	for _, c := range []struct {
		name string
		cmd  uint64
		arg  []byte
		want int64
	}{
		{"alloc_unbound for another domain", EvtchnopAllocUnbound, dom(7, 0, 0), -xenabi.EPERM},
		{"status of another domain", EvtchnopStatus, append(dom(7, 0, 0), le32(a)...), -xenabi.EPERM},
		{"bind_interdomain to a missing domain", EvtchnopBindInterdomain, append(dom(9, 0, 0), le32(1)...), -xenabi.ESRCH},
		{"bind_interdomain to a bound port", EvtchnopBindInterdomain, append(dom(xenabi.DomidSelf, 0, 0), le32(ipi)...), -xenabi.EINVAL},
		{"bind_virq past NR_VIRQS", EvtchnopBindVIRQ, le32(NrVIRQs, 0), -xenabi.EINVAL},
		{"bind_virq on a missing vCPU", EvtchnopBindVIRQ, le32(VIRQTimer, 2), -xenabi.ENOENT},
		{"bind_ipi on a missing vCPU", EvtchnopBindIPI, le32(2), -xenabi.ENOENT},
		{"bind_vcpu to a missing vCPU", EvtchnopBindVCPU, le32(a, 2), -xenabi.ENOENT},
		{"close port 0", EvtchnopClose, le32(0), -xenabi.EINVAL},
		{"send on port 4000", EvtchnopSend, le32(4000), -xenabi.EINVAL},
		{"unmask port 4000", EvtchnopUnmask, le32(4000), -xenabi.EINVAL},
		{"reset (unimplemented)", EvtchnopReset, nil, -xenabi.ENOSYS},
		{"unknown", 99, nil, -xenabi.ENOSYS},
	} {
		wantRet(t, c.name, op(c.cmd, c.arg), c.want)
	}
	for _, ptr := range []uint64{unmapped, noncanon, straddle} {
		wantRet(t, "send with a bad pointer", e.call(nr, EvtchnopSend, ptr), -xenabi.EFAULT)
	}
}

func TestVCPUOp(t *testing.T) {
	const nr = xenabi.HypervisorVCPUOp
	e := newEnv(t)
	wantRet(t, "is_up(0)", e.call(nr, xenabi.VCPUOpIsUp, 0), 1)
	wantRet(t, "is_up(1)", e.call(nr, xenabi.VCPUOpIsUp, 1), 0)
	wantRet(t, "is_up(100000)", e.call(nr, xenabi.VCPUOpIsUp, 100000), -xenabi.ENOENT)
	wantRet(t, "up(1), not initialised", e.call(nr, xenabi.VCPUOpUp, 1), -xenabi.EINVAL)

	timer := func() bool {
		e.d.timerMu.Lock()
		defer e.d.timerMu.Unlock()
		return e.d.timers != nil && e.d.timers[0] != nil
	}
	hour := uint64(3600e9)
	e.put(buf, append(le64(e.d.SystemTime()+hour), le32(sshotFuture, 0)...))
	wantRet(t, "set_singleshot_timer", e.call(nr, xenabi.VCPUOpSetSingleshotTimer, 0, buf), 0)
	if !timer() {
		t.Error("no timer armed")
	}
	wantRet(t, "stop_singleshot_timer", e.call(nr, xenabi.VCPUOpStopSingleshotTimer, 0), 0)
	if timer() {
		t.Error("timer still armed")
	}
	e.put(buf, append(le64(1), le32(sshotFuture, 0)...))
	wantRet(t, "a past deadline with VCPU_SSHOTTMR_future", e.call(nr, xenabi.VCPUOpSetSingleshotTimer, 0, buf), -xenabi.ETIME)
	wantRet(t, "another vCPU's timer", e.call(nr, xenabi.VCPUOpSetSingleshotTimer, 1, buf), -xenabi.EINVAL)
	wantRet(t, "timer with a bad pointer", e.call(nr, xenabi.VCPUOpSetSingleshotTimer, 0, unmapped), -xenabi.EFAULT)
	if timer() {
		t.Error("a refused timer was armed")
	}

	const setTimer = xenabi.HypervisorSetTimerOp
	wantRet(t, "set_timer_op", e.call(setTimer, e.d.SystemTime()+hour), 0)
	if !timer() {
		t.Error("set_timer_op armed no timer")
	}
	wantRet(t, "set_timer_op(0)", e.call(setTimer, 0), 0)
	if timer() {
		t.Error("set_timer_op(0) left the timer armed")
	}
}

// Every number without a handler is -ENOSYS, logged once; numbers past the
// table are not counted.
func TestUnknownHypercalls(t *testing.T) {
	e := newEnv(t)
	var logged strings.Builder
	e.d.log = slog.New(slog.NewTextHandler(&logged, nil))
	for _, nr := range []uint64{xenabi.HypervisorDmOp, 11, 127, 127, 128, 500, 1 << 40} {
		wantRet(t, HypercallName(nr), e.call(nr, 1, 2, 3), -xenabi.ENOSYS)
	}
	if n := strings.Count(logged.String(), "unimplemented hypercall"); n != 6 {
		t.Errorf("%d warnings for 6 distinct numbers:\n%s", n, logged.String())
	}
	if e.d.HypercallCount(127) != 2 || e.d.HypercallCount(500) != 0 {
		t.Errorf("counts: 127 -> %d, 500 -> %d", e.d.HypercallCount(127), e.d.HypercallCount(500))
	}
	// A known number is counted too (positive control).
	e.call(xenabi.HypervisorXenVersion, xenabi.XenverVersion)
	if e.d.HypercallCount(xenabi.HypervisorXenVersion) != 1 {
		t.Error("xen_version not counted")
	}
}

// A failure of the VMM itself (here, the vCPU refusing to be touched) ends
// the vCPU instead of becoming a result the guest would see.
func TestHypercallVMMFailure(t *testing.T) {
	e := newEnv(t)
	refused := errors.New("refused")
	for _, c := range []struct {
		name string
		nr   uint64
		args [5]uint64
		fail bool
	}{
		{"a pointer needs the paging registers", xenabi.HypervisorConsoleIO, [5]uint64{xenabi.ConsoleioWrite, 1, buf}, true},
		{"block needs the vCPU", xenabi.HypervisorSchedOp, [5]uint64{xenabi.SchedopBlock}, true},
		{"xen_version(version) needs nothing", xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverVersion}, false},
	} {
		e.cpus[0].fail = refused
		_, err := e.d.hypercall(e.cpus[0], c.nr, c.args)
		if c.fail != errors.Is(err, refused) {
			t.Errorf("%s: error %v, want failure %v", c.name, err, c.fail)
		}
	}
	if _, err := e.d.hypercall(&fakeCPU{id: 2}, xenabi.HypervisorXenVersion, [5]uint64{}); err == nil {
		t.Error("a hypercall on a vCPU the domain does not have was handled")
	}
}

// With ClobberArgs, the argument registers a hypercall declares are
// poisoned as the exit completes (pv_hypercall's clobber_regs in a debug
// Xen); the others, and every register of a call that made a continuation,
// returned -ENOSYS or is unknown, are left alone, as is everything without
// ClobberArgs.
func TestClobberArgs(t *testing.T) {
	const P = Poison
	args := kvm.Regs{RDI: 1, RSI: 2, RDX: 3, R10: 4, R8: 5}
	for _, c := range []struct {
		name    string
		clobber bool
		nr      uint64
		setup   func(e *env) [5]uint64 // the arguments
		want    kvm.Regs
	}{
		{"sched_op declares two", true, xenabi.HypervisorSchedOp, func(*env) [5]uint64 {
			return [5]uint64{xenabi.SchedopYield, 2, 3, 4, 5}
		}, kvm.Regs{RDI: P, RSI: P, RDX: 3, R10: 4, R8: 5}},
		{"an error result is clobbered too", true, xenabi.HypervisorXenVersion, func(*env) [5]uint64 {
			return [5]uint64{xenabi.XenverExtraversion, unmapped, 3, 4, 5}
		}, kvm.Regs{RDI: P, RSI: P, RDX: 3, R10: 4, R8: 5}},
		{"mmu_update declares four", true, xenabi.HypervisorMmuUpdate, func(*env) [5]uint64 {
			return [5]uint64{buf, 0, 0, domidSelf, 5}
		}, kvm.Regs{RDI: P, RSI: P, RDX: P, R10: P, R8: 5}},
		{"-ENOSYS", true, xenabi.HypervisorSchedOp, func(*env) [5]uint64 {
			return [5]uint64{99, 2, 3, 4, 5}
		}, args},
		{"unknown hypercall", true, 99, func(*env) [5]uint64 { return [5]uint64{1, 2, 3, 4, 5} }, args},
		{"iret declares none", true, xenabi.HypervisorIret, func(e *env) [5]uint64 {
			// A frame returning to guest kernel mode.
			e.put(0x8000, le64(0, 0, 0, 0, 0x1000, FlatKernelCS&^3, 0x202, 0x9000, FlatKernelSS))
			e.cpus[0].regs.RSP = 0x8000
			return [5]uint64{1, 2, 3, 4, 5}
		}, args},
		{"preempted", true, xenabi.HypervisorMmuUpdate, func(e *env) [5]uint64 {
			for i := range 2 * mmuBatch {
				e.put(buf+16*uint64(i), le64(e.d.pv.frames.Base<<12+0x30*8, 0))
			}
			return [5]uint64{buf, 2 * mmuBatch, 0, domidSelf, 5}
		}, kvm.Regs{RDI: buf + 16*mmuBatch, RSI: mmuBatch | mmuUpdatePreempted, RDX: 0, R10: domidSelf, R8: 5}},
		{"without ClobberArgs", false, xenabi.HypervisorSchedOp, func(*env) [5]uint64 {
			return [5]uint64{xenabi.SchedopYield, 2, 3, 4, 5}
		}, args},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.d.clobber = c.clobber
			cpu := e.cpus[0]
			cpu.regs = args
			cpu.regs.RFLAGS = 0x202
			a := c.setup(e)
			cpu.regs.RDI, cpu.regs.RSI, cpu.regs.RDX, cpu.regs.R10, cpu.regs.R8 = a[0], a[1], a[2], a[3], a[4]
			if _, err := e.d.hypercall(cpu, c.nr, a); err != nil {
				t.Fatal(err)
			}
			var s kvmSregs
			for _, f := range e.d.pv.cpus[0].pending {
				if err := f(&cpu.regs, &s); err != nil {
					t.Fatal(err)
				}
			}
			r := cpu.regs
			got := [5]uint64{r.RDI, r.RSI, r.RDX, r.R10, r.R8}
			want := [5]uint64{c.want.RDI, c.want.RSI, c.want.RDX, c.want.R10, c.want.R8}
			if c.want == args {
				want = a
			}
			if got != want {
				t.Errorf("argument registers %#x, want %#x", got, want)
			}
		})
	}
}

// The port-I/O trap: a stub's 32-bit IN is a hypercall with the number
// from %eax and the arguments from the ABI's registers; anything else on
// the port reads as an empty bus.
func TestPortIOTrap(t *testing.T) {
	trap := Ring3PortIOTrap{Port: HypercallPort}
	cpu := &fakeCPU{regs: kvm.Regs{RAX: 0xffffffff_00000011, RDI: 1, RSI: 2, RDX: 3, R10: 4, R8: 5}}
	var gotNr uint64
	var gotArgs [5]uint64
	handle := func(v CPU, nr uint64, args [5]uint64) (int64, error) {
		gotNr, gotArgs = nr, args
		return -xenabi.EFAULT, nil
	}
	data := make([]byte, 4)
	if err := trap.pio(cpu, false, data, handle); err != nil {
		t.Fatal(err)
	}
	if gotNr != 0x11 || gotArgs != [5]uint64{1, 2, 3, 4, 5} || binary.LittleEndian.Uint32(data) != 0xfffffff2 {
		t.Errorf("nr %#x args %v, data %x", gotNr, gotArgs, data)
	}
	for _, c := range []struct {
		write bool
		n     int
	}{{true, 4}, {false, 1}, {false, 2}} {
		gotNr = 0
		data := make([]byte, c.n)
		if err := trap.pio(cpu, c.write, data, handle); err != nil || gotNr != 0 || data[0] != 0xff {
			t.Errorf("write %v size %d: handled %v, data %x, %v", c.write, c.n, gotNr != 0, data, err)
		}
	}
	failing := func(CPU, uint64, [5]uint64) (int64, error) { return 0, errors.New("VMM failure") }
	if err := trap.pio(cpu, false, make([]byte, 4), failing); err == nil {
		t.Error("a handler's failure was not passed on")
	}
}

// ReturnAddress and ReturnPage: where a vCPU sits after hypercall nr, and
// back, for the stub layout asm writes.
func TestReturnAddress(t *testing.T) {
	e := newEnv(t)
	const page = 0xffffffff80005000
	rip := e.d.HypercallReturnAddress(page, xenabi.HypervisorSchedOp)
	if rip != page+xenabi.HypervisorSchedOp*asm.StubSize+asm.Ring3ReturnPath {
		t.Fatalf("sched_op returns to %#x", rip)
	}
	// The instruction there is the stub's cltq, right after its IN.
	stub := asm.Ring3HypercallPage(HypercallPort)[rip-page:]
	if stub[0] != 0x48 || stub[1] != 0x98 || asm.Ring3HypercallPage(HypercallPort)[rip-page-2] != 0xe5 {
		t.Errorf("return path bytes % x", stub[:2])
	}
	if got, ok := e.d.HypercallPageFromReturn(rip, xenabi.HypervisorSchedOp); !ok || got != page {
		t.Errorf("page from %#x = %#x, %v", rip, got, ok)
	}
	for _, c := range []struct {
		rip uint64
		nr  int
	}{
		{rip + 1, xenabi.HypervisorSchedOp},
		{rip, xenabi.HypervisorXenVersion},
		{5, xenabi.HypervisorSchedOp},
		{rip, asm.IretHypercall},
		{rip, asm.NumStubs},
		{rip, -1},
	} {
		if got, ok := e.d.HypercallPageFromReturn(c.rip, c.nr); ok {
			t.Errorf("page from %#x for %d = %#x", c.rip, c.nr, got)
		}
	}
	for _, nr := range []int{-1, asm.IretHypercall, asm.NumStubs} {
		if got := e.d.HypercallReturnAddress(page, nr); got != 0 {
			t.Errorf("return address of hypercall %d: %#x", nr, got)
		}
	}
}

// Wait reports a shutdown once the vCPUs are parked; if an Unpause
// withdrew the pause because the domain was resumed, it looks again.
func TestWaitAfterUnpause(t *testing.T) {
	e := newEnv(t)
	e.put(buf, le32(xenabi.ShutdownSuspend))
	e.call(xenabi.HypervisorSchedOp, xenabi.SchedopShutdown, buf, 0x100042)
	waits := 0
	e.vm.wait = func() error {
		waits++
		if waits == 1 {
			// Resumed and unpaused, then powered off.
			if err := e.d.ResumeSuspended(); err != nil {
				t.Error(err)
			}
			e.put(buf, le32(xenabi.ShutdownPoweroff))
			e.call(xenabi.HypervisorSchedOp, xenabi.SchedopShutdown, buf)
			return &machine.StateError{Op: "wait", Err: machine.ErrUnpaused}
		}
		return nil
	}
	x, err := e.d.Wait(context.Background())
	if err != nil || x.State != Shutdown || x.Reason != xenabi.ShutdownPoweroff || waits != 2 {
		t.Fatalf("Wait = %v, %v after %d waits", x, err, waits)
	}
	// Negative control: unpaused without a resume, Wait says so.
	e.vm.wait = func() error { return &machine.StateError{Op: "wait", Err: machine.ErrUnpaused} }
	if _, err := e.d.Wait(context.Background()); !errors.Is(err, machine.ErrUnpaused) {
		t.Errorf("Wait of a shut-down domain that was unpaused: %v", err)
	}
}
