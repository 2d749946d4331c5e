package xen

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Event channel limits and states (event_channel.h, 2-level ABI).
const (
	// MaxPorts is the highest port a domain may allocate plus one: libxl's
	// default max_event_channels (1023) plus port 0, which is never used.
	MaxPorts = 1024
	NrVIRQs  = 24

	StatClosed      = 0
	StatUnbound     = 1
	StatInterdomain = 2
	StatPIRQ        = 3
	StatVIRQ        = 4
	StatIPI         = 5
)

// EVTCHNOP_* commands.
const (
	EvtchnopBindInterdomain = 0
	EvtchnopBindVIRQ        = 1
	EvtchnopClose           = 3
	EvtchnopSend            = 4
	EvtchnopStatus          = 5
	EvtchnopAllocUnbound    = 6
	EvtchnopBindIPI         = 7
	EvtchnopBindVCPU        = 8
	EvtchnopUnmask          = 9
	EvtchnopReset           = 10
)

type evtPort struct {
	state      uint8
	vcpu       uint32
	remoteDom  uint16 // unbound: who may bind; interdomain: the peer
	remotePort uint32
	virq       uint32
	handler    func() // dom0's ports: called on delivery
}

// Xen is the hypervisor all domains share: the registry interdomain event
// channels go through, and dom0 (the host's toolstack and backends), whose
// ports deliver to Go handlers.
type Xen struct {
	mu   sync.Mutex
	doms map[uint16]*Domain
	dom0 *Domain
}

// NewXen returns an empty hypervisor with its dom0.
func NewXen() *Xen {
	x := &Xen{doms: map[uint16]*Domain{}}
	x.dom0 = &Domain{id: 0, x: x}
	x.doms[0] = x.dom0
	return x
}

// Dom0 returns the host's domain, for backends to bind event channels.
func (x *Xen) Dom0() *Domain { return x.dom0 }

func (x *Xen) register(d *Domain) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.doms[d.id]; ok {
		return fmt.Errorf("domain %d already exists", d.id)
	}
	x.doms[d.id] = d
	return nil
}

// unregister removes d: the ports of its peers bound to it go back to
// unbound, as when a domain dies on Xen.
func (x *Xen) unregister(d *Domain) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.doms, d.id)
	for _, o := range x.doms {
		for i := range o.ports {
			p := &o.ports[i]
			if p.state == StatInterdomain && p.remoteDom == d.id {
				p.state, p.remotePort = StatUnbound, 0
			}
		}
	}
}

// Errors of the event channel API, as Xen errno values.
var (
	errInval = xenErr(xenabi.EINVAL)
	errNoSpc = xenErr(xenabi.ENOSPC)
	errSrch  = xenErr(xenabi.ESRCH)
	errExist = xenErr(xenabi.EEXIST)
	errNoEnt = xenErr(xenabi.ENOENT)
)

// xenErr is a Xen errno as a Go error; hypercalls return it negated.
type xenErr int

func (e xenErr) Error() string { return fmt.Sprintf("xen errno %s", formatRet(-int64(e))) }

func errnoOf(err error) int64 {
	var x xenErr
	if errors.As(err, &x) {
		return -int64(x)
	}
	return errno(xenabi.EINVAL)
}

// allocPort takes the lowest free port (never 0). x.mu held.
func (d *Domain) allocPort() (uint32, error) {
	for p := 1; p < MaxPorts; p++ {
		if p >= len(d.ports) {
			d.ports = append(d.ports, make([]evtPort, p+1-len(d.ports))...)
		}
		if d.ports[p].state == StatClosed {
			d.ports[p] = evtPort{}
			return uint32(p), nil
		}
	}
	return 0, errNoSpc
}

func (d *Domain) port(p uint32) (*evtPort, error) {
	if p == 0 || p >= uint32(len(d.ports)) || d.ports[p].state == StatClosed {
		return nil, errInval
	}
	return &d.ports[p], nil
}

// delivery is an event to hand over once x.mu is released.
type delivery struct {
	d    *Domain
	port uint32
	vcpu uint32
}

func (x *Xen) deliver(ds []delivery) {
	for _, e := range ds {
		e.d.raise(e.port, e.vcpu)
	}
}

// AllocUnbound allocates a port in d that remote may bind to
// (EVTCHNOP_alloc_unbound; a toolstack does it for a guest's store and
// console ports, remote being the backend's domain).
func (d *Domain) AllocUnbound(remote uint16) (uint32, error) {
	x := d.x
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := d.allocPort()
	if err != nil {
		return 0, err
	}
	d.ports[p] = evtPort{state: StatUnbound, remoteDom: remote}
	return p, nil
}

// BindInterdomain connects a new port of d to remoteDom's unbound
// remotePort (EVTCHNOP_bind_interdomain). handler, for dom0's ports, is
// called on every event the port receives. The new port is set pending.
func (d *Domain) BindInterdomain(remoteDom uint16, remotePort uint32, handler func()) (uint32, error) {
	x := d.x
	x.mu.Lock()
	r := x.doms[remoteDom]
	if r == nil {
		x.mu.Unlock()
		return 0, errSrch
	}
	rp, err := r.port(remotePort)
	if err != nil || rp.state != StatUnbound || rp.remoteDom != d.id {
		x.mu.Unlock()
		return 0, errInval
	}
	lp, err := d.allocPort()
	if err != nil {
		x.mu.Unlock()
		return 0, err
	}
	d.ports[lp] = evtPort{state: StatInterdomain, remoteDom: remoteDom, remotePort: remotePort, handler: handler}
	// allocPort may have grown r.ports when r == d.
	rp = &r.ports[remotePort]
	rp.state, rp.remotePort = StatInterdomain, lp
	x.mu.Unlock()
	x.deliver([]delivery{{d, lp, 0}})
	return lp, nil
}

// Send signals the other end of port (EVTCHNOP_send).
func (d *Domain) Send(port uint32) error {
	x := d.x
	x.mu.Lock()
	p, err := d.port(port)
	if err != nil {
		x.mu.Unlock()
		return err
	}
	var ds []delivery
	switch p.state {
	case StatInterdomain:
		if r := x.doms[p.remoteDom]; r != nil {
			ds = append(ds, delivery{r, p.remotePort, r.ports[p.remotePort].vcpu})
		}
	case StatIPI:
		ds = append(ds, delivery{d, port, p.vcpu})
	case StatUnbound:
		// Nobody listens yet: dropped, as on Xen.
	default:
		x.mu.Unlock()
		return errInval
	}
	x.mu.Unlock()
	x.deliver(ds)
	return nil
}

// Close frees port (EVTCHNOP_close); an interdomain peer goes back to
// unbound, accepting a new bind from this domain.
func (d *Domain) Close(port uint32) error {
	x := d.x
	x.mu.Lock()
	defer x.mu.Unlock()
	p, err := d.port(port)
	if err != nil {
		return err
	}
	if p.state == StatInterdomain {
		if r := x.doms[p.remoteDom]; r != nil && p.remotePort < uint32(len(r.ports)) {
			rp := &r.ports[p.remotePort]
			rp.state, rp.remoteDom, rp.remotePort = StatUnbound, d.id, 0
		}
	}
	*p = evtPort{}
	return nil
}

// RaiseVIRQ signals the port a domain bound to virq on vcpu, if any.
func (d *Domain) RaiseVIRQ(virq, vcpu uint32) {
	x := d.x
	x.mu.Lock()
	var ds []delivery
	for i, p := range d.ports {
		if p.state == StatVIRQ && p.virq == virq && p.vcpu == vcpu {
			ds = append(ds, delivery{d, uint32(i), vcpu})
		}
	}
	x.mu.Unlock()
	x.deliver(ds)
}

// raise marks port pending toward vcpu with the 2-level ABI's steps, or
// calls the handler of a dom0 port.
func (d *Domain) raise(port, vcpu uint32) {
	if d.id == 0 {
		d.x.mu.Lock()
		var h func()
		if port < uint32(len(d.ports)) {
			h = d.ports[port].handler
		}
		d.x.mu.Unlock()
		if h != nil {
			h()
		}
		return
	}
	si := d.SharedInfo()
	word, bit := port/64, uint64(1)<<(port%64)
	if atomic.OrUint64(&si.Evtchn_pending[word], bit)&bit != 0 {
		return // already pending
	}
	if atomic.LoadUint64(&si.Evtchn_mask[word])&bit != 0 {
		// Masked: no upcall (EVTCHNOP_unmask delivers it later), but a
		// vCPU in SCHEDOP_poll waits for exactly this, as on Xen.
		d.wakePollers()
		return
	}
	d.markVCPU(word, vcpu)
}

// markVCPU sets the selector bit and evtchn_upcall_pending of vcpu and, on
// a 0->1 change, makes the vCPU take the upcall.
func (d *Domain) markVCPU(word, vcpu uint32) {
	if int(vcpu) >= len(xenabi.SharedInfo{}.Vcpu_info) {
		vcpu = 0
	}
	vi := d.vcpuInfoOf(int(vcpu)) // pv_vcpu.go
	sel := uint64(1) << word
	if atomic.OrUint64(&vi.Pending_sel, sel)&sel != 0 {
		return
	}
	// evtchn_upcall_pending is byte 0 of the vcpu_info's first word.
	w := (*uint32)(unsafe.Pointer(&vi.Upcall_pending))
	if atomic.OrUint32(w, 1)&0xff != 0 {
		return
	}
	if int(vcpu) < len(d.cpus) {
		d.cpus[vcpu].Interrupt()
	}
}

// wakePollers wakes the vCPUs sleeping in SCHEDOP_poll to look again.
func (d *Domain) wakePollers() {
	for i, v := range d.cpus {
		if i < len(d.polling) && d.polling[i].Load() {
			v.Wake()
		}
	}
}

// unmask clears port's mask bit and delivers it if it is pending.
func (d *Domain) unmask(port uint32) error {
	if port == 0 || port >= MaxPorts {
		return errInval
	}
	si := d.SharedInfo()
	word, bit := port/64, uint64(1)<<(port%64)
	if atomic.AndUint64(&si.Evtchn_mask[word], ^bit)&bit == 0 {
		return nil // was not masked
	}
	if atomic.LoadUint64(&si.Evtchn_pending[word])&bit == 0 {
		return nil
	}
	vcpu := uint32(0)
	d.x.mu.Lock()
	if p, err := d.port(port); err == nil {
		vcpu = p.vcpu
	}
	d.x.mu.Unlock()
	d.markVCPU(word, vcpu)
	return nil
}

// upcallPending reports whether vcpu has events waiting.
func (d *Domain) upcallPending(vcpu int) bool {
	if vcpu >= len(xenabi.SharedInfo{}.Vcpu_info) {
		return false
	}
	w := (*uint32)(unsafe.Pointer(&d.vcpuInfoOf(vcpu).Upcall_pending))
	return atomic.LoadUint32(w)&0xff != 0
}

// portPending reports whether port's pending bit is set.
func (d *Domain) portPending(port uint32) bool {
	if port >= MaxPorts {
		return false
	}
	si := d.SharedInfo()
	return atomic.LoadUint64(&si.Evtchn_pending[port/64])&(1<<(port%64)) != 0
}

// PortStatus is EVTCHNOP_status's answer.
type PortStatus struct {
	State      uint8
	VCPU       uint32
	RemoteDom  uint16
	RemotePort uint32
	VIRQ       uint32
}

// Status describes a port (EVTCHNOP_status).
func (d *Domain) Status(port uint32) (PortStatus, error) {
	d.x.mu.Lock()
	defer d.x.mu.Unlock()
	if port == 0 || port >= MaxPorts {
		return PortStatus{}, errInval
	}
	if port >= uint32(len(d.ports)) {
		return PortStatus{State: StatClosed}, nil
	}
	p := d.ports[port]
	return PortStatus{State: p.state, VCPU: p.vcpu, RemoteDom: p.remoteDom, RemotePort: p.remotePort, VIRQ: p.virq}, nil
}
