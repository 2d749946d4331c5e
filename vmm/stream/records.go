package stream

import (
	"encoding/binary"
	"slices"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Typed record bodies. Each DecodeX checks a body's length exactly as
// libxc's restorer does (tools/libs/guest/xg_sr_restore_x86_pv.c,
// xg_sr_common_x86.c) and its reserved fields as verify-stream-v2 does, and
// returns an error wrapping ErrFormat, never panicking, whatever the bytes.
// Each EncodeX writes the body DecodeX accepts. The ABI structs are copied
// whole from and to the body: they are xenabi's cgo -godefs types, whose Go
// layout on amd64 is the C layout (the layout tests pin it), so nothing
// here keeps offsets by hand.

// decode copies a body of exactly sizeof(T) bytes into a new T.
func decode[T any](b []byte) *T {
	v := new(T)
	copy(xenabi.Bytes(v), b)
	return v
}

// PVInfo is the X86_PV_INFO body.
type PVInfo struct {
	GuestWidth uint8 // bytes in a guest word: 8 (64-bit) or 4 (32-bit)
	PTLevels   uint8 // page-table levels: 4 (64-bit) or 3 (32-bit PAE)
}

const pvInfoSize = 8

// EncodePVInfo builds an X86_PV_INFO body.
func EncodePVInfo(p PVInfo) []byte {
	b := make([]byte, pvInfoSize)
	b[0], b[1] = p.GuestWidth, p.PTLevels
	return b
}

// DecodePVInfo decodes an X86_PV_INFO body: 8 bytes, a width and level
// count libxc accepts together (8 with 4, 4 with 3:
// valid_x86_pv_info_combination), reserved bytes zero.
func DecodePVInfo(b []byte) (PVInfo, error) {
	if len(b) != pvInfoSize {
		return PVInfo{}, bad("record X86_PV_INFO: %d bytes, want %d", len(b), pvInfoSize)
	}
	p := PVInfo{GuestWidth: b[0], PTLevels: b[1]}
	if !(p.GuestWidth == 8 && p.PTLevels == 4) && !(p.GuestWidth == 4 && p.PTLevels == 3) {
		return p, bad("record X86_PV_INFO: guest width %d with %d page-table levels (want 8 with 4, or 4 with 3)", p.GuestWidth, p.PTLevels)
	}
	for _, r := range b[2:] {
		if r != 0 {
			return p, bad("record X86_PV_INFO: reserved bytes set")
		}
	}
	return p, nil
}

// P2MFrames is the X86_PV_P2M_FRAMES body of a 64-bit guest: the PFNs of
// the frames holding the guest's P2M list, each frame 512 entries, for the
// PFNs StartPFN to EndPFN.
type P2MFrames struct {
	StartPFN, EndPFN uint32
	Frames           []uint64
}

// p2mPerFrame is how many P2M entries a frame holds for a 64-bit guest
// (libxc's fpp = PAGE_SIZE / guest width).
const p2mPerFrame = 4096 / 8

// NrPages is the number of PFNs the P2M covers from PFN 0: EndPFN+1.
func (p P2MFrames) NrPages() uint64 { return uint64(p.EndPFN) + 1 }

// EncodeP2MFrames builds an X86_PV_P2M_FRAMES body.
func EncodeP2MFrames(p P2MFrames) []byte {
	b := binary.LittleEndian.AppendUint32(nil, p.StartPFN)
	b = binary.LittleEndian.AppendUint32(b, p.EndPFN)
	for _, f := range p.Frames {
		b = binary.LittleEndian.AppendUint64(b, f)
	}
	return b
}

// DecodeP2MFrames decodes the X86_PV_P2M_FRAMES body of a 64-bit guest:
// start <= end and exactly one frame PFN for each 512 PFNs of the range,
// as handle_x86_pv_p2m_frames checks.
func DecodeP2MFrames(b []byte) (P2MFrames, error) {
	if len(b) < 8 {
		return P2MFrames{}, bad("record X86_PV_P2M_FRAMES: %d bytes, want at least 8", len(b))
	}
	p := P2MFrames{StartPFN: binary.LittleEndian.Uint32(b), EndPFN: binary.LittleEndian.Uint32(b[4:])}
	if p.StartPFN > p.EndPFN {
		return p, bad("record X86_PV_P2M_FRAMES: start pfn %#x after end pfn %#x", p.StartPFN, p.EndPFN)
	}
	n := uint64(p.EndPFN/p2mPerFrame+1) - uint64(p.StartPFN/p2mPerFrame)
	if want := 8 + 8*n; uint64(len(b)) != want {
		return p, bad("record X86_PV_P2M_FRAMES: %d bytes, want %d for pfns %#x-%#x", len(b), want, p.StartPFN, p.EndPFN)
	}
	p.Frames = make([]uint64, n)
	for i := range p.Frames {
		p.Frames[i] = binary.LittleEndian.Uint64(b[8+8*i:])
	}
	return p, nil
}

// VCPUBasic is the X86_PV_VCPU_BASIC body of a 64-bit guest: a vCPU id, a
// reserved word and the vCPU's vcpu_guest_context.
type VCPUBasic struct {
	ID      uint32
	Context xenabi.VCPUGuestContext
}

const vcpuHeaderSize = 8

// VCPUBasicSize is the length of a 64-bit guest's X86_PV_VCPU_BASIC body.
const VCPUBasicSize = vcpuHeaderSize + xenabi.SizeofVCPUGuestContext

// EncodeVCPUBasic builds an X86_PV_VCPU_BASIC body.
func EncodeVCPUBasic(v *VCPUBasic) []byte {
	b := make([]byte, VCPUBasicSize)
	binary.LittleEndian.PutUint32(b, v.ID)
	copy(b[vcpuHeaderSize:], xenabi.Bytes(&v.Context))
	return b
}

// DecodeVCPUBasic decodes an X86_PV_VCPU_BASIC body of a 64-bit guest:
// exactly 8+5168 bytes (handle_x86_pv_vcpu_blob), the reserved word zero.
// libxc skips an empty record (8 bytes, no context); ReadSave does too,
// but DecodeVCPUBasic refuses it: it has no context to return.
func DecodeVCPUBasic(b []byte) (*VCPUBasic, error) {
	id, ctx, err := decodeVCPUHeader(RecX86PVVCPUBasic, b)
	if err != nil {
		return nil, err
	}
	if len(ctx) != xenabi.SizeofVCPUGuestContext {
		return nil, bad("record X86_PV_VCPU_BASIC: %d bytes, want %d", len(b), VCPUBasicSize)
	}
	v := &VCPUBasic{ID: id}
	copy(xenabi.Bytes(&v.Context), ctx)
	return v, nil
}

// decodeVCPUHeader splits the body of an X86_PV_VCPU_* record into its
// vCPU id and blob, checking the blob's size as handle_x86_pv_vcpu_blob
// does for EXTENDED (at most 128 bytes), XSAVE (at least 16) and MSRS (a
// multiple of 16); an empty blob is allowed, as libxc tolerates it.
func decodeVCPUHeader(typ uint32, b []byte) (uint32, []byte, error) {
	name := RecordName(typ)
	if len(b) < vcpuHeaderSize {
		return 0, nil, bad("record %s: %d bytes, want at least %d", name, len(b), vcpuHeaderSize)
	}
	if binary.LittleEndian.Uint32(b[4:]) != 0 {
		return 0, nil, bad("record %s: reserved field set", name)
	}
	id, blob := binary.LittleEndian.Uint32(b), b[vcpuHeaderSize:]
	if len(blob) == 0 {
		return id, blob, nil
	}
	switch typ {
	case RecX86PVVCPUExtended:
		if len(blob) > 128 {
			return id, nil, bad("record %s: %d bytes, want at most %d", name, len(b), vcpuHeaderSize+128)
		}
	case RecX86PVVCPUXSave:
		if len(blob) < 16 {
			return id, nil, bad("record %s: %d bytes, want at least %d", name, len(b), vcpuHeaderSize+16)
		}
	case RecX86PVVCPUMSRs:
		if len(blob)%16 != 0 {
			return id, nil, bad("record %s: %d-byte context, not a multiple of 16", name, len(blob))
		}
	}
	return id, blob, nil
}

// TSCInfo is the X86_TSC_INFO body.
type TSCInfo struct {
	Mode        uint32 // TSC_MODE_*
	KHz         uint32
	Nsec        uint64 // the domain's system time
	Incarnation uint32
}

const tscInfoSize = 24

// EncodeTSCInfo builds an X86_TSC_INFO body.
func EncodeTSCInfo(t TSCInfo) []byte {
	b := binary.LittleEndian.AppendUint32(nil, t.Mode)
	b = binary.LittleEndian.AppendUint32(b, t.KHz)
	b = binary.LittleEndian.AppendUint64(b, t.Nsec)
	b = binary.LittleEndian.AppendUint32(b, t.Incarnation)
	return binary.LittleEndian.AppendUint32(b, 0)
}

// DecodeTSCInfo decodes an X86_TSC_INFO body: exactly 24 bytes, the
// reserved word zero.
func DecodeTSCInfo(b []byte) (TSCInfo, error) {
	if len(b) != tscInfoSize {
		return TSCInfo{}, bad("record X86_TSC_INFO: %d bytes, want %d", len(b), tscInfoSize)
	}
	if binary.LittleEndian.Uint32(b[20:]) != 0 {
		return TSCInfo{}, bad("record X86_TSC_INFO: reserved field set")
	}
	return TSCInfo{Mode: binary.LittleEndian.Uint32(b), KHz: binary.LittleEndian.Uint32(b[4:]),
		Nsec: binary.LittleEndian.Uint64(b[8:]), Incarnation: binary.LittleEndian.Uint32(b[16:])}, nil
}

// SharedInfoSize is the length of a SHARED_INFO body: one page.
const SharedInfoSize = 4096

// EncodeSharedInfo builds a SHARED_INFO body: the page with si at its
// start and zeros after it.
func EncodeSharedInfo(si *xenabi.SharedInfo) []byte {
	b := make([]byte, SharedInfoSize)
	copy(b, xenabi.Bytes(si))
	return b
}

// DecodeSharedInfo decodes a SHARED_INFO body: exactly one page, of which
// the shared_info structure is the start (libxc's restorer reads only
// vcpu_info and arch from it).
func DecodeSharedInfo(b []byte) (*xenabi.SharedInfo, error) {
	if len(b) != SharedInfoSize {
		return nil, bad("record SHARED_INFO: %d bytes, want %d", len(b), SharedInfoSize)
	}
	return decode[xenabi.SharedInfo](b[:xenabi.SizeofSharedInfo]), nil
}

// HVMContext is a decoded HVM_CONTEXT blob (public/hvm/save.h): records,
// each an hvm_save_descriptor and its body, the HEADER first and END last.
// xenresume writes one in its PV streams for the state that exists only
// because the guest runs in a hardware container (a CPU record per vCPU).
type HVMContext struct {
	Header xenabi.HVMSaveHeader
	CPUs   []HVMCPU // CPU records, in blob order
	// The platform's interrupt controllers and timer, where the domain
	// has them (an HVM domain all, a PVH domain the LAPICs only): the
	// PIC pair (instance 0 the master), the IO-APIC, each vCPU's LAPIC
	// and LAPIC register page, the PIT.
	PICs      []HVMPIC
	IOAPIC    *xenabi.HVMHWVIOAPIC
	LAPICs    []HVMLAPIC
	LAPICRegs []HVMLAPICRegs
	PIT       *xenabi.HVMHWPIT
	// The emulated timers' and CMOS's records (one instance each; nil:
	// none, as for PVH, which has no such devices).
	RTC     *xenabi.HVMHWRTC
	HPET    *xenabi.HVMHWHPET
	PMTimer *xenabi.HVMHWPMTimer
	Other   []HVMSaveRecord // records of other types, undecoded
}

// HVMPIC is a PIC record (struct hvm_hw_vpic) with its bitfields apart.
type HVMPIC struct {
	Instance               uint16 // 0 the master, 1 the slave
	IRR, IMR, ISR, IRQBase uint8
	InitState, PriorityAdd uint8 // 4 bits each
	Flags                  uint8 // xenabi.VPIC* bits
	ELCR, IntOutput        uint8
}

// HVMLAPIC is a vCPU's LAPIC record.
type HVMLAPIC struct {
	Instance uint16
	LAPIC    xenabi.HVMHWLAPIC
}

// HVMLAPICRegs is a vCPU's LAPIC_REGS record: the 1 KiB register page.
type HVMLAPICRegs struct {
	Instance uint16
	Regs     xenabi.HVMHWLAPICRegs
}

func encodePIC(p HVMPIC) []byte {
	return []byte{p.IRR, p.IMR, p.ISR, p.IRQBase, p.InitState&0xf | p.PriorityAdd<<4, p.Flags & 0x7f, p.ELCR, p.IntOutput}
}

func decodePIC(inst uint16, b []byte) HVMPIC {
	return HVMPIC{Instance: inst, IRR: b[0], IMR: b[1], ISR: b[2], IRQBase: b[3], InitState: b[4] & 0xf,
		PriorityAdd: b[4] >> 4, Flags: b[5] & 0x7f, ELCR: b[6], IntOutput: b[7]}
}

// HVMCPU is one CPU record of an HVM_CONTEXT blob.
type HVMCPU struct {
	Instance uint16 // the vCPU
	CPU      xenabi.HVMHWCPU
}

// HVMSaveRecord is an HVM_CONTEXT record kept as bytes.
type HVMSaveRecord struct {
	Typecode, Instance uint16
	Body               []byte
}

// hvmSaveCodeMax is HVM_SAVE_CODE_MAX of public/arch-x86/hvm/save.h: Xen's
// hvm_load refuses a typecode above it.
const hvmSaveCodeMax = 20

// CPU returns the CPU record of a vCPU, or nil.
func (c *HVMContext) CPU(instance uint16) *xenabi.HVMHWCPU {
	for i := range c.CPUs {
		if c.CPUs[i].Instance == instance {
			return &c.CPUs[i].CPU
		}
	}
	return nil
}

func appendHVMRecord(b []byte, code, inst uint16, body []byte) []byte {
	d := xenabi.HVMSaveDescriptor{Typecode: code, Instance: inst, Length: uint32(len(body))}
	return append(append(b, xenabi.Bytes(&d)...), body...)
}

// EncodeHVMContext builds an HVM_CONTEXT blob as hvm_save orders it:
// HEADER (with the magic and version filled in), the CPU records, then the
// platform's and the other records by increasing typecode (stably), END.
func EncodeHVMContext(c *HVMContext) []byte {
	h := c.Header
	h.Magic, h.Version = xenabi.HVMFileMagic, xenabi.HVMFileVersion
	b := appendHVMRecord(nil, xenabi.HVMSaveCodeHeader, 0, xenabi.Bytes(&h))
	recs := make([]HVMSaveRecord, 0, len(c.CPUs)+len(c.PICs)+2*len(c.LAPICs)+len(c.Other)+2)
	for i := range c.CPUs {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodeCPU, c.CPUs[i].Instance, xenabi.Bytes(&c.CPUs[i].CPU)})
	}
	for _, p := range c.PICs {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodePIC, p.Instance, encodePIC(p)})
	}
	if c.IOAPIC != nil {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodeIOAPIC, 0, xenabi.Bytes(c.IOAPIC)})
	}
	for i := range c.LAPICs {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodeLAPIC, c.LAPICs[i].Instance, xenabi.Bytes(&c.LAPICs[i].LAPIC)})
	}
	for i := range c.LAPICRegs {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodeLAPICRegs, c.LAPICRegs[i].Instance, xenabi.Bytes(&c.LAPICRegs[i].Regs)})
	}
	if c.PIT != nil {
		recs = append(recs, HVMSaveRecord{xenabi.HVMSaveCodePIT, 0, xenabi.Bytes(c.PIT)})
	}
	if c.RTC != nil {
		recs = append(recs, HVMSaveRecord{Typecode: xenabi.HVMSaveCodeRTC, Body: xenabi.Bytes(c.RTC)})
	}
	if c.HPET != nil {
		recs = append(recs, HVMSaveRecord{Typecode: xenabi.HVMSaveCodeHPET, Body: xenabi.Bytes(c.HPET)})
	}
	if c.PMTimer != nil {
		recs = append(recs, HVMSaveRecord{Typecode: xenabi.HVMSaveCodePMTimer, Body: xenabi.Bytes(c.PMTimer)})
	}
	recs = append(recs, c.Other...)
	// In typecode order, as hvm_save walks its handlers.
	slices.SortStableFunc(recs, func(a, b HVMSaveRecord) int { return int(a.Typecode) - int(b.Typecode) })
	for _, r := range recs {
		b = appendHVMRecord(b, r.Typecode, r.Instance, r.Body)
	}
	return appendHVMRecord(b, xenabi.HVMSaveCodeEnd, 0, nil)
}

// decodeOnce decodes a one-instance platform record into *to: exactly
// size bytes, instance 0, not seen before.
func decodeOnce[T any](to **T, name string, size int, d *xenabi.HVMSaveDescriptor, body []byte) error {
	switch {
	case len(body) != size:
		return bad("record HVM_CONTEXT: %s record of %d bytes, want %d", name, len(body), size)
	case d.Instance != 0:
		return bad("record HVM_CONTEXT: %s record for instance %d: the domain has one", name, d.Instance)
	case *to != nil:
		return bad("record HVM_CONTEXT: two %s records", name)
	}
	*to = decode[T](body)
	return nil
}

// DecodeHVMContext decodes an HVM_CONTEXT blob: every descriptor's length
// within the blob; the HEADER first (24 bytes, HVM_FILE_MAGIC, version 1);
// CPU records exactly sizeof(hvm_hw_cpu), one per instance; typecodes up to
// HVM_SAVE_CODE_MAX; the END (empty) last, with nothing after it.
func DecodeHVMContext(b []byte) (*HVMContext, error) {
	c := &HVMContext{}
	const dsz = xenabi.SizeofHVMSaveDescriptor
	for off, first := 0, true; ; first = false {
		if len(b)-off < dsz {
			if first {
				return nil, bad("record HVM_CONTEXT: %d bytes, no HEADER", len(b))
			}
			return nil, bad("record HVM_CONTEXT: ends at +%#x without an END record", off)
		}
		d := decode[xenabi.HVMSaveDescriptor](b[off : off+dsz])
		at := off
		off += dsz
		if uint64(d.Length) > uint64(len(b)-off) {
			return nil, bad("record HVM_CONTEXT: descriptor at +%#x (type %d) claims %d bytes, %d remain", at, d.Typecode, d.Length, len(b)-off)
		}
		body := b[off : off+int(d.Length)]
		off += int(d.Length)
		if first != (d.Typecode == xenabi.HVMSaveCodeHeader) {
			if first {
				return nil, bad("record HVM_CONTEXT: starts with type %d, not HEADER", d.Typecode)
			}
			return nil, bad("record HVM_CONTEXT: a second HEADER at +%#x", at)
		}
		switch d.Typecode {
		case xenabi.HVMSaveCodeHeader:
			if len(body) != xenabi.SizeofHVMSaveHeader || d.Instance != 0 {
				return nil, bad("record HVM_CONTEXT: HEADER of %d bytes, instance %d (want %d, 0)", len(body), d.Instance, xenabi.SizeofHVMSaveHeader)
			}
			c.Header = *decode[xenabi.HVMSaveHeader](body)
			if c.Header.Magic != xenabi.HVMFileMagic || c.Header.Version != xenabi.HVMFileVersion {
				return nil, bad("record HVM_CONTEXT: HEADER magic %#x version %d (want %#x, %d)", c.Header.Magic, c.Header.Version, uint32(xenabi.HVMFileMagic), xenabi.HVMFileVersion)
			}
		case xenabi.HVMSaveCodeEnd:
			if len(body) != 0 || d.Instance != 0 {
				return nil, bad("record HVM_CONTEXT: END of %d bytes, instance %d (want 0, 0)", len(body), d.Instance)
			}
			if off != len(b) {
				return nil, bad("record HVM_CONTEXT: %d bytes after its END record", len(b)-off)
			}
			return c, nil
		case xenabi.HVMSaveCodeCPU:
			if len(body) != xenabi.SizeofHVMHWCPU {
				return nil, bad("record HVM_CONTEXT: CPU record for vCPU %d: %d bytes, want %d", d.Instance, len(body), xenabi.SizeofHVMHWCPU)
			}
			if c.CPU(d.Instance) != nil {
				return nil, bad("record HVM_CONTEXT: two CPU records for vCPU %d", d.Instance)
			}
			c.CPUs = append(c.CPUs, HVMCPU{Instance: d.Instance, CPU: *decode[xenabi.HVMHWCPU](body)})
		case xenabi.HVMSaveCodePIC, xenabi.HVMSaveCodeIOAPIC, xenabi.HVMSaveCodeLAPIC, xenabi.HVMSaveCodeLAPICRegs, xenabi.HVMSaveCodePIT:
			if err := c.decodePlatform(d.Typecode, d.Instance, body); err != nil {
				return nil, err
			}
		case xenabi.HVMSaveCodeRTC:
			if err := decodeOnce(&c.RTC, "RTC", xenabi.SizeofHVMHWRTC, d, body); err != nil {
				return nil, err
			}
		case xenabi.HVMSaveCodeHPET:
			if err := decodeOnce(&c.HPET, "HPET", xenabi.SizeofHVMHWHPET, d, body); err != nil {
				return nil, err
			}
		case xenabi.HVMSaveCodePMTimer:
			if err := decodeOnce(&c.PMTimer, "PMTIMER", xenabi.SizeofHVMHWPMTimer, d, body); err != nil {
				return nil, err
			}
		default:
			if d.Typecode > hvmSaveCodeMax {
				return nil, bad("record HVM_CONTEXT: unknown typecode %d at +%#x", d.Typecode, at)
			}
			c.Other = append(c.Other, HVMSaveRecord{Typecode: d.Typecode, Instance: d.Instance, Body: append([]byte(nil), body...)})
		}
	}
}

// platformRecord names the platform records and their sizes.
var platformRecord = map[uint16]struct {
	name string
	size int
}{
	xenabi.HVMSaveCodePIC:       {"PIC", xenabi.SizeofHVMHWVPIC},
	xenabi.HVMSaveCodeIOAPIC:    {"IOAPIC", xenabi.SizeofHVMHWVIOAPIC},
	xenabi.HVMSaveCodeLAPIC:     {"LAPIC", xenabi.SizeofHVMHWLAPIC},
	xenabi.HVMSaveCodeLAPICRegs: {"LAPIC_REGS", xenabi.SizeofHVMHWLAPICRegs},
	xenabi.HVMSaveCodePIT:       {"PIT", xenabi.SizeofHVMHWPIT},
}

// decodePlatform takes one of the platform's records: its size exactly
// the structure's, instances as Xen has them (two PICs, one IO-APIC and
// one PIT per domU, a LAPIC per vCPU), no instance twice.
func (c *HVMContext) decodePlatform(code, inst uint16, body []byte) error {
	r := platformRecord[code]
	if len(body) != r.size {
		return bad("record HVM_CONTEXT: %s record %d: %d bytes, want %d", r.name, inst, len(body), r.size)
	}
	dup := false
	switch code {
	case xenabi.HVMSaveCodePIC:
		if inst > 1 {
			return bad("record HVM_CONTEXT: PIC instance %d (a domain has two)", inst)
		}
		for _, p := range c.PICs {
			dup = dup || p.Instance == inst
		}
		if !dup {
			c.PICs = append(c.PICs, decodePIC(inst, body))
		}
	case xenabi.HVMSaveCodeIOAPIC, xenabi.HVMSaveCodePIT:
		if inst != 0 {
			return bad("record HVM_CONTEXT: %s instance %d (a domain has one)", r.name, inst)
		}
		if code == xenabi.HVMSaveCodeIOAPIC {
			dup = c.IOAPIC != nil
			c.IOAPIC = decode[xenabi.HVMHWVIOAPIC](body)
		} else {
			dup = c.PIT != nil
			c.PIT = decode[xenabi.HVMHWPIT](body)
		}
	case xenabi.HVMSaveCodeLAPIC:
		for _, l := range c.LAPICs {
			dup = dup || l.Instance == inst
		}
		if !dup {
			c.LAPICs = append(c.LAPICs, HVMLAPIC{Instance: inst, LAPIC: *decode[xenabi.HVMHWLAPIC](body)})
		}
	case xenabi.HVMSaveCodeLAPICRegs:
		for _, l := range c.LAPICRegs {
			dup = dup || l.Instance == inst
		}
		if !dup {
			c.LAPICRegs = append(c.LAPICRegs, HVMLAPICRegs{Instance: inst, Regs: *decode[xenabi.HVMHWLAPICRegs](body)})
		}
	}
	if dup {
		return bad("record HVM_CONTEXT: two %s records for instance %d", r.name, inst)
	}
	return nil
}

// LAPIC returns vCPU instance's LAPIC and LAPIC_REGS records (nil where
// the blob has none).
func (c *HVMContext) LAPIC(instance uint16) (*xenabi.HVMHWLAPIC, *xenabi.HVMHWLAPICRegs) {
	var l *xenabi.HVMHWLAPIC
	var r *xenabi.HVMHWLAPICRegs
	for i := range c.LAPICs {
		if c.LAPICs[i].Instance == instance {
			l = &c.LAPICs[i].LAPIC
		}
	}
	for i := range c.LAPICRegs {
		if c.LAPICRegs[i].Instance == instance {
			r = &c.LAPICRegs[i].Regs
		}
	}
	return l, r
}
