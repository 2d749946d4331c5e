package hvm

import (
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Event channels of an HVM or PVH guest, with the 2-level ABI's pending
// and mask bits in shared_info and event delivery as Xen does it for HVM
// (xen-hvm-pvh.md §6): an event sets its pending bit; if the port is
// unmasked, the word's bit in the target vCPU's evtchn_pending_sel; if
// that is new, vcpu_info.evtchn_upcall_pending; and only that flag's 0->1
// change asserts the vCPU's callback. evtchn_upcall_mask is ignored, as
// Xen ignores it for HVM (masking is EFLAGS.IF).
//
// The callback is, in Xen's order of preference (hvm_assert_evtchn_irq):
// the vCPU's own upcall vector (HVMOP_set_evtchn_upcall_vector), sent to
// its in-kernel LAPIC as a fixed, edge-triggered interrupt once per 0->1
// change (the guest EOIs it; a software-disabled LAPIC drops it); else
// the global callback vector (HVM_PARAM_CALLBACK_IRQ type 2), injected
// bypassing the LAPIC (no IRR, ISR or EOI) at every entry while the
// vCPU's upcall_pending is set and it can take an interrupt, as
// hvm_vcpu_has_pending_irq offers it (machine.VCPU.PendingInterrupt);
// else, for vCPU 0 only, the callback GSI (type 0), a level-triggered
// IO-APIC line held while vCPU 0's upcall_pending is set. With none
// registered nothing is injected. The PCI INTx type (1) is accepted and
// raises nothing: there is no PCI bus, and so no INTx routing, here.

// Event channel ops (public/event_channel.h) and port states.
const (
	evtchnopBindInterdomain = 0
	evtchnopClose           = 3
	evtchnopAllocUnbound    = 6
	evtchnopBindIPI         = 7
	evtchnopUnmask          = 9
	evtchnStatUnbound       = 1
	evtchnStatIPI           = 5
	// nrPorts is libxl's default max_event_channels (1023) plus port 0;
	// it fits both shared_info layouts (1024 and 4096 ports).
	nrPorts = 1024
)

// HVMOP_set_evtchn_upcall_vector and the CALLBACK_IRQ type that names a
// vector (public/hvm/params.h HVM_PARAM_CALLBACK_TYPE_VECTOR).
const (
	hvmopSetEvtchnUpcallVector = 23
	callbackTypeVector         = 2
)

// evtPort is one of the guest's ports. backend, for a port bound to a
// dom0 backend (xenstored, the console), is called on a send.
type evtPort struct {
	state      uint8
	vcpu       uint32
	remoteDom  uint16
	remotePort uint32
	backend    func()
}

// vcpuEvt is a vCPU's delivery state.
type vcpuEvt struct {
	infoGPA    uint64 // registered vcpu_info (VCPUOP_register_vcpu_info); 0: its shared_info slot
	upcallVec  uint8  // HVMOP_set_evtchn_upcall_vector; 0: none
	edge       bool   // an upcall-vector edge not yet injected
	offered    bool   // the edge was offered at injection count offeredAt
	offeredAt  uint64
	registered bool
}

// shinfoLayout is where the 2-level bits are: the 64-bit layout, or the
// compat one of a guest that latched 32-bit (hvm_latch_shinfo_size).
type shinfoLayout struct {
	wordBits, maskOff, selOff int
}

const evtchnPendingOff = 2048

func (d *Domain) layoutLocked() shinfoLayout {
	if d.compat {
		return shinfoLayout{32, 2176, 4}
	}
	return shinfoLayout{64, 2560, 8}
}

// sharedInfoLocked is the shared_info page: the guest's frame once
// XENMEM_add_to_physmap placed it, the domain's own page before.
func (d *Domain) sharedInfoLocked() []byte {
	if d.sharedInfo != 0 {
		if p, err := d.mem.Page(d.sharedInfo << 12); err == nil {
			return p
		}
	}
	return d.shinfo[:]
}

// vcpuInfoLocked is vCPU n's 64-byte vcpu_info, or nil for a vCPU past
// shared_info's 32 slots that registered none.
func (d *Domain) vcpuInfoLocked(n int) []byte {
	if n < len(d.vcpus) && d.vcpus[n].infoGPA != 0 {
		if s, err := d.mem.Slice(d.vcpus[n].infoGPA, 64); err == nil {
			return s
		}
		return nil
	}
	if n >= 32 {
		return nil
	}
	return d.sharedInfoLocked()[64*n : 64*n+64]
}

// orBit sets bit in the word of wordBits at b[off:] and reports whether it
// was set already. The guest writes the same words: atomically.
func orBit(b []byte, off, wordBits int, bit uint) bool {
	if wordBits == 32 {
		m := uint32(1) << bit
		return atomic.OrUint32((*uint32)(unsafe.Pointer(&b[off])), m)&m != 0
	}
	m := uint64(1) << bit
	return atomic.OrUint64((*uint64)(unsafe.Pointer(&b[off])), m)&m != 0
}

func clearBit(b []byte, off, wordBits int, bit uint) bool {
	if wordBits == 32 {
		m := uint32(1) << bit
		return atomic.AndUint32((*uint32)(unsafe.Pointer(&b[off])), ^m)&m != 0
	}
	m := uint64(1) << bit
	return atomic.AndUint64((*uint64)(unsafe.Pointer(&b[off])), ^m)&m != 0
}

func testBit(b []byte, off, wordBits int, bit uint) bool {
	if wordBits == 32 {
		return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off])))&(1<<bit) != 0
	}
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&b[off])))&(1<<bit) != 0
}

// raise marks port pending with the 2-level ABI's steps and, on a 0->1
// change of its vCPU's upcall_pending, asserts the vCPU's callback.
func (d *Domain) raise(port uint32) {
	d.mu.Lock()
	p := d.portLocked(port)
	if p == nil {
		d.mu.Unlock()
		return
	}
	vcpu := p.vcpu
	l := d.layoutLocked()
	si := d.sharedInfoLocked()
	word, bit := int(port)/l.wordBits, uint(port)%uint(l.wordBits)
	if orBit(si, evtchnPendingOff+word*l.wordBits/8, l.wordBits, bit) ||
		testBit(si, l.maskOff+word*l.wordBits/8, l.wordBits, bit) {
		d.mu.Unlock()
		return
	}
	d.markVCPULocked(int(vcpu), word, l)
}

// markVCPULocked sets the selector bit and upcall_pending of vCPU n and
// asserts its callback on a 0->1 change of upcall_pending. It releases
// d.mu.
func (d *Domain) markVCPULocked(n, word int, l shinfoLayout) {
	vi := d.vcpuInfoLocked(n)
	if vi == nil || orBit(vi, l.selOff, l.wordBits, uint(word)) || orBit(vi, 0, 32, 0) {
		d.mu.Unlock()
		return
	}
	d.assertLocked(n)
}

// assertLocked is hvm_assert_evtchn_irq for vCPU n, whose upcall_pending
// just went 0->1. With in-kernel LAPICs (every HVM and PVH machine the
// toolstack builds): the vCPU's upcall vector is sent to its LAPIC as a
// fixed, edge-triggered interrupt (vlapic_set_irq: it obeys TPR and the
// guest EOIs it); else, for vCPU 0, the callback GSI is asserted
// (hvm_set_callback_irq_level); else the vCPU is kicked to look at
// pendingInterrupt (the global callback vector). On a machine without
// LAPICs the upcall vector's edge is injected directly by
// pendingInterrupt. It releases d.mu.
func (d *Domain) assertLocked(n int) {
	lapic := d.m != nil && d.m.HasLAPIC()
	var msi uint8
	var line *machine.LevelIRQ
	kick := true
	switch {
	case n < len(d.vcpus) && d.vcpus[n].upcallVec != 0 && lapic:
		msi, kick = d.vcpus[n].upcallVec, false
	case n < len(d.vcpus) && d.vcpus[n].upcallVec != 0:
		d.vcpus[n].edge, d.vcpus[n].offered = true, false
	case n == 0 && d.cbLine != nil:
		line, kick = d.cbLine, false
	}
	d.mu.Unlock()
	if d.m == nil || n >= len(d.m.VCPUs()) {
		return
	}
	if msi != 0 {
		if _, err := d.m.SignalMSI(apicID(n), msi); err != nil {
			d.warnOnce("the upcall vector could not be sent", "vcpu", n, "err", err)
		}
	}
	if line != nil {
		if err := line.Assert(); err != nil {
			d.warnOnce("the callback GSI could not be asserted", "err", err)
		}
	}
	if kick {
		d.m.VCPUs()[n].Interrupt()
	}
}

// apicID is vCPU n's LAPIC ID: KVM's, which is the vCPU's index. (Xen's
// is 2n; with one vCPU both are 0.)
func apicID(n int) uint32 { return uint32(n) }

// pendingInterrupt is every vCPU's PendingInterrupt: on a machine without
// LAPICs the upcall vector's edge until it has been injected; else the
// global callback vector while upcall_pending is set, injected bypassing
// the LAPIC (hvm_vcpu_has_pending_irq).
func (d *Domain) pendingInterrupt(v *machine.VCPU) (uint8, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v.ID < len(d.vcpus) && d.vcpus[v.ID].upcallVec != 0 {
		if d.m != nil && d.m.HasLAPIC() {
			return 0, false // sent to the LAPIC by assertLocked
		}
		e := &d.vcpus[v.ID]
		if !e.edge {
			return 0, false
		}
		if e.offered && v.Injected() != e.offeredAt {
			e.edge, e.offered = false, false // taken
			return 0, false
		}
		e.offered, e.offeredAt = true, v.Injected()
		return e.upcallVec, true
	}
	cb := d.params[ParamCallbackIRQ]
	if cb>>56 != callbackTypeVector {
		return 0, false
	}
	if !d.upcallPendingLocked(v.ID) {
		return 0, false
	}
	return uint8(cb), true
}

// Callback GSI (HVM_PARAM_CALLBACK_IRQ type 0): Xen holds the GSI's line
// high while vCPU 0's upcall_pending is set and lowers it at a VM entry
// after the guest cleared it (hvm_maybe_deassert_evtchn_irq). Here the
// line is a machine.LevelIRQ: asserted on the 0->1 change, lowered by KVM
// when the guest EOIs the interrupt, and asserted again shortly after if
// upcall_pending is still set then (callbackEOI). So a guest that clears the flag
// without taking the interrupt still takes it once (Xen would have
// lowered the line first); one that takes it sees Xen's behaviour.
// GSIs past the in-kernel IO-APIC's 24 pins (Xen has 48) and machines
// without an IO-APIC (PVH, where Xen ignores the type too) raise nothing.
const (
	callbackTypeGSI = 0
	xenNrGSIs       = 48 // a domU's vIOAPIC pins
)

// setCallbackLocked is hvm_set_callback_via for a new CALLBACK_IRQ value:
// the callback GSI's line is bound to the new GSI, or released. It
// returns a line to close once d.mu is released.
func (d *Domain) setCallbackLocked(val uint64) (old *machine.LevelIRQ) {
	gsi := uint32(0)
	if val>>56 == callbackTypeGSI {
		gsi = uint32(uint8(val))
		if gsi >= xenNrGSIs {
			gsi = 0 // Xen: none
		}
	}
	if d.cbLine != nil && d.cbGSI == gsi {
		return nil
	}
	old, d.cbLine, d.cbGSI = d.cbLine, nil, 0
	if gsi == 0 || d.m == nil || d.m.IRQChip() != machine.IRQChipFull {
		return old
	}
	if gsi >= machine.NrGSIs {
		d.warnOnceLocked("the callback GSI is beyond the IO-APIC's pins: no events will be raised", "gsi", gsi, "pins", machine.NrGSIs)
		return old
	}
	line, err := d.m.NewLevelIRQ(gsi, d.callbackEOI)
	if err != nil {
		d.warnOnceLocked("the callback GSI could not be bound: no events will be raised", "gsi", gsi, "err", err)
		return old
	}
	d.cbLine, d.cbGSI = line, gsi
	return old
}

// callbackEOIDelay is how long after an EOI of the callback GSI's
// interrupt vCPU 0's upcall_pending is looked at, to raise the line again
// if it is still set. On a host whose LAPIC keeps the interrupt in
// service until the guest's EOI, the guest cleared the flag before it
// EOIed; PVM's in-kernel LAPIC acknowledges and EOIs a level interrupt
// as the guest takes it (TestLevelIRQResamples, the ISR reads clear), so
// the flag is looked at once the handler had time to clear it, and a
// handler that does gets one interrupt, not two.
const callbackEOIDelay = 100 * time.Microsecond

// callbackEOI runs, on the line's goroutine, after an EOI of the
// callback GSI's interrupt lowered the line: it is raised again while
// vCPU 0's upcall_pending is still set.
func (d *Domain) callbackEOI() {
	time.Sleep(callbackEOIDelay)
	d.mu.Lock()
	line := d.cbLine // the line now bound: an old one's EOI asks for it
	again := line != nil && d.upcallPendingLocked(0)
	d.mu.Unlock()
	if again {
		if err := line.Assert(); err != nil {
			d.warnOnce("the callback GSI could not be asserted", "err", err)
		}
	}
}

// assertAllLocked is what Xen does after every CALLBACK_IRQ set: each
// vCPU whose upcall_pending is set has its callback asserted, so events
// raised before the guest chose a method fire now. It releases d.mu.
func (d *Domain) assertAllLocked() {
	var pending []int
	for n := range d.nrVCPUs() {
		if d.upcallPendingLocked(n) {
			pending = append(pending, n)
		}
	}
	d.mu.Unlock()
	for _, n := range pending {
		d.mu.Lock()
		d.assertLocked(n)
	}
}

// upcallPendingLocked reads vCPU n's evtchn_upcall_pending without
// marking the page dirty (it is asked before every entry).
func (d *Domain) upcallPendingLocked(n int) bool {
	var gpa uint64
	switch {
	case n < len(d.vcpus) && d.vcpus[n].infoGPA != 0:
		gpa = d.vcpus[n].infoGPA
	case n >= 32:
		return false
	case d.sharedInfo == 0:
		return d.shinfo[64*n] != 0
	default:
		gpa = d.sharedInfo<<12 + 64*uint64(n)
	}
	var b [1]byte
	return d.mem.Read(gpa, b[:]) == nil && b[0] != 0
}

// UpcallPending reports vCPU n's evtchn_upcall_pending, for tests and
// reports.
func (d *Domain) UpcallPending(n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.upcallPendingLocked(n)
}

// StoreEvent is xenstored's notification of the guest: it raises the
// xenstore port (the ring's notify).
func (d *Domain) StoreEvent() { d.raise(StorePort) }

// allocPortLocked takes the lowest free port (never 0).
func (d *Domain) allocPortLocked() (uint32, int64) {
	for p := 1; p < nrPorts; p++ {
		if p >= len(d.ports) {
			d.ports = append(d.ports, make([]evtPort, p+1-len(d.ports))...)
		}
		if d.ports[p].state == evtchnStatClosed {
			d.ports[p] = evtPort{}
			return uint32(p), 0
		}
	}
	return 0, errno(xenabi.ENOSPC)
}

// newPort allocates a port and makes it what bind returns for it (bind
// runs under d.mu, after the allocation; an error leaves the port free),
// then writes the port number to guest address out: the tail of
// alloc_unbound, bind_interdomain and bind_ipi.
func (d *Domain) newPort(c *call, out uint64, bind func(port uint32) (evtPort, int64)) int64 {
	d.mu.Lock()
	port, e := d.allocPortLocked()
	if e == 0 {
		var p evtPort
		if p, e = bind(port); e == 0 {
			d.ports[port] = p
		}
	}
	d.mu.Unlock()
	if e != 0 {
		return e
	}
	if !c.write(out, binary.LittleEndian.AppendUint32(nil, port)) {
		return errno(xenabi.EFAULT)
	}
	return 0
}

// bindBackendLocked binds port to a dom0 backend, as libxl's
// alloc_unbound and the backend's bind leave it.
func (d *Domain) bindBackendLocked(port uint32, backend func()) {
	if port >= uint32(len(d.ports)) {
		d.ports = append(d.ports, make([]evtPort, port+1-uint32(len(d.ports)))...)
	}
	d.ports[port] = evtPort{state: evtchnStatInterdom, backend: backend}
}

func (d *Domain) portLocked(p uint32) *evtPort {
	if p == 0 || p >= uint32(len(d.ports)) || d.ports[p].state == evtchnStatClosed {
		return nil
	}
	return &d.ports[p]
}

// eventOp runs the event-channel ops on ports (all but FIFO and status).
func (c *call) eventOp(cmd, arg uint64) int64 {
	d := c.d
	switch cmd {
	case evtchnopSend:
		port, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		d.mu.Lock()
		p := d.portLocked(port)
		if p == nil {
			d.mu.Unlock()
			return errno(xenabi.EINVAL)
		}
		st, backend, peer := p.state, p.backend, p.remotePort
		d.mu.Unlock()
		switch {
		case st == evtchnStatInterdom && backend != nil:
			backend()
		case st == evtchnStatInterdom:
			d.raise(peer) // a loopback channel
		case st == evtchnStatIPI:
			d.raise(port)
		}
		return 0 // unbound: dropped, as evtchn_send does
	case evtchnopAllocUnbound: // {dom u16, remote_dom u16, port u32}
		b, ok := c.read(arg, 8)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		dom, remote := binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint16(b[2:])
		if dom != DomIDSelf && dom != d.id {
			return errno(xenabi.EPERM) // a domU allocates only its own ports
		}
		if remote == DomIDSelf {
			remote = d.id
		}
		if remote != 0 && remote != d.id {
			return errno(xenabi.ESRCH)
		}
		return d.newPort(c, arg+4, func(uint32) (evtPort, int64) {
			return evtPort{state: evtchnStatUnbound, remoteDom: remote}, 0
		})
	case evtchnopBindInterdomain: // {remote_dom u16, remote_port u32 @4, local_port u32 @8}
		b, ok := c.read(arg, 12)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		remote, rport := binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint32(b[4:])
		if remote == DomIDSelf {
			remote = d.id
		}
		if remote != d.id {
			// dom0's backends offer no unbound ports here: xenstored and
			// the console are bound by the toolstack.
			if remote == 0 {
				return errno(xenabi.EINVAL)
			}
			return errno(xenabi.ESRCH)
		}
		return d.newPort(c, arg+8, func(port uint32) (evtPort, int64) {
			r := d.portLocked(rport)
			if r == nil || r.state != evtchnStatUnbound || r.remoteDom != d.id {
				return evtPort{}, errno(xenabi.EINVAL)
			}
			*r = evtPort{state: evtchnStatInterdom, remoteDom: d.id, remotePort: port}
			return evtPort{state: evtchnStatInterdom, remoteDom: d.id, remotePort: rport}, 0
		})
	case evtchnopBindIPI: // {vcpu u32, port u32}
		vcpu, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if int(vcpu) >= d.nrVCPUs() {
			return errno(xenabi.ENOENT)
		}
		return d.newPort(c, arg+4, func(uint32) (evtPort, int64) {
			return evtPort{state: evtchnStatIPI, vcpu: vcpu}, 0
		})
	case evtchnopClose:
		port, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		p := d.portLocked(port)
		if p == nil {
			return errno(xenabi.EINVAL)
		}
		if p.state == evtchnStatInterdom && p.backend == nil && p.remotePort != port {
			if r := d.portLocked(p.remotePort); r != nil {
				*r = evtPort{state: evtchnStatUnbound, remoteDom: d.id}
			}
		}
		*p = evtPort{}
		return 0
	case evtchnopUnmask:
		port, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		d.mu.Lock()
		p := d.portLocked(port)
		if p == nil {
			d.mu.Unlock()
			return errno(xenabi.EINVAL)
		}
		l := d.layoutLocked()
		si := d.sharedInfoLocked()
		word, bit := int(port)/l.wordBits, uint(port)%uint(l.wordBits)
		if !clearBit(si, l.maskOff+word*l.wordBits/8, l.wordBits, bit) ||
			!testBit(si, evtchnPendingOff+word*l.wordBits/8, l.wordBits, bit) {
			d.mu.Unlock()
			return 0
		}
		d.markVCPULocked(int(p.vcpu), word, l)
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// nrVCPUs is the domain's vCPU count.
func (d *Domain) nrVCPUs() int {
	if d.m == nil {
		return 1
	}
	return len(d.m.VCPUs())
}

// setUpcallVector is HVMOP_set_evtchn_upcall_vector ({u32 vcpu; u8
// vector}): vectors below 0x10 are -EINVAL, an absent vCPU -ENOENT.
func (c *call) setUpcallVector(arg uint64) int64 {
	b, ok := c.read(arg, 8)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	vcpu, vec := binary.LittleEndian.Uint32(b), b[4]
	if vec < 0x10 {
		return errno(xenabi.EINVAL)
	}
	d := c.d
	if int(vcpu) >= d.nrVCPUs() {
		return errno(xenabi.ENOENT)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ensureVCPUsLocked()
	d.vcpus[vcpu].upcallVec = vec
	return 0
}

func (d *Domain) ensureVCPUsLocked() {
	if n := d.nrVCPUs(); len(d.vcpus) < n {
		d.vcpus = append(d.vcpus, make([]vcpuEvt, n-len(d.vcpus))...)
	}
}

// VCPUOP_register_vcpu_info's argument: {u64 mfn; u32 offset; u32 rsvd}.
const vcpuRegisterVCPUInfoSize = 16

// vcpuOp is the part of vcpu_op an HVM guest uses here:
// VCPUOP_register_vcpu_info (map_guest_area): the 64-byte area must be in
// one RAM page, once per vCPU (-EBUSY after); the current vcpu_info is
// copied there, every selector bit set and events marked pending (the
// spurious upcall Xen makes).
func (c *call) vcpuOp(cmd, vcpu, arg uint64) int64 {
	d := c.d
	if cmd != xenabi.VCPUOpRegisterVCPUInfo {
		return errno(xenabi.ENOSYS)
	}
	if vcpu >= uint64(d.nrVCPUs()) {
		return errno(xenabi.ENOENT)
	}
	b, ok := c.read(arg, vcpuRegisterVCPUInfoSize)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	gfn, off := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:])
	if off > machine.PageSize-64 || gfn >= 1<<40 || !d.isRAM(gfn<<12) {
		return errno(xenabi.EINVAL)
	}
	d.mu.Lock()
	d.ensureVCPUsLocked()
	e := &d.vcpus[vcpu]
	if e.registered {
		d.mu.Unlock()
		return errno(xenabi.EBUSY)
	}
	old := append([]byte(nil), d.vcpuInfoLocked(int(vcpu))...)
	gpa := gfn<<12 + uint64(off)
	dst, err := d.mem.Slice(gpa, 64)
	if err != nil {
		d.mu.Unlock()
		return errno(xenabi.EINVAL)
	}
	copy(dst, old)
	e.registered, e.infoGPA = true, gpa
	l := d.layoutLocked()
	for i := 0; i < l.wordBits/8; i++ {
		dst[l.selOff+i] = 0xff
	}
	// Marked pending: the spurious upcall (a 0->1 edge only if it was
	// clear).
	if orBit(dst, 0, 32, 0) {
		d.mu.Unlock()
		return 0
	}
	d.assertLocked(int(vcpu)) // releases d.mu
	return 0
}
