package xen

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// SMP: a domain's vCPUs as Xen's scheduler sees them. Each vCPU runs on
// its own thread (machine.VCPU); vCPU 0 starts up, the others start down
// and not initialised, as Xen's PV secondaries do, until the guest loads a
// context into them (VCPUOP_initialise) and brings them up (VCPUOP_up).
// A vCPU that is down blocks on its own thread before entering the guest
// (offline) and parks there when the domain is paused.
//
// Who touches what: a vCPU's model state (pvCPU) and its registers belong
// to its own thread; another vCPU's hypercall changes only vcpuSched, under
// its mutex, and wakes the thread, which acts on it before it next enters
// the guest. VCPUOP_initialise is the exception that proves the rule: it
// loads the model of a vCPU that is not initialised, hence has never run
// guest code and sits offline; the registers it computes are handed over
// in vcpuSched.start and loaded by the vCPU's own thread at VCPUOP_up.

// Runstates (vcpu.h).
const (
	RunstateRunning  = 0
	RunstateRunnable = 1
	RunstateBlocked  = 2
	RunstateOffline  = 3
	// RunstateUpdate is XEN_RUNSTATE_UPDATE, bit 63 of state_entry_time
	// while Xen writes the area, with VMASST_TYPE_runstate_update_flag.
	RunstateUpdate = 1 << 63
	// RunstateInfoSize is sizeof(struct vcpu_runstate_info).
	RunstateInfoSize = 48

	vmassistRunstateUpdateFlag = 5
	stimeDeltaMax              = 1<<62 - 1 // STIME_DELTA_MAX
	periodMin                  = 1_000_000 // MILLISECS(1)
)

// vcpuSched is one vCPU's scheduling state: what Xen keeps in struct vcpu
// for it (is_initialised, _VPF_down, the runstate and its guest area, the
// periodic timer).
type vcpuSched struct {
	mu          sync.Mutex
	initialised bool
	down        bool       // _VPF_down: VCPUOP_down asked it to stop
	start       *vcpuStart // registers VCPUOP_initialise loaded, for up
	rs          runstate   // the runstate
	area        uint64     // guest virtual address of the runstate area; 0: none

	online   atomic.Bool // !down, for lock-free readers
	starting atomic.Bool // start is set: the thread must take it
	// TLB flushes other vCPUs asked of this one (flushGen, counted) and
	// the last it served (flushAck); sleeping: its thread is blocked
	// (SCHEDOP_block or poll, or offline), so it runs no guest code
	// before it serves them.
	flushGen, flushAck atomic.Uint64
	sleeping           atomic.Bool
	// info is the vcpu_info VCPUOP_register_vcpu_info placed in guest
	// memory; nil: the shared_info slot. Read from any goroutine.
	info atomic.Pointer[xenabi.VCPUInfo]
}

// flushWaitMax bounds how long a vCPU waits for the others to serve the
// TLB flush it asked for; a vCPU that takes longer (its host thread
// starved, say) is logged and no longer waited for.
const flushWaitMax = 200 * time.Millisecond

// flushWait is a flush a vCPU asked of another and waits for.
type flushWait struct {
	vcpu int
	gen  uint64
}

// vcpuStart is a context VCPUOP_initialise loaded: the registers the
// vCPU's thread enters the guest with at VCPUOP_up.
type vcpuStart struct {
	regs  kvm.Regs
	sregs kvm.Sregs
	fpu   *[512]byte // the context's FXSAVE image (VGCF_i387_valid), or nil
	err   error      // the context's selectors could not be loaded
}

// runstate is struct vcpu_runstate_info.
type runstate struct {
	state int
	entry uint64    // state_entry_time, Xen system time (ns)
	time  [4]uint64 // ns spent in each state before entry
}

// initSched gives the domain's vCPUs their start-of-day scheduling state:
// vCPU 0 initialised and running, the others down.
func (d *Domain) initSched() {
	d.sched = make([]vcpuSched, len(d.cpus))
	now := d.SystemTime()
	for i := range d.sched {
		s := &d.sched[i]
		s.rs = runstate{state: RunstateOffline, entry: now}
		s.down = i != 0
		if i == 0 {
			s.initialised, s.rs.state = true, RunstateRunning
		}
		s.online.Store(!s.down)
	}
}

// VCPUOnline reports whether vCPU v is up (initialised and not down), as
// XEN_DOMCTL_getvcpuinfo's online: the vCPUs a save writes records for.
func (d *Domain) VCPUOnline(v int) bool {
	if v < 0 || v >= len(d.sched) {
		return false
	}
	return d.sched[v].online.Load()
}

// vcpuInfoOf returns vCPU id's vcpu_info: where the guest registered it
// (VCPUOP_register_vcpu_info), or its slot in shared_info.
func (d *Domain) vcpuInfoOf(id int) *xenabi.VCPUInfo {
	if id >= 0 && id < len(d.sched) {
		if vi := d.sched[id].info.Load(); vi != nil {
			return vi
		}
	}
	si := d.SharedInfo()
	return &si.Vcpu_info[id%len(si.Vcpu_info)] // len of an array: a constant, no read
}

// registerVCPUInfo is VCPUOP_register_vcpu_info (map_vcpu_info): the
// vcpu_info of vCPU id moves to offset in machine frame mfn, a RAM frame
// of the domain that takes a writable type reference for good; the
// current contents are copied there, then every selector bit and the
// upcall are set pending (the guest gets a spurious upcall, so none is
// lost). Allowed once per vCPU, on itself or on a vCPU that is down; the
// offset must leave the 64 bytes in the page and be 8-byte aligned.
func (d *Domain) registerVCPUInfo(c *call, id int, arg uint64) int64 {
	b, ok := c.arg(arg, 16)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	mfn, off := u64(b), u32(b[8:])
	size := uint32(unsafe.Sizeof(xenabi.VCPUInfo{}))
	if off > machine.PageSize-size || off%8 != 0 {
		return errno(xenabi.EINVAL)
	}
	s := &d.sched[id]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.info.Load() != nil || (id != c.id && !s.down) {
		return errno(xenabi.EINVAL)
	}
	p := d.pv
	p.mu.Lock()
	e := int64(errno(xenabi.EINVAL))
	if _, ram := p.ram(mfn); ram {
		e = p.getType(p.cpus[c.id], mfn, ptWritable)
	}
	p.mu.Unlock()
	if e != 0 {
		return errno(xenabi.EINVAL)
	}
	// Kept for the domain's life (a vcpu_info is never unregistered):
	// Xen writes it whenever it likes, so every migration round and
	// checkpoint sends its page (machine's vmmdirty.go).
	page, _, err := d.mem.Keep(mfn<<12, machine.PageSize)
	if err != nil {
		c.fail(fmt.Errorf("vcpu_info frame %#x: %w", mfn, err))
		return errno(xenabi.EINVAL)
	}
	vi := (*xenabi.VCPUInfo)(unsafe.Pointer(&page[off]))
	old := d.vcpuInfoOf(id)
	*vi = *old
	s.info.Store(vi)
	atomic.StoreUint64(&vi.Pending_sel, ^uint64(0))
	w := (*uint32)(unsafe.Pointer(&vi.Upcall_pending))
	atomic.OrUint32(w, 1)
	d.cpus[id].Interrupt()
	return 0
}

// restoredUp makes vCPU v initialised and up, as a restored vCPU whose
// context was online is.
func (d *Domain) restoredUp(v int) {
	s := &d.sched[v]
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initialised, s.down, s.start = true, false, nil
	s.online.Store(true)
	s.starting.Store(false)
	if s.rs.state == RunstateOffline {
		s.rs.state = RunstateRunning
	}
}

// ResetVCPU de-initialises secondary vCPU v, as XEN_DOMCTL_setvcpucontext
// with a NULL context (vcpu_reset) does for xc_domain_resume_any: it is
// down and not initialised, its runstate area is kept, and the guest must
// VCPUOP_initialise and VCPUOP_up it again. Call it while the domain is
// paused.
func (d *Domain) ResetVCPU(v int) error {
	if v <= 0 || v >= len(d.sched) {
		return fmt.Errorf("reset vCPU %d of domain %d: only a secondary vCPU (1 to %d) is reset", v, d.id, len(d.sched)-1)
	}
	s := &d.sched[v]
	s.mu.Lock()
	defer s.mu.Unlock()
	s.initialised, s.down, s.start = false, true, nil
	s.online.Store(false)
	s.starting.Store(false)
	if d.pv != nil {
		// Parked: its thread's state is the caller's until Unpause.
		c := d.pv.cpus[v]
		d.pv.resetCPU(c)
		c.ptq, c.ptqIdx, c.pending, c.saved, c.lastMsg = nil, nil, nil, nil, ""
	}
	return nil
}

// resetCPU drops the model state a context gave vCPU c (its base
// pointers' and GDT frames' type references) and returns it to its
// start-of-day state. It leaves what only the vCPU's thread touches
// (queued writes and register changes) alone.
func (p *pvDomain) resetCPU(c *pvCPU) {
	p.mu.Lock()
	for _, f := range c.gdtFrames {
		p.putType(c, f)
	}
	for i := 0; i < gdtGuestFrames; i++ {
		p.writePTE(nil, p.l1GDT+uint64(8*(c.id*32+i)), p.zeroPage|pteP|pteA|pteNX)
	}
	if c.kL4 != 0 && p.table(c.kL4) != nil {
		p.putType(c, c.kL4)
	}
	if c.uL4 != 0 && p.table(c.uL4) != nil {
		p.putType(c, c.uL4)
	}
	p.mu.Unlock()
	c.gdtFrames, c.kL4, c.uL4 = nil, 0, 0
	c.traps = [256]trapInfo{}
	c.event, c.failsafe, c.syscall, c.syscall32, c.sysenter = 0, 0, callback{}, callback{}, callback{}
	c.kernel, c.kernelSS, c.kernelSP = true, FlatKernelSS, 0
}

// runstateNow returns vCPU v's runstate as VCPUOP_get_runstate_info reads
// it (vcpu_runstate_get): the time in the current state counted up to now.
// s.mu held.
func (d *Domain) runstateNow(s *vcpuSched) runstate {
	r := s.rs
	if now := d.SystemTime(); now > r.entry {
		r.time[r.state] += now - r.entry
	}
	return r
}

func (r runstate) bytes() []byte {
	b := make([]byte, RunstateInfoSize)
	binary.LittleEndian.PutUint32(b, uint32(r.state))
	binary.LittleEndian.PutUint64(b[8:], r.entry)
	for i, t := range r.time {
		binary.LittleEndian.PutUint64(b[16+8*i:], t)
	}
	return b
}

// setRunstate moves vCPU id to state (vcpu_runstate_change) and writes its
// runstate area, as Xen's context switch does (update_runstate_area).
// The vCPU's own thread only.
func (d *Domain) setRunstate(id, state int) {
	if id < 0 || id >= len(d.sched) {
		return
	}
	s := &d.sched[id]
	s.mu.Lock()
	if s.rs.state == state {
		s.mu.Unlock()
		return
	}
	now := d.SystemTime()
	if now > s.rs.entry {
		s.rs.time[s.rs.state] += now - s.rs.entry
	} else {
		now = s.rs.entry // system time never runs back in a runstate
	}
	s.rs.state, s.rs.entry = state, now
	r, area := s.rs, s.area
	var kL4 uint64
	if c := d.pvCPUOf(id); c != nil {
		kL4 = c.kL4 // under s.mu, which VCPUOP_initialise holds as it sets it
	}
	s.mu.Unlock()
	if area != 0 && kL4 != 0 {
		// Through the vCPU's validated kernel L4; a vCPU with none
		// (reset, never initialised) has no address space to write in.
		pg := machine.Paging{CR0: 0x80050033, CR3: kL4 << 12, CR4: 0x620, EFER: 0xd01}
		d.writeRunstate(r, area, func(va uint64, b []byte) error {
			return d.mem.WriteVirtChecked(pg, va, b)
		})
	}
}

// pvCPUOf returns vCPU id's model, nil without the ring-3 model.
func (d *Domain) pvCPUOf(id int) *pvCPU {
	if d.pv == nil || id < 0 || id >= len(d.pv.cpus) {
		return nil
	}
	return d.pv.cpus[id]
}

// writeRunstate writes r at the guest's runstate area va with write, as
// update_runstate_area: with VMASST_TYPE_runstate_update_flag, the
// XEN_RUNSTATE_UPDATE bit is set in state_entry_time's top byte first and
// cleared last, so that a reader on another vCPU sees the update in
// progress. A fault is ignored, as Xen ignores it.
func (d *Domain) writeRunstate(r runstate, va uint64, write func(va uint64, b []byte) error) {
	if !addrOK(va) || !addrOK(va+RunstateInfoSize-1) {
		return
	}
	flag := false
	if d.pv != nil {
		d.pv.mu.Lock()
		flag = d.pv.vmassist&(1<<vmassistRunstateUpdateFlag) != 0
		d.pv.mu.Unlock()
	}
	b := r.bytes()
	if flag {
		b[15] |= RunstateUpdate >> 56
		if write(va+15, b[15:16]) != nil {
			return
		}
	}
	if write(va, b) != nil {
		return
	}
	if flag {
		b[15] &^= RunstateUpdate >> 56
		write(va+15, b[15:16])
	}
}

// RunstateArea returns the runstate area vCPU v registered (0 when none).
func (d *Domain) RunstateArea(v int) uint64 {
	if v < 0 || v >= len(d.sched) {
		return 0
	}
	s := &d.sched[v]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.area
}

// vcpuOpSMP is do_vcpu_op: cmd and vcpuid are 32-bit (int and unsigned
// int in Xen's prototype); a vcpuid past the domain's vCPUs is -ENOENT.
func (d *Domain) vcpuOpSMP(c *call) int64 {
	cmd, id := uint32(c.args[0]), uint32(c.args[1])
	if uint64(id) >= uint64(len(d.sched)) {
		return errno(xenabi.ENOENT)
	}
	s := &d.sched[id]
	arg := c.args[2]
	switch cmd {
	case xenabi.VCPUOpInitialise:
		return d.vcpuInitialise(c, int(id), arg)
	case xenabi.VCPUOpUp:
		s.mu.Lock()
		if !s.initialised {
			s.mu.Unlock()
			return errno(xenabi.EINVAL)
		}
		wake := s.down
		s.down = false
		s.online.Store(true)
		s.mu.Unlock()
		if wake {
			d.cpus[id].Wake()
		}
		return 0
	case xenabi.VCPUOpDown:
		last := true
		for i := range d.sched {
			if i != int(id) && d.sched[i].online.Load() {
				last = false
				break
			}
		}
		if last {
			// The last vCPU going down powers the domain off.
			d.shutdown(c.v, xenabi.ShutdownPoweroff, 0)
			return 0
		}
		s.mu.Lock()
		was := s.down
		s.down = true
		s.online.Store(false)
		s.mu.Unlock()
		if !was && int(id) != c.id {
			// Asynchronous for another vCPU, as on Xen: it stops before
			// it next enters the guest.
			d.cpus[id].Interrupt()
		}
		return 0
	case xenabi.VCPUOpIsUp:
		if s.online.Load() {
			return 1
		}
		return 0
	case xenabi.VCPUOpGetRunstateInfo:
		s.mu.Lock()
		r := d.runstateNow(s)
		s.mu.Unlock()
		if !c.write(arg, r.bytes()) {
			return errno(xenabi.EFAULT)
		}
		return 0
	case xenabi.VCPUOpRegisterRunstateMemoryArea:
		b, ok := c.arg(arg, 8)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		va := u64(b)
		if va != 0 && (!addrOK(va) || !addrOK(va+RunstateInfoSize-1)) {
			return errno(xenabi.EFAULT) // guest_handle_okay
		}
		s.mu.Lock()
		s.area = va
		r := d.runstateNow(s)
		if int(id) == c.id {
			r = s.rs
		}
		s.mu.Unlock()
		if va != 0 {
			// Written now, through the caller's page tables; a fault
			// is ignored, as Xen's __copy_to_guest result is.
			d.writeRunstate(r, va, func(va uint64, b []byte) error {
				if !c.write(va, b) {
					return machine.ErrFault
				}
				return nil
			})
		}
		return 0
	case xenabi.VCPUOpRegisterVCPUInfo:
		return d.registerVCPUInfo(c, int(id), arg)
	case xenabi.VCPUOpSetPeriodicTimer:
		b, ok := c.arg(arg, 8)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		period := u64(b)
		if period < periodMin || period > stimeDeltaMax {
			return errno(xenabi.EINVAL)
		}
		d.armPeriodic(int(id), period)
		return 0
	case xenabi.VCPUOpStopPeriodicTimer:
		d.armPeriodic(int(id), 0)
		return 0
	case xenabi.VCPUOpSetSingleshotTimer, xenabi.VCPUOpStopSingleshotTimer:
		if int(id) != c.id {
			return errno(xenabi.EINVAL) // a vCPU sets only its own timer
		}
		if cmd == xenabi.VCPUOpStopSingleshotTimer {
			d.armTimer(c.id, 0)
			return 0
		}
		return singleshot(c, arg)
	}
	return errno(xenabi.ENOSYS)
}

// vcpuInitialise is VCPUOP_initialise (default_initialise_vcpu): the
// context is read (-EFAULT), a vCPU already initialised refuses it
// (-EEXIST), and arch_set_info_guest's checks give their errno. The vCPU
// stays down until VCPUOP_up.
func (d *Domain) vcpuInitialise(c *call, id int, arg uint64) int64 {
	var ctx xenabi.VCPUGuestContext
	if !c.read(arg, xenabi.Bytes(&ctx)) {
		return errno(xenabi.EFAULT)
	}
	s := &d.sched[id]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initialised {
		return errno(xenabi.EEXIST)
	}
	p := d.pv
	cpu := p.cpus[id]
	if err := p.setInfoGuest(cpu, nil, &ctx); err != nil {
		if d.trace != nil {
			d.trace.Info("vcpu initialise refused", "dom", d.id, "vcpu", id, "err", err)
		}
		p.resetCPU(cpu)
		return errnoOf(err)
	}
	st := &vcpuStart{}
	st.regs, st.sregs, st.err = p.contextRegs(cpu, &ctx)
	if ctx.Flags&xenabi.VGCFI387Valid != 0 {
		// arch_set_info_guest copies fpu_ctxt into the new vCPU.
		st.fpu = new([512]byte)
		copy(st.fpu[:], xenabi.Bytes(&ctx.Fpu_ctxt))
	}
	s.start, s.initialised = st, true
	s.starting.Store(true)
	return 0
}

// offline runs on vCPU c's thread before it enters the guest: while the
// vCPU is down it stays off the guest (RUNSTATE_offline), blocked until
// VCPUOP_up wakes it; a pause or stop that wakes it instead makes the
// entry skipped (machine.ErrSkipEntry), so that it parks. At up it loads
// the context VCPUOP_initialise left, if any.
func (p *pvDomain) offline(v *machine.VCPU, c *pvCPU) error {
	d := p.d
	s := &d.sched[c.id]
	if s.online.Load() && !c.offline && !s.starting.Load() {
		return nil // up, as it was at its last entry
	}
	for woken := false; ; woken = true {
		s.mu.Lock()
		down, st := s.down, s.start
		if !down {
			s.start = nil
			s.starting.Store(false)
		}
		s.mu.Unlock()
		if !down {
			c.offline = false
			if st != nil {
				if err := p.loadStart(v, c, st); err != nil {
					return err
				}
			}
			d.setRunstate(c.id, RunstateRunning)
			return nil
		}
		if !c.offline {
			c.offline = true
			d.setRunstate(c.id, RunstateOffline)
		}
		if woken {
			return machine.ErrSkipEntry
		}
		d.sleep(c.id, true)
		err := v.Block()
		d.sleep(c.id, false)
		if err != nil {
			return err
		}
	}
}

// loadStart makes the registers of an initialised vCPU's context the
// ones it enters the guest with, on its own thread.
func (p *pvDomain) loadStart(v *machine.VCPU, c *pvCPU, st *vcpuStart) error {
	if st.err != nil {
		// Xen's first return to such a context faults, and a fault with
		// no valid handler crashes the domain.
		return c.crash("vCPU %d's initial context: %v", c.id, st.err)
	}
	r, err := v.Regs()
	if err != nil {
		return err
	}
	*r = st.regs
	if err := v.SetRegsDirty(); err != nil {
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	*s = st.sregs
	if err := v.SetSregsDirty(); err != nil {
		return err
	}
	if st.fpu != nil {
		return v.SetFXSave(*st.fpu)
	}
	return nil
}

// vcpuEntry is the machine's BeforeEntry in the ring-3 model: what
// beforeEntry does, after a vCPU that is down has stopped (offline) and a
// TLB flush another vCPU asked for is queued.
func (p *pvDomain) vcpuEntry(v *machine.VCPU) error {
	c := p.cpus[v.ID]
	if c.saved == nil && len(c.pending) == 0 && !c.syncCR3 && !c.syncTS && len(c.ptq) == 0 {
		if err := p.offline(v, c); err != nil {
			return err
		}
	}
	p.serveFlush(c)
	if len(c.flushWaits) > 0 {
		p.waitFlushes(c)
	}
	return p.beforeEntry(v)
}

// serveFlush queues the TLB flush other vCPUs asked of c, so that it runs
// (the write loop's CR3 reload) before any more guest code, and acks it.
// Its own thread only.
func (p *pvDomain) serveFlush(c *pvCPU) {
	s := &p.d.sched[c.id]
	gen := s.flushGen.Load()
	if s.flushAck.Load() >= gen {
		return
	}
	if c.saved == nil && c.kL4 != 0 {
		p.mu.Lock()
		p.flushTLB(c)
		p.mu.Unlock()
	} // else the write loop in flight ends with a CR3 reload
	s.flushAck.Store(gen)
}

// waitFlushes waits, before c enters the guest again, until every vCPU
// it asked for a TLB flush has served it or runs no guest code (blocked,
// down or parked), as Xen's flush waits for its IPIs; meanwhile it serves
// the flushes asked of it, so two vCPUs flushing each other never wait
// for each other.
func (p *pvDomain) waitFlushes(c *pvCPU) {
	deadline := time.Now().Add(flushWaitMax)
	for {
		p.serveFlush(c)
		rest := c.flushWaits[:0]
		for _, w := range c.flushWaits {
			t := &p.d.sched[w.vcpu]
			if t.flushAck.Load() >= w.gen || t.sleeping.Load() || !t.online.Load() ||
				(p.d.m != nil && p.d.m.VCPUs()[w.vcpu].Parked()) {
				continue
			}
			rest = append(rest, w)
		}
		c.flushWaits = rest
		if len(rest) == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.d.log.Warn("TLB flush not served in time", "domain", p.d.id, "vcpu", c.id, "waiting_for", rest[0].vcpu)
			c.flushWaits = nil
			return
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// vcpuSettle is the machine's Settle in the ring-3 model: a vCPU that
// stopped for down holds no guest state to settle.
func (p *pvDomain) vcpuSettle(v *machine.VCPU) (bool, error) {
	if p.cpus[v.ID].offline {
		return true, nil
	}
	return p.settle(v)
}

// flushOthers asks every other online vCPU to flush its TLB
// (MMUEXT_TLB_FLUSH_MULTI/ALL, INVLPG_MULTI/ALL) and kicks it out of the
// guest; c waits for them before it next enters the guest (waitFlushes),
// not under the hypercall, which may hold the domain's locks.
func (p *pvDomain) flushOthers(c *pvCPU) {
	for i := range p.d.sched {
		if i == c.id || !p.d.sched[i].online.Load() {
			continue
		}
		gen := p.d.sched[i].flushGen.Add(1)
		c.flushWaits = append(c.flushWaits, flushWait{vcpu: i, gen: gen})
		p.d.cpus[i].Interrupt()
	}
}

// sleep marks vCPU id's thread as blocked (true) or not, for waitFlushes.
func (d *Domain) sleep(id int, blocked bool) {
	if id >= 0 && id < len(d.sched) {
		d.sched[id].sleeping.Store(blocked)
	}
}
