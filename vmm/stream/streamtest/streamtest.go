// Package streamtest builds xl save files for tests, without KVM: a small
// valid save of a 64-bit PV domain, made with package stream's encoders,
// and from it, deterministically, a corpus of broken ones (truncated at
// every record boundary, flipped headers, bogus lengths, records out of
// order, missing or extra records, trailing bytes).
//
// The corpus is committed under vmm/stream/testdata/savefiles: good.save
// and broken/*.save. Regenerate it after changing this file with
//
//	go test ./vmm/stream -run TestSaveCorpus -update
//
// and iterate it in any package's tests with GoodSaveFile and
// BrokenSaveFiles (or Broken, which also says what each case breaks).
package streamtest

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The good save's domain: 16 pages. PFN 1 holds the P2M, 2 start_info, 3
// and 4 the xenstore and console rings, 5 the L4 page table (cr3), 6 the
// GDT; 9 is a hole (XTAB). Only start_info is sent with data.
const (
	NrPages      = 16
	P2MPFN       = 1
	StartInfoPFN = 2
	StorePFN     = 3
	ConsolePFN   = 4
	L4PFN        = 5
	GDTPFN       = 6
	XTabPFN      = 9
	Config       = "name = \"corpus\"\nmemory = 1\ntype = \"pv\"\nkernel = \"streamtest\"\n"
)

// chunk is a named run of bytes of a save file: a header or a record.
type chunk struct {
	name string
	b    []byte
}

func rec(name string, typ uint32, body []byte) chunk {
	return chunk{name, stream.AppendRecord(nil, typ, body)}
}

// rawRec is a record whose length field says n, whatever the body.
func rawRec(name string, typ, n uint32, body []byte) chunk {
	b := binary.LittleEndian.AppendUint32(nil, typ)
	b = binary.LittleEndian.AppendUint32(b, n)
	return chunk{name, append(b, body...)}
}

func page(fill func(p []byte)) []byte {
	p := make([]byte, 4096)
	fill(p)
	return p
}

// Context returns the good save's vCPU 0 context: PFNs where the format
// wants them (start_info in rdx, cr3 and the GDT frame).
func Context() *stream.VCPUBasic {
	v := &stream.VCPUBasic{}
	c := &v.Context
	c.Flags = xenabi.VGCFOnline | xenabi.VGCFInKernel
	r := &c.User_regs
	r.Rip, r.Rsp, r.Rflags = 0xffffffff80001234, 0xffffffff80010ff0, 0x2
	r.Rdx, r.Rax, r.Rdi = StartInfoPFN, 0, 2 // start_info pfn; SHUTDOWN_suspend
	r.Cs, r.Ss = 0x10, 0x18
	c.Gdt_frames[0], c.Gdt_ents = GDTPFN, 4
	c.Kernel_ss, c.Kernel_sp = 0x18, r.Rsp
	c.Ctrlreg[0], c.Ctrlreg[3], c.Ctrlreg[4] = 0x80050033, L4PFN<<12, 0x6b0
	c.Fs_base, c.Gs_base_kernel = 0, 0xffffffff80020000
	return v
}

// HVMContext returns the good save's HVM_CONTEXT: vCPU 0's container state.
func HVMContext() *stream.HVMContext {
	c := &stream.HVMContext{Header: xenabi.HVMSaveHeader{Khz: 2000000}}
	var cpu xenabi.HVMHWCPU
	cpu.Rip, cpu.Rsp, cpu.Rflags = 0xffffffff80001234, 0xffffffff80010ff0, 0x2
	cpu.Cr0, cpu.Cr3, cpu.Cr4, cpu.Msr_efer = 0x80050033, L4PFN<<12, 0x6b0, 0xd01
	cpu.Cs_sel, cpu.Cs_limit, cpu.Cs_arbytes = 0x10, 0xffffffff, 0xa9b
	cpu.Ss_sel, cpu.Ss_limit, cpu.Ss_arbytes = 0x18, 0xffffffff, 0xc93
	cpu.Gdtr_base, cpu.Gdtr_limit = 0xffffffff80000000+GDTPFN<<12, 31
	cpu.Tsc = 123456789000
	c.CPUs = []stream.HVMCPU{{Instance: 0, CPU: cpu}}
	return c
}

func startInfo() []byte {
	var si xenabi.StartInfo
	for i, c := range "xen-3.0-x86_64" {
		si.Magic[i] = int8(c)
	}
	si.Nr_pages, si.Store_mfn, si.Store_evtchn = NrPages, StorePFN, 1
	binary.LittleEndian.PutUint64(si.Console[:], ConsolePFN)
	binary.LittleEndian.PutUint32(si.Console[8:], 2)
	si.Pt_base, si.Nr_pt_frames = 0xffffffff80000000+L4PFN<<12, 1
	return page(func(p []byte) { copy(p, xenabi.Bytes(&si)) })
}

func sharedInfo() *xenabi.SharedInfo {
	si := &xenabi.SharedInfo{}
	si.Vcpu_info[0].Time.Version = 2
	si.Vcpu_info[0].Time.System_time = 987654321
	si.Evtchn_mask[0] = 0b110
	si.Arch.Max_pfn = NrPages
	return si
}

func pageData(pfns []uint64, types []uint8, data [][]byte) []byte {
	return stream.EncodePageData(pfns, types, data)
}

// goodChunks is the good save, a chunk per header and record.
func goodChunks() []chunk {
	leaf := make([]byte, 24) // one CPUID leaf: 0x0, no subleaf
	binary.LittleEndian.PutUint32(leaf[4:], 0xffffffff)
	binary.LittleEndian.PutUint32(leaf[8:], 0xd)
	return []chunk{
		{"xl-header", stream.AppendXLHeader(nil, Config)},
		{"libxl-header", stream.AppendLibxlHeader(nil)},
		rec("libxl-LIBXC_CONTEXT", stream.LibxlLibxcContext, nil),
		{"libxc-image-header", stream.AppendImageHeader(nil)},
		{"libxc-domain-header", stream.AppendDomainHeader(nil, stream.DomainHeader{Type: stream.DomainX86PV, XenMajor: 4, XenMinor: 17})},
		rec("X86_PV_INFO", stream.RecX86PVInfo, stream.EncodePVInfo(stream.PVInfo{GuestWidth: 8, PTLevels: 4})),
		rec("X86_CPUID_POLICY", stream.RecX86CPUIDPolicy, leaf),
		rec("STATIC_DATA_END", stream.RecStaticDataEnd, nil),
		rec("X86_PV_P2M_FRAMES", stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(stream.P2MFrames{EndPFN: NrPages - 1, Frames: []uint64{P2MPFN}})),
		// The P2M frame is sent allocate-only (zero), to keep the corpus
		// small: a restorer rewrites every entry of it anyway.
		rec("PAGE_DATA-1", stream.RecPageData, pageData(
			[]uint64{P2MPFN, StorePFN, ConsolePFN}, []uint8{stream.PageXAlloc, stream.PageXAlloc, stream.PageXAlloc}, nil)),
		rec("PAGE_DATA-2", stream.RecPageData, pageData(
			[]uint64{StartInfoPFN, XTabPFN}, []uint8{stream.PageNormal, stream.PageXTab}, [][]byte{startInfo(), nil})),
		rec("X86_TSC_INFO", stream.RecX86TSCInfo, stream.EncodeTSCInfo(stream.TSCInfo{KHz: 2000000, Nsec: 987654321})),
		rec("SHARED_INFO", stream.RecSharedInfo, stream.EncodeSharedInfo(sharedInfo())),
		rec("X86_PV_VCPU_BASIC", stream.RecX86PVVCPUBasic, stream.EncodeVCPUBasic(Context())),
		rec("HVM_CONTEXT", stream.RecHVMContext, stream.EncodeHVMContext(HVMContext())),
		rec("END", stream.RecEnd, nil),
		rec("libxl-END", stream.LibxlEnd, nil),
	}
}

// GoodPV is the good save as Xen writes a PV stream: without the
// HVM_CONTEXT record (the ring-0 container's state), and with an L4
// page-table page, pinned, among its pages.
func GoodPV() []byte { return join(goodPVChunks()) }

func goodPVChunks() []chunk {
	var cs []chunk
	for _, c := range goodChunks() {
		switch c.name {
		case "HVM_CONTEXT":
			continue
		case "PAGE_DATA-2":
			c = rec("PAGE_DATA-2", stream.RecPageData, pageData(
				[]uint64{StartInfoPFN, XTabPFN, L4PFN}, []uint8{stream.PageNormal, stream.PageXTab, stream.PageL4 | stream.PagePinned},
				[][]byte{startInfo(), nil, page(func([]byte) {})}))
		}
		cs = append(cs, c)
	}
	return cs
}

// WithPages is GoodPV with records more PAGE_DATA records of perRecord
// data pages each after its own, all of PFN 7 (a page sent again and
// again, the last copy winning): for measuring what a record costs.
func WithPages(records, perRecord int) []byte {
	var cs []chunk
	for _, c := range goodPVChunks() {
		cs = append(cs, c)
		if c.name != "PAGE_DATA-2" {
			continue
		}
		pfns, types, data := make([]uint64, perRecord), make([]uint8, perRecord), make([][]byte, perRecord)
		for i := range pfns {
			pfns[i], types[i], data[i] = 7, stream.PageNormal, page(func(p []byte) { p[0] = byte(i) })
		}
		for r := 0; r < records; r++ {
			cs = append(cs, rec("PAGE_DATA-more", stream.RecPageData, pageData(pfns, types, data)))
		}
	}
	return join(cs)
}

// WithRun is GoodPV with one more PAGE_DATA record: n data pages of
// consecutive PFNs from 0x10 (the domain grown to hold them), each filled
// with its PFN.
func WithRun(n int) []byte {
	var cs []chunk
	for _, c := range goodPVChunks() {
		if c.name == "X86_PV_P2M_FRAMES" {
			c = rec(c.name, stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(stream.P2MFrames{
				EndPFN: uint32(0x10 + n - 1), Frames: []uint64{P2MPFN}}))
		}
		cs = append(cs, c)
		if c.name != "PAGE_DATA-2" {
			continue
		}
		pfns, types, data := make([]uint64, n), make([]uint8, n), make([][]byte, n)
		for i := range pfns {
			pfn := uint64(0x10 + i)
			pfns[i], types[i], data[i] = pfn, stream.PageNormal, page(func(p []byte) {
				for j := range p {
					p[j] = byte(pfn)
				}
			})
		}
		cs = append(cs, rec("PAGE_DATA-run", stream.RecPageData, pageData(pfns, types, data)))
	}
	return join(cs)
}

func join(cs []chunk) []byte {
	var b []byte
	for _, c := range cs {
		b = append(b, c.b...)
	}
	return b
}

// Good returns the valid save file: an xl header, the libxl stream, and in
// it a v3 libxc stream of a 16-page 64-bit PV domain with one vCPU, two
// PAGE_DATA records (start_info with its data, four pages without), the
// records xenresume writes, and a CPUID policy. Xen's verify-stream-v2
// accepts it.
func Good() []byte { return join(goodChunks()) }

// Case is a broken save file.
type Case struct {
	Name string // file name without ".save"
	// Want is a fragment of the error ReadSave must return.
	Want string
	// Truncated reports a file cut short: its error is a
	// stream.FormatError with Truncated set.
	Truncated bool
	// Verifier reports that Xen's verify-stream-v2 rejects the file too;
	// the others break rules it does not check (record order, the
	// contents of records, what restoring needs, the xl header's flags
	// and configuration, bytes after the END record).
	Verifier bool
	Data     []byte
}

// edit returns the good chunks changed by fn.
func edit(fn func(cs []chunk) []chunk) []byte {
	return join(fn(goodChunks()))
}

func index(cs []chunk, name string) int {
	for i, c := range cs {
		if c.name == name {
			return i
		}
	}
	panic("streamtest: no chunk " + name)
}

// replace swaps the named chunk for others.
func replace(name string, with ...chunk) func([]chunk) []chunk {
	return func(cs []chunk) []chunk {
		i := index(cs, name)
		return append(append(cs[:i:i], with...), cs[i+1:]...)
	}
}

func remove(name string) func([]chunk) []chunk { return replace(name) }

// insert puts c before the named chunk.
func insert(before string, c chunk) func([]chunk) []chunk {
	return func(cs []chunk) []chunk {
		i := index(cs, before)
		return append(append(cs[:i:i], c), cs[i:]...)
	}
}

// move takes the named chunk out and puts it before another.
func move(name, before string) func([]chunk) []chunk {
	return func(cs []chunk) []chunk {
		c := cs[index(cs, name)]
		return insert(before, c)(remove(name)(cs))
	}
}

// dup repeats the named chunk.
func dup(name string) func([]chunk) []chunk {
	return func(cs []chunk) []chunk { return insert(name, cs[index(cs, name)])(cs) }
}

// poke changes the named chunk's bytes at off.
func poke(name string, off int, b ...byte) func([]chunk) []chunk {
	return func(cs []chunk) []chunk {
		i := index(cs, name)
		nb := bytes.Clone(cs[i].b)
		copy(nb[off:], b)
		cs[i].b = nb
		return cs
	}
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func vcpu(fn func(v *stream.VCPUBasic)) chunk {
	v := Context()
	fn(v)
	return rec("X86_PV_VCPU_BASIC", stream.RecX86PVVCPUBasic, stream.EncodeVCPUBasic(v))
}

func hvm(fn func(c *stream.HVMContext)) chunk {
	c := HVMContext()
	fn(c)
	return rec("HVM_CONTEXT", stream.RecHVMContext, stream.EncodeHVMContext(c))
}

// hvmRaw edits the encoded HVM_CONTEXT blob.
func hvmRaw(fn func(b []byte) []byte) chunk {
	return rec("HVM_CONTEXT", stream.RecHVMContext, fn(stream.EncodeHVMContext(HVMContext())))
}

// Broken returns the corpus of broken save files, in name order.
func Broken() []Case {
	var cs []Case
	add := func(name, want string, verifier bool, data []byte) {
		cs = append(cs, Case{Name: name, Want: want, Verifier: verifier, Data: data})
	}

	// Cut at every boundary between headers and records, and inside some.
	good, full, off := goodChunks(), Good(), 0
	for _, c := range good[:len(good)-1] { // the last: missing-libxl-END
		name := "truncated-before-" + c.name
		if off == 0 {
			name = "empty"
		}
		cs = append(cs, Case{Name: name, Want: "truncated", Truncated: true, Verifier: true, Data: full[:off]})
		off += len(c.b)
	}
	inside := func(name string, into int) {
		start := 0
		for _, c := range good {
			if c.name == name {
				break
			}
			start += len(c.b)
		}
		cs = append(cs, Case{Name: "truncated-inside-" + name, Want: "truncated", Truncated: true, Verifier: true,
			Data: full[:start+into]})
	}
	inside("xl-header", 20)
	inside("libxc-image-header", 12)
	inside("PAGE_DATA-2", 8+40+2048)
	inside("X86_PV_VCPU_BASIC", 8+100)
	inside("END", 4)
	// The case the old restore accepted and Xen refuses: cut before the
	// libxl END, as `head -c -8 good.save` does.
	cs = append(cs, Case{Name: "missing-libxl-END", Want: "no libxl END record", Truncated: true, Verifier: true,
		Data: full[:len(full)-8]})

	// Headers.
	add("xl-bad-magic", "bad magic", true, edit(poke("xl-header", 0, 'x')))
	add("xl-byte-order", "byte order", false, edit(poke("xl-header", 32, le32(0x04030201)...)))
	add("xl-unknown-mandatory-flag", "mandatory flags", false, edit(poke("xl-header", 36, le32(stream.XLMandatoryStreamV2|4)...)))
	add("xl-not-streamv2", "mandatory flags", true, edit(poke("xl-header", 36, le32(0)...)))
	add("xl-optional-data-huge", "optional data", true, edit(poke("xl-header", 44, le32(1<<30)...)))
	add("xl-config-length", "xl config of", false, edit(poke("xl-header", 48, le32(1<<16)...)))
	add("libxl-bad-ident", "libxl ident", true, edit(poke("libxl-header", 0, 'l')))
	add("libxl-version-3", "libxl stream version 3", true, edit(poke("libxl-header", 8, be32(3)...)))
	// verify-stream-v2 never refuses the big-endian bit (it masks options
	// with the bit's number, 0); libxl and libxc do.
	add("libxl-big-endian", "libxl options", false, edit(poke("libxl-header", 12, be32(1)...)))
	add("libxc-bad-marker", "image marker", true, edit(poke("libxc-image-header", 0, 0)))
	add("libxc-version-9", "image version 9", true, edit(poke("libxc-image-header", 12, be32(9)...)))
	add("libxc-big-endian", "big-endian", false, edit(poke("libxc-image-header", 16, 0, 1)))
	add("libxc-domain-hvm", "x86 HVM", false, edit(poke("libxc-domain-header", 0, le32(stream.DomainX86HVM)...)))
	add("libxc-domain-type-7", "domain type 7", true, edit(poke("libxc-domain-header", 0, le32(7)...)))
	add("libxc-page-shift-13", "page shift", true, edit(poke("libxc-domain-header", 4, 13)))

	// Lengths and contents.
	add("length-huge", "record PAGE_DATA: 4294967288 bytes exceeds", true, edit(poke("PAGE_DATA-1", 4, le32(0xfffffff8)...)))
	add("shared-info-short", "record SHARED_INFO: 4088 bytes, want 4096", true, edit(poke("SHARED_INFO", 4, le32(4088)...)))
	add("page-data-count", "record PAGE_DATA: count 1000", true, edit(poke("PAGE_DATA-1", 8, le32(1000)...)))
	add("page-data-type-5", "page type", true, edit(poke("PAGE_DATA-2", 8+8+7, 0x50)))
	add("vcpu-basic-short", "record X86_PV_VCPU_BASIC: 108 bytes, want 5176", false,
		edit(replace("X86_PV_VCPU_BASIC", rec("X86_PV_VCPU_BASIC", stream.RecX86PVVCPUBasic, stream.EncodeVCPUBasic(Context())[:108]))))
	add("vcpu-reserved", "reserved", true, edit(poke("X86_PV_VCPU_BASIC", 8+4, 1)))
	add("pv-info-width-5", "guest width 5", true, edit(poke("X86_PV_INFO", 8, 5)))
	add("pv-info-32-bit", "32-bit guest", false, edit(poke("X86_PV_INFO", 8, 4, 3)))
	add("tsc-reserved", "X86_TSC_INFO: reserved", true, edit(poke("X86_TSC_INFO", 8+20, 1)))
	add("p2m-length", "want 16", false, edit(replace("X86_PV_P2M_FRAMES",
		rec("X86_PV_P2M_FRAMES", stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(stream.P2MFrames{EndPFN: NrPages - 1, Frames: []uint64{P2MPFN, 7}})))))
	add("end-with-body", "record END: 8 bytes, must be empty", true, edit(replace("END", rec("END", stream.RecEnd, make([]byte, 8)))))
	add("hvm-cpu-short", "CPU record for vCPU 0: 1000 bytes", false, edit(replace("HVM_CONTEXT", hvmRaw(func(b []byte) []byte {
		cpu := 8 + xenabi.SizeofHVMSaveHeader
		binary.LittleEndian.PutUint32(b[cpu+4:], 1000)
		return append(b[:cpu+8+1000], b[cpu+8+xenabi.SizeofHVMHWCPU:]...)
	}))))
	add("hvm-descriptor-overflow", "claims", false, edit(replace("HVM_CONTEXT", hvmRaw(func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[8+xenabi.SizeofHVMSaveHeader+4:], 0xffff)
		return b
	}))))
	add("hvm-bad-magic", "HEADER magic", false, edit(replace("HVM_CONTEXT", hvmRaw(func(b []byte) []byte { b[8] ^= 0xff; return b }))))
	add("hvm-no-end", "without an END", false, edit(replace("HVM_CONTEXT", hvmRaw(func(b []byte) []byte { return b[:len(b)-8] }))))
	add("hvm-after-end", "after its END", false, edit(replace("HVM_CONTEXT", hvmRaw(func(b []byte) []byte { return append(b, make([]byte, 8)...) }))))
	add("hvm-two-cpu-0", "two CPU records for vCPU 0", false, edit(replace("HVM_CONTEXT", hvm(func(c *stream.HVMContext) {
		c.CPUs = append(c.CPUs, c.CPUs[0])
	}))))
	add("hvm-cpu-for-vcpu-1", "CPU record for vCPU 1", false, edit(replace("HVM_CONTEXT", hvm(func(c *stream.HVMContext) {
		c.CPUs = append(c.CPUs, stream.HVMCPU{Instance: 1})
	}))))
	add("hvm-no-cpu", "vCPU 0 has no CPU record", false, edit(replace("HVM_CONTEXT", hvm(func(c *stream.HVMContext) { c.CPUs = nil }))))

	// What restoring needs.
	add("page-beyond-p2m", "pfn 0x10 (entry 1) beyond", false, edit(replace("PAGE_DATA-2", rec("PAGE_DATA-2", stream.RecPageData,
		pageData([]uint64{StartInfoPFN, NrPages}, []uint8{stream.PageNormal, stream.PageXTab}, [][]byte{startInfo(), nil})))))
	add("p2m-frame-beyond", "frame 0 at pfn 0x40", false, edit(replace("X86_PV_P2M_FRAMES",
		rec("X86_PV_P2M_FRAMES", stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(stream.P2MFrames{EndPFN: NrPages - 1, Frames: []uint64{0x40}})))))
	add("p2m-start-1", "starts at pfn 0x1", false, edit(replace("X86_PV_P2M_FRAMES",
		rec("X86_PV_P2M_FRAMES", stream.RecX86PVP2MFrames, stream.EncodeP2MFrames(stream.P2MFrames{StartPFN: 1, EndPFN: NrPages - 1, Frames: []uint64{P2MPFN}})))))
	add("start-info-beyond", "start_info pfn 0x100", false, edit(replace("X86_PV_VCPU_BASIC", vcpu(func(v *stream.VCPUBasic) { v.Context.User_regs.Rdx = 0x100 }))))
	add("cr3-beyond", "cr3 at pfn 0x20", false, edit(replace("X86_PV_VCPU_BASIC", vcpu(func(v *stream.VCPUBasic) { v.Context.Ctrlreg[3] = 0x20 << 12 }))))
	add("gdt-entries", "GDT entries", false, edit(replace("X86_PV_VCPU_BASIC", vcpu(func(v *stream.VCPUBasic) { v.Context.Gdt_ents = 8192 }))))
	add("no-vcpu-0", "no X86_PV_VCPU_BASIC record for vCPU 0", false, edit(replace("X86_PV_VCPU_BASIC", vcpu(func(v *stream.VCPUBasic) { v.ID = 1 }))))
	add("no-shared-info", "no SHARED_INFO", false, edit(remove("SHARED_INFO")))
	add("no-p2m", "before X86_PV_P2M_FRAMES", false, edit(remove("X86_PV_P2M_FRAMES")))

	// Order.
	add("pv-info-not-first", "before X86_PV_INFO", false, edit(move("X86_PV_INFO", "STATIC_DATA_END")))
	add("pv-info-twice", "a second X86_PV_INFO", false, edit(dup("X86_PV_INFO")))
	add("static-data-end-twice", "a second STATIC_DATA_END", false, edit(dup("STATIC_DATA_END")))
	add("no-static-data-end", "X86_PV_P2M_FRAMES before STATIC_DATA_END", false, edit(remove("STATIC_DATA_END")))
	add("policy-after-static-data-end", "after STATIC_DATA_END", false, edit(move("X86_CPUID_POLICY", "X86_PV_P2M_FRAMES")))
	add("p2m-twice", "a second X86_PV_P2M_FRAMES", false, edit(dup("X86_PV_P2M_FRAMES")))
	add("page-data-before-p2m", "PAGE_DATA before X86_PV_P2M_FRAMES", false, edit(move("X86_PV_P2M_FRAMES", "PAGE_DATA-2")))
	add("page-data-after-vcpu", "PAGE_DATA after vCPU records", false, edit(move("PAGE_DATA-2", "HVM_CONTEXT")))
	add("checkpoint", "CHECKPOINT", false, edit(insert("END", rec("CHECKPOINT", stream.RecCheckpoint, nil))))
	add("optional-record", "unknown record type 0x80000001", true, edit(insert("END", rec("optional", 0x80000001, make([]byte, 8)))))
	add("hvm-params", "HVM_PARAMS in a PV stream", false, edit(insert("END", rec("HVM_PARAMS", stream.RecHVMParams, make([]byte, 8)))))

	// The libxl layer.
	add("libxl-end-first", "before any LIBXC_CONTEXT", false, join([]chunk{good[0], good[1], good[len(good)-1]}))
	add("libxl-emulator-record", "emulator records", false, edit(insert("libxl-END",
		rec("libxl-EMULATOR_CONTEXT", stream.LibxlEmulatorContext, make([]byte, 8)))))
	add("libxl-checkpoint-end", "CHECKPOINT_END", false, edit(insert("libxl-END", rec("libxl-CHECKPOINT_END", stream.LibxlCheckpointEnd, nil))))
	add("libxl-unknown-record", "unknown libxl record type 6", true, edit(insert("libxl-END", rec("libxl-6", 6, nil))))
	add("libxc-record-after-end", "must be empty", true, edit(insert("libxl-END", rawRec("page", stream.RecPageData, 8, make([]byte, 8)))))

	// After the libxl END.
	add("trailing-garbage", "data after the libxl END", false, append(Good(), "garbage!"...))
	add("trailing-libxl-end", "data after the libxl END", false, append(Good(), rec("", stream.LibxlEnd, nil).b...))

	sort.Slice(cs, func(i, j int) bool { return cs[i].Name < cs[j].Name })
	return cs
}

// Dir is the committed corpus: good.save and broken/*.save.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "savefiles")
}

// GoodSaveFile returns the path of the committed good save file.
func GoodSaveFile(tb testing.TB) string {
	tb.Helper()
	p := filepath.Join(Dir(), "good.save")
	if _, err := os.Stat(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// BrokenSaveFiles returns the paths of the committed broken save files, in
// name order; each must be refused with one clear error.
func BrokenSaveFiles(tb testing.TB) []string {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(Dir(), "broken", "*.save"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no broken save files in %s: %v", Dir(), err)
	}
	sort.Strings(files)
	return files
}

// WriteCorpus writes Good and Broken under dir (removing stale broken
// files), as `go test ./vmm/stream -run TestSaveCorpus -update` does.
func WriteCorpus(dir string) error {
	broken := filepath.Join(dir, "broken")
	if err := os.MkdirAll(broken, 0o755); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(broken, "*.save"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "good.save"), Good(), 0o644); err != nil {
		return err
	}
	for _, c := range Broken() {
		if strings.ContainsAny(c.Name, "/ ") {
			panic("streamtest: bad case name " + c.Name)
		}
		if err := os.WriteFile(filepath.Join(broken, c.Name+".save"), c.Data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
