package hvm

import (
	"encoding/binary"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// call is one hypercall in flight: the vCPU, its ABI (from its mode at the
// call) and its paging, to follow guest pointers.
type call struct {
	d      *Domain
	v      *machine.VCPU
	long   bool
	paging machine.Paging
	// suspend: the call is the guest's SCHEDOP_shutdown(SHUTDOWN_suspend)
	// and the domain suspends once its result is in the vCPU's registers.
	suspend bool
}

func errno(e int64) int64 { return -e }

// trapped is one hypercall as a trap hands it over, before Xen's HVM ABI
// is applied: the vCPU's mode and privilege level at the call, %rax, and
// the six argument registers of the mode, as KVM's kvm_xen_exit carries
// them (rdi, rsi, rdx, r10, r8, r9 in 64-bit mode; ebx, ecx, edx, esi,
// edi, ebp otherwise). Both traps fill one: the port-I/O stubs' from the
// registers at the IN (pioTrapped), KVM's Xen intercept from its exit
// (xenTrapped).
type trapped struct {
	long   bool
	cpl    uint32
	input  uint64
	params [6]uint64
}

// pioTrapped is the hypercall a port-I/O stub's `in $HypercallPort, %eax`
// made, from the registers at the IN: CPL is SS.DPL in protected mode, 3
// in virtual-8086 mode and 0 in real mode, as KVM reports it for vmcall.
func pioTrapped(r *kvm.Regs, s *kvm.Sregs) trapped {
	t := trapped{long: s.EFER&(1<<10) != 0 && s.CS.L == 1, input: r.RAX}
	switch {
	case s.CR0&1 == 0: // real mode: CPL 0
	case r.RFLAGS&(1<<17) != 0:
		t.cpl = 3 // virtual-8086 mode
	default:
		t.cpl = uint32(s.SS.DPL)
	}
	if t.long {
		t.params = [6]uint64{r.RDI, r.RSI, r.RDX, r.R10, r.R8, r.R9}
	} else {
		t.params = [6]uint64{r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RBP}
	}
	return t
}

// xenTrapped is the hypercall KVM's Xen intercept reported.
func xenTrapped(c machine.XenCall) trapped {
	return trapped{long: c.LongMode, cpl: c.CPL, input: c.Input, params: c.Params}
}

// hypercall is the one dispatch both traps share (hvm_hypercall): the
// number is %eax (Xen reads the low 32 bits in every mode); a call from
// CPL > 0 (or virtual-8086 mode) is -EPERM; otherwise the first five
// argument registers go to dispatch, truncated to 32 bits outside 64-bit
// mode. It returns what the guest's %rax holds after the call (the result,
// truncated to %eax outside 64-bit mode), and whether the call was the
// guest's SCHEDOP_shutdown(SHUTDOWN_suspend), which the trap completes
// with guestSuspend once the result is in place. v may be nil (tests).
func (d *Domain) hypercall(v *machine.VCPU, paging machine.Paging, t trapped) (rax uint64, suspend bool) {
	c := &call{d: d, v: v, long: t.long, paging: paging}
	var ret int64
	if t.cpl != 0 {
		ret = errno(xenabi.EPERM)
	} else {
		args := [5]uint64(t.params[:5])
		if !t.long {
			for i := range args {
				args[i] = uint64(uint32(args[i]))
			}
		}
		ret = c.dispatch(uint64(uint32(t.input)), args)
	}
	if !t.long {
		return uint64(uint32(ret)), c.suspend
	}
	return uint64(ret), c.suspend
}

// pagingOf is the paging registers of s.
func pagingOf(s *kvm.Sregs) machine.Paging {
	return machine.Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER}
}

// hypercallPIO is the port-I/O trap: the stubs' `in $HypercallPort, %eax`.
// The result is the IN's data, which KVM loads into %eax (and the stub of
// a page written in 64-bit mode sign-extends into %rax).
func (d *Domain) hypercallPIO(v *machine.VCPU, port uint16, write bool, data []byte) error {
	if write || len(data) != 4 {
		for i := range data { // not a stub's IN: an empty bus
			if !write {
				data[i] = 0xff
			}
		}
		return nil
	}
	r, err := v.Regs()
	if err != nil {
		return err
	}
	s, err := v.Sregs()
	if err != nil {
		return err
	}
	rax, suspend := d.hypercall(v, pagingOf(s), pioTrapped(r, s))
	binary.LittleEndian.PutUint32(data, uint32(rax))
	if suspend {
		return d.guestSuspend(v)
	}
	return nil
}

// hypercallXen is the trap of KVM's Xen intercept (KVM_EXIT_XEN), for the
// page KVM wrote and for a kernel's own vmcall or vmmcall: the result goes
// into the exit, and KVM loads it into %rax. Since the hypercall MSR's
// write is KVM's, the shared_info layout is latched from the mode of the
// first intercepted hypercall instead (normally the mode the guest wrote
// the MSR in; HVM_PARAM_CALLBACK_IRQ latches it again, as in Xen).
func (d *Domain) hypercallXen(v *machine.VCPU, c machine.XenCall) (uint64, error) {
	s, err := v.Sregs()
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	if !d.latched {
		d.latched = true
		d.compat = !c.LongMode // hvm_latch_shinfo_size
	}
	d.mu.Unlock()
	rax, suspend := d.hypercall(v, pagingOf(s), xenTrapped(c))
	if suspend {
		if err := v.SetXenResult(rax); err != nil {
			return 0, err
		}
		return rax, d.guestSuspend(v)
	}
	return rax, nil
}

// guestSuspend is the guest's SCHEDOP_shutdown(SHUTDOWN_suspend) once its
// result (0) is in %eax: the IN (or KVM's vmcall) is completed, so that the parked vCPU's
// registers are the guest's own at the instruction after it (a save takes
// them, and a fast resume sets %rax to 1 there, as libxc's
// modify_returncode does), and the domain is held for the toolstack
// (Config.OnSuspend). Without a toolstack the domain ends suspended.
func (d *Domain) guestSuspend(v *machine.VCPU) error {
	if d.onSuspend == nil {
		d.end(Exit{Reason: xenabi.ShutdownSuspend})
		return nil
	}
	if err := v.CompleteExit(); err != nil {
		return err
	}
	d.m.RequestPause()
	if !d.onSuspend() {
		d.end(Exit{Reason: xenabi.ShutdownSuspend})
	}
	return nil
}

// dispatch runs hypercall nr. Numbers HVM guests may not use, and those
// this slice does not implement, return -ENOSYS.
func (c *call) dispatch(nr uint64, a [5]uint64) int64 {
	switch nr {
	case xenabi.HypervisorXenVersion:
		return c.xenVersion(a[0], a[1])
	case xenabi.HypervisorConsoleIO:
		// CONSOLEIO_write and _read are for a privileged domain on a
		// release Xen (xsm dummy); the guest's console is its ring.
		return errno(xenabi.EPERM)
	case xenabi.HypervisorSchedOp:
		return c.schedOp(a[0], a[1])
	case xenabi.HypervisorEventChannelOp:
		return c.eventChannelOp(a[0], a[1])
	case xenabi.HypervisorHVMOp:
		return c.hvmOp(a[0], a[1])
	case xenabi.HypervisorMemoryOp:
		return c.memoryOp(a[0], a[1])
	case xenabi.HypervisorGrantTableOp:
		return c.grantTableOp(a[0], a[1], a[2])
	case xenabi.HypervisorVCPUOp:
		return c.vcpuOp(a[0], a[1], a[2])
	}
	c.d.mu.Lock()
	seen := c.d.enosysSeen[nr]
	c.d.enosysSeen[nr] = true
	c.d.mu.Unlock()
	if !seen {
		c.d.log.Debug("hypercall not available to this HVM guest", "domid", c.d.id, "nr", nr)
	}
	return errno(xenabi.ENOSYS)
}

// read copies n bytes from guest-virtual address va.
func (c *call) read(va uint64, n int) ([]byte, bool) {
	b := make([]byte, n)
	if err := c.d.mem.ReadVirt(c.paging, va, b); err != nil {
		return nil, false
	}
	return b, true
}

// write copies b to guest-virtual address va.
func (c *call) write(va uint64, b []byte) bool {
	return c.d.mem.WriteVirt(c.paging, va, b) == nil
}

func (c *call) u32(va uint64) (uint32, bool) {
	b, ok := c.read(va, 4)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b), true
}

// cstring is s NUL-padded to n bytes (cut to n-1).
func cstring(s string, n int) []byte {
	b := make([]byte, n)
	copy(b[:n-1], s)
	return b
}

// hvmFeatures is XENVER_get_features submap 0 for an HVM or PVH domU
// (xen/common/kernel.c): writable_page_tables, auto_translated_physmap,
// hvm_safe_pvclock, memory_op_vnode_supported, not_direct_mapped,
// runstate_phys_area, vcpu_time_phys_area, dm_msix_all_writes. Xen also
// sets hvm_callback_vector (bit 8), offered here too (evtchn.go).
const hvmFeatures = 0x001d2305

func (c *call) xenVersion(cmd, arg uint64) int64 {
	out := func(b []byte) int64 {
		if !c.write(arg, b) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	switch cmd {
	case xenabi.XenverVersion:
		return xen.VersionMajor<<16 | xen.VersionMinor
	case xenabi.XenverExtraversion:
		return out(cstring(xen.Extraversion, 16))
	case xenabi.XenverCompileInfo:
		return out(append(append(append(cstring("go", 64), cstring("xenresume", 16)...),
			cstring("xenresume", 32)...), cstring("", 32)...))
	case xenabi.XenverCapabilities:
		return out(cstring("xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64", 1024))
	case xenabi.XenverChangeset:
		return out(cstring("xenresume", 64))
	case xenabi.XenverPlatformParameters:
		// virt_start is 0 for an HVM vCPU (kernel.c: only PV guests have
		// Xen mapped in their address space); 8 bytes in the 64-bit ABI,
		// 4 in the compat one.
		if c.long {
			return out(make([]byte, 8))
		}
		return out(make([]byte, 4))
	case xenabi.XenverGetFeatures:
		idx, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if idx != 0 {
			return errno(xenabi.EINVAL)
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], hvmFeatures)
		if !c.write(arg+4, b[:]) {
			return errno(xenabi.EFAULT)
		}
		return 0
	case xenabi.XenverPagesize:
		if arg != 0 {
			return errno(xenabi.EINVAL) // kernel.c: the handle must be NULL
		}
		return machine.PageSize
	case xenabi.XenverGuestHandle:
		var h [16]byte
		h[14], h[15] = byte(c.d.id>>8), byte(c.d.id)
		return out(h[:])
	case xenabi.XenverCommandline:
		return errno(xenabi.EPERM)
	}
	return errno(xenabi.ENOSYS)
}

func (c *call) schedOp(cmd, arg uint64) int64 {
	switch cmd {
	case xenabi.SchedopYield, xenabi.SchedopBlock, xenabi.SchedopPoll:
		// The only event source is the console, whose consumer runs
		// now; a block or poll returns at once, as a wakeup may.
		c.d.drainConsole()
		return 0
	case xenabi.SchedopShutdown:
		reason, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		c.d.drainConsole()
		if reason == xenabi.ShutdownSuspend && c.v != nil {
			c.suspend = true // the trap suspends once the result is set
			return 0
		}
		c.d.end(Exit{Reason: reason})
		return 0
	case xenabi.SchedopShutdownCode:
		if _, ok := c.u32(arg); !ok {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// Event-channel ops and states (public/event_channel.h).
const (
	evtchnopSend         = 4
	evtchnopStatus       = 5
	evtchnopInitControl  = 11
	evtchnopExpandArray  = 12
	evtchnopSetPriority  = 13
	evtchnStatClosed     = 0
	evtchnStatInterdom   = 2
	maxEvtchnPorts       = 4096 // 2-level ABI, 64-bit guest
	evtchnStatusSize     = 24
	evtchnStatusPortOff  = 4
	evtchnStatusStateOff = 8
)

func (c *call) eventChannelOp(cmd, arg uint64) int64 {
	switch cmd {
	case evtchnopInitControl, evtchnopExpandArray, evtchnopSetPriority:
		return c.fifoOp(cmd, arg)
	case evtchnopSend, evtchnopAllocUnbound, evtchnopBindInterdomain, evtchnopBindIPI, evtchnopClose, evtchnopUnmask:
		return c.eventOp(cmd, arg)
	case evtchnopStatus:
		b, ok := c.read(arg, evtchnStatusSize)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		dom := binary.LittleEndian.Uint16(b)
		port := binary.LittleEndian.Uint32(b[evtchnStatusPortOff:])
		if dom != DomIDSelf && dom != c.d.id {
			return errno(xenabi.EPERM)
		}
		if port >= maxEvtchnPorts {
			return errno(xenabi.EINVAL)
		}
		// evtchn_status_t after port: status u32, vcpu u32, then the
		// union (unbound: dom u16; interdomain: dom u16, port u32; ipi:
		// nothing).
		st := make([]byte, evtchnStatusSize-evtchnStatusStateOff)
		c.d.mu.Lock()
		if p := c.d.portLocked(port); p != nil {
			binary.LittleEndian.PutUint32(st, uint32(p.state))
			binary.LittleEndian.PutUint32(st[4:], p.vcpu)
			switch p.state {
			case evtchnStatUnbound:
				binary.LittleEndian.PutUint16(st[8:], p.remoteDom)
			case evtchnStatInterdom: // a backend's port is bound in dom0
				binary.LittleEndian.PutUint16(st[8:], p.remoteDom)
				binary.LittleEndian.PutUint32(st[12:], p.remotePort)
			}
		}
		c.d.mu.Unlock()
		if !c.write(arg+evtchnStatusStateOff, st) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// hvm_op (xen/arch/x86/hvm/hvm.c do_hvm_op).
const (
	hvmopSetParam = 0
	hvmopGetParam = 1
	hvmopGetTime  = 10
	hvmParamSize  = 16
)

// deprecated are params Xen answers -EINVAL for, both ways.
func deprecated(i uint32) bool {
	return i == 4 || i == 13 || (i >= 20 && i <= 26) || i == 30
}

// guestMayGet and guestMaySet are hvm_allow_get_param and
// hvm_allow_set_param for a guest acting on itself.
func guestMayGet(i uint32) bool {
	switch i {
	case ParamCallbackIRQ, ParamStorePFN, ParamStoreEvtchn, ParamVM86TSS, ParamConsolePFN, ParamConsoleEvtchn,
		ParamACPIIOPortsLoc, ParamVMGenerationID, ParamAltp2m, ParamX87FIPWidth, ParamVM86TSSSized:
		return true
	}
	return false
}

func guestMaySet(i uint32) bool {
	switch i {
	case ParamCallbackIRQ, ParamStoreEvtchn, ParamVM86TSS, ParamConsoleEvtchn, ParamACPIIOPortsLoc,
		ParamVMGenerationID, ParamX87FIPWidth, ParamVM86TSSSized:
		return true
	}
	return false
}

func (c *call) hvmOp(op, arg uint64) int64 {
	switch op {
	case hvmopSetParam, hvmopGetParam:
		b, ok := c.read(arg, hvmParamSize)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		dom := binary.LittleEndian.Uint16(b)
		idx := binary.LittleEndian.Uint32(b[4:])
		val := binary.LittleEndian.Uint64(b[8:])
		if dom != DomIDSelf && dom != c.d.id {
			return errno(xenabi.ESRCH) // no other domain is visible
		}
		if idx >= NrParams || deprecated(idx) {
			return errno(xenabi.EINVAL)
		}
		d := c.d
		if op == hvmopGetParam {
			if !guestMayGet(idx) {
				return errno(xenabi.EPERM)
			}
			d.mu.Lock()
			v := d.params[idx]
			if idx == ParamVM86TSS {
				v = uint64(uint32(d.params[ParamVM86TSSSized]))
			}
			d.mu.Unlock()
			binary.LittleEndian.PutUint64(b[8:], v)
			if !c.write(arg+8, b[8:]) {
				return errno(xenabi.EFAULT)
			}
			return 0
		}
		if idx == ParamAltp2m {
			return errno(xenabi.EEXIST)
		}
		if !guestMaySet(idx) {
			return errno(xenabi.EPERM)
		}
		switch idx {
		case ParamX87FIPWidth:
			if val != 0 && val != 4 && val != 8 {
				return errno(xenabi.EINVAL)
			}
		case ParamACPIIOPortsLoc:
			if val > 1 {
				return errno(xenabi.EINVAL)
			}
		case ParamVM86TSS: // hvm.c: kept as VM86_TSS_SIZED, size 128
			idx, val = ParamVM86TSSSized, uint64(uint32(val))|128<<32
		}
		d.mu.Lock()
		d.params[idx] = val
		if idx != ParamCallbackIRQ {
			d.mu.Unlock()
			return 0
		}
		d.compat = !c.long // hvm_latch_shinfo_size
		old := d.setCallbackLocked(val)
		d.assertAllLocked() // releases d.mu
		if old != nil {
			old.Close()
		}
		return 0
	case hvmopSetEvtchnUpcallVector:
		return c.setUpcallVector(arg)
	case hvmopGetTime:
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
		if !c.write(arg, b[:]) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// memory_op: XENMEM_add_to_physmap (xenmem_add_to_physmap_one).
const (
	xenmemAddToPhysmap   = 7
	memopCmdMask         = 0x3f
	mapspaceSharedInfo   = 0
	mapspaceGrantTable   = 1
	maxGrantFrames       = 64 // Xen's default max_grant_frames
	grantTableStatusFlag = 1 << 31
)

func (c *call) memoryOp(cmd, arg uint64) int64 {
	switch cmd & memopCmdMask {
	case xenmemAddToPhysmap:
		n := 24
		if !c.long {
			n = 16
		}
		b, ok := c.read(arg, n)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		dom := binary.LittleEndian.Uint16(b)
		space := binary.LittleEndian.Uint32(b[4:])
		var idx, gfn uint64
		if c.long {
			idx, gfn = binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])
		} else {
			idx, gfn = uint64(binary.LittleEndian.Uint32(b[8:])), uint64(binary.LittleEndian.Uint32(b[12:]))
		}
		if dom != DomIDSelf && dom != c.d.id {
			return errno(xenabi.ESRCH)
		}
		return c.d.addToPhysmap(space, idx, gfn)
	}
	return errno(xenabi.ENOSYS)
}

// addToPhysmap places a Xen page at guest frame gfn. The page replaces
// the RAM there: a grant frame starts zeroed, as Xen's fresh page would,
// and shared_info brings the domain's shared_info as it is (zero until an
// event was raised; no time fields yet).
func (d *Domain) addToPhysmap(space uint32, idx, gfn uint64) int64 {
	if gfn > 1<<40 || !d.isRAM(gfn<<12) {
		return errno(xenabi.EINVAL)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch space {
	case mapspaceSharedInfo:
		if idx != 0 {
			return errno(xenabi.EINVAL)
		}
		cur := append([]byte(nil), d.sharedInfoLocked()...)
		if err := d.mem.Write(gfn<<12, cur); err != nil {
			return errno(xenabi.EINVAL)
		}
		d.sharedInfo = gfn
		return 0
	case mapspaceGrantTable:
		if idx&grantTableStatusFlag != 0 && d.gntVersion != 2 {
			return errno(xenabi.EINVAL)
		}
		if idx&^grantTableStatusFlag >= maxGrantFrames {
			return errno(xenabi.EINVAL)
		}
		d.grantFrames[idx] = gfn
	default:
		return errno(xenabi.ENOSYS) // gmfn moves and foreign maps: not yet
	}
	if err := d.mem.Write(gfn<<12, make([]byte, machine.PageSize)); err != nil {
		return errno(xenabi.EINVAL)
	}
	return 0
}

// grant_table_op: the version calls (the HVM filter allows more, which
// this slice does not implement yet).
const (
	gnttabopSetVersion = 8
	gnttabopGetVersion = 10
)

func (c *call) grantTableOp(cmd, arg, count uint64) int64 {
	switch cmd {
	case gnttabopSetVersion:
		if count != 1 {
			return errno(xenabi.EINVAL)
		}
		v, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if v != 1 && v != 2 {
			return errno(xenabi.EINVAL)
		}
		c.d.mu.Lock()
		c.d.gntVersion = v
		c.d.mu.Unlock()
		return 0
	case gnttabopGetVersion:
		if count != 1 {
			return errno(xenabi.EINVAL)
		}
		b, ok := c.read(arg, 8)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if dom := binary.LittleEndian.Uint16(b); dom != DomIDSelf && dom != c.d.id {
			return errno(xenabi.ESRCH)
		}
		c.d.mu.Lock()
		binary.LittleEndian.PutUint32(b[4:], c.d.gntVersion)
		c.d.mu.Unlock()
		if !c.write(arg+4, b[4:]) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	return errno(xenabi.ENOSYS)
}

// The console ring (public/io/console.h, struct xencons_interface).
const (
	consOutOff     = 1024
	consOutSize    = 2048
	consOutConsOff = 3080
	consOutProdOff = 3084
)

// drainConsole is the console backend: it copies what the guest put in
// its ring's out[] to the console and advances out_cons, as xenconsoled
// does when the guest kicks the console's event channel. A guest that
// claims more than the ring holds gets its producer index taken as the
// consumer's (the bytes in between are dropped), as if consumed.
func (d *Domain) drainConsole() {
	ring, err := d.mem.Page(builder.ConsolePFN << 12)
	if err != nil {
		return
	}
	le := binary.LittleEndian
	cons, prod := le.Uint32(ring[consOutConsOff:]), le.Uint32(ring[consOutProdOff:])
	n := prod - cons
	if n > consOutSize {
		d.warnOnce("console ring: the producer is more than the ring ahead of the consumer; dropped", "cons", cons, "prod", prod)
		le.PutUint32(ring[consOutConsOff:], prod)
		return
	}
	if n == 0 {
		return
	}
	out := make([]byte, 0, n)
	for i := cons; i != prod; i++ {
		out = append(out, ring[consOutOff+int(i%consOutSize)])
	}
	if _, err := d.console.Write(out); err != nil {
		d.warnOnce("console: write failed", "err", err)
	}
	le.PutUint32(ring[consOutConsOff:], prod)
	d.raise(ConsolePort) // xenconsoled signals what it consumed
}

// fifoOp answers the FIFO event-channel ABI, which this container does not
// offer, as vmm/xen answers it for PV: init_control's arguments are
// checked as evtchn_fifo_init_control checks them (a misaligned or too
// large offset, or a GFN that is not the guest's RAM, is -EINVAL; a vCPU
// it lacks, -ENOENT), and a valid request is -EOPNOTSUPP, as from a Xen
// with the FIFO ABI disabled; expand_array and set_priority are
// -EOPNOTSUPP, as before init_control succeeded.
func (c *call) fifoOp(cmd, arg uint64) int64 {
	if cmd != evtchnopInitControl {
		return errno(xenabi.EOPNOTSUPP)
	}
	b, ok := c.read(arg, 16)
	if !ok {
		return errno(xenabi.EFAULT)
	}
	gfn, off, vcpu := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:])
	const controlBlock = 64 // struct evtchn_fifo_control_block
	switch {
	case off&7 != 0 || off > machine.PageSize-controlBlock:
		return errno(xenabi.EINVAL)
	case c.d.m != nil && int(vcpu) >= len(c.d.m.VCPUs()) || c.d.m == nil && vcpu != 0:
		return errno(xenabi.ENOENT)
	case gfn >= 1<<40 || !c.d.isRAM(gfn<<12):
		return errno(xenabi.EINVAL)
	}
	return errno(xenabi.EOPNOTSUPP)
}
