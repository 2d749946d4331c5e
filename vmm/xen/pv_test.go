package xen

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// pvEnv is a ring-3 domain over plain memory: 2 MiB of RAM, aliased at
// its machine addresses, the Xen window and the VMM area, and a guest
// that booted on a four-level table (L4 at PFN 1, L3 2, L2 3, L1 4)
// mapping virtual [0, 2 MiB) to its RAM, the tables read-only.
type pvEnv struct {
	t      *testing.T
	d      *Domain
	cpu    *fakeCPU
	cpus   []*fakeCPU
	ram    []byte
	frames physmap.Map
}

const (
	pvL4, pvL3, pvL2, pvL1 = 1, 2, 3, 4 // PFNs of the boot tables
	pvBuf                  = 0x10000    // a writable guest buffer
)

func newPVEnv(t *testing.T) *pvEnv { t.Helper(); return newPVEnvN(t, 1) }

// newRing3Env builds a pvEnv with ncpu fake vCPUs, vCPU 0 started in
// guest kernel mode on the boot L4 (the others down, as on Xen), the console going to con
// (if not nil) and pause requests to vm.
func newRing3Env(t *testing.T, ncpu int, con *bytes.Buffer, vm *fakeVM) (*pvEnv, []*fakeCPU) {
	t.Helper()
	frames, err := physmap.ForDomain(1, ramSize/machine.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	e := &pvEnv{t: t, ram: make([]byte, ramSize), frames: frames}
	mfn := func(pfn uint64) uint64 { m, _ := frames.MFN(pfn); return m }
	put := func(pfn uint64, i int, v uint64) { binary.LittleEndian.PutUint64(e.ram[pfn*4096+uint64(8*i):], v) }
	put(pvL4, 0, mfn(pvL3)<<12|0x67)
	put(pvL3, 0, mfn(pvL2)<<12|0x67)
	put(pvL2, 0, mfn(pvL1)<<12|0x67)
	for pfn := uint64(0); pfn < 512; pfn++ {
		flags := uint64(0x23)
		if pfn >= pvL4 && pfn <= pvL1 {
			flags = 0x21
		}
		put(pvL1, int(pfn), mfn(pfn)<<12|flags)
	}
	xenWin := make([]byte, physmap.XenWindowPages*machine.PageSize)
	l1s, data := m2pGeometry(frames.NrPages)
	npages := fFixed + l1s + data + uint64(ncpu)*vmmCPUStride
	area := make([]byte, npages*machine.PageSize)
	ma := frames.MachineAddress()
	mem := machine.NewMemory(
		machine.Region{Name: "ram", GPA: 0, Mem: e.ram},
		machine.Region{Name: "xen", GPA: physmap.XenWindow, Mem: xenWin},
		machine.Region{Name: "machine-ram", GPA: ma, Mem: e.ram, Alias: true},
		machine.Region{Name: "machine-xen", GPA: ma + physmap.XenWindow, Mem: xenWin, Alias: true},
		machine.Region{Name: "vmm", GPA: physmap.VMMArea, Mem: area},
	)
	var fakes []*fakeCPU
	var cpus []CPU
	for i := range ncpu {
		f := &fakeCPU{id: i, paging: machine.Paging{CR0: 0x80050033, CR3: mfn(pvL4) << 12, CR4: 0x620, EFER: 0xd00},
			regs: kvm.Regs{RFLAGS: 0x202}}
		fakes, cpus = append(fakes, f), append(cpus, f)
	}
	e.cpu, e.cpus = fakes[0], fakes
	x := NewXen()
	cfg := Config{Xen: x, ID: 1, Frames: frames, Log: slog.New(slog.DiscardHandler)}
	if con != nil {
		cfg.Console = con
	}
	e.d = newDomain(cfg, vm, mem, cpus, xenWin[:machine.PageSize])
	e.d.pv = &pvDomain{d: e.d, frames: frames, area: area, npages: npages, pages: newPageInfos(frames)}
	e.d.pv.build(ncpu, l1s, data)
	if err := x.register(e.d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.d.Release)
	regs := kvm.Regs{RSP: 0x100000, RFLAGS: 0x202}
	st, err := e.d.StartRing3(0, &regs, mfn(pvL4)) // the others start down, as on Xen
	if err != nil {
		t.Fatal(err)
	}
	if st.CS.Selector != FlatKernelCS || st.SS.Selector != FlatKernelSS || st.CS.DPL != 3 || st.CR3 != mfn(pvL4)<<12 {
		t.Fatalf("boot sregs CS %#x/%d SS %#x CR3 %#x", st.CS.Selector, st.CS.DPL, st.SS.Selector, st.CR3)
	}
	return e, fakes
}

// newPVEnvN is newPVEnv with n vCPUs; e.cpu is vCPU 0, e.cpus all of
// them; the secondaries are down.
func newPVEnvN(t *testing.T, n int) *pvEnv {
	t.Helper()
	e, _ := newRing3Env(t, n, nil, &fakeVM{})
	return e
}

func (e *pvEnv) mfn(pfn uint64) uint64 { m, _ := e.frames.MFN(pfn); return m }

func (e *pvEnv) entry(pfn uint64, i int) uint64 {
	return binary.LittleEndian.Uint64(e.ram[pfn*4096+uint64(8*i):])
}

func (e *pvEnv) call(nr uint64, args ...uint64) int64 {
	e.t.Helper()
	var a [5]uint64
	copy(a[:], args)
	ret, err := e.d.hypercall(e.cpu, nr, a)
	if err != nil {
		e.t.Fatalf("%s: VMM failure %v", HypercallName(nr), err)
	}
	return ret
}

func (e *pvEnv) typeOf(pfn uint64) string {
	typ, n, pinned := e.d.TypeOf(e.mfn(pfn))
	s := typ
	if n > 0 {
		s += "/" + string(rune('0'+n))
	}
	if pinned {
		s += "/pinned"
	}
	return s
}

// Pinning the boot L4 validates the tree as Xen does: Xen's slots are
// written, every entry gets the User bit (and L1 kernel mappings bit 52),
// and each frame has the type its use gives it.
func TestPVBootValidation(t *testing.T) {
	e := newPVEnv(t)
	p := e.d.pv
	for slot, want := range map[int]uint64{256: p.l4M2P, 260: p.l4VMM, 262: p.l4Direct, 257: 0, 271: 0} {
		if got := e.entry(pvL4, slot); got != want {
			t.Errorf("L4 slot %d = %#x, want %#x", slot, got, want)
		}
	}
	if got := e.entry(pvL1, 0x20); got != e.mfn(0x20)<<12|0x23|pteU|pteGuest {
		t.Errorf("kernel L1 entry %#x: want User and _PAGE_GUEST_KERNEL added", got)
	}
	if got := e.entry(pvL1, pvL2); got != e.mfn(pvL2)<<12|0x21|pteU|pteGuest {
		t.Errorf("L1 entry of a table %#x: want read-only with User", got)
	}
	for pfn, want := range map[uint64]string{
		pvL4: "L4/2/pinned", pvL3: "L3/1", pvL2: "L2/1", pvL1: "L1/1", 0x20: "writable/1",
	} {
		if got := e.typeOf(pfn); got != want {
			t.Errorf("PFN %#x: type %s, want %s", pfn, got, want)
		}
	}
	// The M2P the guest reads at MACH2PHYS_VIRT_START.
	pg := machine.Paging{CR0: 0x80050033, CR3: e.mfn(pvL4) << 12, CR4: 0x620, EFER: 0xd00}
	var b [8]byte
	if err := e.d.mem.ReadVirt(pg, MachToPhysVirt+e.mfn(0x123)*8, b[:]); err != nil || binary.LittleEndian.Uint64(b[:]) != 0x123 {
		t.Errorf("M2P[mfn of 0x123] = % x (%v), want 0x123", b, err)
	}
	if err := e.d.mem.ReadVirt(pg, MachToPhysVirt+8, b[:]); err != nil || binary.LittleEndian.Uint64(b[:]) != ^uint64(0) {
		t.Errorf("M2P of a foreign frame = % x (%v), want INVALID_M2P_ENTRY", b, err)
	}
}

// update_va_mapping and mmu_update enforce Xen's rules: only the domain's
// frames, never a page table writable, no cache attributes or superpages,
// nothing in Xen's slots; each failure with Xen's error code.
func TestPVMMURules(t *testing.T) {
	e := newPVEnv(t)
	va := uint64(0x30000) // PFN 0x30, mapped writable at boot
	vmmFrame := uint64(physmap.VMMArea >> 12)
	cases := []struct {
		name string
		va   uint64
		val  uint64
		want int64
	}{
		{"own frame read-write", va, e.mfn(0x40)<<12 | 0x63, 0},
		{"a page table read-write", va, e.mfn(pvL1)<<12 | 0x63, errno(xenabi.EBUSY)},
		{"a page table read-only", va, e.mfn(pvL1)<<12 | 0x61, 0},
		{"a VMM frame", va, vmmFrame<<12 | 0x61, errno(xenabi.EPERM)},
		{"a PFN, not an MFN", va, 0x40<<12 | 0x63, errno(xenabi.EPERM)},
		{"cache attributes (PCD)", va, e.mfn(0x40)<<12 | 0x63 | ptePCD, errno(xenabi.EINVAL)},
		{"shared_info by MFN", va, e.d.SharedInfoMFN()<<12 | 0x63, 0},
		{"unmap", va, 0, 0},
		{"in Xen's range", MachToPhysVirt, 0, errno(xenabi.EINVAL)},
		{"no L1 maps it", 0x40000000, 0, errno(xenabi.EINVAL)},
	}
	for _, tc := range cases {
		wantRet(t, tc.name, e.call(xenabi.HypervisorUpdateVaMapping, tc.va, tc.val, 2), tc.want)
	}
	if got := e.entry(pvL1, 0x30); got != 0 {
		t.Errorf("after unmap the entry is %#x", got)
	}
	if got := e.typeOf(0x40); got != "writable/1" {
		t.Errorf("PFN 0x40 after its second writable mapping went: %s, want writable/1 (its boot mapping)", got)
	}
	if len(e.d.pv.cpus[0].ptq) == 0 {
		t.Error("no page-table write was queued for the guest to make")
	}

	// mmu_update: an L4 entry in Xen's slots, a superpage, a foreign
	// domain, a plain write to an ordinary page.
	mmu := func(ptr, val uint64, fd uint64) int64 {
		copy(e.ram[pvBuf:], le64(ptr, val))
		return e.call(xenabi.HypervisorMmuUpdate, pvBuf, 1, 0, fd)
	}
	wantRet(t, "L4 slot 256", mmu(e.mfn(pvL4)<<12+256*8, 0, domidSelf), errno(xenabi.EINVAL))
	wantRet(t, "L2 superpage", mmu(e.mfn(pvL2)<<12+8, e.mfn(0x100)<<12|0xe7, domidSelf), errno(xenabi.EINVAL))
	wantRet(t, "own domid by number", mmu(e.mfn(pvL2)<<12+8, 0, 1), errno(xenabi.ESRCH))
	wantRet(t, "plain write", mmu(e.mfn(0x50)<<12+8, 42, domidSelf), 0)
	if got := e.entry(0x50, 1); got != 42 {
		t.Errorf("plain write left %d", got)
	}
	wantRet(t, "machphys update", mmu(e.mfn(0x50)<<12|1, 0x77, domidSelf), 0)
	if got := binary.LittleEndian.Uint64(e.d.pv.m2p[0x50*8:]); got != 0x77 {
		t.Errorf("M2P after MMU_MACHPHYS_UPDATE: %#x", got)
	}

	// mmuext_op: pin twice, unpin what is not pinned.
	ext := func(cmd uint32, mfn uint64) int64 {
		copy(e.ram[pvBuf:], append(le64(uint64(cmd)), le64(mfn, 0)...))
		return e.call(26, pvBuf, 1, 0, domidSelf)
	}
	wantRet(t, "pin the pinned L4", ext(mmuextPinL4, e.mfn(pvL4)), errno(xenabi.EINVAL))
	wantRet(t, "unpin an unpinned L1", ext(mmuextUnpin, e.mfn(pvL1)), errno(xenabi.EINVAL))
	wantRet(t, "a writable page as an L1", ext(mmuextPinL1, e.mfn(0x20)), errno(xenabi.EINVAL))
	wantRet(t, "new user base pointer", ext(mmuextNewUserBase, e.mfn(pvL4)), 0)
	wantRet(t, "MARK_SUPER", ext(mmuextMarkSuper, 0), errno(xenabi.EOPNOTSUPP))
}

// The M2P as built: each of the domain's frames maps to its PFN, and the
// rest of the last data page (past the domain's frames, here 700 of them)
// reads as INVALID_M2P_ENTRY (the control: a tail entry written over is
// caught).
func TestPVM2PBuilt(t *testing.T) {
	frames, err := physmap.ForDomain(1, 700)
	if err != nil {
		t.Fatal(err)
	}
	l1s, data := m2pGeometry(frames.NrPages)
	npages := fFixed + l1s + data + vmmCPUStride
	p := &pvDomain{frames: frames, area: make([]byte, npages*machine.PageSize), npages: npages, pages: newPageInfos(frames)}
	p.build(1, l1s, data)
	n := frames.NrPages
	entry := func(i uint64) uint64 { return binary.LittleEndian.Uint64(p.m2p[8*i:]) }
	for _, pfn := range []uint64{0, 1, n / 2, n - 1} {
		if got := entry(pfn); got != pfn {
			t.Errorf("M2P entry %#x = %#x", pfn, got)
		}
	}
	tail := func() int {
		for i := n; i < uint64(len(p.m2p))/8; i++ {
			if entry(i) != invalidM2P {
				return int(i)
			}
		}
		return -1
	}
	if uint64(len(p.m2p))/8 != 1024 {
		t.Fatalf("M2P of %d entries, want two pages", len(p.m2p)/8)
	}
	if i := tail(); i >= 0 {
		t.Errorf("M2P tail entry %#x = %#x, want INVALID_M2P_ENTRY", i, entry(uint64(i)))
	}
	binary.LittleEndian.PutUint64(p.m2p[8*n:], 5)
	if tail() != int(n) {
		t.Error("a valid-looking tail entry went unnoticed")
	}
}

// A type count at its maximum refuses one more reference, as Xen's
// _get_page_type does on overflow, and leaves the count as it was (the
// mapping fails with the code of any refused writable reference, as for a
// page table mapped read-write); one below the maximum takes it.
func TestPVTypeCountOverflow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		count uint32
		want  int64
	}{
		{"one below the maximum", math.MaxUint32 - 1, 0},
		{"at the maximum", math.MaxUint32, errno(xenabi.EBUSY)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			pi := e.d.pv.pages.get(e.mfn(0x40))
			if pi.typ != ptWritable || pi.count != 1 {
				t.Fatalf("PFN 0x40 at boot: %s/%d, want writable/1", pi.typ, pi.count)
			}
			pi.count = tc.count
			wantRet(t, "map it writable once more", e.call(xenabi.HypervisorUpdateVaMapping, 0x30000, e.mfn(0x40)<<12|0x63, 2), tc.want)
			want := tc.count
			if tc.want == 0 {
				want++
			}
			if pi.count != want {
				t.Errorf("count %d, want %d", pi.count, want)
			}
		})
	}
}

// set_gdt takes only frames that are not mapped writable and whose every
// descriptor passes check_descriptor; code and data descriptors are held
// to ring 3.
func TestPVSetGDT(t *testing.T) {
	e := newPVEnv(t)
	const gdtPFN = 0x60
	binary.LittleEndian.PutUint64(e.ram[gdtPFN*4096+8:], 0x00af9b000000ffff) // ring-0 code
	copy(e.ram[pvBuf:], le64(e.mfn(gdtPFN)))
	wantRet(t, "frame still mapped writable", e.call(2, pvBuf, 16), errno(xenabi.EINVAL))
	wantRet(t, "remap read-only", e.call(xenabi.HypervisorUpdateVaMapping, gdtPFN<<12, e.mfn(gdtPFN)<<12|0x61, 2), 0)
	wantRet(t, "too many entries", e.call(2, pvBuf, FirstReservedGDTEntry+1), errno(xenabi.EINVAL))
	wantRet(t, "set_gdt", e.call(2, pvBuf, 16), 0)
	if got := binary.LittleEndian.Uint64(e.ram[gdtPFN*4096+8:]); got>>45&3 != 3 {
		t.Errorf("ring-0 code descriptor kept DPL %d", got>>45&3)
	}
	wantRet(t, "now writable", e.call(xenabi.HypervisorUpdateVaMapping, gdtPFN<<12, e.mfn(gdtPFN)<<12|0x63, 2), errno(xenabi.EBUSY))

	const sysPFN = 0x61
	binary.LittleEndian.PutUint64(e.ram[sysPFN*4096:], 0x00008b0000000067) // a TSS descriptor
	e.call(xenabi.HypervisorUpdateVaMapping, sysPFN<<12, e.mfn(sysPFN)<<12|0x61, 2)
	copy(e.ram[pvBuf:], le64(e.mfn(sysPFN)))
	wantRet(t, "a system descriptor", e.call(2, pvBuf, 16), errno(xenabi.EINVAL))
}

// The VMM writes into guest memory only where the guest could itself: a
// read-only page (a page table) or an address in Xen's range is -EFAULT.
func TestPVGuestPointers(t *testing.T) {
	e := newPVEnv(t)
	wantRet(t, "extraversion to a buffer", e.call(xenabi.HypervisorXenVersion, xenabi.XenverExtraversion, pvBuf), 0)
	wantRet(t, "extraversion into a page table", e.call(xenabi.HypervisorXenVersion, xenabi.XenverExtraversion, pvL1<<12), errno(xenabi.EFAULT))
	wantRet(t, "extraversion into the M2P", e.call(xenabi.HypervisorXenVersion, xenabi.XenverExtraversion, MachToPhysVirt), errno(xenabi.EFAULT))
	wantRet(t, "extraversion into the VMM's IDT", e.call(xenabi.HypervisorXenVersion, xenabi.XenverExtraversion, vmmTextVirt), errno(xenabi.EFAULT))
	binary.LittleEndian.PutUint32(e.ram[pvBuf:], 0)
	wantRet(t, "get_features", e.call(xenabi.HypervisorXenVersion, xenabi.XenverGetFeatures, pvBuf), 0)
	if got := binary.LittleEndian.Uint32(e.ram[pvBuf+4:]); got != PVFeatures || got&(1<<xenabi.XenfeatSupervisorModeKernel) != 0 {
		t.Errorf("features %#x, want %#x (no supervisor_mode_kernel)", got, PVFeatures)
	}
}

// Trap table, callbacks, stack_switch, vm_assist: Xen's answers.
func TestPVCallbacks(t *testing.T) {
	e := newPVEnv(t)
	cpu := e.d.pv.cpus[0]
	copy(e.ram[pvBuf:], append(append(le64(0x0e|0x4<<8|0xe030<<16, 0x1234), le64(0x20|3<<8, 0x5678)...), le64(0, 0)...))
	wantRet(t, "set_trap_table", e.call(0, pvBuf), 0)
	if cpu.traps[14].addr != 0x1234 || cpu.traps[14].flags != 4 || cpu.traps[14].cs != 0xe033 || cpu.traps[0x20].addr != 0x5678 {
		t.Errorf("trap table: %+v %+v", cpu.traps[14], cpu.traps[0x20])
	}
	copy(e.ram[pvBuf:], le64(0x0d, 0x8000000000000000))
	wantRet(t, "non-canonical handler", e.call(0, pvBuf), errno(xenabi.EINVAL))
	cb := func(typ, flags uint16, addr uint64) int64 {
		copy(e.ram[pvBuf:], le64(uint64(typ)|uint64(flags)<<16, addr))
		return e.call(30, 0, pvBuf)
	}
	wantRet(t, "event", cb(cbEvent, 0, 0x1000), 0)
	wantRet(t, "syscall32", cb(cbSyscall32, cbMaskEvents, 0x2000), 0)
	wantRet(t, "sysenter_deprecated", cb(cbSysenterDeprecated, 0, 0x2000), errno(xenabi.ENOSYS))
	wantRet(t, "non-canonical", cb(cbSyscall, 0, 1<<63), errno(xenabi.EINVAL))
	copy(e.ram[pvBuf:], le32(cbEvent))
	wantRet(t, "unregister event", e.call(30, 1, pvBuf), errno(xenabi.EINVAL))
	if cpu.event != 0x1000 || !cpu.syscall32.mask {
		t.Errorf("callbacks event %#x syscall32 %+v", cpu.event, cpu.syscall32)
	}
	wantRet(t, "stack_switch", e.call(3, 0xe028, 0x9000), 0)
	if cpu.kernelSS != 0xe02b || cpu.kernelSP != 0x9000 {
		t.Errorf("kernel stack %#x:%#x, want RPL raised to 3", cpu.kernelSS, cpu.kernelSP)
	}
	wantRet(t, "vm_assist m2p_strict", e.call(21, 0, vmassistM2PStrict), 0)
	wantRet(t, "vm_assist type 6", e.call(21, 0, 6), errno(xenabi.EINVAL))
	wantRet(t, "vm_assist cmd 2", e.call(21, 2, 2), errno(xenabi.ENOSYS))
	wantRet(t, "console_io", e.call(xenabi.HypervisorConsoleIO, xenabi.ConsoleioWrite, 1, pvBuf), errno(xenabi.EPERM))
}

// On the ports the VMM's I/O bitmap opens to CPL 3, only the stub's
// `in $0xe2, %eax` from guest kernel mode is a hypercall (and counted).
// Anything else leaves RIP and %rax as they were at the instruction and
// is what the guest's I/O permissions make it on Xen: #GP(0) at the
// instruction, or, with a virtual IOPL, a read of all ones past it.
func TestPVOpenPorts(t *testing.T) {
	const code, rax = 0x5000, 0x1111111100000011 // xen_version in %eax
	for _, tc := range []struct {
		name   string
		insn   []byte
		port   uint16
		write  bool
		size   int
		user   bool
		iopl   uint8
		call   bool   // a hypercall
		gp     bool   // #GP(0) at the instruction
		wantAX uint64 // else: emulated, %rax after it
	}{
		{"the stub from kernel mode", []byte{0xe5, 0xe2}, 0xe2, false, 4, false, 0, true, false, 0},
		{"the stub from user mode", []byte{0xe5, 0xe2}, 0xe2, false, 4, true, 0, false, true, 0},
		{"in (%dx) from kernel mode", []byte{0xed}, 0xe2, false, 4, false, 0, false, true, 0},
		{"16-bit in from user mode", []byte{0x66, 0xe5, 0xe2}, 0xe2, false, 2, true, 0, false, true, 0},
		{"out to the null port", []byte{0xe6, 0xe3}, 0xe3, true, 1, false, 0, false, true, 0},
		{"8-bit in", []byte{0xe4, 0xe4}, 0xe4, false, 1, false, 0, false, true, 0},
		{"8-bit in with IOPL", []byte{0xe4, 0xe4}, 0xe4, false, 1, false, 1, false, false, rax | 0xff},
		{"out with IOPL", []byte{0xe6, 0xe3}, 0xe3, true, 1, false, 1, false, false, rax},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			cpu := e.d.pv.cpus[0]
			cpu.traps[13] = trapInfo{cs: FlatKernelCS, addr: 0x7013}
			cpu.iopl = tc.iopl
			copy(e.ram[code:], tc.insn)
			e.cpu.regs.RIP, e.cpu.regs.RAX, e.cpu.regs.RSP = code, rax, 0x9000
			s := cpu.sregs(cpu.kL4)
			s.CR0, s.CR4, s.EFER = 0x80050033, 0x620, 0xd01
			if tc.user {
				cpu.kernel, cpu.uL4 = false, cpu.kL4
			}
			before := e.d.HypercallCount(xenabi.HypervisorXenVersion)
			data := make([]byte, tc.size)
			if err := e.d.pv.portAccess(e.cpu, tc.port, tc.write, data); err != nil {
				t.Fatal(err)
			}
			calls := e.d.HypercallCount(xenabi.HypervisorXenVersion) - before
			if tc.call {
				if calls != 1 || len(cpu.pending) != 0 || binary.LittleEndian.Uint32(data) != VersionMajor<<16|VersionMinor {
					t.Fatalf("hypercall: counted %d, %d changes queued, data %x", calls, len(cpu.pending), data)
				}
				return
			}
			if calls != 0 {
				t.Errorf("counted %d hypercalls", calls)
			}
			// KVM completes the instruction, then the queued changes run.
			e.cpu.regs.RIP, e.cpu.regs.RAX = code+2, 0xffffffff
			for _, f := range cpu.pending {
				if err := f(&e.cpu.regs, &s); err != nil {
					t.Fatal(err)
				}
			}
			cpu.pending = nil
			r := e.cpu.regs
			if tc.gp {
				if r.RIP != 0x7013 || e.get64(r.RSP+16) != 0 || e.get64(r.RSP+24) != code || r.RAX != rax {
					t.Errorf("rip %#x rax %#x, frame ec %#x rip %#x: want #GP(0) at %#x with %%rax %#x", r.RIP, r.RAX, e.get64(r.RSP+16), e.get64(r.RSP+24), code, uint64(rax))
				}
				return
			}
			if r.RIP != code+uint64(len(tc.insn)) || r.RAX != tc.wantAX {
				t.Errorf("rip %#x rax %#x, want %#x %#x", r.RIP, r.RAX, code+uint64(len(tc.insn)), tc.wantAX)
			}
		})
	}
}

// The bare-exit baseline, in $0xe3,%al from guest kernel mode with a
// virtual IOPL that allows it, is answered at the exit as the hypercall
// is: all ones in the data KVM completes the instruction with, nothing
// queued for the next entry, no allocation. Without the IOPL, from user
// mode, or as another instruction, it takes the general path.
func TestPVNullPortFast(t *testing.T) {
	const code = 0x5000
	for _, tc := range []struct {
		name string
		insn []byte
		user bool
		iopl uint8
		fast bool
	}{
		{"in with IOPL 1", []byte{0xe4, 0xe3}, false, 1, true},
		{"in with IOPL 3", []byte{0xe4, 0xe3}, false, 3, true},
		{"in without IOPL", []byte{0xe4, 0xe3}, false, 0, false},
		{"in from user mode", []byte{0xe4, 0xe3}, true, 3, false},
		{"in (%dx)", []byte{0xec}, false, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			cpu := e.d.pv.cpus[0]
			cpu.traps[13] = trapInfo{cs: FlatKernelCS, addr: 0x7013}
			cpu.iopl = tc.iopl
			copy(e.ram[code:], tc.insn)
			e.cpu.regs.RIP, e.cpu.regs.RSP = code, 0x9000
			if tc.user {
				cpu.kernel, cpu.uL4 = false, cpu.kL4
			}
			data := []byte{0}
			if err := e.d.pv.portAccess(e.cpu, NullPort, false, data); err != nil {
				t.Fatal(err)
			}
			fast := len(cpu.pending) == 0
			cpu.pending = nil
			if fast != tc.fast || (fast && data[0] != 0xff) {
				t.Fatalf("answered at the exit %v (want %v), data %#x", fast, tc.fast, data[0])
			}
			if !tc.fast {
				return
			}
			allocs := testing.AllocsPerRun(100, func() {
				if err := e.d.pv.portAccess(e.cpu, NullPort, false, data); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 || len(cpu.pending) != 0 {
				t.Errorf("%v allocations, %d changes queued per bare exit; want none", allocs, len(cpu.pending))
			}
		})
	}
}

// Descriptors: check_descriptor's table.
func TestCheckDescriptor(t *testing.T) {
	for _, tc := range []struct {
		d, want uint64
		ok      bool
	}{
		{0, 0, true},
		{0x00af9b000000ffff, 0x00affb000000ffff, true},                           // ring-0 code -> ring 3
		{0x00cf93000000ffff, 0x00cff3000000ffff, true},                           // ring-0 data -> ring 3
		{0x00affb000000ffff, 0x00affb000000ffff, true},                           // ring-3 code
		{0x0000890000000067, 0, false},                                           // TSS
		{0x0000ec0000000000 | 0xe033<<16, 0x00008c0000000000 | 0xe033<<16, true}, // call gate: DPL 0, RPL 3
		{0x00007b0000000000 &^ (1 << 47), 0x7b0000000000, true},                  // not present
	} {
		got, ok := checkDescriptor(tc.d)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("checkDescriptor(%#x) = %#x, %v; want %#x, %v", tc.d, got, ok, tc.want, tc.ok)
		}
	}
}

// The hypercall page and trampolines decode to what their comments say.
func TestRing3Code(t *testing.T) {
	page := asm.Ring3HypercallPage(HypercallPort)
	if page[0] != 0x51 {
		t.Errorf("first byte %#x; XTF wants 0x51 (push %%rcx)", page[0])
	}
	var text []string
	for _, in := range asm.Disassemble(page[17*32:18*32], 0, 64, 8) {
		text = append(text, in.Text)
	}
	if got := strings.Join(text, "; "); !strings.HasPrefix(got, "push %rcx; push %r11; mov $0x11,%eax; in $0xe2,%eax; cdqe; pop %r11; pop %rcx; retq") {
		t.Errorf("stub 17: %s", got)
	}
	text = nil
	for _, in := range asm.Disassemble(flushLoop, 0, 64, 11) {
		text = append(text, in.Text)
	}
	want := "mov (%rsi),%rdi; test %rdi,%rdi; je 0x15; mov 0x8(%rsi),%rax; mov %rax,(%rdi); add $0x10,%rsi; jmp 0x0; mov %cr3,%rax; mov %rax,%cr3; hlt; jmp 0x1b"
	if got := strings.Join(text, "; "); got != want {
		t.Errorf("write loop:\n got %s\nwant %s", got, want)
	}
	if flushLoop[flushHalt-1] != 0xf4 {
		t.Errorf("flushHalt %d does not follow the hlt", flushHalt)
	}
}
