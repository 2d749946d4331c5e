package xen

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// secondaryCtx is a context a guest would give a secondary vCPU: kernel
// mode on the boot L4, Xen's flat selectors.
func (e *pvEnv) secondaryCtx() xenabi.VCPUGuestContext {
	var ctx xenabi.VCPUGuestContext
	ctx.Flags = xenabi.VGCFInKernel
	ctx.User_regs.Rip, ctx.User_regs.Rsp = 0x1000, 0x8000
	ctx.User_regs.Cs, ctx.User_regs.Ss = FlatKernelCS, FlatKernelSS
	ctx.User_regs.Rflags = 0x200
	ctx.Kernel_ss, ctx.Kernel_sp = FlatKernelSS, 0x8000
	ctx.Ctrlreg[3] = e.mfn(pvL4) << 12
	ctx.Event_callback_eip = 0x2000
	return ctx
}

// VCPUOP_initialise validates the context as arch_set_info_guest does,
// and a refused one leaves the vCPU uninitialised with no references
// taken; VCPUOP_up needs an initialised vCPU; a second initialise is
// -EEXIST.
func TestVCPUInitialise(t *testing.T) {
	e := newPVEnvN(t, 2)
	const nr = xenabi.HypervisorVCPUOp
	const ctxVA = pvBuf
	l4Type := e.typeOf(pvL4)
	outside := e.d.frames.Base + e.d.frames.NrPages + 100
	for _, c := range []struct {
		name string
		mod  func(*xenabi.VCPUGuestContext)
		want int64
	}{
		{"non-canonical rip", func(x *xenabi.VCPUGuestContext) { x.User_regs.Rip = 1 << 60 }, -xenabi.EINVAL},
		{"non-canonical kernel_sp", func(x *xenabi.VCPUGuestContext) { x.Kernel_sp = 1 << 60 }, -xenabi.EINVAL},
		{"non-canonical event callback", func(x *xenabi.VCPUGuestContext) { x.Event_callback_eip = 1 << 60 }, -xenabi.EINVAL},
		{"non-canonical trap handler", func(x *xenabi.VCPUGuestContext) { x.Trap_ctxt[14].Address = 1 << 60 }, -xenabi.EINVAL},
		{"misaligned LDT", func(x *xenabi.VCPUGuestContext) { x.Ldt_base, x.Ldt_ents = 0x1008, 1 }, -xenabi.EINVAL},
		{"too many LDT entries", func(x *xenabi.VCPUGuestContext) { x.Ldt_ents = 8193 }, -xenabi.EINVAL},
		{"too many GDT entries", func(x *xenabi.VCPUGuestContext) { x.Gdt_ents = FirstReservedGDTEntry + 1 }, -xenabi.EINVAL},
		{"user mode without a user L4", func(x *xenabi.VCPUGuestContext) { x.Flags = 0 }, -xenabi.EINVAL},
		{"cr3 a writable page", func(x *xenabi.VCPUGuestContext) { x.Ctrlreg[3] = e.mfn(0x20) << 12 }, -xenabi.EINVAL},
		{"cr3 not the domain's", func(x *xenabi.VCPUGuestContext) { x.Ctrlreg[3] = outside << 12 }, -xenabi.EINVAL},
	} {
		ctx := e.secondaryCtx()
		c.mod(&ctx)
		copy(e.ram[ctxVA:], xenabi.Bytes(&ctx))
		wantRet(t, c.name, e.call(nr, xenabi.VCPUOpInitialise, 1, ctxVA), c.want)
		wantRet(t, c.name+": up", e.call(nr, xenabi.VCPUOpUp, 1), -xenabi.EINVAL)
		if got := e.typeOf(pvL4); got != l4Type {
			t.Errorf("%s: boot L4 is %s after the refusal, want %s", c.name, got, l4Type)
		}
	}
	wantRet(t, "initialise from an unmapped pointer", e.call(nr, xenabi.VCPUOpInitialise, 1, 0x300000), -xenabi.EFAULT)
	wantRet(t, "initialise vCPU 2 of 2", e.call(nr, xenabi.VCPUOpInitialise, 2, ctxVA), -xenabi.ENOENT)

	ctx := e.secondaryCtx()
	ctx.Vm_assist = 1 << 40 // ignored for a secondary, as on Xen
	copy(e.ram[ctxVA:], xenabi.Bytes(&ctx))
	wantRet(t, "initialise", e.call(nr, xenabi.VCPUOpInitialise, 1, ctxVA), 0)
	if e.d.pv.vmassist&(1<<40) != 0 {
		t.Error("a secondary's context set vm_assist")
	}
	wantRet(t, "initialise again", e.call(nr, xenabi.VCPUOpInitialise, 1, ctxVA), -xenabi.EEXIST)
	wantRet(t, "is_up before up", e.call(nr, xenabi.VCPUOpIsUp, 1), 0)
	st := e.d.sched[1].start
	if st == nil || st.err != nil || st.regs.RIP != 0x1000 || st.sregs.CS.Selector != FlatKernelCS || st.sregs.CR3 != e.mfn(pvL4)<<12 {
		t.Fatalf("start state %+v", st)
	}
	if !e.d.sched[1].starting.Load() {
		// A thread that has not stopped offline yet must still load
		// the context, not enter with its reset state.
		t.Error("initialise left no start for the vCPU's thread to take")
	}
	wakes := e.cpus[1].wakes
	wantRet(t, "up", e.call(nr, xenabi.VCPUOpUp, 1), 0)
	wantRet(t, "is_up", e.call(nr, xenabi.VCPUOpIsUp, 1), 1)
	if e.cpus[1].wakes != wakes+1 {
		t.Error("up did not wake the vCPU's thread")
	}
	wantRet(t, "up again", e.call(nr, xenabi.VCPUOpUp, 1), 0)
	if e.cpus[1].wakes != wakes+1 {
		t.Error("up of a vCPU that is up woke it again")
	}
	wantRet(t, "down", e.call(nr, xenabi.VCPUOpDown, 1), 0)
	wantRet(t, "is_up after down", e.call(nr, xenabi.VCPUOpIsUp, 1), 0)
	if e.cpus[1].interrupts == 0 {
		t.Error("down of another vCPU did not kick it")
	}
	if e.d.VCPUOnline(1) {
		t.Error("VCPUOnline(1) after down")
	}

	// A fast=0 resume resets it: initialise is allowed again, and the
	// base pointer's reference is dropped.
	if err := e.d.ResetVCPU(1); err != nil {
		t.Fatal(err)
	}
	if got := e.typeOf(pvL4); got != l4Type {
		t.Errorf("boot L4 is %s after the reset, want %s", got, l4Type)
	}
	wantRet(t, "up after reset", e.call(nr, xenabi.VCPUOpUp, 1), -xenabi.EINVAL)
	wantRet(t, "initialise after reset", e.call(nr, xenabi.VCPUOpInitialise, 1, ctxVA), 0)
	if err := e.d.ResetVCPU(0); err == nil {
		t.Error("ResetVCPU(0) accepted")
	}
}

// A context whose selectors cannot be loaded is accepted (Xen checks them
// only as the vCPU first runs) and crashes the vCPU as it comes up.
func TestVCPUInitialiseBadSelector(t *testing.T) {
	e := newPVEnvN(t, 2)
	ctx := e.secondaryCtx()
	ctx.User_regs.Cs = 0 // the null selector, XSA-296's context
	copy(e.ram[pvBuf:], xenabi.Bytes(&ctx))
	wantRet(t, "initialise", e.call(xenabi.HypervisorVCPUOp, xenabi.VCPUOpInitialise, 1, pvBuf), 0)
	if st := e.d.sched[1].start; st == nil || st.err == nil {
		t.Fatalf("start state %+v: want the selector's error", st)
	}
}

// The last vCPU going down powers the domain off (do_vcpu_op).
func TestVCPUDownLast(t *testing.T) {
	e := newEnv(t)
	wantRet(t, "down(0) with vCPU 1 down", e.call(xenabi.HypervisorVCPUOp, xenabi.VCPUOpDown, 0), 0)
	if x := e.d.Exit(); x.State != Shutdown || x.Reason != xenabi.ShutdownPoweroff {
		t.Errorf("exit %v, want shutdown (poweroff)", x)
	}
}

func TestVCPUOpIDs(t *testing.T) {
	e := newEnv(t)
	const nr = xenabi.HypervisorVCPUOp
	for _, c := range []struct {
		name    string
		cmd, id uint64
		want    int64
	}{
		{"is_up(0)", xenabi.VCPUOpIsUp, 0, 1},
		{"is_up(1)", xenabi.VCPUOpIsUp, 1, 0},
		{"is_up(2)", xenabi.VCPUOpIsUp, 2, -xenabi.ENOENT},
		{"is_up(-1)", xenabi.VCPUOpIsUp, 1<<32 - 1, -xenabi.ENOENT},
		{"vcpuid is 32 bits", xenabi.VCPUOpIsUp, 1 << 32, 1},
		{"cmd is 32 bits", 1<<32 | xenabi.VCPUOpIsUp, 0, 1},
		{"initialise with an empty context", xenabi.VCPUOpInitialise, 1, -xenabi.EINVAL},
		{"unknown command", 99, 0, -xenabi.ENOSYS},
		{"unknown command, bad vCPU", 99, 7, -xenabi.ENOENT},
	} {
		wantRet(t, c.name, e.call(nr, c.cmd, c.id, buf), c.want)
	}
}

func readRunstate(b []byte) runstate {
	r := runstate{state: int(binary.LittleEndian.Uint32(b)), entry: binary.LittleEndian.Uint64(b[8:])}
	for i := range r.time {
		r.time[i] = binary.LittleEndian.Uint64(b[16+8*i:])
	}
	return r
}

// get_runstate_info and the registered area: vCPU 0 runs, vCPU 1 is
// offline, times add up, and SCHEDOP_block is RUNSTATE_blocked while it
// sleeps.
func TestRunstate(t *testing.T) {
	e := newEnv(t)
	const nr = xenabi.HypervisorVCPUOp
	wantRet(t, "get_runstate_info(1)", e.call(nr, xenabi.VCPUOpGetRunstateInfo, 1, buf), 0)
	if r := readRunstate(e.ram[buf:]); r.state != RunstateOffline || r.time[RunstateRunning] != 0 {
		t.Errorf("vCPU 1: %+v, want offline, never run", r)
	}
	wantRet(t, "get_runstate_info to a bad pointer", e.call(nr, xenabi.VCPUOpGetRunstateInfo, 0, unmapped), -xenabi.EFAULT)
	wantRet(t, "get_runstate_info of vCPU 2", e.call(nr, xenabi.VCPUOpGetRunstateInfo, 2, buf), -xenabi.ENOENT)

	const area = buf + 0x100
	e.put(buf, le64(area))
	wantRet(t, "register_runstate_memory_area", e.call(nr, xenabi.VCPUOpRegisterRunstateMemoryArea, 0, buf), 0)
	if r := readRunstate(e.ram[area:]); r.state != RunstateRunning || r.entry&RunstateUpdate != 0 {
		t.Errorf("area after registration: %+v", r)
	}
	if e.d.RunstateArea(0) != area {
		t.Errorf("RunstateArea(0) = %#x", e.d.RunstateArea(0))
	}
	wantRet(t, "register from a bad pointer", e.call(nr, xenabi.VCPUOpRegisterRunstateMemoryArea, 0, unmapped), -xenabi.EFAULT)
	e.put(buf, le64(HypervisorVirtStart))
	wantRet(t, "register an area in Xen's range", e.call(nr, xenabi.VCPUOpRegisterRunstateMemoryArea, 0, buf), -xenabi.EFAULT)
	if e.d.RunstateArea(0) != area {
		t.Error("a refused registration replaced the area")
	}

	var inBlock int = -1
	e.cpus[0].onBlock = func() {
		s := &e.d.sched[0]
		s.mu.Lock()
		inBlock = s.rs.state
		s.mu.Unlock()
	}
	e.d.raise(3, 0) // an event arrives: the block returns at once...
	e.d.SharedInfo().Vcpu_info[0].Upcall_pending = 0
	wantRet(t, "block", e.call(xenabi.HypervisorSchedOp, xenabi.SchedopBlock), 0)
	if inBlock != RunstateBlocked {
		t.Errorf("runstate in SCHEDOP_block: %d, want blocked", inBlock)
	}
	wantRet(t, "get_runstate_info(0)", e.call(nr, xenabi.VCPUOpGetRunstateInfo, 0, buf), 0)
	r := readRunstate(e.ram[buf:])
	var sum uint64
	for _, t := range r.time {
		sum += t
	}
	if now := e.d.SystemTime(); r.state != RunstateRunning || r.entry > now || sum > now {
		t.Errorf("vCPU 0 after block: %+v at system time %d", r, now)
	}
	e.put(buf, le64(0))
	wantRet(t, "unregister", e.call(nr, xenabi.VCPUOpRegisterRunstateMemoryArea, 0, buf), 0)
	if e.d.RunstateArea(0) != 0 {
		t.Error("area still registered")
	}
}

// With VMASST_TYPE_runstate_update_flag the area ends with
// XEN_RUNSTATE_UPDATE clear, having been set while it was written.
func TestRunstateUpdateFlag(t *testing.T) {
	e := newPVEnvN(t, 1)
	e.d.pv.vmassist |= 1 << vmassistRunstateUpdateFlag
	var writes [][]byte
	r := runstate{state: RunstateBlocked, entry: 12345}
	e.d.writeRunstate(r, 0x1000, func(va uint64, b []byte) error {
		writes = append(writes, append([]byte{byte(va - 0x1000)}, b...))
		return nil
	})
	if len(writes) != 3 || writes[0][0] != 15 || writes[0][1]&0x80 == 0 ||
		binary.LittleEndian.Uint64(writes[1][9:])&RunstateUpdate == 0 || writes[2][0] != 15 || writes[2][1]&0x80 != 0 {
		t.Errorf("writes %x: want the flag byte set, the area with the flag, the flag byte cleared", writes)
	}
	e.d.pv.vmassist = 0
	writes = nil
	e.d.writeRunstate(r, 0x1000, func(va uint64, b []byte) error {
		writes = append(writes, b)
		return nil
	})
	if len(writes) != 1 || binary.LittleEndian.Uint64(writes[0][8:]) != 12345 {
		t.Errorf("without the assist: writes %x", writes)
	}
}

func TestPeriodicTimer(t *testing.T) {
	e := newEnv(t)
	const nr = xenabi.HypervisorVCPUOp
	armed := func(v int) bool {
		e.d.timerMu.Lock()
		defer e.d.timerMu.Unlock()
		return e.d.periodic != nil && e.d.periodic[v] != nil
	}
	for _, c := range []struct {
		name   string
		period uint64
		want   int64
	}{
		{"under 1 ms", 999_999, -xenabi.EINVAL},
		{"over STIME_DELTA_MAX", 1 << 62, -xenabi.EINVAL},
		{"an hour", 3600e9, 0},
	} {
		e.put(buf, le64(c.period))
		wantRet(t, c.name, e.call(nr, xenabi.VCPUOpSetPeriodicTimer, 1, buf), c.want)
		if armed(1) != (c.want == 0) {
			t.Errorf("%s: armed %v", c.name, armed(1))
		}
	}
	wantRet(t, "bad pointer", e.call(nr, xenabi.VCPUOpSetPeriodicTimer, 1, unmapped), -xenabi.EFAULT)
	wantRet(t, "stop", e.call(nr, xenabi.VCPUOpStopPeriodicTimer, 1), 0)
	if armed(1) {
		t.Error("still armed after stop")
	}
}

// MMUEXT_TLB_FLUSH_ALL (and the MULTI and INVLPG variants) ask every other
// online vCPU to flush, kick it, and make the caller wait for it before
// its next entry; the LOCAL ones ask nothing of the others. A vCPU that
// is down or blocked runs no guest code and is not waited for.
func TestCrossVCPUFlush(t *testing.T) {
	e := newPVEnvN(t, 3)
	const nr = xenabi.HypervisorVCPUOp
	ctx := e.secondaryCtx()
	copy(e.ram[pvBuf+0x1000:], xenabi.Bytes(&ctx))
	for _, id := range []uint64{1, 2} {
		wantRet(t, "initialise", e.call(nr, xenabi.VCPUOpInitialise, id, pvBuf+0x1000), 0)
	}
	wantRet(t, "up(1)", e.call(nr, xenabi.VCPUOpUp, 1), 0) // vCPU 2 stays down
	ext := func(cmd uint64) int64 {
		e.put64(pvBuf, cmd)
		return e.call(26, pvBuf, 1, 0, domidSelf)
	}
	p := e.d.pv
	c0, c1 := p.cpus[0], p.cpus[1]
	for _, cmd := range []uint64{mmuextTLBFlushLocal, mmuextInvlpgLocal} {
		wantRet(t, "a local flush", ext(cmd), 0)
		if len(c0.flushWaits) != 0 || e.d.sched[1].flushGen.Load() != 0 {
			t.Fatalf("cmd %d asked the other vCPUs to flush", cmd)
		}
	}
	kicks := e.cpus[1].interrupts
	for i, cmd := range []uint64{mmuextTLBFlushAll, mmuextTLBFlushMulti, mmuextInvlpgAll, mmuextInvlpgMulti} {
		c0.ptq, c1.ptq, c1.ptqIdx = nil, nil, nil
		wantRet(t, "a flush of every vCPU", ext(cmd), 0)
		gen := uint64(i + 1)
		if e.d.sched[1].flushGen.Load() != gen || e.cpus[1].interrupts != kicks+i+1 {
			t.Fatalf("cmd %d: vCPU 1 flush generation %d, %d kicks", cmd, e.d.sched[1].flushGen.Load(), e.cpus[1].interrupts-kicks)
		}
		if e.d.sched[2].flushGen.Load() != 0 {
			t.Fatal("vCPU 2 (down) was asked to flush")
		}
		if len(c0.flushWaits) != 1 || c0.flushWaits[0] != (flushWait{vcpu: 1, gen: gen}) {
			t.Fatalf("vCPU 0 waits for %v", c0.flushWaits)
		}
		// vCPU 1's thread serves it: a CR3-reloading write is queued
		// before its next entry, and the request is acknowledged.
		p.serveFlush(c1)
		if len(c1.ptq) != 1 || e.d.sched[1].flushAck.Load() != gen {
			t.Fatalf("vCPU 1 served %d writes, ack %d", len(c1.ptq), e.d.sched[1].flushAck.Load())
		}
		p.waitFlushes(c0)
		if len(c0.flushWaits) != 0 {
			t.Fatal("vCPU 0 still waits")
		}
	}
	// Blocked (SCHEDOP_block): not waited for, and served as it wakes.
	wantRet(t, "flush", ext(mmuextTLBFlushAll), 0)
	e.d.sleep(1, true)
	start := time.Now()
	p.waitFlushes(c0)
	if len(c0.flushWaits) != 0 || time.Since(start) > flushWaitMax/2 {
		t.Fatal("vCPU 0 waited for a blocked vCPU")
	}
	e.d.sleep(1, false)
	if e.d.sched[1].flushAck.Load() == e.d.sched[1].flushGen.Load() {
		t.Fatal("the request was dropped")
	}
	// One that never serves it is given up on after flushWaitMax.
	wantRet(t, "flush", ext(mmuextTLBFlushAll), 0)
	start = time.Now()
	p.waitFlushes(c0)
	if d := time.Since(start); len(c0.flushWaits) != 0 || d < flushWaitMax {
		t.Fatalf("waited %v for a vCPU that never served the flush", d)
	}
}

// VCPUOP_register_vcpu_info (map_vcpu_info): once per vCPU, on itself or
// on a vCPU that is down, into a writable RAM frame; the contents move
// there, every event is marked pending, and events are delivered there
// from then on.
func TestRegisterVCPUInfo(t *testing.T) {
	e := newPVEnvN(t, 3)
	const nr = xenabi.HypervisorVCPUOp
	reg := func(vcpu, mfn uint64, off uint32) int64 {
		copy(e.ram[pvBuf:], append(le64(mfn), le32(off, 0)...))
		return e.call(nr, xenabi.VCPUOpRegisterVCPUInfo, vcpu, pvBuf)
	}
	const infoPFN = 0x30
	for _, c := range []struct {
		name string
		mfn  uint64
		off  uint32
	}{
		{"past the page", e.mfn(infoPFN), 4096 - 63},
		{"misaligned", e.mfn(infoPFN), 4},
		{"a page table", e.mfn(pvL1), 0},
		{"not the domain's", e.d.frames.Base + e.d.frames.NrPages + 5, 0},
	} {
		wantRet(t, c.name, reg(0, c.mfn, c.off), -xenabi.EINVAL)
	}
	wantRet(t, "a bad pointer", e.call(nr, xenabi.VCPUOpRegisterVCPUInfo, 0, 0x300000), -xenabi.EFAULT)
	if e.d.sched[0].info.Load() != nil {
		t.Fatal("a refused registration moved vcpu_info")
	}

	e.d.SharedInfo().Vcpu_info[0].Upcall_mask = 1
	interrupts := e.cpus[0].interrupts
	wantRet(t, "register vCPU 0's", reg(0, e.mfn(infoPFN), 64), 0)
	page := e.ram[infoPFN*4096+64:]
	if page[1] != 1 || binary.LittleEndian.Uint64(page[8:]) != ^uint64(0) || page[0] != 1 {
		t.Errorf("new vcpu_info: pending %d mask %d sel %#x: want the mask copied, everything pending",
			page[0], page[1], binary.LittleEndian.Uint64(page[8:]))
	}
	if e.cpus[0].interrupts != interrupts+1 {
		t.Error("the vCPU was not made to look for the upcall")
	}
	if e.typeOf(infoPFN) != "writable/2" { // its mapping's reference, and this one
		t.Errorf("vcpu_info frame is %s", e.typeOf(infoPFN))
	}
	wantRet(t, "register again", reg(0, e.mfn(infoPFN), 128), -xenabi.EINVAL)

	// Events now go to the new place.
	page[0], page[8] = 0, 0
	binary.LittleEndian.PutUint64(page[8:], 0)
	e.d.raise(5, 0)
	if page[0] != 1 || binary.LittleEndian.Uint64(page[8:]) != 1 || !e.d.upcallPending(0) {
		t.Error("an event did not reach the registered vcpu_info")
	}
	if e.d.SharedInfo().Vcpu_info[0].Pending_sel != 0 {
		t.Error("an event went to the shared_info slot")
	}

	// Another vCPU's: only while it is down.
	wantRet(t, "vCPU 1's, down", reg(1, e.mfn(infoPFN), 192), 0)
	ctx := e.secondaryCtx()
	copy(e.ram[pvBuf+0x1000:], xenabi.Bytes(&ctx))
	wantRet(t, "initialise 2", e.call(nr, xenabi.VCPUOpInitialise, 2, pvBuf+0x1000), 0)
	wantRet(t, "up 2", e.call(nr, xenabi.VCPUOpUp, 2), 0)
	wantRet(t, "vCPU 2's, up", reg(2, e.mfn(infoPFN), 256), -xenabi.EINVAL)
	wantRet(t, "vCPU 3 of 3", reg(3, e.mfn(infoPFN), 256), -xenabi.ENOENT)
}

// A runstate change is written through the vCPU's own validated kernel
// L4; a vCPU reset by fast=0 has none, and nothing is written.
func TestRunstateAreaAfterReset(t *testing.T) {
	e := newPVEnvN(t, 2)
	const nr = xenabi.HypervisorVCPUOp
	const area = pvBuf + 0x200
	e.put64(pvBuf, area)
	wantRet(t, "register vCPU 1's area", e.call(nr, xenabi.VCPUOpRegisterRunstateMemoryArea, 1, pvBuf), 0)
	ctx := e.secondaryCtx()
	copy(e.ram[pvBuf+0x1000:], xenabi.Bytes(&ctx))
	wantRet(t, "initialise", e.call(nr, xenabi.VCPUOpInitialise, 1, pvBuf+0x1000), 0)
	e.d.setRunstate(1, RunstateRunning) // as its thread does at up
	if r := readRunstate(e.ram[area:]); r.state != RunstateRunning {
		t.Fatalf("area after up: %+v", r)
	}
	if err := e.d.ResetVCPU(1); err != nil {
		t.Fatal(err)
	}
	clear(e.ram[area : area+RunstateInfoSize])
	e.d.setRunstate(1, RunstateOffline)
	if r := readRunstate(e.ram[area:]); r != (runstate{}) {
		t.Errorf("a reset vCPU's runstate was written: %+v", r)
	}
	if e.d.RunstateArea(1) != area {
		t.Error("the reset dropped the runstate area (vcpu_reset keeps it)")
	}
}
