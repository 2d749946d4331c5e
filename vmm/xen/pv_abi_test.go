package xen

import (
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// put64 and get64 write and read the guest's memory at virtual address va
// (identity-mapped RAM in pvEnv).
func (e *pvEnv) put64(va, v uint64) { binary.LittleEndian.PutUint64(e.ram[va:], v) }
func (e *pvEnv) get64(va uint64) uint64 {
	return binary.LittleEndian.Uint64(e.ram[va:])
}
func (e *pvEnv) get16(va uint64) int16 { return int16(binary.LittleEndian.Uint16(e.ram[va:])) }

// mcEntry writes multicall entry i at list: op, a result sentinel, args.
func (e *pvEnv) mcEntry(list uint64, i int, op uint64, args ...uint64) {
	va := list + uint64(i)*mcEntrySize
	e.put64(va, op)
	e.put64(va+8, 0x5a5a)
	for j := 0; j < 6; j++ {
		var a uint64
		if j < len(args) {
			a = args[j]
		}
		e.put64(va+16+8*uint64(j), a)
	}
}

// runLater applies the register changes the model queued for BeforeEntry.
func (e *pvEnv) runLater() {
	c := e.d.pv.cpus[0]
	var s kvmSregs
	for _, f := range c.pending {
		if err := f(&e.cpu.regs, &s); err != nil {
			e.t.Fatal(err)
		}
	}
	c.pending = nil
}

// Multicall: entries run in order with their results written back, a
// later entry sees what an earlier one changed (XSA-286), an iret ends
// the list with its result (XSA-213), a nested multicall is -EINVAL, and
// a long list continues through a continuation.
func TestPVMulticall(t *testing.T) {
	const list = pvBuf
	va := uint64(0x30000)
	t.Run("in order", func(t *testing.T) {
		e := newPVEnv(t)
		e.mcEntry(list, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion)
		// Map va to frame 0x31 writable, then unmap it: the second
		// finds the first's entry and drops its reference.
		e.mcEntry(list, 1, xenabi.HypervisorUpdateVaMapping, va, e.mfn(0x31)<<12|0x63)
		e.mcEntry(list, 2, xenabi.HypervisorUpdateVaMapping, va, 0)
		e.mcEntry(list, 3, 99)
		e.mcEntry(list, 4, hcMulticall, list, 1)
		wantRet(t, "multicall", e.call(hcMulticall, list, 5), 0)
		for i, want := range []int64{VersionMajor<<16 | VersionMinor, 0, 0, errno(xenabi.ENOSYS), errno(xenabi.EINVAL)} {
			if got := int64(e.get64(list + uint64(i)*mcEntrySize + 8)); got != want {
				t.Errorf("entry %d result %s, want %s", i, formatRet(got), formatRet(want))
			}
		}
		if got := e.entry(pvL1, 0x30); got != 0 {
			t.Errorf("L1 entry after map and unmap = %#x, want 0", got)
		}
		if got := e.typeOf(0x31); got != "writable/1" {
			t.Errorf("frame 0x31 type %s, want writable/1 (its own mapping only)", got)
		}
	})
	t.Run("iret ends it", func(t *testing.T) {
		e := newPVEnv(t)
		// An iret frame back to kernel mode at pvBuf+0x800: rax, r11, rcx,
		// flags, rip, cs, rflags, rsp, ss.
		frame := uint64(pvBuf + 0x800)
		for i, w := range []uint64{0xdead, 0, 0, 0, 0x2000, FlatKernelCS &^ 3, 0x202, 0x3000, FlatKernelSS} {
			e.put64(frame+8*uint64(i), w)
		}
		e.cpu.regs.RSP = frame
		e.mcEntry(list, 0, hcIret)
		e.mcEntry(list, 1, xenabi.HypervisorXenVersion, xenabi.XenverVersion)
		wantRet(t, "multicall", e.call(hcMulticall, list, 2), 0xdead)
		if got := e.get64(list + mcEntrySize + 8); got != 0x5a5a {
			t.Errorf("the entry after the iret ran: result %#x", got)
		}
		e.runLater()
		if e.cpu.regs.RIP != 0x2000 || e.cpu.regs.RAX != 0xdead {
			t.Errorf("after the iret rip %#x rax %#x, want 0x2000 0xdead", e.cpu.regs.RIP, e.cpu.regs.RAX)
		}
	})
	t.Run("clobbered entries", func(t *testing.T) {
		// With ClobberArgs each entry that ran is 0xaa but for its
		// result, as a debug Xen leaves it; without, only the result
		// changes (the negative control).
		for _, clobber := range []bool{false, true} {
			e := newPVEnv(t)
			e.d.clobber = clobber
			e.mcEntry(list, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 7)
			e.mcEntry(list, 1, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 7)
			wantRet(t, "multicall", e.call(hcMulticall, list, 1), 0)
			const aa = 0xaaaaaaaaaaaaaaaa
			op, res, arg0, arg1 := e.get64(list), int64(e.get64(list+8)), e.get64(list+16), e.get64(list+24)
			wantOp, wantArg0, wantArg1 := uint64(xenabi.HypervisorXenVersion), uint64(xenabi.XenverVersion), uint64(7)
			if clobber {
				wantOp, wantArg0, wantArg1 = aa, aa, aa
			}
			if op != wantOp || res != VersionMajor<<16|VersionMinor || arg0 != wantArg0 || arg1 != wantArg1 {
				t.Errorf("clobber %v: entry op %#x result %#x args %#x %#x", clobber, op, res, arg0, arg1)
			}
			if e.get64(list+mcEntrySize) != xenabi.HypervisorXenVersion || e.get64(list+mcEntrySize+8) != 0x5a5a {
				t.Errorf("clobber %v: the entry that did not run changed", clobber)
			}
		}
	})
	t.Run("bad list", func(t *testing.T) {
		e := newPVEnv(t)
		wantRet(t, "list in Xen's range", e.call(hcMulticall, MachToPhysVirt, 1), errno(xenabi.EFAULT))
		wantRet(t, "unmapped list", e.call(hcMulticall, 0x40000000, 1), errno(xenabi.EFAULT))
		wantRet(t, "no entries", e.call(hcMulticall, 0x40000000, 0), 0)
	})
	t.Run("continuation", func(t *testing.T) {
		e := newPVEnv(t)
		for i := 0; i < mcBatch+2; i++ {
			e.mcEntry(list, i, xenabi.HypervisorXenVersion, xenabi.XenverVersion)
		}
		e.cpu.regs.RIP = 0x5000
		wantRet(t, "multicall", e.call(hcMulticall, list, mcBatch+2), 0)
		if got := e.get64(list + mcBatch*mcEntrySize + 8); got != 0x5a5a {
			t.Errorf("entry %d ran before the continuation: %#x", mcBatch, got)
		}
		e.runLater()
		r := e.cpu.regs
		if r.RIP != 0x5000-2 || r.RAX != hcMulticall || r.RDI != list+mcBatch*mcEntrySize || r.RSI != 2 {
			t.Errorf("continuation rip %#x rax %d rdi %#x rsi %d", r.RIP, r.RAX, r.RDI, r.RSI)
		}
	})
}

// set_debugreg and get_debugreg with Xen's rules.
func TestPVDebugreg(t *testing.T) {
	e := newPVEnv(t)
	set := func(reg, v uint64) int64 { return e.call(xenabi.HypervisorSetDebugreg, reg, v) }
	get := func(reg uint64) int64 { return e.call(xenabi.HypervisorGetDebugreg, reg) }
	// DR6 does not fit the trap's 32 bits: the low half, sign-extended
	// (runLater then puts the whole value in %rax).
	wantRet(t, "initial DR6", get(6), -61456) // 0xffff0ff0
	wantRet(t, "initial DR7", get(7), dr7Default)
	for _, tc := range []struct {
		name     string
		reg, val uint64
		want     int64
	}{
		{"DR0 a guest address", 0, 0x1000, 0},
		{"DR3 in Xen's range", 3, MachToPhysVirt, errno(xenabi.EPERM)},
		{"DR1 non-canonical", 1, 1 << 47, errno(xenabi.EPERM)},
		{"DR6 upper half", 6, 1 << 32, errno(xenabi.EINVAL)},
		{"DR7 upper half", 7, 1 << 32, errno(xenabi.EINVAL)},
		{"DR7 general detect", 7, dr7GD, errno(xenabi.EPERM)},
		{"DR7 I/O breakpoint without CR4.DE", 7, 2<<16 | 2, errno(xenabi.EPERM)},
		{"DR7 a data breakpoint", 7, 3<<16 | 2, 0},
		{"DR8", 8, 0, errno(eNODEV)},
		{"a huge register number", 1 << 40, 0, errno(eNODEV)},
	} {
		wantRet(t, tc.name, set(tc.reg, tc.val), tc.want)
	}
	wantRet(t, "DR0", get(0), 0x1000)
	wantRet(t, "DR7 as written, fixed bits set", get(7), 3<<16|2|dr7Default)
	wantRet(t, "DR5 aliases DR7", get(5), 3<<16|2|dr7Default)
	wantRet(t, "DR6 reserved bits", set(6, 0x1001), 0)
	wantRet(t, "DR6 read back", get(6), -61455)
	e.cpu.regs.RIP = 0x2000
	e.runLater()
	if e.cpu.regs.RAX != dr6Default|1 {
		t.Errorf("get_debugreg(6) rax %#x, want %#x", e.cpu.regs.RAX, dr6Default|1)
	}
	e.d.pv.cpus[0].cr4 |= cr4DE
	wantRet(t, "DR4 with CR4.DE", get(4), errno(eNODEV))
	wantRet(t, "DR5 with CR4.DE", set(5, 0), errno(eNODEV))
	wantRet(t, "I/O breakpoint with CR4.DE", set(7, 2<<16|2), 0)
	wantRet(t, "DR0 high", set(0, 0x7fff_ffff_f000), 0)
	// A result wider than 32 bits: the trap gets the low half, %rax the
	// whole value before the guest runs again.
	e.cpu.regs.RIP = 0x2000
	wantRet(t, "DR0 high read", get(0), -4096) // the low half, 0xfffff000
	e.runLater()
	if e.cpu.regs.RAX != 0x7fff_ffff_f000 {
		t.Errorf("get_debugreg(0) rax %#x, want 0x7ffffffff000", e.cpu.regs.RAX)
	}
}

// grantV1 writes v1 grant entry ref: flags, domid, frame.
func (e *pvEnv) grantV1(ref int, flags uint16, dom uint16, mfn uint64) {
	t := e.d.pv.gntEntries()
	binary.LittleEndian.PutUint16(t[8*ref+2:], dom)
	binary.LittleEndian.PutUint32(t[8*ref+4:], uint32(mfn))
	binary.LittleEndian.PutUint16(t[8*ref:], flags)
}

// gntMapOp runs one map_grant_ref and returns the status and handle.
func (e *pvEnv) gntMapOp(host uint64, flags uint32, ref uint32, dom uint16) (int16, uint32) {
	op := uint64(pvBuf + 0x100)
	e.put64(op, host)
	binary.LittleEndian.PutUint32(e.ram[op+8:], flags)
	binary.LittleEndian.PutUint32(e.ram[op+12:], ref)
	binary.LittleEndian.PutUint16(e.ram[op+16:], dom)
	binary.LittleEndian.PutUint16(e.ram[op+18:], 0x7777)
	e.put64(op+24, 0)
	wantRet(e.t, "map_grant_ref", e.call(20, gnttabMapGrantRef, op, 1), 0)
	return e.get16(op + 18), binary.LittleEndian.Uint32(e.ram[op+20:])
}

// gntUnmapOp runs one unmap_grant_ref and returns the status.
func (e *pvEnv) gntUnmapOp(host, dev uint64, h uint32) int16 {
	op := uint64(pvBuf + 0x200)
	e.put64(op, host)
	e.put64(op+8, dev)
	binary.LittleEndian.PutUint32(e.ram[op+16:], h)
	wantRet(e.t, "unmap_grant_ref", e.call(20, gnttabUnmapGrantRef, op, 1), 0)
	return e.get16(op + 20)
}

// Grant tables v1: a domain maps what it granted itself; every refused
// map or unmap gets Xen's status, and the type counts stay right.
func TestPVGrantMap(t *testing.T) {
	e := newPVEnv(t)
	setup := uint64(pvBuf + 0x300)
	e.put64(setup, 1) // dom 1
	binary.LittleEndian.PutUint32(e.ram[setup+4:], 1)
	e.put64(setup+16, pvBuf+0x400)
	wantRet(t, "setup_table", e.call(20, gnttabSetupTable, setup, 1), 0)
	if got := e.get64(pvBuf + 0x400); got != e.frames.XenFrame(gntFirstFrame) {
		t.Fatalf("setup_table frame %#x, want %#x", got, e.frames.XenFrame(gntFirstFrame))
	}
	e.grantV1(8, gtfPermitAccess, 1, e.mfn(0x40))
	e.grantV1(9, gtfPermitAccess|gtfReadonly, 1, e.mfn(0x42))
	e.grantV1(10, gtfPermitAccess, 2, e.mfn(0x40))
	e.grantV1(11, gtfPermitAccess, 1, e.mfn(pvL2))
	host := uint64(0x41000)
	for _, tc := range []struct {
		name  string
		host  uint64
		flags uint32
		ref   uint32
		dom   uint16
		want  int16
	}{
		{"neither host nor device", host, 0, 8, 1, gntstBadGntref},
		{"DOMID_SELF", host, gntmapHostMap, 8, domidSelf, gntstBadDomain},
		{"no such domain", host, gntmapHostMap, 8, 99, gntstBadDomain},
		{"dom0's grant (XSA-316)", host, gntmapHostMap, 8, 0, gntstGeneralError},
		{"ref past the table", host, gntmapHostMap, 100000, 1, gntstBadGntref},
		{"an invalid entry", host, gntmapHostMap, 12, 1, gntstGeneralError},
		{"granted to another domain", host, gntmapHostMap, 10, 1, gntstGeneralError},
		{"read-only grant mapped writable", host, gntmapHostMap, 9, 1, gntstGeneralError},
		{"a page table mapped writable", host, gntmapHostMap, 11, 1, gntstGeneralError},
		{"no L1 maps host_addr", 0x40000000, gntmapHostMap, 8, 1, gntstGeneralError},
		{"misaligned PTE (XSA-227)", e.mfn(pvL1)<<12 | 3, gntmapHostMap | gntmapContainsPTE, 8, 1, gntstGeneralError},
		{"PTE in a page that is no L1", e.mfn(0x20) << 12, gntmapHostMap | gntmapContainsPTE, 8, 1, gntstGeneralError},
	} {
		if st, _ := e.gntMapOp(tc.host, tc.flags, tc.ref, tc.dom); st != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, st, tc.want)
		}
	}
	if got := e.typeOf(0x40); got != "writable/1" {
		t.Fatalf("after refused maps frame 0x40 is %s, want writable/1", got)
	}
	// Host and device mapping, writable: two more writable references.
	st, h := e.gntMapOp(host, gntmapHostMap|gntmapDeviceMap, 8, 1)
	if st != 0 {
		t.Fatalf("map grant 8: status %d", st)
	}
	if got := e.entry(pvL1, 0x41); got&pteAddr != e.mfn(0x40)<<12 || got&pteRW == 0 {
		t.Errorf("host mapping PTE %#x, want frame %#x writable", got, e.mfn(0x40))
	}
	if got := e.typeOf(0x40); got != "writable/3" {
		t.Errorf("mapped frame 0x40 is %s, want writable/3", got)
	}
	if f := binary.LittleEndian.Uint16(e.d.pv.gntEntries()[8*8:]); f&(gtfReading|gtfWriting) != gtfReading|gtfWriting {
		t.Errorf("entry flags %#x: want GTF_reading|GTF_writing", f)
	}
	wantRet(t, "PIN_L1 of a granted frame", e.pinL1(0x40), errno(xenabi.EINVAL))
	if st := e.gntUnmapOp(host, 0, h+1); st != gntstBadHandle {
		t.Errorf("unmap a bad handle: status %d", st)
	}
	if st := e.gntUnmapOp(0, 0x1000, h); st != gntstGeneralError {
		t.Errorf("unmap the device half at the wrong address: status %d", st)
	}
	if st := e.gntUnmapOp(host, 0, h); st != 0 {
		t.Errorf("unmap the host half: status %d", st)
	}
	if got := e.entry(pvL1, 0x41); got != 0 {
		t.Errorf("PTE after unmap %#x, want 0", got)
	}
	if st := e.gntUnmapOp(0, e.mfn(0x40)<<12, h); st != 0 {
		t.Errorf("unmap the device half: status %d", st)
	}
	if got := e.typeOf(0x40); got != "writable/1" {
		t.Errorf("after unmap frame 0x40 is %s, want writable/1 (XSA-224)", got)
	}
	if f := binary.LittleEndian.Uint16(e.d.pv.gntEntries()[8*8:]); f != gtfPermitAccess {
		t.Errorf("entry flags after unmap %#x, want GTF_permit_access", f)
	}
	// A host mapping whose PTE the guest changed is not unmapped (XSA-234).
	if st, h = e.gntMapOp(host, gntmapHostMap, 8, 1); st != 0 {
		t.Fatalf("map again: status %d", st)
	}
	wantRet(t, "remap read-only", e.call(xenabi.HypervisorUpdateVaMapping, host, e.mfn(0x40)<<12|0x61, 0), 0)
	if st := e.gntUnmapOp(host, 0, h); st != gntstGeneralError {
		t.Errorf("unmap a changed PTE: status %d, want %d", st, gntstGeneralError)
	}
	// By PTE machine address (GNTMAP_contains_pte), read-only.
	pte := e.mfn(pvL1)<<12 | 0x43*8
	st, h2 := e.gntMapOp(pte, gntmapHostMap|gntmapContainsPTE|gntmapReadonly, 9, 1)
	if st != 0 {
		t.Fatalf("contains_pte map: status %d", st)
	}
	if got := e.entry(pvL1, 0x43); got&pteAddr != e.mfn(0x42)<<12 || got&pteRW != 0 {
		t.Errorf("contains_pte PTE %#x, want frame %#x read-only", got, e.mfn(0x42))
	}
	if st := e.gntUnmapOp(pte, 0, h2); st != 0 {
		t.Errorf("contains_pte unmap: status %d", st)
	}
}

func (e *pvEnv) pinL1(pfn uint64) int64 {
	op := uint64(pvBuf + 0x500)
	e.put64(op, mmuextPinL1)
	e.put64(op+8, e.mfn(pfn))
	return e.call(26, op, 1, 0, domidSelf)
}

// GNTTABOP_copy between a grant and a frame of the caller.
func TestPVGrantCopy(t *testing.T) {
	e := newPVEnv(t)
	e.grantV1(8, gtfPermitAccess, 1, e.mfn(0x40))
	e.grantV1(9, gtfPermitAccess|gtfReadonly, 1, e.mfn(0x42))
	copy(e.ram[0x40000+16:], "granted bytes")
	op := uint64(pvBuf + 0x100)
	run := func(src, dst uint64, srcOff, dstOff, n, flags uint16) int16 {
		clear(e.ram[op : op+40])
		e.put64(op, src)
		binary.LittleEndian.PutUint16(e.ram[op+8:], 1)
		binary.LittleEndian.PutUint16(e.ram[op+10:], srcOff)
		e.put64(op+16, dst)
		binary.LittleEndian.PutUint16(e.ram[op+24:], domidSelf)
		binary.LittleEndian.PutUint16(e.ram[op+26:], dstOff)
		binary.LittleEndian.PutUint16(e.ram[op+32:], n)
		binary.LittleEndian.PutUint16(e.ram[op+34:], flags)
		wantRet(e.t, "copy", e.call(20, gnttabCopy, op, 1), 0)
		return e.get16(op + 36)
	}
	if st := run(8, e.mfn(0x44), 16, 32, 13, gnttabCopySourceGref); st != 0 {
		t.Fatalf("copy from a grant: status %d", st)
	}
	if got := string(e.ram[0x44000+32 : 0x44000+45]); got != "granted bytes" {
		t.Errorf("copied %q", got)
	}
	for _, tc := range []struct {
		name           string
		src, dst       uint64
		srcOff, dstOff uint16
		n, flags       uint16
		want           int16
	}{
		{"across a page", 8, e.mfn(0x44), 4000, 0, 200, gnttabCopySourceGref, gntstBadCopyArg},
		{"into a read-only grant", e.mfn(0x44), 9, 0, 0, 8, gnttabCopyDestGref, gntstGeneralError},
		{"into a page table", 8, e.mfn(pvL1), 0, 0, 8, gnttabCopySourceGref, gntstGeneralError},
		{"from another domain's frame", 0x1, e.mfn(0x44), 0, 0, 8, 0, gntstBadPage},
		{"bad reference", 100000, e.mfn(0x44), 0, 0, 8, gnttabCopySourceGref, gntstBadGntref},
	} {
		if st := run(tc.src, tc.dst, tc.srcOff, tc.dstOff, tc.n, tc.flags); st != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, st, tc.want)
		}
	}
}

// Grant v2: the status frame can be obtained and mapped read-only only,
// and v1 cannot come back while it is mapped (XSA-255).
func TestPVGrantV2(t *testing.T) {
	e := newPVEnv(t)
	ver := uint64(pvBuf + 0x100)
	setVersion := func(v uint32) int64 {
		binary.LittleEndian.PutUint32(e.ram[ver:], v)
		return e.call(20, gnttabSetVersion, ver, 1)
	}
	gsf := uint64(pvBuf + 0x200)
	statusFrames := func() int16 {
		binary.LittleEndian.PutUint32(e.ram[gsf:], 1)
		binary.LittleEndian.PutUint16(e.ram[gsf+4:], domidSelf)
		e.put64(gsf+8, pvBuf+0x300)
		wantRet(t, "get_status_frames", e.call(20, gnttabGetStatusFrames, gsf, 1), 0)
		return e.get16(gsf + 6)
	}
	if st := statusFrames(); st != gntstGeneralError {
		t.Errorf("get_status_frames under v1: status %d", st)
	}
	wantRet(t, "set_version(3)", setVersion(3), errno(xenabi.EINVAL))
	wantRet(t, "set_version(2)", setVersion(2), 0)
	if st := statusFrames(); st != 0 {
		t.Fatalf("get_status_frames under v2: status %d", st)
	}
	sf := e.get64(pvBuf + 0x300)
	va := uint64(0x45000)
	wantRet(t, "map the status frame writable", e.call(xenabi.HypervisorUpdateVaMapping, va, sf<<12|0x63, 0), errno(xenabi.EBUSY))
	wantRet(t, "map the status frame read-only", e.call(xenabi.HypervisorUpdateVaMapping, va, sf<<12|0x61, 0), 0)
	wantRet(t, "set_version(1) while mapped", setVersion(1), errno(xenabi.EBUSY))
	wantRet(t, "unmap it", e.call(xenabi.HypervisorUpdateVaMapping, va, 0, 0), 0)
	wantRet(t, "set_version(1)", setVersion(1), 0)
	gv := uint64(pvBuf + 0x400)
	binary.LittleEndian.PutUint16(e.ram[gv:], domidSelf)
	wantRet(t, "get_version", e.call(20, gnttabGetVersion, gv, 1), 0)
	if v := binary.LittleEndian.Uint32(e.ram[gv+4:]); v != 1 {
		t.Errorf("get_version = %d, want 1", v)
	}
}

// The FIFO event-channel ABI is not offered, but its arguments are
// checked as Xen checks them (XSA-188).
func TestFIFOEventChannelRefused(t *testing.T) {
	e := newPVEnv(t)
	ic := uint64(pvBuf + 0x100)
	initControl := func(gfn uint64, off, vcpu uint32) int64 {
		e.put64(ic, gfn)
		binary.LittleEndian.PutUint32(e.ram[ic+8:], off)
		binary.LittleEndian.PutUint32(e.ram[ic+12:], vcpu)
		return e.call(xenabi.HypervisorEventChannelOp, EvtchnopInitControl, ic)
	}
	wantRet(t, "GFN -2", initControl(^uint64(1), 0, 0), errno(xenabi.EINVAL))
	wantRet(t, "misaligned offset", initControl(e.mfn(0x40), 4, 0), errno(xenabi.EINVAL))
	wantRet(t, "offset past the page", initControl(e.mfn(0x40), 4096-8, 0), errno(xenabi.EINVAL))
	wantRet(t, "no such vCPU", initControl(e.mfn(0x40), 0, 5), errno(xenabi.ENOENT))
	wantRet(t, "a valid request", initControl(e.mfn(0x40), 0, 0), errno(xenabi.EOPNOTSUPP))
	wantRet(t, "expand_array", e.call(xenabi.HypervisorEventChannelOp, EvtchnopExpandArray, ic), errno(xenabi.EOPNOTSUPP))
	wantRet(t, "unmapped argument", e.call(xenabi.HypervisorEventChannelOp, EvtchnopInitControl, 0x40000000), errno(xenabi.EFAULT))
}

// check_descriptor for 64-bit call gates: accepted with the DPL moved
// into the target selector's RPL, refused when they target Xen's
// segments or set reserved bits; other system descriptors refused.
func TestCheckDescriptorCallGate(t *testing.T) {
	gate := func(sel uint16, dpl, params uint64) uint64 {
		return 0x1234 | uint64(sel)<<16 | params<<32 | 0xc<<40 | dpl<<45 | 1<<47 | 0x5678<<48
	}
	for _, tc := range []struct {
		name string
		d    uint64
		want uint64
		ok   bool
	}{
		{"to a guest GDT code segment, DPL 3", gate(0x10, 3, 0), gate(0x13, 0, 0), true},
		{"to FLAT_RING3_CS64", gate(FlatKernelCS, 3, 0), gate(FlatKernelCS, 0, 0), true},
		{"to an LDT selector", gate(0x1004, 0, 0), gate(0x1004, 0, 0), true},
		{"to Xen's ring-0 code", gate(xenCS, 3, 0), 0, false},
		{"parameter count set", gate(0x10, 3, 1), 0, false},
		{"a 64-bit interrupt gate", gate(0x10, 3, 0)&^(0xf<<40) | 0xe<<40, 0, false},
		{"a TSS", 0x0000890000000067, 0, false},
		{"an LDT descriptor", 0x0000820000000067, 0, false},
		{"the upper half of a gate", 0x00000000ffffffff, 0x00000000ffffffff, true},
		{"a ring-0 data segment", 0x00cf93000000ffff, 0x00cff3000000ffff, true},
	} {
		got, ok := checkDescriptor(tc.d)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("%s: %#x -> %#x, %v; want %#x, %v", tc.name, tc.d, got, ok, tc.want, tc.ok)
		}
	}
}

// nmi_op registers and clears the NMI handler in trap-table slot 2.
func TestPVNMIOp(t *testing.T) {
	e := newPVEnv(t)
	e.put64(pvBuf, 0x2000)
	wantRet(t, "register", e.call(28, 0, pvBuf), 0)
	if ti := e.d.pv.cpus[0].traps[2]; ti.addr != 0x2000 || ti.flags&4 == 0 {
		t.Errorf("slot 2 = %+v, want the handler with events masked", ti)
	}
	e.put64(pvBuf, 1<<47)
	wantRet(t, "non-canonical", e.call(28, 0, pvBuf), errno(xenabi.EINVAL))
	wantRet(t, "unmapped", e.call(28, 0, 0x40000000), errno(xenabi.EFAULT))
	wantRet(t, "unregister", e.call(28, 1, 0), 0)
	if ti := e.d.pv.cpus[0].traps[2]; ti.addr != 0 {
		t.Errorf("slot 2 after unregister = %+v", ti)
	}
	wantRet(t, "unknown command", e.call(28, 7, 0), errno(xenabi.ENOSYS))
}

// --trace decodes the model's events: callbacks, trap-table entries, MMU
// operations with their arguments and results, bounces and irets.
func TestPVTrace(t *testing.T) {
	e := newPVEnv(t)
	var buf strings.Builder
	e.d.trace = slog.New(slog.NewTextHandler(&buf, nil))
	binary.LittleEndian.PutUint16(e.ram[pvBuf:], cbEvent)
	binary.LittleEndian.PutUint16(e.ram[pvBuf+2:], cbMaskEvents)
	e.put64(pvBuf+8, 0x3000)
	wantRet(t, "register event", e.call(30, 0, pvBuf), 0)
	wantRet(t, "map", e.call(xenabi.HypervisorUpdateVaMapping, 0x30000, e.mfn(0x31)<<12|0x63, 2), 0)
	wantRet(t, "pin a writable page", e.pinL1(0x31), errno(xenabi.EINVAL))
	e.put64(pvBuf+0x100, e.mfn(pvL1)<<12|0x32*8)
	e.put64(pvBuf+0x108, e.mfn(pvL2)<<12|0x63)
	wantRet(t, "map a table writable", e.call(1, pvBuf+0x100, 1, 0, domidSelf), errno(xenabi.EBUSY))
	// A bounce with no handler: the crash names the guest's view.
	c := e.d.pv.cpus[0]
	var s kvmSregs
	ec := uint64(2)
	regs := e.cpu.regs
	regs.RIP = 0x1234
	err := e.d.pv.bounceTrap(c, &regs, &s, 14, &ec)
	if err == nil {
		t.Fatal("bounce with no #PF handler: no crash")
	}
	for _, want := range []string{"unhandled exception 14 [0x2]", "guest view: kernel mode", "trap table, vector 14: no handler"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("crash report %q lacks %q", err, want)
		}
	}
	c.traps[14] = trapInfo{flags: 4, cs: FlatKernelCS, addr: 0x4000}
	regs.RSP = 0x100000
	if err := e.d.pv.bounceTrap(c, &regs, &s, 14, &ec); err != nil {
		t.Fatalf("bounce: %v", err)
	}
	out := buf.String()
	for _, want := range []string{
		"msg=callback", "type=event address=0x3000 mask_events=true ret=0",
		"msg=update_va_mapping", "va=0x30000", `pte="mfn `, "P|RW|A|D",
		"msg=mmuext_op", "cmd=pin_l1_table", "ret=-EINVAL",
		"msg=mmu_update", "pt_update", "(L1 entry 50)", "ret=-EBUSY",
		"msg=bounce", "vector=14 from=kernel rip=0x1234 handler=0x4000 error_code=0x2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("trace lacks %q:\n%s", want, out)
		}
	}
}
