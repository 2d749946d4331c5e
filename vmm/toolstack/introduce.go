package toolstack

import (
	"fmt"
	"io"
	"strconv"
	"sync/atomic"

	"github.com/xenresume/xenresume/vmm/console"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// backends are dom0's ends of a domain's xenstore and console rings.
type backends struct {
	ring       *xenstore.Ring
	console    *console.Backend
	storeLocal uint32 // dom0's ports
	conLocal   uint32
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
	nodes := []struct {
		path, value string
		perms       []xenstore.Perm
	}{
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

// connectBackends introduces the domain to xenstored (its ring, bound from
// dom0 to the guest's store port) and starts its console backend.
func (t *Toolstack) connectBackends(d *Domain, storePort, conPort uint32, out io.Writer) (*backends, error) {
	mem := d.machine.Memory()
	dom0 := t.xen.Dom0()
	b := &backends{}
	storePage, err := mem.Page(d.Layout.GPA(d.Layout.Store))
	if err != nil {
		return nil, err
	}
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

	conPage, err := mem.Page(d.Layout.GPA(d.Layout.Console))
	if err != nil {
		b.close(t, d)
		return nil, err
	}
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
	b.conLocal = p
	t.store.IntroduceDomain(uint32(d.ID))
	return b, nil
}

func (b *backends) close(t *Toolstack, d *Domain) {
	dom0 := t.xen.Dom0()
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
}
