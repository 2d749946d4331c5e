package xen

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// call is one hypercall in flight on a vCPU.
type call struct {
	d    *Domain
	v    CPU
	id   int // v.Index()
	nr   uint64
	args [5]uint64

	pg   machine.Paging // the vCPU's paging registers, once asked for
	pgOK bool
	// err is the first failure of the VMM itself (not of the guest) the
	// handler met: it ends the vCPU with a crash report, whatever the
	// handler returns.
	err error
	// inMC marks an entry of a multicall, whose continuation (cont)
	// rewrites the entry rather than the registers.
	inMC bool
	cont *contArgs
	// preempted marks a hypercall that made a continuation of itself.
	preempted bool
}

// fail records a failure of the VMM; the handler returns what it likes.
func (c *call) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// paging returns the vCPU's paging registers, read once per call; false
// when they cannot be read (a VMM failure, recorded).
func (c *call) paging() (machine.Paging, bool) {
	if !c.pgOK {
		p, err := c.v.Paging()
		if err != nil {
			c.fail(err)
			return machine.Paging{}, false
		}
		c.pg, c.pgOK = p, true
	}
	return c.pg, true
}

// read copies guest virtual memory at va into buf; false means -EFAULT.
// The range must also pass Xen's __addr_ok (nothing in
// Xen's range, where the VMM's own pages are mapped).
func (c *call) read(va uint64, buf []byte) bool {
	p, ok := c.paging()
	if !addrOK(va) || !addrOK(va+uint64(len(buf))-1) {
		return false
	}
	return ok && c.d.mem.ReadVirt(p, va, buf) == nil
}

// write copies buf to guest virtual memory at va (all or nothing); false
// means -EFAULT. Every byte must be mapped writable,
// as Xen's copy_to_guest finds it with CR0.WP set: a guest cannot have
// the VMM write into its page tables or descriptor pages.
func (c *call) write(va uint64, buf []byte) bool {
	p, ok := c.paging()
	if !ok {
		return false
	}
	if !addrOK(va) || !addrOK(va+uint64(len(buf))-1) {
		return false
	}
	return c.d.mem.WriteVirtChecked(p, va, buf) == nil
}

func (c *call) u32(va uint64) (uint32, bool) {
	var b [4]byte
	if !c.read(va, b[:]) {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b[:]), true
}

func errno(e int) int64 { return -int64(e) }

// hypercallDef describes one hypercall: its name, how many arguments Xen
// declares for it (the registers a debug Xen clobbers), an argument
// formatter for traces, and its handler.
type hypercallDef struct {
	name  string
	nargs int
	cmds  map[uint64]string // names of the first argument, for traces
	fn    func(c *call) int64
}

var hypercalls [128]*hypercallDef

var names = map[int]string{}

func init() {
	for nr, def := range map[int]*hypercallDef{
		xenabi.HypervisorConsoleIO: {name: "console_io", nargs: 3, fn: pvConsoleIO,
			cmds: map[uint64]string{xenabi.ConsoleioWrite: "write", xenabi.ConsoleioRead: "read"}},
		xenabi.HypervisorSchedOp: {name: "sched_op", nargs: 2, fn: schedOp, cmds: map[uint64]string{
			xenabi.SchedopYield: "yield", xenabi.SchedopBlock: "block", xenabi.SchedopShutdown: "shutdown",
			xenabi.SchedopPoll: "poll", xenabi.SchedopRemoteShutdown: "remote_shutdown",
			xenabi.SchedopShutdownCode: "shutdown_code", xenabi.SchedopWatchdog: "watchdog",
			xenabi.SchedopPinOverride: "pin_override"}},
		xenabi.HypervisorXenVersion: {name: "xen_version", nargs: 2, fn: xenVersion, cmds: map[uint64]string{
			xenabi.XenverVersion: "version", xenabi.XenverExtraversion: "extraversion",
			xenabi.XenverCompileInfo: "compile_info", xenabi.XenverCapabilities: "capabilities",
			xenabi.XenverChangeset: "changeset", xenabi.XenverPlatformParameters: "platform_parameters",
			xenabi.XenverGetFeatures: "get_features", xenabi.XenverPagesize: "pagesize",
			xenabi.XenverGuestHandle: "guest_handle", xenabi.XenverCommandline: "commandline"}},
		xenabi.HypervisorEventChannelOp: {name: "event_channel_op", nargs: 2, fn: eventChannelOp, cmds: map[uint64]string{
			EvtchnopBindInterdomain: "bind_interdomain", EvtchnopBindVIRQ: "bind_virq", EvtchnopClose: "close",
			EvtchnopSend: "send", EvtchnopStatus: "status", EvtchnopAllocUnbound: "alloc_unbound",
			EvtchnopBindIPI: "bind_ipi", EvtchnopBindVCPU: "bind_vcpu", EvtchnopUnmask: "unmask", EvtchnopInitControl: "init_control",
			EvtchnopExpandArray: "expand_array", EvtchnopSetPriority: "set_priority"}},
		xenabi.HypervisorUpdateVaMapping: {name: "update_va_mapping", nargs: 3, fn: pvUpdateVAMapping},
		xenabi.HypervisorSetTimerOp:      {name: "set_timer_op", nargs: 1, fn: setTimerOp},
		xenabi.HypervisorVCPUOp: {name: "vcpu_op", nargs: 3, fn: vcpuOp, cmds: map[uint64]string{
			xenabi.VCPUOpInitialise: "initialise", xenabi.VCPUOpUp: "up", xenabi.VCPUOpDown: "down",
			xenabi.VCPUOpIsUp: "is_up", xenabi.VCPUOpRegisterVCPUInfo: "register_vcpu_info",
			xenabi.VCPUOpSetSingleshotTimer:         "set_singleshot_timer",
			xenabi.VCPUOpStopSingleshotTimer:        "stop_singleshot_timer",
			xenabi.VCPUOpRegisterRunstateMemoryArea: "register_runstate_memory_area",
			xenabi.VCPUOpGetRunstateInfo:            "get_runstate_info", xenabi.VCPUOpSetPeriodicTimer: "set_periodic_timer",
			xenabi.VCPUOpStopPeriodicTimer: "stop_periodic_timer"}},
	} {
		hypercalls[nr] = def
	}
	for nr, n := range map[int]string{
		0: "set_trap_table", 1: "mmu_update", 2: "set_gdt", 3: "stack_switch", 4: "set_callbacks",
		5: "fpu_taskswitch", 6: "sched_op_compat", 7: "platform_op", 8: "set_debugreg",
		9: "get_debugreg", 10: "update_descriptor", 12: "memory_op", 13: "multicall",
		14: "update_va_mapping", 15: "set_timer_op", 16: "event_channel_op_compat",
		19: "physdev_op_compat", 20: "grant_table_op", 21: "vm_assist",
		22: "update_va_mapping_otherdomain", 23: "iret", 25: "set_segment_base",
		26: "mmuext_op", 27: "xsm_op", 28: "nmi_op", 30: "callback_op", 31: "xenoprof_op",
		32: "event_channel_op", 33: "physdev_op", 34: "hvm_op", 35: "sysctl", 36: "domctl",
		37: "kexec_op", 38: "tmem_op", 39: "argo_op", 40: "xenpmu_op", 41: "dm_op", 42: "hypfs_op",
	} {
		names[nr] = n
	}
	for nr, def := range hypercalls {
		if def != nil {
			names[nr] = def.name
		}
	}
}

// HypercallName names hypercall nr.
func HypercallName(nr uint64) string {
	if n, ok := names[int(nr)]; ok && nr < 128 {
		return n
	}
	return fmt.Sprintf("hypercall%d", nr)
}

// SetTimeline makes every hypercall of the domain an instant on r's guest
// track from now on (nil: none), as Config.Timeline does.
func (d *Domain) SetTimeline(r *timeline.Recorder) { d.tl.Store(r) }

// MarkNextHypercall records the domain's next hypercall, on any vCPU, as
// a mark named name on the timeline (never sampled out): the toolstack
// marks the first one after a resume. Without a timeline it does nothing.
func (d *Domain) MarkNextHypercall(name string) {
	if d.tl.Load() != nil {
		d.nextMark.Store(&name)
	}
}

// recordHypercall is the timeline's hook in the dispatch: a sampled
// instant per hypercall, and the mark MarkNextHypercall asked for.
func (d *Domain) recordHypercall(tl *timeline.Recorder, id int, nr uint64) {
	name := HypercallName(nr)
	tl.Instant(timeline.TrackGuest, "hypercall", name, nil)
	if m := d.nextMark.Swap(nil); m != nil {
		tl.Mark(timeline.TrackGuest, "guest", *m, map[string]any{"hypercall": name, "vcpu": id})
	}
}

// hypercall is the domain's Handler: it handles one trapped hypercall on
// the vCPU's thread and returns its result for the trap to deliver. The
// port-I/O trap takes the arguments from the kvm_run sync area: one exit,
// no register ioctls.
func (d *Domain) hypercall(v CPU, nr uint64, args [5]uint64) (int64, error) {
	id := v.Index()
	if id < 0 || id >= len(d.scratch) {
		return 0, fmt.Errorf("hypercall on vCPU %d of domain %d, which has %d", id, d.id, len(d.scratch))
	}
	// Each vCPU handles its own hypercalls on its own thread, so a
	// per-vCPU scratch call keeps the dispatch free of allocations.
	c := &d.scratch[id]
	*c = call{d: d, v: v, id: id, nr: nr, args: args}
	var def *hypercallDef
	if nr < uint64(len(hypercalls)) {
		def = hypercalls[nr]
		if pvHypercalls[nr] != nil {
			def = pvHypercalls[nr]
		}
	}
	if !d.pv.cpus[id].kernel {
		// Both ways in (the stub's IN, syscall) check the mode first.
		return 0, fmt.Errorf("hypercall %s from guest user mode reached the dispatcher", HypercallName(nr))
	}
	if nr < uint64(len(hypercalls)) {
		d.calls[nr].Add(1)
	}
	if tl := d.tl.Load(); tl != nil {
		d.recordHypercall(tl, id, nr)
	}
	var ret int64
	if def == nil {
		ret = errno(xenabi.ENOSYS)
		if _, seen := d.enosysSeen.LoadOrStore(nr, true); !seen {
			d.log.Warn("unimplemented hypercall", "domain", d.id, "vcpu", id, "hypercall", HypercallName(nr), "nr", nr)
		}
	} else {
		ret = def.fn(c)
	}
	if c.err != nil {
		return 0, fmt.Errorf("%s on vCPU %d: %w", HypercallName(nr), id, c.err)
	}
	if ret != int64(int32(ret)) {
		// The trap carries 32 bits; no Xen hypercall returns more.
		// Logged once per hypercall: the guest can make it again and
		// again, and must not fill the VMM's log.
		if _, seen := d.overflowSeen.LoadOrStore(nr, true); !seen {
			d.log.Error("hypercall result does not fit in 32 bits", "domain", d.id, "hypercall", HypercallName(nr), "ret", ret)
		}
		ret = errno(xenabi.EOVERFLOW)
	}
	if d.trace != nil {
		d.trace.Info("hypercall", "dom", d.id, "vcpu", id, "call", c.format(def), "ret", formatRet(ret))
	}
	if d.clobber && def != nil && def.nargs > 0 && !c.preempted && ret != errno(xenabi.ENOSYS) {
		// A debug Xen (pv_hypercall's clobber_regs) poisons the argument
		// registers the hypercall declares once it completed: not when
		// it was preempted (the guest issues it again with them) and
		// not for -ENOSYS. The registers change as the exit completes.
		d.pv.cpus[id].later(func(r *kvmRegs, _ *kvmSregs) error {
			for _, reg := range []*uint64{&r.RDI, &r.RSI, &r.RDX, &r.R10, &r.R8}[:def.nargs] {
				*reg = Poison
			}
			return nil
		})
	}
	return ret, nil
}

func (c *call) format(def *hypercallDef) string {
	var b strings.Builder
	b.WriteString(HypercallName(c.nr))
	b.WriteByte('(')
	n := 5
	if def != nil {
		n = def.nargs
	}
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == 0 && def != nil && def.cmds != nil {
			if name, ok := def.cmds[c.args[0]]; ok {
				b.WriteString(name)
				continue
			}
		}
		fmt.Fprintf(&b, "%#x", c.args[i])
	}
	b.WriteByte(')')
	return b.String()
}

var errnoNames = map[int64]string{
	xenabi.EPERM: "EPERM", xenabi.ENOENT: "ENOENT", xenabi.ESRCH: "ESRCH", xenabi.EIO: "EIO",
	xenabi.E2BIG: "E2BIG", xenabi.EAGAIN: "EAGAIN", xenabi.ENOMEM: "ENOMEM", xenabi.EACCES: "EACCES",
	xenabi.EFAULT: "EFAULT", xenabi.EBUSY: "EBUSY", xenabi.EEXIST: "EEXIST", xenabi.EINVAL: "EINVAL",
	xenabi.ENOSPC: "ENOSPC", xenabi.ENOSYS: "ENOSYS", xenabi.ETIME: "ETIME",
	xenabi.EOPNOTSUPP: "EOPNOTSUPP", eNODEV: "ENODEV", xenabi.EISCONN: "EISCONN", xenabi.EOVERFLOW: "EOVERFLOW",
}

func formatRet(ret int64) string {
	if ret < 0 {
		if n, ok := errnoNames[-ret]; ok {
			return fmt.Sprintf("-%s", n)
		}
	}
	return fmt.Sprintf("%d", ret)
}

// ---- sched_op -----------------------------------------------------------

func schedOp(c *call) int64 {
	switch c.args[0] {
	case xenabi.SchedopYield:
		return 0
	case xenabi.SchedopBlock:
		// vcpu_block_enable_events: clear evtchn_upcall_mask, return at
		// once if events wait, otherwise sleep until one arrives; the
		// upcall is delivered as the vCPU returns to the guest.
		c.d.pv.setMask(c.pvCPU(), 0)
		c.block(0, func() bool { return c.d.upcallPending(c.id) })
		return 0
	case xenabi.SchedopPoll:
		return schedPoll(c)
	case xenabi.SchedopShutdown, xenabi.SchedopShutdownCode:
		reason, ok := c.u32(c.args[1])
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if reason > xenabi.ShutdownMax {
			return errno(xenabi.EINVAL)
		}
		if c.args[0] == xenabi.SchedopShutdownCode {
			c.d.mu.Lock()
			if c.d.codeLatch < 0 {
				c.d.codeLatch = int64(reason)
			}
			c.d.mu.Unlock()
			return 0
		}
		// %rdx is the third argument: the start_info MFN for a suspend.
		c.d.shutdown(c.v, reason, c.args[2])
		return 0
	case xenabi.SchedopRemoteShutdown, xenabi.SchedopPinOverride:
		return errno(xenabi.EPERM) // needs privilege over another domain
	}
	return errno(xenabi.ENOSYS)
}

// ---- xen_version ----------------------------------------------------------

func cstring(s string, n int) []byte {
	b := make([]byte, n)
	copy(b[:n-1], s)
	return b
}

func xenVersion(c *call) int64 {
	arg := c.args[1]
	out := func(b []byte) int64 {
		if !c.write(arg, b) {
			return errno(xenabi.EFAULT)
		}
		return 0
	}
	switch c.args[0] {
	case xenabi.XenverVersion:
		return VersionMajor<<16 | VersionMinor
	case xenabi.XenverExtraversion:
		return out(cstring(Extraversion, xenabi.XenExtraversionLen))
	case xenabi.XenverCompileInfo:
		// struct xen_compile_info: compiler[64], by[16], domain[32], date[32].
		b := append(append(append(cstring("go", 64), cstring("xenresume", 16)...),
			cstring("xenresume", 32)...), cstring("", 32)...)
		return out(b)
	case xenabi.XenverCapabilities:
		return out(cstring(Capabilities, xenabi.XenCapabilitiesInfoLen))
	case xenabi.XenverChangeset:
		return out(cstring("xenresume", xenabi.XenChangesetInfoLen))
	case xenabi.XenverPlatformParameters:
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], HypervisorVirtStart)
		return out(b[:])
	case xenabi.XenverGetFeatures:
		idx, ok := c.u32(arg)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		if idx != 0 {
			return errno(xenabi.EINVAL) // XENFEAT_NR_SUBMAPS is 1
		}
		fi := xenabi.FeatureInfo{Idx: 0, Submap: PVFeatures}
		return out(xenabi.Bytes(&fi))
	case xenabi.XenverPagesize:
		return machine.PageSize
	case xenabi.XenverGuestHandle:
		var h [16]byte // the domain handle (UUID); xenresume's are zero
		h[15] = byte(c.d.id)
		h[14] = byte(c.d.id >> 8)
		return out(h[:])
	case xenabi.XenverCommandline:
		return errno(xenabi.EPERM) // Xen's own command line is for dom0 only
	}
	return errno(xenabi.ENOSYS)
}

// ---- vcpu_op --------------------------------------------------------------

func vcpuOp(c *call) int64 { return c.d.vcpuOpSMP(c) } // pv_vcpu.go
