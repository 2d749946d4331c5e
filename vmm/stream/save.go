package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// DefaultMaxVCPUs bounds the vCPU ids ReadSave accepts unless
// ReadOptions.MaxVCPUs says otherwise.
const DefaultMaxVCPUs = 512

// ReadOptions tune ReadSave; nil or the zero value means the defaults.
type ReadOptions struct {
	// MaxRecord bounds one record's body; RecLengthMax when 0.
	MaxRecord uint32
	// MaxVCPUs bounds vCPU ids (each must be below it);
	// DefaultMaxVCPUs when 0.
	MaxVCPUs uint32
	// AllowTrailing stops reading at the libxl END record instead of
	// requiring the end of the input there: for a stream on a connection
	// that stays open after it. Files should leave it false.
	AllowTrailing bool

	// Headers, if set, is called once the xl, libxl and libxc headers have
	// been read and checked (Save.XL, Image and Domain are set).
	Headers func(s *Save) error
	// Pages, if set, is called with each PAGE_DATA batch once it has been
	// checked, in stream order: the pages of a PFN sent more than once
	// arrive more than once and the last copy wins. s.P2M is set (the P2M
	// always comes first). The batch's slices may alias buffers ReadSave
	// reuses: copy what is needed before returning. Batches after a VERIFY record are
	// checked but not passed on (libxc compares them with what it already
	// wrote and writes nothing).
	Pages func(s *Save, b PageBatch) error
	// PageDest, if set, has each page of a PAGE_DATA record read straight
	// into the slice it returns for that PFN and type (4096 bytes of
	// guest memory, say; nil discards the page): no buffer of the
	// record's size, no second copy. It is called for the pages that
	// carry data, in stream order, once the record's header and PFN words
	// are checked; Pages then gets the batch with Data aliasing those
	// slices. A record found bad part way through (truncated) leaves the
	// pages before that point written. Records after a VERIFY record, and
	// records of more than MaxBatchSize pages (which libxc never writes),
	// are read whole as without PageDest.
	PageDest func(s *Save, pfn uint64, typ uint8) ([]byte, error)
	// Record, if set, is called with each libxl and libxc record once it
	// has been checked, in file order.
	Record func(s *Save, r RecordInfo) error
}

// RecordInfo describes a record ReadSave has checked.
type RecordInfo struct {
	Offset int64  // file offset of the record's header
	Libxl  bool   // a libxl record (else libxc)
	Type   uint32 // Rec* or Libxl*
	Length uint32 // body length, padding excluded
	// Decoded is the decoded body, valid during the call: PVInfo,
	// P2MFrames, PageBatch, *VCPUBasic, TSCInfo, *xenabi.SharedInfo or
	// *HVMContext; nil for other records (and for empty vCPU records).
	Decoded any
}

// Name names the record's type.
func (r RecordInfo) Name() string {
	if r.Libxl {
		return LibxlRecordName(r.Type)
	}
	return RecordName(r.Type)
}

// VCPU is the saved state of one vCPU.
type VCPU struct {
	ID uint32
	// Context is the X86_PV_VCPU_BASIC context; nil if the stream has
	// only other records for this vCPU.
	Context *xenabi.VCPUGuestContext
	// The X86_PV_VCPU_EXTENDED, XSAVE and MSRS blobs, nil when absent.
	Extended, XSave, MSRs []byte
	// CPU is the vCPU's record in HVM_CONTEXT (set for every vCPU with a
	// Context when the stream has one; nil in Xen's PV streams).
	CPU *xenabi.HVMHWCPU
}

// Save is what ReadSave found in a save file.
type Save struct {
	XL     XLHeader // the xl header, with the domain's configuration
	Image  ImageHeader
	Domain DomainHeader
	PVInfo PVInfo
	// P2M locates the guest's P2M list; P2M.NrPages() is the domain's size
	// in pages, and every PFN in the stream is below it.
	P2M        P2MFrames
	SharedInfo *xenabi.SharedInfo
	TSC        *TSCInfo    // nil without an X86_TSC_INFO record
	VCPUs      []*VCPU     // by ID
	HVM        *HVMContext // the HVM_CONTEXT record; nil in Xen's PV streams
	// The raw X86_CPUID_POLICY and X86_MSR_POLICY bodies, nil when absent.
	CPUIDPolicy, MSRPolicy []byte

	Records       int    // libxc records, END included
	PageRecords   int    // PAGE_DATA records
	Pages         uint64 // PFN entries of all PAGE_DATA records
	PagesWithData uint64 // of which carry a page of data
	VerifyPages   uint64 // entries after a VERIFY record (not passed to Pages)
	Size          int64  // bytes read, to the end of the libxl END record
}

// VCPU returns the saved state of a vCPU, or nil.
func (s *Save) VCPU(id uint32) *VCPU {
	i := sort.Search(len(s.VCPUs), func(i int) bool { return s.VCPUs[i].ID >= id })
	if i < len(s.VCPUs) && s.VCPUs[i].ID == id {
		return s.VCPUs[i]
	}
	return nil
}

func (s *Save) addVCPU(id uint32) *VCPU {
	if v := s.VCPU(id); v != nil {
		return v
	}
	v := &VCPU{ID: id}
	i := sort.Search(len(s.VCPUs), func(i int) bool { return s.VCPUs[i].ID >= id })
	s.VCPUs = append(s.VCPUs, nil)
	copy(s.VCPUs[i+1:], s.VCPUs[i:])
	s.VCPUs[i] = v
	return v
}

// ReadSave reads a whole xl save file of an x86 PV domain and checks it
// the way Xen's toolstack would restore it, and more strictly where
// verify-stream-v2 is stricter:
//
//   - the xl header (xl's create_domain), STREAMv2;
//   - the libxl stream: its header, LIBXC_CONTEXT, the libxc stream, then
//     the libxl END record (libxl_stream_read.c; emulator records are for
//     HVM guests, checkpoint records for checkpointed streams), and then
//     the end of the file;
//   - the libxc stream: headers (an x86 PV domain, 4 KiB pages), every
//     record's framing and body (lengths exact, reserved fields zero),
//     and the order rules: X86_PV_INFO first and once;
//     X86_CPUID_POLICY/X86_MSR_POLICY before STATIC_DATA_END, which
//     appears once (v3; a v2 stream has it implied before the P2M);
//     X86_PV_P2M_FRAMES after STATIC_DATA_END, once, from PFN 0;
//     PAGE_DATA after the P2M, before any vCPU record, every PFN within
//     the P2M; vCPU records after the P2M; no CHECKPOINT (a plain
//     stream), no HVM_PARAMS (a PV stream), no unknown record;
//   - at the libxc END, what restoring needs: the P2M, vCPU 0's basic
//     context, each vCPU's GDT frames, cr3, cr1 and (vCPU 0) start_info
//     within the domain, at most FIRST_RESERVED_GDT_ENTRY GDT entries
//     (libxc's process_vcpu_basic, process_start_info); and what xenresume
//     needs: SHARED_INFO and, when the stream has an HVM_CONTEXT (the
//     ring-0 container's state, which Xen's PV streams never carry), a
//     CPU record in it for exactly the vCPUs that have a basic context.
//
// Where a record may repeat, the last one wins, as in libxc (SHARED_INFO,
// X86_TSC_INFO, HVM_CONTEXT, a vCPU's records, a PFN's pages). Pages after
// a VERIFY record are checked and counted but not passed on: libxc only
// compares them with what it wrote. Empty vCPU records are skipped, as
// libxc skips them. HVM_CONTEXT is not a record of Xen's PV streams (libxc
// would refuse it there): a stream of a domain in the ring-3 PV model has
// none, as Xen's; xenresume wrote one for the ring-0 container's state.
//
// Every error wraps ErrFormat, except I/O errors and errors from the
// callbacks, and is one line that starts with the file offset of the
// header or record at fault: "at offset 0x5a48: record X86_PV_VCPU_BASIC:
// 100 bytes, want 5176". Nothing the input says makes ReadSave panic or
// allocate more than the input's own bytes: every length is bounded before
// anything is allocated (see Reader).
func ReadSave(r io.Reader, opts *ReadOptions) (*Save, error) {
	sr := &saveReader{Reader: NewReader(r), s: &Save{}}
	if opts != nil {
		sr.o = *opts
	}
	if sr.o.MaxRecord != 0 {
		sr.MaxRecord = sr.o.MaxRecord
	}
	if sr.o.MaxVCPUs == 0 {
		sr.o.MaxVCPUs = DefaultMaxVCPUs
	}
	if err := sr.read(); err != nil {
		return nil, err
	}
	return sr.s, nil
}

type saveReader struct {
	*Reader
	o ReadOptions
	s *Save
	// what has been seen
	libxc, pvInfo, p2m, vcpuRecords, verify bool

	// PAGE_DATA read through PageDest: the record's header words, reused
	// from record to record, and its length for Record.
	pageHead  []byte
	pageBatch PageBatch
	streamed  uint32
}

// MaxBatchSize is libxc's MAX_BATCH_SIZE: the most pages a saver puts in
// one PAGE_DATA record.
const MaxBatchSize = 1024

// pageDataHead reads the first words of an n-byte PAGE_DATA record that
// is to go through PageDest: its count and reserved word and, when the
// count is at most MaxBatchSize, its PFN words, into a reused buffer; the
// record then comes back with a nil body, for streamPageData. A larger
// record is read whole, as without PageDest.
func (sr *saveReader) pageDataHead(n uint32) (Record, error) {
	if n <= 8 {
		return sr.readBody(RecPageData, n, nil, RecordName)
	}
	var h [8]byte
	bodyStart := sr.Offset
	if err := sr.full(h[:]); err != nil {
		if isTruncated(err) {
			return Record{}, truncated("record PAGE_DATA: truncated: %d of its %d bytes", sr.Offset-bodyStart, n)
		}
		return Record{}, err
	}
	count := binary.LittleEndian.Uint32(h[:])
	if count == 0 || count > MaxBatchSize || uint64(count)*8 > uint64(n-8) {
		return sr.readBody(RecPageData, n, h[:], RecordName)
	}
	if cap(sr.pageHead) < 8+8*MaxBatchSize {
		sr.pageHead = make([]byte, 8+8*MaxBatchSize)
	}
	sr.pageHead = sr.pageHead[:8+8*count]
	copy(sr.pageHead, h[:])
	if err := sr.full(sr.pageHead[8:]); err != nil {
		if isTruncated(err) {
			return Record{}, truncated("record PAGE_DATA: truncated: %d of its %d bytes", sr.Offset-bodyStart, n)
		}
		return Record{}, err
	}
	return Record{Type: RecPageData}, nil
}

// streamPageData checks a PAGE_DATA record whose header words
// pageDataHead read, as DecodePageData and libxcRecord do, then reads its
// pages through PageDest and passes the batch to Pages.
func (sr *saveReader) streamPageData(n uint32) (any, error) {
	s, b := sr.s, sr.pageHead
	if err := sr.pageDataOrder(); err != nil {
		return nil, err
	}
	count := binary.LittleEndian.Uint32(b)
	if binary.LittleEndian.Uint32(b[4:]) != 0 {
		return nil, bad("record PAGE_DATA: reserved field set")
	}
	pb := &sr.pageBatch
	pb.PFNs, pb.Types, pb.Data = pb.PFNs[:0], pb.Types[:0], pb.Data[:0]
	withData := 0
	for i := 0; i < int(count); i++ {
		w := binary.LittleEndian.Uint64(b[8+8*i:])
		t := uint8(w >> typeShift)
		if w&reservedPFN != 0 {
			return nil, bad("record PAGE_DATA: pfn word %#x has reserved bits set", w)
		}
		if !ValidPageType(t) {
			return nil, bad("record PAGE_DATA: page type %#x", t)
		}
		pfn := w & pfnMask
		if pfn > uint64(s.P2M.EndPFN) {
			return nil, bad("record PAGE_DATA: pfn %#x (entry %d) beyond the domain's last pfn %#x", pfn, i, s.P2M.EndPFN)
		}
		pb.PFNs, pb.Types, pb.Data = append(pb.PFNs, pfn), append(pb.Types, t), append(pb.Data, nil)
		if PageHasData(t) {
			withData++
		}
	}
	if want := 8 + 8*uint64(count) + 4096*uint64(withData); uint64(n) != want {
		return nil, bad("record PAGE_DATA: %d bytes, want %d for %d pages with data", n, want, withData)
	}
	// The destinations first, then one read per run of pages that are
	// adjacent in the destination's memory (consecutive PFNs of guest
	// memory, as a saver writes them): a few large reads, not one per
	// page.
	var scratch []byte
	for i, t := range pb.Types {
		if !PageHasData(t) {
			continue
		}
		dst, err := sr.o.PageDest(s, pb.PFNs[i], t)
		if err != nil {
			return nil, err
		}
		switch {
		case dst == nil:
			if scratch == nil {
				scratch = make([]byte, 4096)
			}
			pb.Data[i] = scratch[:4096:4096] // read into, then dropped below
		case len(dst) != 4096:
			return nil, fmt.Errorf("PageDest gave %d bytes for pfn %#x, want 4096", len(dst), pb.PFNs[i])
		default:
			pb.Data[i] = dst
		}
	}
	dataStart := sr.Offset
	for i := 0; i < len(pb.Data); {
		if pb.Data[i] == nil {
			i++
			continue
		}
		run, j := pb.Data[i], i+1
		for ; j < len(pb.Data) && pb.Data[j] != nil && &pb.Data[j][0] != &scratch0(scratch)[0]; j++ {
			k := j - i // pages in the run so far
			if cap(run) < (k+1)*4096 || &run[:(k+1)*4096][k*4096] != &pb.Data[j][0] {
				break
			}
			run = run[:(k+1)*4096]
		}
		if err := sr.full(run); err != nil {
			if isTruncated(err) {
				return nil, truncated("record PAGE_DATA: truncated: %d of its %d bytes", int64(len(b))+sr.Offset-dataStart, n)
			}
			return nil, err
		}
		i += len(run) / 4096
	}
	if scratch != nil {
		for i, d := range pb.Data {
			if d != nil && &d[0] == &scratch[0] {
				pb.Data[i] = nil
			}
		}
	}
	// 8 + 8*count + 4096*withData is a multiple of 8: no padding.
	s.PageRecords++
	s.Pages += uint64(count)
	s.PagesWithData += uint64(withData)
	sr.streamed = n
	if sr.o.Pages != nil {
		if err := sr.o.Pages(s, *pb); err != nil {
			return nil, err
		}
	}
	return *pb, nil
}

// scratch0 is scratch, or a page no destination can be, when there is no
// scratch: a discarded page never joins a run.
func scratch0(scratch []byte) []byte {
	if scratch == nil {
		return noPage[:]
	}
	return scratch
}

var noPage [1]byte

// pageDataOrder checks that a PAGE_DATA record may come where it is.
func (sr *saveReader) pageDataOrder() error {
	if sr.Version >= 3 && !sr.StaticDataEnd {
		return bad("record PAGE_DATA before STATIC_DATA_END")
	}
	if !sr.p2m {
		return bad("record PAGE_DATA before X86_PV_P2M_FRAMES")
	}
	if sr.vcpuRecords {
		return bad("record PAGE_DATA after vCPU records (memory comes before the vCPUs)")
	}
	return nil
}

func (sr *saveReader) read() error {
	var err error
	if sr.s.XL, err = sr.ReadXLHeader(); err != nil {
		return at(0, err)
	}
	off := sr.Offset
	if err := sr.ReadLibxlHeader(); err != nil {
		return at(off, err)
	}
	for {
		off := sr.Offset
		rec, err := sr.readFramed(LibxlRecordName)
		if err != nil {
			if isTruncated(err) && sr.Offset == off {
				// Xen's verify-stream-v2: "Stream truncated". libxl's
				// restore fails the same way, where ours used to succeed.
				err = truncated("truncated: no libxl END record")
			}
			return at(off, err)
		}
		if err := ValidateLibxl(rec); err != nil {
			return at(off, err)
		}
		name := LibxlRecordName(rec.Type)
		switch rec.Type {
		case LibxlLibxcContext:
			if sr.libxc {
				return at(off, bad("a second %s record: a save file holds one domain", name))
			}
			sr.libxc = true
			if err := sr.record(off, true, rec, nil); err != nil {
				return err
			}
			if err := sr.readLibxc(); err != nil {
				return err
			}
		case LibxlEnd:
			if !sr.libxc {
				return at(off, bad("%s before any LIBXC_CONTEXT: the stream holds no domain", name))
			}
			if err := sr.record(off, true, rec, nil); err != nil {
				return err
			}
			return sr.end()
		case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
			return at(off, bad("record %s in a PV stream (libxl takes emulator records for HVM guests only)", name))
		default: // CHECKPOINT_END, CHECKPOINT_STATE
			return at(off, bad("record %s in a save file (a checkpointed stream's record)", name))
		}
	}
}

// end checks that nothing follows the libxl END record.
//
// Xen's toolstack never looks there: libxl's stream reader completes at
// its END record (libxl_stream_read.c, process_record: stream_complete) and
// xl closes the file once the domain is built (xl_vmcontrol.c), so Xen
// would restore a file with anything appended. ReadSave refuses it: xl save
// never writes bytes after the END record, so they mean a damaged or
// mistaken file (two saves concatenated, a copy gone wrong), which is
// better reported than restored from.
func (sr *saveReader) end() error {
	sr.s.Size = sr.Offset
	if sr.o.AllowTrailing {
		return nil
	}
	var b [1]byte
	n, err := io.ReadFull(sr.r, b[:])
	switch {
	case n > 0:
		return at(sr.Offset, bad("data after the libxl END record, where the file should end"))
	case errors.Is(err, io.EOF):
		return nil
	default:
		return at(sr.Offset, err)
	}
}

// record calls the Record callback.
func (sr *saveReader) record(off int64, libxl bool, rec Record, decoded any) error {
	if sr.o.Record == nil {
		return nil
	}
	length := uint32(len(rec.Body))
	if rec.Type == RecPageData && !libxl && sr.streamed != 0 {
		length, sr.streamed = sr.streamed, 0
	}
	ri := RecordInfo{Offset: off, Libxl: libxl, Type: rec.Type, Length: length, Decoded: decoded}
	return at(off, sr.o.Record(sr.s, ri))
}

func (sr *saveReader) readLibxc() error {
	off := sr.Offset
	ih, err := sr.ReadImageHeader()
	if err != nil {
		return at(off, err)
	}
	sr.s.Image = ih
	off = sr.Offset
	dh, err := sr.ReadDomainHeader()
	if err != nil {
		return at(off, err)
	}
	if dh.Type != DomainX86PV {
		return at(off, bad("libxc domain type %d (x86 HVM): xenresume reads x86 PV streams", dh.Type))
	}
	sr.s.Domain = dh
	if sr.o.Headers != nil {
		if err := sr.o.Headers(sr.s); err != nil {
			return at(sr.Offset, err)
		}
	}
	for {
		off := sr.Offset
		typ, n, err := sr.readHeader(RecordName)
		var rec Record
		if err == nil {
			if typ == RecPageData && sr.o.PageDest != nil && !sr.verify {
				rec, err = sr.pageDataHead(n)
			} else {
				rec, err = sr.readBody(typ, n, nil, RecordName)
			}
		}
		if err != nil {
			if isTruncated(err) && sr.Offset == off {
				err = truncated("truncated: no libxc END record")
			}
			return at(off, err)
		}
		sr.s.Records++
		var decoded any
		if rec.Body == nil && rec.Type == RecPageData {
			decoded, err = sr.streamPageData(n)
		} else {
			decoded, err = sr.libxcRecord(rec)
		}
		if err != nil {
			return at(off, err)
		}
		if rec.Body == nil {
			rec.Body = make([]byte, 0) // the length for Record, below
		}
		if err := sr.record(off, false, rec, decoded); err != nil {
			return err
		}
		if rec.Type == RecEnd {
			return nil
		}
	}
}

// libxcRecord checks one libxc record in its place in the stream and keeps
// what it says.
func (sr *saveReader) libxcRecord(rec Record) (any, error) {
	s, b, name := sr.s, rec.Body, RecordName(rec.Type)
	if !sr.pvInfo && rec.Type != RecX86PVInfo {
		return nil, bad("record %s before X86_PV_INFO: a PV stream begins with X86_PV_INFO", name)
	}
	switch rec.Type {
	case RecX86PVInfo:
		if sr.pvInfo {
			return nil, bad("a second X86_PV_INFO record")
		}
		p, err := DecodePVInfo(b)
		if err != nil {
			return nil, err
		}
		if p.GuestWidth != 8 {
			return nil, bad("record X86_PV_INFO: a 32-bit guest; xenresume reads 64-bit PV guests")
		}
		sr.pvInfo, s.PVInfo = true, p
		return p, nil

	case RecX86CPUIDPolicy, RecX86MSRPolicy:
		if err := sr.validate(rec); err != nil {
			return nil, err
		}
		if len(b) == 0 {
			return nil, bad("record %s: empty", name)
		}
		if sr.StaticDataEnd {
			return nil, bad("record %s after STATIC_DATA_END: a policy is static data", name)
		}
		if rec.Type == RecX86CPUIDPolicy {
			s.CPUIDPolicy = bytes.Clone(b)
		} else {
			s.MSRPolicy = bytes.Clone(b)
		}
		return nil, nil

	case RecStaticDataEnd:
		if err := sr.validate(rec); err != nil {
			return nil, err
		}
		if sr.StaticDataEnd {
			return nil, bad("a second STATIC_DATA_END record")
		}
		sr.StaticDataEnd = true
		return nil, nil

	case RecX86PVP2MFrames:
		if sr.Version < 3 {
			sr.StaticDataEnd = true // implied here in a v2 stream, as libxc does
		}
		if !sr.StaticDataEnd {
			return nil, bad("record X86_PV_P2M_FRAMES before STATIC_DATA_END")
		}
		if sr.p2m {
			return nil, bad("a second X86_PV_P2M_FRAMES record (a P2M that grew during a live migration; a save file describes it once)")
		}
		p, err := DecodeP2MFrames(b)
		if err != nil {
			return nil, err
		}
		if p.StartPFN != 0 {
			return nil, bad("record X86_PV_P2M_FRAMES: starts at pfn %#x, not 0", p.StartPFN)
		}
		for i, f := range p.Frames {
			if f > uint64(p.EndPFN) {
				return nil, bad("record X86_PV_P2M_FRAMES: frame %d at pfn %#x, beyond the domain's last pfn %#x", i, f, p.EndPFN)
			}
		}
		sr.p2m, s.P2M = true, p
		return p, nil

	case RecPageData:
		if err := sr.pageDataOrder(); err != nil {
			return nil, err
		}
		pb, err := DecodePageData(b)
		if err != nil {
			return nil, err
		}
		withData := 0
		for i, pfn := range pb.PFNs {
			if pfn > uint64(s.P2M.EndPFN) {
				return nil, bad("record PAGE_DATA: pfn %#x (entry %d) beyond the domain's last pfn %#x", pfn, i, s.P2M.EndPFN)
			}
			if pb.Data[i] != nil {
				withData++
			}
		}
		s.PageRecords++
		s.Pages += uint64(len(pb.PFNs))
		s.PagesWithData += uint64(withData)
		if sr.verify {
			s.VerifyPages += uint64(len(pb.PFNs))
		} else if sr.o.Pages != nil {
			if err := sr.o.Pages(s, pb); err != nil {
				return nil, err
			}
		}
		return pb, nil

	case RecX86PVVCPUBasic, RecX86PVVCPUExtended, RecX86PVVCPUXSave, RecX86PVVCPUMSRs:
		if !sr.p2m {
			return nil, bad("record %s before X86_PV_P2M_FRAMES", name)
		}
		id, blob, err := decodeVCPUHeader(rec.Type, b)
		if err != nil {
			return nil, err
		}
		if id >= sr.o.MaxVCPUs {
			return nil, bad("record %s: vCPU %d, beyond the limit of %d vCPUs", name, id, sr.o.MaxVCPUs)
		}
		sr.vcpuRecords = true
		if len(blob) == 0 {
			return nil, nil // an empty record, which libxc skips
		}
		v := s.addVCPU(id)
		switch rec.Type {
		case RecX86PVVCPUBasic:
			vb, err := DecodeVCPUBasic(b)
			if err != nil {
				return nil, err
			}
			v.Context = &vb.Context
			return vb, nil
		case RecX86PVVCPUExtended:
			v.Extended = bytes.Clone(blob)
		case RecX86PVVCPUXSave:
			v.XSave = bytes.Clone(blob)
		default:
			v.MSRs = bytes.Clone(blob)
		}
		return nil, nil

	case RecSharedInfo:
		si, err := DecodeSharedInfo(b)
		if err != nil {
			return nil, err
		}
		s.SharedInfo = si
		return si, nil

	case RecX86TSCInfo:
		t, err := DecodeTSCInfo(b)
		if err != nil {
			return nil, err
		}
		s.TSC = &t
		return t, nil

	case RecHVMContext:
		// Not a record of Xen's PV streams: xenresume's, for the state of
		// the hardware container each vCPU runs in.
		c, err := DecodeHVMContext(b)
		if err != nil {
			return nil, err
		}
		s.HVM = c
		return c, nil

	case RecVerify:
		if err := sr.validate(rec); err != nil {
			return nil, err
		}
		sr.verify = true
		return nil, nil

	case RecCheckpoint:
		return nil, bad("record CHECKPOINT in a save file (a checkpointed stream's record)")

	case RecHVMParams:
		return nil, bad("record HVM_PARAMS in a PV stream")

	case RecEnd:
		if err := sr.validate(rec); err != nil {
			return nil, err
		}
		return nil, sr.complete()
	}
	if err := sr.validate(rec); err != nil {
		return nil, err
	}
	return nil, bad("record %s in a PV stream", name)
}

// complete checks, at the libxc END, that the stream describes a domain
// that can be restored.
func (sr *saveReader) complete() error {
	s := sr.s
	if !sr.p2m {
		return bad("no X86_PV_P2M_FRAMES record")
	}
	if v := s.VCPU(0); v == nil || v.Context == nil {
		return bad("no X86_PV_VCPU_BASIC record for vCPU 0")
	}
	if s.SharedInfo == nil {
		return bad("no SHARED_INFO record")
	}
	last := uint64(s.P2M.EndPFN)
	for _, v := range s.VCPUs {
		c := v.Context
		if c == nil {
			continue
		}
		if c.Gdt_ents > xenabi.FirstReservedGDTEntry {
			return bad("vCPU %d: %d GDT entries, more than the %d a guest may have", v.ID, c.Gdt_ents, xenabi.FirstReservedGDTEntry)
		}
		for i := uint64(0); i < (c.Gdt_ents+511)/512; i++ {
			if c.Gdt_frames[i] > last {
				return bad("vCPU %d: GDT frame %d at pfn %#x, beyond the domain's last pfn %#x", v.ID, i, c.Gdt_frames[i], last)
			}
		}
		if pfn := c.Ctrlreg[3] >> PageShift; pfn > last {
			return bad("vCPU %d: cr3 at pfn %#x, beyond the domain's last pfn %#x", v.ID, pfn, last)
		}
		if cr1 := c.Ctrlreg[1]; cr1&1 != 0 && cr1>>PageShift > last {
			return bad("vCPU %d: user page tables (cr1) at pfn %#x, beyond the domain's last pfn %#x", v.ID, cr1>>PageShift, last)
		}
		if v.ID == 0 && c.User_regs.Rdx > last {
			return bad("vCPU 0: start_info pfn %#x (in rdx), beyond the domain's last pfn %#x", c.User_regs.Rdx, last)
		}
		if s.HVM == nil {
			continue // a PV stream as Xen writes it
		}
		if v.ID <= 0xFFFF {
			v.CPU = s.HVM.CPU(uint16(v.ID))
		}
		if v.CPU == nil {
			return bad("vCPU %d has no CPU record in HVM_CONTEXT", v.ID)
		}
	}
	if s.HVM == nil {
		return nil
	}
	for _, c := range s.HVM.CPUs {
		if v := s.VCPU(uint32(c.Instance)); v == nil || v.Context == nil {
			return bad("HVM_CONTEXT has a CPU record for vCPU %d, which has no X86_PV_VCPU_BASIC record", c.Instance)
		}
	}
	return nil
}
