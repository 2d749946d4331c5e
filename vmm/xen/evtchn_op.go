package xen

import (
	"encoding/binary"
	"time"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// arg reads an n-byte hypercall argument struct from guest memory.
func (c *call) arg(va uint64, n int) ([]byte, bool) {
	b := make([]byte, n)
	return b, c.read(va, b)
}

func u16(b []byte) uint16 { return binary.LittleEndian.Uint16(b) }
func u32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func u64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// self resolves DOMID_SELF; an unprivileged guest may name only itself.
func (c *call) self(dom uint16) (uint16, bool) {
	if dom == xenabi.DomidSelf || dom == c.d.id {
		return c.d.id, true
	}
	return 0, false
}

// Sizes of the EVTCHNOP argument structs.
var evtchnArgSize = map[uint64]int{
	EvtchnopBindInterdomain: 12, EvtchnopBindVIRQ: 12, EvtchnopClose: 4, EvtchnopSend: 4,
	EvtchnopStatus: 24, EvtchnopAllocUnbound: 8, EvtchnopBindIPI: 8, EvtchnopBindVCPU: 8,
	EvtchnopUnmask: 4,
}

// FIFO ABI commands (event_channel.h).
const (
	EvtchnopInitControl = 11
	EvtchnopExpandArray = 12
	EvtchnopSetPriority = 13
)

// fifoOp answers the FIFO event-channel ABI, which xenresume does not
// offer: init_control's arguments are checked as evtchn_fifo_init_control
// checks them (a misaligned or too large offset or a GFN that is not the
// domain's is -EINVAL, a vCPU it lacks -ENOENT), and a valid request is
// -EOPNOTSUPP, as from a Xen with the FIFO ABI disabled, so a guest keeps
// the 2-level ABI; expand_array and set_priority are -EOPNOTSUPP, as
// before init_control succeeded.
func fifoOp(c *call) int64 {
	if c.args[0] != EvtchnopInitControl {
		return errno(xenabi.EOPNOTSUPP)
	}
	b, ok := c.arg(c.args[1], 24)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	gfn, off, vcpu := u64(b), u32(b[8:]), u32(b[12:])
	const controlBlock = 64 // struct evtchn_fifo_control_block
	if off&7 != 0 || off > 4096-controlBlock {
		return errno(xenabi.EINVAL)
	}
	if uint64(vcpu) >= uint64(len(c.d.cpus)) {
		return errno(xenabi.ENOENT)
	}
	if _, owned := c.d.frames.PFN(gfn); !owned {
		return errno(xenabi.EINVAL)
	}
	return errno(xenabi.EOPNOTSUPP)
}

func eventChannelOp(c *call) int64 {
	d := c.d
	switch c.args[0] {
	case EvtchnopInitControl, EvtchnopExpandArray, EvtchnopSetPriority:
		return fifoOp(c)
	}
	size, ok := evtchnArgSize[c.args[0]]
	if !ok {
		return errno(xenabi.ENOSYS)
	}
	va := c.args[1]
	b, ok := c.arg(va, size)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	out := func(off int, v uint32) int64 {
		binary.LittleEndian.PutUint32(b[off:], v)
		if !c.write(va, b) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	switch c.args[0] {
	case EvtchnopAllocUnbound:
		if _, ok := c.self(u16(b)); !ok {
			return errno(xenabi.EPERM)
		}
		remote := u16(b[2:])
		if remote == xenabi.DomidSelf {
			remote = d.id
		}
		p, err := d.AllocUnbound(remote)
		if err != nil {
			return errnoOf(err)
		}
		return out(4, p)
	case EvtchnopBindInterdomain:
		remote := u16(b)
		if remote == xenabi.DomidSelf {
			remote = d.id
		}
		p, err := d.BindInterdomain(remote, u32(b[4:]), nil)
		if err != nil {
			return errnoOf(err)
		}
		return out(8, p)
	case EvtchnopBindVIRQ:
		virq, vcpu := u32(b), u32(b[4:])
		if virq >= NrVIRQs {
			return errno(xenabi.EINVAL)
		}
		if vcpu >= uint32(len(d.cpus)) {
			return errno(xenabi.ENOENT)
		}
		p, err := d.bindLocal(evtPort{state: StatVIRQ, virq: virq, vcpu: vcpu})
		if err != nil {
			return errnoOf(err)
		}
		return out(8, p)
	case EvtchnopBindIPI:
		vcpu := u32(b)
		if vcpu >= uint32(len(d.cpus)) {
			return errno(xenabi.ENOENT)
		}
		p, err := d.bindLocal(evtPort{state: StatIPI, vcpu: vcpu})
		if err != nil {
			return errnoOf(err)
		}
		return out(4, p)
	case EvtchnopClose:
		if err := d.Close(u32(b)); err != nil {
			return errnoOf(err)
		}
		return 0
	case EvtchnopSend:
		if err := d.Send(u32(b)); err != nil {
			return errnoOf(err)
		}
		return 0
	case EvtchnopUnmask:
		if err := d.unmask(u32(b)); err != nil {
			return errnoOf(err)
		}
		return 0
	case EvtchnopBindVCPU:
		if err := d.bindVCPU(u32(b), u32(b[4:])); err != nil {
			return errnoOf(err)
		}
		return 0
	case EvtchnopStatus:
		if _, ok := c.self(u16(b)); !ok {
			return errno(xenabi.EPERM)
		}
		st, err := d.Status(u32(b[4:]))
		if err != nil {
			return errnoOf(err)
		}
		binary.LittleEndian.PutUint32(b[8:], uint32(st.State))
		binary.LittleEndian.PutUint32(b[12:], st.VCPU)
		clear(b[16:])
		switch st.State {
		case StatUnbound:
			binary.LittleEndian.PutUint16(b[16:], st.RemoteDom)
		case StatInterdomain:
			binary.LittleEndian.PutUint16(b[16:], st.RemoteDom)
			binary.LittleEndian.PutUint32(b[20:], st.RemotePort)
		case StatVIRQ:
			binary.LittleEndian.PutUint32(b[16:], st.VIRQ)
		}
		if !c.write(va, b) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// bindLocal allocates a VIRQ or IPI port; a VIRQ binds once per vCPU.
func (d *Domain) bindLocal(p evtPort) (uint32, error) {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if p.state == StatVIRQ {
		for _, o := range d.ports {
			if o.state == StatVIRQ && o.virq == p.virq && o.vcpu == p.vcpu {
				return 0, errExist
			}
		}
	}
	n, err := d.allocPort()
	if err != nil {
		return 0, err
	}
	d.ports[n] = p
	return n, nil
}

func (d *Domain) bindVCPU(port, vcpu uint32) error {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	p, err := d.port(port)
	if err != nil {
		return err
	}
	if vcpu >= uint32(len(d.cpus)) {
		return errNoEnt
	}
	if p.state != StatUnbound && p.state != StatInterdomain {
		return errInval // IPI and per-vCPU VIRQ ports cannot move
	}
	p.vcpu = vcpu
	return nil
}

// ---- blocking -------------------------------------------------------------

// block waits until the vCPU has events to take (or is woken, paused or
// stopped), with an optional absolute system-time deadline in ns.
//
// A Wake left over from before the call (an event marked while the vCPU
// ran, which Interrupts it, or an earlier deadline's timer) would end the
// Block at once, whatever ready says: it is consumed first, by a Wake and
// a Block that returns at once, and ready is asked only after that. An
// event marked later is then either seen by ready or ends the Block.
func (c *call) block(deadline uint64, ready func() bool) {
	// RUNSTATE_blocked while it sleeps, as Xen's vcpu_block.
	c.d.setRunstate(c.id, RunstateBlocked)
	defer c.d.setRunstate(c.id, RunstateRunning)
	c.d.sleep(c.id, true)
	defer c.d.sleep(c.id, false)
	c.v.Wake()
	if err := c.v.Block(); err != nil {
		c.fail(err)
		return
	}
	if ready() {
		return
	}
	if deadline != 0 {
		now := c.d.SystemTime()
		if deadline <= now {
			return
		}
		t := time.AfterFunc(time.Duration(deadline-now), c.v.Wake)
		defer t.Stop()
	}
	if err := c.v.Block(); err != nil {
		c.fail(err)
	}
}

// SystemTime is Xen system time for the domain: ns since it was created.
func (d *Domain) SystemTime() uint64 { return uint64(time.Since(d.created)) }

func schedPoll(c *call) int64 {
	b, ok := c.arg(c.args[1], 24)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	ports, n, timeout := u64(b), u32(b[8:]), u64(b[16:])
	if n > 128 {
		return errno(xenabi.EINVAL)
	}
	list, ok := c.arg(ports, int(n)*4)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	ready := func() bool {
		if c.d.upcallPending(c.id) {
			return true
		}
		for i := 0; i < int(n); i++ {
			if c.d.portPending(u32(list[i*4:])) {
				return true
			}
		}
		return false
	}
	c.d.polling[c.id].Store(true)
	c.block(timeout, ready)
	c.d.polling[c.id].Store(false)
	return 0
}
