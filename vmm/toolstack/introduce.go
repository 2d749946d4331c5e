package toolstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/xenresume/xenresume/vmm/blkback"
	"github.com/xenresume/xenresume/vmm/console"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// backends are dom0's ends of a domain's xenstore and console rings.
type backends struct {
	ring       *xenstore.Ring
	console    *console.Backend
	storeLocal uint32 // dom0's ports
	conLocal   uint32
	conGuest   uint32                // the guest's console port
	conStall   atomic.Pointer[error] // the console's stall, while it lasts
	disks      []*vbd                // block backends (disks.go)
	release    []func()              // the rings' Keep
}

// consoleStallPeriod is how often a running domain's console ring is
// checked for output the guest left there without an event.
var consoleStallPeriod = time.Second

// watchConsole reports, until ctx ends, a guest that leaves output in its
// console ring without signalling the console's event channel for a whole
// period while it runs: after a resume in a new domain, the sign of a
// guest still notifying its old domain's port (it must take the new one
// from start_info's console.domU.evtchn). xenconsoled would wait for ever;
// we log it once and ConsoleErr returns it until the guest signals again.
func (d *Domain) watchConsole(ctx context.Context) {
	b := d.backends
	var stall console.Stall
	tick := time.NewTicker(consoleStallPeriod)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if d.State() != Running {
			stall.Reset()
			continue
		}
		now := b.console.Status()
		if stall.Check(now) {
			if b.conStall.Load() == nil {
				err := fmt.Errorf("domain %d: %w: %d bytes of output wait in the console ring and no event came on its port %d for %v",
					d.ID, ErrConsoleStalled, now.Pending(), b.conGuest, consoleStallPeriod)
				b.conStall.Store(&err)
				d.ts.log.Warn("console stalled", "domid", d.ID, "err", err)
			}
		} else {
			b.conStall.Store(nil)
		}
	}
}

// ErrConsoleStalled is wrapped by ConsoleErr when the guest left output
// in its console ring without an event for a whole check period.
var ErrConsoleStalled = errors.New("the guest writes its console ring without signalling its console event channel")

// ConsoleErr returns why the domain's console output does not flow: the
// backend stopped (corrupt ring indices), or the guest stalled it
// (ErrConsoleStalled), or nil.
func (d *Domain) ConsoleErr() error {
	b := d.backends
	if b == nil || b.console == nil {
		return nil
	}
	if err := b.console.Err(); err != nil {
		return err
	}
	if p := b.conStall.Load(); p != nil {
		return *p
	}
	return nil
}

// writeDomainNodes lays out /local/domain/<id> as libxl does: the home and
// control/ read-only for the guest, control/shutdown, the feature-* nodes,
// sysrq, data/ and device/suspend/event-channel writable by it.
func (t *Toolstack) writeDomainNodes(d *Domain, memKiB uint64, storePort, conPort uint32, conMFN uint64) error {
	s := t.store
	id := uint32(d.ID)
	home := xenstore.DomainPath(id)
	ro := []xenstore.Perm{{Access: 'n', Domid: 0}, {Access: 'r', Domid: id}}
	rw := []xenstore.Perm{{Access: 'n', Domid: id}}
	nodes := []xsNode{
		{home, "", ro},
		{home + "/name", d.Name, ro},
		{home + "/domid", strconv.Itoa(int(id)), ro},
		{home + "/control", "", ro},
		{home + "/control/shutdown", "", rw},
		{home + "/control/feature-poweroff", "", rw},
		{home + "/control/feature-reboot", "", rw},
		{home + "/control/feature-suspend", "", rw},
		{home + "/control/sysrq", "", rw},
		{home + "/control/platform-feature-multiprocessor-suspend", "1", ro},
		{home + "/control/platform-feature-xs_reset_watches", "1", ro},
		{home + "/device", "", ro},
		{home + "/device/suspend", "", ro},
		{home + "/device/suspend/event-channel", "", rw},
		{home + "/data", "", rw},
		{home + "/memory", "", ro},
		{home + "/memory/static-max", strconv.FormatUint(memKiB, 10), ro},
		{home + "/memory/target", strconv.FormatUint(memKiB, 10), ro},
		{home + "/store", "", ro},
		{home + "/store/port", strconv.Itoa(int(storePort)), ro},
		{home + "/console", "", ro},
		{home + "/console/port", strconv.Itoa(int(conPort)), ro},
		{home + "/console/ring-ref", strconv.FormatUint(conMFN, 10), ro},
		{home + "/console/type", "xenconsoled", ro},
	}
	for i := range d.machine.VCPUs() {
		nodes = append(nodes, xsNode{fmt.Sprintf("%s/cpu/%d/availability", home, i), availability(i, d.availVCPUs), ro})
	}
	return writeNodes(s, nodes)
}

// xsNode is a xenstore node a toolstack writes for a new domain, with its
// permissions.
type xsNode struct {
	path, value string
	perms       []xenstore.Perm
}

// writeNodes writes each node and sets its permissions, in order.
func writeNodes(s *xenstore.Store, nodes []xsNode) error {
	for _, n := range nodes {
		if err := s.Write(n.path, n.value); err != nil {
			return fmt.Errorf("xenstore %s: %w", n.path, err)
		}
		if err := s.SetPerms(n.path, n.perms...); err != nil {
			return fmt.Errorf("xenstore %s: %w", n.path, err)
		}
	}
	return nil
}

// availability is cpu/<vcpu>/availability's value, as libxl writes it
// (libxl__build_post, libxl_set_vcpuonline): "online" for the first avail
// vCPUs.
func availability(vcpu, avail int) string {
	if vcpu < avail {
		return "online"
	}
	return "offline"
}

// SetVCPUs makes the first n of the domain's vCPUs available to the guest
// and the others not, as xl vcpu-set does for a PV domain: it writes
// cpu/N/availability, which the guest watches and acts on (bringing vCPUs
// up or down itself); the hypervisor's vCPUs are left as they are.
func (d *Domain) SetVCPUs(n int) error {
	max := len(d.machine.VCPUs())
	if n < 1 || n > max {
		return fmt.Errorf("vcpu-set %d: domain %d has vCPUs 1 to %d (maxvcpus)", n, d.ID, max)
	}
	d.vcpuMu.Lock()
	defer d.vcpuMu.Unlock()
	home := xenstore.DomainPath(uint32(d.ID))
	for i := range max {
		if err := d.ts.store.Write(fmt.Sprintf("%s/cpu/%d/availability", home, i), availability(i, n)); err != nil {
			return fmt.Errorf("vcpu-set: %w", err)
		}
	}
	d.availVCPUs = n
	return nil
}

// AvailableVCPUs returns how many vCPUs are available to the guest
// (cpu/N/availability "online").
func (d *Domain) AvailableVCPUs() int {
	d.vcpuMu.Lock()
	defer d.vcpuMu.Unlock()
	return d.availVCPUs
}

// connectBackends introduces the domain to xenstored (its ring, bound from
// dom0 to the guest's store port) and starts its console backend.
func (t *Toolstack) connectBackends(d *Domain, storePort, conPort uint32, out io.Writer) (*backends, error) {
	mem := d.machine.Memory()
	dom0 := t.xen.Dom0()
	b := &backends{}
	// The rings stay the backends' while the domain runs: kept, so every
	// migration round and checkpoint sends them (machine's vmmdirty.go).
	storePage, releaseStore, err := mem.Keep(d.Layout.GPA(d.Layout.Store), machine.PageSize)
	if err != nil {
		return nil, err
	}
	b.release = append(b.release, releaseStore)
	var storeLocal atomic.Uint32
	ring, err := t.store.ServeRing(uint32(d.ID), storePage, func() {
		if p := storeLocal.Load(); p != 0 {
			dom0.Send(p)
		}
	})
	if err != nil {
		return nil, err
	}
	b.ring = ring
	p, err := dom0.BindInterdomain(d.ID, storePort, ring.Kick)
	if err != nil {
		ring.Close()
		return nil, fmt.Errorf("bind xenstore event channel: %w", err)
	}
	storeLocal.Store(p)
	b.storeLocal = p

	conPage, releaseCon, err := mem.Keep(d.Layout.GPA(d.Layout.Console), machine.PageSize)
	if err != nil {
		b.close(t, d)
		return nil, err
	}
	b.release = append(b.release, releaseCon)
	var conLocal atomic.Uint32
	if out == nil {
		out = io.Discard
	}
	b.console, err = console.New(conPage, out, func() {
		if p := conLocal.Load(); p != 0 {
			dom0.Send(p)
		}
	})
	if err != nil {
		b.close(t, d)
		return nil, err
	}
	p, err = dom0.BindInterdomain(d.ID, conPort, b.console.Kick)
	if err != nil {
		b.close(t, d)
		return nil, fmt.Errorf("bind console event channel: %w", err)
	}
	conLocal.Store(p)
	b.conLocal, b.conGuest = p, conPort
	t.store.IntroduceDomain(uint32(d.ID))
	return b, nil
}

func (b *backends) close(t *Toolstack, d *Domain) {
	dom0 := t.xen.Dom0()
	b.closeDisks(t)
	if b.ring != nil {
		b.ring.Close()
	}
	for _, p := range []uint32{b.storeLocal, b.conLocal} {
		if p != 0 {
			dom0.Close(p)
		}
	}
	t.store.ReleaseDomain(uint32(d.ID))
	t.store.Rm(xenstore.DomainPath(uint32(d.ID)))
	for _, r := range b.release {
		r()
	}
	b.release = nil
}

// vbd is one attached disk: its nodes and the backend serving it, which
// runs until the domain's backends close.
type vbd struct {
	dev    blkback.Device
	be     *blkback.Backend
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
}

// dom0Events binds a backend's event channel as dom0 (blkback.EventChannels).
type dom0Events struct{ dom0 *xen.Domain }

var (
	_ blkback.EventChannels = dom0Events{}
	_ blkback.Grants        = (*xen.BackendGrants)(nil)
)

// Bind is dom0's EVTCHNOP_bind_interdomain to the guest's unbound port;
// notify is EVTCHNOP_send on dom0's end, unbind EVTCHNOP_close.
func (e dom0Events) Bind(domid uint16, port uint32, kick func()) (func(), func(), error) {
	lp, err := e.dom0.BindInterdomain(domid, port, kick)
	if err != nil {
		return nil, nil, fmt.Errorf("bind event channel %d of domain %d: %w", port, domid, err)
	}
	return func() { e.dom0.Send(lp) }, func() { e.dom0.Close(lp) }, nil
}

// diskProbeTimeout bounds how long attaching a disk waits for its backend
// to reach InitWait (opening the image).
const diskProbeTimeout = 10 * time.Second

// attachDisks adds each disk's nodes as libxl does (for a 64-bit PV
// guest: protocol x86_64-abi) and starts its backend, waiting until it
// has opened the image and reached InitWait. Each disk attached is in
// b.disks at once, so that closing b undoes a partial attach.
func (t *Toolstack) attachDisks(b *backends, domid uint16, disks []xlcfg.Disk) error {
	for _, dk := range disks {
		dev := blkback.Device{Domid: domid, Devid: dk.Devid, Vdev: dk.Vdev, Target: dk.Target,
			Writable: dk.Writable, CDROM: dk.CDROM, NoDiscard: !dk.Discard, Protocol: "x86_64-abi"}
		if err := blkback.AddDevice(t.store, dev); err != nil {
			blkback.RemoveDevice(t.store, dev)
			return fmt.Errorf("disk %s: %w", dk.Vdev, err)
		}
		be, err := blkback.New(blkback.Config{Store: t.store, Grants: t.xen.BackendGrants(),
			Events: dom0Events{t.xen.Dom0()}, Domid: domid, Devid: dk.Devid, Log: t.log})
		if err != nil {
			blkback.RemoveDevice(t.store, dev)
			return fmt.Errorf("disk %s: %w", dk.Vdev, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		v := &vbd{dev: dev, be: be, cancel: cancel, done: make(chan struct{})}
		b.disks = append(b.disks, v)
		runErr := make(chan error, 1)
		go func() {
			defer close(v.done)
			err := be.Run(ctx)
			runErr <- err
			if err != nil && ctx.Err() == nil {
				t.log.Warn("block backend stopped", "domid", domid, "vdev", dk.Vdev, "err", err)
			}
		}()
		if err := waitInitWait(v, runErr); err != nil {
			return fmt.Errorf("disk %s (%s): %w", dk.Vdev, dk.Target, err)
		}
	}
	return nil
}

// waitInitWait waits until v's backend reached InitWait, or Run returned.
func waitInitWait(v *vbd, runErr <-chan error) error {
	deadline := time.Now().Add(diskProbeTimeout)
	for v.be.State() != blkback.StateInitWait {
		select {
		case err := <-runErr:
			if err == nil {
				err = errors.New("the backend stopped before InitWait")
			}
			return err
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the backend did not reach InitWait")
		}
	}
	return nil
}

// closeDisks stops every disk's backend (which unmaps its grants and
// unbinds its port: before the guest's memory goes) and removes its
// nodes, then the domain's now empty backend/vbd/<domid> directory and
// the backends' error nodes (libxl's libxl__xs_path_cleanup of the
// emptied parents).
func (b *backends) closeDisks(t *Toolstack) {
	for _, v := range b.disks {
		v.cancel()
		<-v.done
		if err := blkback.RemoveDevice(t.store, v.dev); err != nil {
			t.log.Warn("removing a disk's nodes", "vdev", v.dev.Vdev, "err", err)
		}
	}
	if len(b.disks) > 0 {
		dev := b.disks[0].dev
		home := xenstore.DomainPath(uint32(dev.BackendDomid))
		for _, p := range []string{
			fmt.Sprintf("%s/backend/vbd/%d", home, dev.Domid),
			fmt.Sprintf("%s/error/backend/vbd/%d", home, dev.Domid),
		} {
			if err := t.store.Rm(p); err != nil && err != xenstore.ENOENT {
				t.log.Warn("removing a domain's disk nodes", "path", p, "err", err)
			}
		}
	}
	b.disks = nil
}

// pauseDisks stops the domain's backends from taking requests (before the
// last copy of a save), unpauseDisks lets them again.
func (d *Domain) pauseDisks() {
	if d.backends == nil {
		return
	}
	for _, v := range d.backends.disks {
		v.be.Pause()
	}
}

func (d *Domain) unpauseDisks() {
	if d.backends == nil {
		return
	}
	for _, v := range d.backends.disks {
		v.be.Unpause()
	}
}

// Disks returns the domain's block backends, in the configuration's order.
func (d *Domain) Disks() []*blkback.Backend {
	if d.backends == nil {
		return nil
	}
	var out []*blkback.Backend
	for _, v := range d.backends.disks {
		out = append(out, v.be)
	}
	return out
}
