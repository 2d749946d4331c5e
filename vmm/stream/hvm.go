package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The x86 HVM stream (libxc's xg_sr_save_x86_hvm.c): after the headers
// (domain type X86_HVM), STATIC_DATA_END, PAGE_DATA by guest frame, then
// X86_TSC_INFO, HVM_CONTEXT and HVM_PARAMS, then END. A PVH domain's
// stream is the same; only its xl configuration says "pvh".

// HVMParam is one entry of an HVM_PARAMS record.
type HVMParam struct{ Index, Value uint64 }

// HVMParamsSaved are the params libxc's HVM save writes, in its order
// (xg_sr_save_x86_hvm.c write_hvm_params); only the non-zero ones go in
// the record.
var HVMParamsSaved = []uint64{1, 5, 6, 27, 28, 29, 37, 17, 19, 9, 12, 34, 32, 33, 36, 38}

// hvmNrParams is HVM_NR_PARAMS: libxc's restore sets each param through
// xc_hvm_param_set, which refuses an index at or above it.
const hvmNrParams = 39

// EncodeHVMParams builds an HVM_PARAMS body: {count u32, _res u32} and
// count {index u64, value u64} entries.
func EncodeHVMParams(ps []HVMParam) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(ps)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, p := range ps {
		b = binary.LittleEndian.AppendUint64(b, p.Index)
		b = binary.LittleEndian.AppendUint64(b, p.Value)
	}
	return b
}

// DecodeHVMParams decodes and checks an HVM_PARAMS body: the length exact
// for the count, the reserved word zero, each index below HVM_NR_PARAMS.
func DecodeHVMParams(b []byte) ([]HVMParam, error) {
	if len(b) < 8 {
		return nil, bad("record HVM_PARAMS: %d bytes, want at least 8", len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if res := binary.LittleEndian.Uint32(b[4:]); res != 0 {
		return nil, bad("record HVM_PARAMS: reserved word %#x", res)
	}
	if uint64(len(b)-8) != uint64(n)*16 {
		return nil, bad("record HVM_PARAMS: %d entries in %d bytes", n, len(b)-8)
	}
	ps := make([]HVMParam, n)
	for i := range ps {
		e := b[8+16*i:]
		ps[i] = HVMParam{Index: binary.LittleEndian.Uint64(e), Value: binary.LittleEndian.Uint64(e[8:])}
		if ps[i].Index >= hvmNrParams {
			return nil, bad("record HVM_PARAMS: param %d is beyond HVM_NR_PARAMS (%d)", ps[i].Index, hvmNrParams)
		}
	}
	return ps, nil
}

// HVMSaveFile is what WriteHVMSave writes: an xl save file of an HVM or
// PVH domain.
type HVMSaveFile struct {
	Config             string // the domain's configuration, in xl's syntax
	XenMajor, XenMinor uint32
	// Pages calls page for every guest frame the domain has, in
	// increasing order, with its 4096 bytes (read during the call only).
	Pages   func(page func(pfn uint64, data []byte) error) error
	TSC     TSCInfo
	Context *HVMContext
	Params  []HVMParam
}

// maxHVMBatch is libxc's MAX_BATCH_SIZE: pages per PAGE_DATA record.
const maxHVMBatch = 1024

// WriteHVMSave writes f to w as `xl save` writes an HVM domain: the xl
// header, the libxl stream and in it the libxc stream (X86_HVM). It
// returns the bytes written.
func WriteHVMSave(w io.Writer, f *HVMSaveFile) (int64, error) {
	if f.Context == nil || f.Pages == nil {
		return 0, errors.New("stream: an HVM save needs the pages and an HVM context")
	}
	var n int64
	put := func(b []byte) error {
		m, err := w.Write(b)
		n += int64(m)
		return err
	}
	hdr := AppendXLHeader(nil, f.Config)
	hdr = AppendLibxlHeader(hdr)
	hdr = AppendRecord(hdr, LibxlLibxcContext, nil)
	hdr = AppendImageHeader(hdr)
	hdr = AppendDomainHeader(hdr, DomainHeader{Type: DomainX86HVM, XenMajor: f.XenMajor, XenMinor: f.XenMinor})
	hdr = AppendRecord(hdr, RecStaticDataEnd, nil)
	if err := put(hdr); err != nil {
		return n, err
	}
	var pfns []uint64
	var types []uint8
	var data []byte
	flush := func() error {
		if len(pfns) == 0 {
			return nil
		}
		if err := put(AppendPageDataHeader(nil, pfns, types)); err != nil {
			return err
		}
		if err := put(data); err != nil {
			return err
		}
		pfns, types, data = pfns[:0], types[:0], data[:0]
		return nil
	}
	last, any := uint64(0), false
	err := f.Pages(func(pfn uint64, page []byte) error {
		if len(page) != 1<<PageShift {
			return fmt.Errorf("stream: page %#x of %d bytes", pfn, len(page))
		}
		if pfn&^pfnMask != 0 || (any && pfn <= last) {
			return fmt.Errorf("stream: page %#x out of order or range", pfn)
		}
		last, any = pfn, true
		pfns, types, data = append(pfns, pfn), append(types, PageNormal), append(data, page...)
		if len(pfns) == maxHVMBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return n, err
	}
	var tail []byte
	tail = AppendRecord(tail, RecX86TSCInfo, EncodeTSCInfo(f.TSC))
	tail = AppendRecord(tail, RecHVMContext, EncodeHVMContext(f.Context))
	tail = AppendRecord(tail, RecHVMParams, EncodeHVMParams(f.Params))
	tail = AppendRecord(tail, RecEnd, nil)
	tail = AppendRecord(tail, LibxlEnd, nil)
	return n, put(tail)
}

// HVMSave is what ReadHVMSave found in an HVM or PVH save file.
type HVMSave struct {
	XL      XLHeader
	Image   ImageHeader
	Domain  DomainHeader
	TSC     *TSCInfo
	Context *HVMContext
	Params  []HVMParam
	Pages   uint64 // pages with data
	Size    int64  // bytes read, to the end of the libxl END record
}

// HVMReadOptions tune ReadHVMSave.
type HVMReadOptions struct {
	// MaxRecord bounds one record's body; RecLengthMax when 0.
	MaxRecord uint32
	// Page is called with each page of each PAGE_DATA record, in stream
	// order (the last copy of a frame wins); data is valid during the
	// call only. Its error ends the read: it is where the restorer says a
	// frame is not the domain's.
	Page func(pfn uint64, data []byte) error
	// AllowTrailing stops at the libxl END record without checking that
	// the input ends there, as libxl's stream reader does: a migration's
	// handshake follows the stream on the same connection.
	AllowTrailing bool
}

// ReadHVMSave reads a whole xl save file of an x86 HVM (or PVH) domain and
// checks it as libxc's HVM restore reads it: the xl header (STREAMv2), the
// libxl stream with one LIBXC_CONTEXT and no emulator records (there is no
// device model here to take them), then the libxl END and the end of the
// file; in the libxc stream, domain type X86_HVM, the CPUID and MSR
// policies (optional) before STATIC_DATA_END, which comes once and before
// any PAGE_DATA; PAGE_DATA of normal pages only (an HVM guest has no
// page-table types); X86_TSC_INFO, HVM_CONTEXT (which must hold a CPU
// record for vCPU 0) and HVM_PARAMS, the last of each winning; none of the
// PV records, no CHECKPOINT; and at END, an HVM_CONTEXT and HVM_PARAMS
// seen. Errors wrap ErrFormat (except I/O and the Page callback's) and
// start with the offset of the record at fault.
func ReadHVMSave(r io.Reader, opts *HVMReadOptions) (*HVMSave, error) {
	s := NewReader(r)
	xl, err := s.ReadXLHeader()
	if err != nil {
		return nil, at(0, err)
	}
	return s.ReadHVMStream(xl, opts)
}

// ReadHVMStream is ReadHVMSave after the xl header, which the caller read
// with s (to learn the domain's configuration first) and passes on.
func (s *Reader) ReadHVMStream(xl XLHeader, opts *HVMReadOptions) (*HVMSave, error) {
	var o HVMReadOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxRecord != 0 {
		s.MaxRecord = o.MaxRecord
	}
	hs := &HVMSave{XL: xl}
	off := s.Offset
	if err := s.ReadLibxlHeader(); err != nil {
		return nil, at(off, err)
	}
	libxc := false
	for {
		off := s.Offset
		rec, err := s.ReadLibxlRecord()
		if err != nil {
			if isTruncated(err) && s.Offset == off {
				err = truncated("truncated: no libxl END record")
			}
			return nil, at(off, err)
		}
		name := LibxlRecordName(rec.Type)
		switch rec.Type {
		case LibxlLibxcContext:
			if libxc {
				return nil, at(off, bad("a second %s record: a save file holds one domain", name))
			}
			libxc = true
			if err := readHVMLibxc(s, hs, &o); err != nil {
				return nil, err
			}
		case LibxlEnd:
			if !libxc {
				return nil, at(off, bad("%s before any LIBXC_CONTEXT: the stream holds no domain", name))
			}
			hs.Size = s.Offset
			if o.AllowTrailing {
				return hs, nil
			}
			var b [1]byte
			if n, err := io.ReadFull(s.r, b[:]); n > 0 {
				return nil, at(s.Offset, bad("data after the libxl END record, where the file should end"))
			} else if !errors.Is(err, io.EOF) {
				return nil, at(s.Offset, err)
			}
			return hs, nil
		case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
			return nil, at(off, bad("record %s: xenresume has no device model to restore it into", name))
		default:
			return nil, at(off, bad("record %s in a save file (a checkpointed stream's record)", name))
		}
	}
}

// readHVMLibxc reads the libxc stream of an HVM save, to its END.
func readHVMLibxc(s *Reader, hs *HVMSave, o *HVMReadOptions) error {
	off := s.Offset
	ih, err := s.ReadImageHeader()
	if err != nil {
		return at(off, err)
	}
	hs.Image = ih
	off = s.Offset
	dh, err := s.ReadDomainHeader()
	if err != nil {
		return at(off, err)
	}
	if dh.Type != DomainX86HVM {
		return at(off, bad("libxc domain type %d: not an x86 HVM stream", dh.Type))
	}
	hs.Domain = dh
	staticEnd := false
	for {
		off := s.Offset
		rec, err := s.Next()
		if err != nil {
			if isTruncated(err) && s.Offset == off {
				err = truncated("truncated: no libxc END record")
			}
			return at(off, err)
		}
		name := RecordName(rec.Type)
		if !staticEnd && rec.Type != RecStaticDataEnd && rec.Type != RecX86CPUIDPolicy && rec.Type != RecX86MSRPolicy {
			return at(off, bad("record %s before STATIC_DATA_END", name))
		}
		switch rec.Type {
		case RecX86CPUIDPolicy, RecX86MSRPolicy:
			if staticEnd {
				return at(off, bad("record %s after STATIC_DATA_END: a policy is static data", name))
			}
		case RecStaticDataEnd:
			if staticEnd {
				return at(off, bad("a second STATIC_DATA_END record"))
			}
			staticEnd = true
		case RecPageData:
			pb, err := DecodePageData(rec.Body)
			if err != nil {
				return at(off, err)
			}
			for i, t := range pb.Types {
				if t != PageNormal {
					return at(off, bad("record PAGE_DATA: frame %#x of type %#x: an HVM guest's frames are normal pages", pb.PFNs[i], t))
				}
				hs.Pages++
				if o.Page != nil {
					if err := o.Page(pb.PFNs[i], pb.Data[i]); err != nil {
						return at(off, err)
					}
				}
			}
		case RecX86TSCInfo:
			t, err := DecodeTSCInfo(rec.Body)
			if err != nil {
				return at(off, err)
			}
			hs.TSC = &t
		case RecHVMContext:
			c, err := DecodeHVMContext(rec.Body)
			if err != nil {
				return at(off, err)
			}
			if c.CPU(0) == nil {
				return at(off, bad("record HVM_CONTEXT: no CPU record for vCPU 0"))
			}
			hs.Context = c
		case RecHVMParams:
			ps, err := DecodeHVMParams(rec.Body)
			if err != nil {
				return at(off, err)
			}
			hs.Params = ps
		case RecEnd:
			if hs.Context == nil || hs.Params == nil {
				return at(off, bad("END without HVM_CONTEXT and HVM_PARAMS: the stream holds no vCPU state"))
			}
			return nil
		default:
			return at(off, bad("record %s in an x86 HVM stream", name))
		}
	}
}
