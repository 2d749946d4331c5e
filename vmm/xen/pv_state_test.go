package xen

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/physmap"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// newBarePVEnv is a ring-3 domain over plain memory, like newPVEnv, for
// domain domid, whose vCPU has not started: the restore side.
func newBarePVEnv(t *testing.T, domid uint16) *pvEnv {
	t.Helper()
	frames, err := physmap.ForDomain(domid, ramSize/machine.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	e := &pvEnv{t: t, ram: make([]byte, ramSize), frames: frames}
	xenWin := make([]byte, physmap.XenWindowPages*machine.PageSize)
	l1s, data := m2pGeometry(frames.NrPages)
	npages := fFixed + l1s + data + vmmCPUStride
	area := make([]byte, npages*machine.PageSize)
	ma := frames.MachineAddress()
	mem := machine.NewMemory(
		machine.Region{Name: "ram", GPA: 0, Mem: e.ram},
		machine.Region{Name: "xen", GPA: physmap.XenWindow, Mem: xenWin},
		machine.Region{Name: "machine-ram", GPA: ma, Mem: e.ram, Alias: true},
		machine.Region{Name: "machine-xen", GPA: ma + physmap.XenWindow, Mem: xenWin, Alias: true},
		machine.Region{Name: "vmm", GPA: physmap.VMMArea, Mem: area},
	)
	e.cpu = &fakeCPU{regs: kvm.Regs{RFLAGS: 0x202}}
	x := NewXen()
	e.d = newDomain(Config{Xen: x, ID: domid, Frames: frames, Log: slog.New(slog.DiscardHandler)},
		&fakeVM{}, mem, []CPU{e.cpu}, xenWin[:machine.PageSize])
	e.d.pv = &pvDomain{d: e.d, frames: frames, area: area, npages: npages, pages: newPageInfos(frames)}
	e.d.pv.build(1, l1s, data)
	if err := x.register(e.d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.d.Release)
	return e
}

// savedPV is what a save stream carries of a ring-3 domain: every page,
// page tables normalised to PFNs, the tables' levels and pins by PFN,
// and vCPU 0's context with cr3 as a PFN.
type savedPV struct {
	ram    []byte
	tables map[uint64]PVTable // by PFN
	ctx    xenabi.VCPUGuestContext
}

func savePV(t *testing.T, e *pvEnv, regs *kvm.Regs, s *kvm.Sregs) *savedPV {
	t.Helper()
	sv := &savedPV{ram: append([]byte(nil), e.ram...), tables: map[uint64]PVTable{}}
	tables, err := e.d.PVTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		pfn, ok := e.frames.PFN(tb.MFN)
		if !ok {
			t.Fatalf("table at mfn %#x is not the domain's", tb.MFN)
		}
		pg := sv.ram[pfn*4096 : (pfn+1)*4096]
		n, err := NormalisePageTable(pg, tb.Level, e.frames)
		if err != nil {
			t.Fatalf("normalise pfn %#x: %v", pfn, err)
		}
		copy(pg, n)
		sv.tables[pfn] = tb
	}
	if sv.ctx, err = e.d.PVContext(0, regs, s); err != nil {
		t.Fatal(err)
	}
	pfn, _ := e.frames.PFN(sv.ctx.Ctrlreg[3] >> 12)
	sv.ctx.Ctrlreg[3] = pfn << 12
	for i := uint64(0); i < (sv.ctx.Gdt_ents+511)/512; i++ {
		sv.ctx.Gdt_frames[i], _ = e.frames.PFN(sv.ctx.Gdt_frames[i])
	}
	return sv
}

// restorePV loads a saved domain into e as libxc's restore does.
func restorePV(e *pvEnv, sv *savedPV) (kvm.Regs, kvm.Sregs, error) {
	copy(e.ram, sv.ram)
	var pins []PVTable
	for pfn, tb := range sv.tables {
		if err := LocalisePageTable(e.ram[pfn*4096:(pfn+1)*4096], tb.Level, e.frames); err != nil {
			return kvm.Regs{}, kvm.Sregs{}, err
		}
		if tb.Pinned {
			mfn, _ := e.frames.MFN(pfn)
			pins = append(pins, PVTable{MFN: mfn, Level: tb.Level, Pinned: true})
		}
	}
	ctx := sv.ctx
	ctx.Ctrlreg[3] = e.mfn(ctx.Ctrlreg[3]>>12) << 12
	for i := uint64(0); i < (ctx.Gdt_ents+511)/512; i++ {
		ctx.Gdt_frames[i] = e.mfn(ctx.Gdt_frames[i])
	}
	return e.d.RestorePV(0, pins, &ctx)
}

// A ring-3 domain's PV state survives save and restore into a domain
// with other machine frames: page tables rewritten to the new frames and
// re-validated (Xen's slots filled, types and pins as they were), CR3 at
// the re-pinned L4, the trap table, callbacks, kernel stack, segment
// bases and debug registers back in the hypervisor.
func TestPVStateRoundTrip(t *testing.T) {
	a := newPVEnv(t)
	// Trap table: #DE and #PF (events masked), then the sentinel.
	var tt [48]byte
	binary.LittleEndian.PutUint64(tt[8:], 0x1000)
	tt[16], tt[17] = 14, 4
	binary.LittleEndian.PutUint16(tt[18:], FlatKernelCS)
	binary.LittleEndian.PutUint64(tt[24:], 0x1400)
	copy(a.ram[pvBuf:], tt[:])
	if rc := a.call(0, pvBuf); rc != 0 {
		t.Fatalf("set_trap_table: %d", rc)
	}
	if rc := a.call(4, 0x2000, 0x2100, 0); rc != 0 { // set_callbacks
		t.Fatalf("set_callbacks: %d", rc)
	}
	if rc := a.call(3, FlatKernelSS, 0x9000); rc != 0 { // stack_switch
		t.Fatalf("stack_switch: %d", rc)
	}
	cpu := a.d.pv.cpus[0]
	cpu.dr[7] = 0x401
	a.d.pv.vmassist = 1 << vmassistArchIOPL
	regs := kvm.Regs{RIP: 0x1234, RSP: 0x8000, RDX: 0x42, RFLAGS: 0x202}
	s := cpu.sregs(cpu.kL4)
	s.FS.Base, s.GS.Base, cpu.gsInactive = 0x7000, 0x7100, 0x7200

	sv := savePV(t, a, &regs, &s)
	if got := sv.ctx.Ctrlreg[3] >> 12; got != pvL4 {
		t.Errorf("saved cr3 pfn %#x, want %#x", got, pvL4)
	}
	if sv.ctx.Flags != xenabi.VGCFOnline|xenabi.VGCFInKernel {
		t.Errorf("flags %#x", sv.ctx.Flags)
	}
	l4 := sv.ram[pvL4*4096:]
	if e := binary.LittleEndian.Uint64(l4[256*8:]); e != 0 {
		t.Errorf("saved L4 slot 256 = %#x: Xen's slots are not saved", e)
	}
	if e := binary.LittleEndian.Uint64(l4[0:]); e>>12&(1<<40-1) != pvL3 {
		t.Errorf("saved L4[0] = %#x, want the L3's PFN", e)
	}
	if tb := sv.tables[pvL4]; tb.Level != 4 || !tb.Pinned {
		t.Errorf("L4 saved as %+v", tb)
	}

	b := newBarePVEnv(t, 7)
	r, bs, err := restorePV(b, sv)
	if err != nil {
		t.Fatal(err)
	}
	c := b.d.pv.cpus[0]
	if c.kL4 != b.mfn(pvL4) || bs.CR3 != b.mfn(pvL4)<<12 {
		t.Errorf("restored kL4 %#x CR3 %#x, want mfn %#x", c.kL4, bs.CR3, b.mfn(pvL4))
	}
	for pfn, want := range map[uint64]string{pvL4: "L4/2/pinned", pvL3: "L3/1", pvL2: "L2/1", pvL1: "L1/1", 0x20: "writable/1"} {
		if got := b.typeOf(pfn); got != want {
			t.Errorf("restored PFN %#x: type %s, want %s", pfn, got, want)
		}
	}
	if got := b.entry(pvL4, 260); got != b.d.pv.l4VMM {
		t.Errorf("restored L4 slot 260 = %#x, want the VMM's %#x", got, b.d.pv.l4VMM)
	}
	if got := b.entry(pvL1, 0x20) & pteAddr >> 12; got != b.mfn(0x20) {
		t.Errorf("restored L1 entry maps mfn %#x, want %#x", got, b.mfn(0x20))
	}
	if c.traps[0].addr != 0x1000 || c.traps[14].addr != 0x1400 || c.traps[14].flags != 4 || c.event != 0x2000 || c.failsafe != 0x2100 {
		t.Errorf("traps/callbacks: %+v %+v event %#x failsafe %#x", c.traps[0], c.traps[14], c.event, c.failsafe)
	}
	if c.kernelSP != 0x9000 || c.kernelSS != FlatKernelSS || c.dr[7] != 0x401 || b.d.pv.vmassist != 1<<vmassistArchIOPL {
		t.Errorf("kernel stack %#x:%#x dr7 %#x vm_assist %#x", c.kernelSS, c.kernelSP, c.dr[7], b.d.pv.vmassist)
	}
	if r.RIP != 0x1234 || r.RDX != 0x42 || bs.FS.Base != 0x7000 || bs.GS.Base != 0x7100 || c.gsInactive != 0x7200 {
		t.Errorf("regs rip %#x rdx %#x, fs %#x gs %#x/%#x", r.RIP, r.RDX, bs.FS.Base, bs.GS.Base, c.gsInactive)
	}
	if bs.CS.Selector != FlatKernelCS || bs.CS.DPL != 3 || bs.SS.Selector != FlatKernelSS {
		t.Errorf("restored CS %#x/%d SS %#x", bs.CS.Selector, bs.CS.DPL, bs.SS.Selector)
	}
}

// Negative controls: what restore must refuse, as Xen and libxc refuse it.
func TestPVStateRestoreRefuses(t *testing.T) {
	a := newPVEnv(t)
	regs := kvm.Regs{RFLAGS: 0x202}
	cpu := a.d.pv.cpus[0]
	s := cpu.sregs(cpu.kL4)
	for _, tc := range []struct {
		name string
		edit func(sv *savedPV, b *pvEnv)
		want string
	}{
		{"pfn outside the domain", func(sv *savedPV, b *pvEnv) {
			binary.LittleEndian.PutUint64(sv.ram[pvL1*4096+8*9:], (ramSize/4096+5)<<12|0x23)
		}, "bad pfn"},
		{"page table mapped writable", func(sv *savedPV, b *pvEnv) {
			binary.LittleEndian.PutUint64(sv.ram[pvL1*4096+8*9:], pvL2<<12|0x23)
		}, "EBUSY"},
		{"cr3 not an L4", func(sv *savedPV, b *pvEnv) {
			sv.ctx.Ctrlreg[3] = 0x20 << 12
		}, "cr3"},
		{"offline vCPU", func(sv *savedPV, b *pvEnv) {
			sv.ctx.Flags = 0
		}, "not online"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sv := savePV(t, a, &regs, &s)
			b := newBarePVEnv(t, 9)
			tc.edit(sv, b)
			_, _, err := restorePV(b, sv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// Saving refuses what libxc's normalise_pagetable refuses: a frame that
// is not the domain's (here shared_info, still mapped), and a superpage.
func TestNormalisePageTableRefuses(t *testing.T) {
	a := newPVEnv(t)
	pg := append([]byte(nil), a.ram[pvL1*4096:(pvL1+1)*4096]...)
	binary.LittleEndian.PutUint64(pg[8*3:], a.d.SharedInfoMFN()<<12|0x27)
	if _, err := NormalisePageTable(pg, 1, a.frames); err == nil || !strings.Contains(err.Error(), "bad mfn") {
		t.Errorf("shared_info mapped: %v", err)
	}
	pg = make([]byte, 4096)
	binary.LittleEndian.PutUint64(pg, a.mfn(0)<<12|0xe3)
	if _, err := NormalisePageTable(pg, 2, a.frames); err == nil || !strings.Contains(err.Error(), "superpage") {
		t.Errorf("superpage: %v", err)
	}
	if err := LocalisePageTable(make([]byte, 100), 1, a.frames); err == nil {
		t.Error("short page accepted")
	}
}

// NormalisePageTableInto writes exactly what NormalisePageTable returns
// into its destination, leaves the source alone, and refuses a
// destination that is not a page and what NormalisePageTable refuses.
func TestNormalisePageTableInto(t *testing.T) {
	a := newPVEnv(t)
	src := a.ram[pvL1*4096 : (pvL1+1)*4096]
	orig := append([]byte(nil), src...)
	want, err := NormalisePageTable(src, 1, a.frames)
	if err != nil {
		t.Fatal(err)
	}
	dst := bytes.Repeat([]byte{0xAA}, 4096)
	if err := NormalisePageTableInto(dst, src, 1, a.frames); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst, want) {
		t.Error("the destination differs from NormalisePageTable's copy")
	}
	if !bytes.Equal(src, orig) || bytes.Equal(src, want) {
		t.Error("the source page was rewritten (or the table had nothing to normalise)")
	}
	if err := NormalisePageTableInto(make([]byte, 100), src, 1, a.frames); err == nil {
		t.Error("a short destination accepted")
	}
	bad := append([]byte(nil), src...)
	binary.LittleEndian.PutUint64(bad[8*3:], a.d.SharedInfoMFN()<<12|0x27)
	if err := NormalisePageTableInto(dst, bad, 1, a.frames); err == nil || !strings.Contains(err.Error(), "bad mfn") {
		t.Errorf("shared_info mapped: %v", err)
	}
}

// Localising and normalising take exactly the domain's RAM frames: the
// first and last PFN (MFN) map to the first and last MFN (PFN); one past
// either end, a frame of another domain, and a Xen-window frame are
// refused, naming the entry; non-present entries pass unchanged.
func TestRewriteTableBounds(t *testing.T) {
	f, err := physmap.ForDomain(3, 1000)
	if err != nil {
		t.Fatal(err)
	}
	const flags = pteP | pteRW | pteA
	for _, tc := range []struct {
		name   string
		save   bool
		frame  uint64
		want   uint64 // the frame written, if accepted
		refuse bool
	}{
		{"restore: PFN 0", false, 0, f.Base, false},
		{"restore: last PFN", false, 999, f.Base + 999, false},
		{"restore: PFN past the end", false, 1000, 0, true},
		{"restore: an MFN", false, f.Base, 0, true},
		{"save: first MFN", true, f.Base, 0, false},
		{"save: last MFN", true, f.Base + 999, 999, false},
		{"save: MFN past the end", true, f.Base + 1000, 0, true},
		{"save: MFN below the domain", true, f.Base - 1, 0, true},
		{"save: a PFN", true, 5, 0, true},
		{"save: the Xen window", true, f.XenFrame(0), 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := make([]byte, 4096)
			binary.LittleEndian.PutUint64(pg[8*7:], tc.frame<<12|flags)
			binary.LittleEndian.PutUint64(pg[8*8:], 0xdead000) // not present
			var out []byte
			var err error
			if tc.save {
				out, err = NormalisePageTable(pg, 1, f)
			} else {
				out, err = pg, LocalisePageTable(pg, 1, f)
			}
			if tc.refuse {
				if err == nil || !strings.Contains(err.Error(), "entry 7 ") {
					t.Fatalf("%#x accepted (%v), want a refusal naming entry 7", tc.frame, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := binary.LittleEndian.Uint64(out[8*7:]); got != tc.want<<12|flags {
				t.Errorf("entry %#x, want %#x", got, tc.want<<12|flags)
			}
			if got := binary.LittleEndian.Uint64(out[8*8:]); got != 0xdead000 {
				t.Errorf("non-present entry became %#x", got)
			}
		})
	}
}
