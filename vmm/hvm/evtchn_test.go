package hvm

import (
	"encoding/binary"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// evop runs event_channel_op cmd with arg's bytes at argVA and returns
// the result and the argument as the call left it.
func evop(t *testing.T, c *call, cmd uint64, arg []byte) (int64, []byte) {
	t.Helper()
	if err := c.d.mem.Write(argVA, arg); err != nil {
		t.Fatal(err)
	}
	ret := c.dispatch(xenabi.HypervisorEventChannelOp, [5]uint64{cmd, argVA})
	out := make([]byte, len(arg))
	c.d.mem.Read(argVA, out)
	return ret, out
}

func u32s(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

// The event-channel ops on the port table, with Xen's errors; every port
// the guest raises lands in shared_info's pending bits, and reaches
// upcall_pending only while unmasked.
func TestEventChannelOps(t *testing.T) {
	d, c, _ := offline(t)
	le := binary.LittleEndian
	// alloc_unbound for DOMID_SELF, then bind_interdomain to it: a loopback.
	ret, out := evop(t, c, evtchnopAllocUnbound, u32s(DomIDSelf|DomIDSelf<<16, 0))
	if ret != 0 || le.Uint32(out[4:]) != 1 { // port 1: no xenstore here
		t.Fatalf("alloc_unbound: %d, port %d", ret, le.Uint32(out[4:]))
	}
	ret, out = evop(t, c, evtchnopBindInterdomain, u32s(DomIDSelf, 1, 0))
	if ret != 0 || le.Uint32(out[8:]) != 3 {
		t.Fatalf("bind_interdomain: %d, port %d", ret, le.Uint32(out[8:]))
	}
	for _, tc := range []struct {
		name string
		cmd  uint64
		arg  []byte
		want int64
	}{
		{"alloc_unbound for another domain", evtchnopAllocUnbound, u32s(5|0<<16, 0), -xenabi.EPERM},
		{"alloc_unbound to a domain that does not exist", evtchnopAllocUnbound, u32s(DomIDSelf|9<<16, 0), -xenabi.ESRCH},
		{"bind_interdomain to a bound port", evtchnopBindInterdomain, u32s(DomIDSelf, 1, 0), -xenabi.EINVAL},
		{"bind_interdomain to dom0 (no unbound ports there)", evtchnopBindInterdomain, u32s(0, 1, 0), -xenabi.EINVAL},
		{"bind_interdomain to another domain", evtchnopBindInterdomain, u32s(9, 1, 0), -xenabi.ESRCH},
		{"bind_ipi on a vCPU that does not exist", evtchnopBindIPI, u32s(1, 0), -xenabi.ENOENT},
		{"send on a closed port", evtchnopSend, u32s(40), -xenabi.EINVAL},
		{"send on port 0", evtchnopSend, u32s(0), -xenabi.EINVAL},
		{"send past the table", evtchnopSend, u32s(1 << 30), -xenabi.EINVAL},
		{"close a closed port", evtchnopClose, u32s(40), -xenabi.EINVAL},
		{"unmask a closed port", evtchnopUnmask, u32s(40), -xenabi.EINVAL},
	} {
		if got, _ := evop(t, c, tc.cmd, tc.arg); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	// A send on port 3 raises its peer, port 1: pending, selector, upcall.
	if ret, _ := evop(t, c, evtchnopSend, u32s(3)); ret != 0 {
		t.Fatal(ret)
	}
	si := d.sharedInfoLocked()
	if le.Uint64(si[2048:])&(1<<1) == 0 || le.Uint64(si[8:])&1 == 0 || si[0] != 1 {
		t.Fatalf("after send: pending %#x sel %#x upcall %d", le.Uint64(si[2048:]), le.Uint64(si[8:]), si[0])
	}
	// Masked: pending without an upcall; unmask delivers it.
	si[0], si[8] = 0, 0
	le.PutUint64(si[2048:], 0)
	le.PutUint64(si[2560:], 1<<1)
	evop(t, c, evtchnopSend, u32s(3))
	if le.Uint64(si[2048:])&(1<<1) == 0 || si[0] != 0 {
		t.Fatalf("masked send: pending %#x upcall %d", le.Uint64(si[2048:]), si[0])
	}
	if ret, _ := evop(t, c, evtchnopUnmask, u32s(1)); ret != 0 || si[0] != 1 || le.Uint64(si[2560:]) != 0 {
		t.Fatalf("unmask: %d, upcall %d, mask %#x", ret, si[0], le.Uint64(si[2560:]))
	}
	// Status of the loopback, then close one end: the other is unbound.
	ret, out = evop(t, c, evtchnopStatus, append(u32s(DomIDSelf, 3), make([]byte, 16)...))
	if ret != 0 || le.Uint32(out[8:]) != evtchnStatInterdom || le.Uint32(out[20:]) != 1 {
		t.Fatalf("status: %d % x", ret, out)
	}
	if ret, _ := evop(t, c, evtchnopClose, u32s(3)); ret != 0 {
		t.Fatal(ret)
	}
	ret, out = evop(t, c, evtchnopStatus, append(u32s(DomIDSelf, 1), make([]byte, 16)...))
	if ret != 0 || le.Uint32(out[8:]) != evtchnStatUnbound {
		t.Fatalf("status after the peer closed: %d % x", ret, out)
	}
	// A send on an unbound port is dropped.
	if ret, _ := evop(t, c, evtchnopSend, u32s(1)); ret != 0 {
		t.Fatalf("send on an unbound port: %d", ret)
	}
}

// shared_info placed by add_to_physmap brings what was raised before; the
// compat layout (a 32-bit guest) keeps its bits where a 32-bit guest
// looks.
func TestEventCompatLayout(t *testing.T) {
	d, c, _ := offline(t)
	c.long = false
	d.compat = true
	_, out := evop(t, c, evtchnopBindIPI, u32s(0, 0))
	port := binary.LittleEndian.Uint32(out[4:])
	evop(t, c, evtchnopSend, u32s(port))
	if got := physmap(t, c, DomIDSelf, mapspaceSharedInfo, 0, 0x120); got != 0 {
		t.Fatal(got)
	}
	si := make([]byte, 4096)
	d.mem.Read(0x120000, si)
	if si[0] != 1 || binary.LittleEndian.Uint32(si[4:]) != 1 || binary.LittleEndian.Uint32(si[2048:]) != 1<<port {
		t.Fatalf("shared_info: upcall %d sel %#x pending %#x", si[0], binary.LittleEndian.Uint32(si[4:]), binary.LittleEndian.Uint32(si[2048:]))
	}
}

// HVMOP_set_evtchn_upcall_vector's checks, and VCPUOP_register_vcpu_info:
// once per vCPU, in one page of RAM, with the spurious upcall.
func TestUpcallVectorAndVCPUInfo(t *testing.T) {
	d, c, _ := offline(t)
	for _, tc := range []struct {
		vcpu uint32
		vec  uint32
		want int64
	}{{0, 0xf3, 0}, {0, 0x0f, -xenabi.EINVAL}, {1, 0xf3, -xenabi.ENOENT}} {
		d.mem.Write(argVA, u32s(tc.vcpu, tc.vec))
		if got := c.dispatch(xenabi.HypervisorHVMOp, [5]uint64{hvmopSetEvtchnUpcallVector, argVA}); got != tc.want {
			t.Errorf("vcpu %d vector %#x: %d, want %d", tc.vcpu, tc.vec, got, tc.want)
		}
	}
	reg := func(vcpu uint64, gfn uint64, off uint32) int64 {
		d.mem.Write(argVA, append(binary.LittleEndian.AppendUint64(nil, gfn), u32s(off, 0)...))
		return c.dispatch(xenabi.HypervisorVCPUOp, [5]uint64{xenabi.VCPUOpRegisterVCPUInfo, vcpu, argVA})
	}
	for _, tc := range []struct {
		name string
		vcpu uint64
		gfn  uint64
		off  uint32
		want int64
	}{
		{"crosses a page", 0, 0x130, 4096 - 32, -xenabi.EINVAL},
		{"not RAM", 0, 0xfee00, 0, -xenabi.EINVAL},
		{"no such vCPU", 1, 0x130, 0, -xenabi.ENOENT},
		{"registered", 0, 0x130, 64, 0},
		{"again: EBUSY", 0, 0x131, 0, -xenabi.EBUSY},
	} {
		if got := reg(tc.vcpu, tc.gfn, tc.off); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	vi := make([]byte, 64)
	d.mem.Read(0x130040, vi)
	if vi[0] != 1 || binary.LittleEndian.Uint64(vi[8:]) != ^uint64(0) || !d.vcpus[0].edge {
		t.Fatalf("registered vcpu_info: upcall %d sel %#x edge %v", vi[0], binary.LittleEndian.Uint64(vi[8:]), d.vcpus[0].edge)
	}
	if !d.UpcallPending(0) {
		t.Fatal("UpcallPending does not read the registered area")
	}
	if got := c.dispatch(xenabi.HypervisorVCPUOp, [5]uint64{0, 0, argVA}); got != -xenabi.ENOSYS {
		t.Fatalf("VCPUOP_initialise: %d", got)
	}
}
