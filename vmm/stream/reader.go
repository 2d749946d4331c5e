package stream

import (
	"encoding/binary"
	"errors"
	"io"
)

// Reader reads records from a stream without trusting it: a record's
// claimed length is checked against MaxRecord and read in chunks, so a
// stream that lies about a length costs no more memory than it has bytes.
type Reader struct {
	r io.Reader
	// MaxRecord bounds one record's body; RecLengthMax by default.
	MaxRecord uint32
	// Version is the libxc image version, once ReadImageHeader has run.
	Version uint32
	// StaticDataEnd reports whether STATIC_DATA_END has been read (v3).
	StaticDataEnd bool
	// Offset is how many bytes have been read.
	Offset int64
}

// NewReader reads a stream from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r, MaxRecord: RecLengthMax} }

func (s *Reader) full(b []byte) error {
	n, err := io.ReadFull(s.r, b)
	s.Offset += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) || (errors.Is(err, io.EOF) && len(b) > 0) {
		return truncated("truncated at byte %d", s.Offset)
	}
	return err
}

// ReadImageHeader reads and checks the libxc image header.
func (s *Reader) ReadImageHeader() (ImageHeader, error) {
	var h [imageHeaderSize]byte
	start := s.Offset
	if err := s.full(h[:]); err != nil {
		if isTruncated(err) {
			return ImageHeader{}, truncated("libxc image header: truncated (%d of %d bytes)", s.Offset-start, len(h))
		}
		return ImageHeader{}, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != Marker {
		return ImageHeader{}, bad("libxc image marker %#x: not a v2 stream (a legacy image?)", m)
	}
	if id := binary.BigEndian.Uint32(h[8:]); id != ID {
		return ImageHeader{}, bad("libxc image id %#x, want XENF", id)
	}
	v := binary.BigEndian.Uint32(h[12:])
	if v < 2 || v > 3 {
		return ImageHeader{}, bad("libxc image version %d: want 2 or 3", v)
	}
	opts := binary.BigEndian.Uint16(h[16:])
	if opts&^1 != 0 || binary.BigEndian.Uint16(h[18:]) != 0 || binary.BigEndian.Uint32(h[20:]) != 0 {
		return ImageHeader{}, bad("libxc image header reserved bits set")
	}
	if opts&1 != 0 {
		return ImageHeader{}, bad("libxc big-endian stream: only little-endian (x86) streams")
	}
	s.Version = v
	return ImageHeader{Version: v, Options: opts}, nil
}

// ReadDomainHeader reads and checks the libxc domain header.
func (s *Reader) ReadDomainHeader() (DomainHeader, error) {
	var h [domHeaderSize]byte
	start := s.Offset
	if err := s.full(h[:]); err != nil {
		if isTruncated(err) {
			return DomainHeader{}, truncated("libxc domain header: truncated (%d of %d bytes)", s.Offset-start, len(h))
		}
		return DomainHeader{}, err
	}
	d := DomainHeader{Type: binary.LittleEndian.Uint32(h[:]),
		XenMajor: binary.LittleEndian.Uint32(h[8:]), XenMinor: binary.LittleEndian.Uint32(h[12:])}
	if d.Type != DomainX86PV && d.Type != DomainX86HVM {
		return d, bad("libxc domain type %d: want x86 PV (1) or HVM (2)", d.Type)
	}
	if ps := binary.LittleEndian.Uint16(h[4:]); ps != PageShift {
		return d, bad("libxc page shift %d, want 12", ps)
	}
	if binary.LittleEndian.Uint16(h[6:]) != 0 {
		return d, bad("libxc domain header reserved field set")
	}
	return d, nil
}

// readFramed reads one record: type, length, body, zero padding. name
// names its type in errors (RecordName or LibxlRecordName).
func (s *Reader) readFramed(name func(uint32) string) (Record, error) {
	typ, n, err := s.readHeader(name)
	if err != nil {
		return Record{Type: typ}, err
	}
	return s.readBody(typ, n, nil, name)
}

// readHeader reads a record's type and length and bounds the length.
func (s *Reader) readHeader(name func(uint32) string) (uint32, uint32, error) {
	var h [8]byte
	start := s.Offset
	if err := s.full(h[:]); err != nil {
		switch {
		case !isTruncated(err):
			return 0, 0, err
		case s.Offset == start:
			return 0, 0, truncated("truncated: no END record")
		default:
			return 0, 0, truncated("truncated inside a record header (%d of 8 bytes)", s.Offset-start)
		}
	}
	typ, n := binary.LittleEndian.Uint32(h[:]), binary.LittleEndian.Uint32(h[4:])
	if n > s.MaxRecord {
		return typ, n, bad("record %s: %d bytes exceeds the %d-byte limit", name(typ), n, s.MaxRecord)
	}
	return typ, n, nil
}

// readBody reads the rest of an n-byte record body, of which prefix (at
// most n bytes) has been read already, and its padding.
func (s *Reader) readBody(typ, n uint32, prefix []byte, name func(uint32) string) (Record, error) {
	rec := Record{Type: typ}
	// Records up to the size of the largest PAGE_DATA libxc writes are
	// allocated at once. A larger claim is read into a buffer that doubles
	// as bytes arrive, so memory grows only with bytes actually present.
	rec.Body = make([]byte, max(min(n, upfrontRecord), uint32(len(prefix))))
	copy(rec.Body, prefix)
	bodyStart := s.Offset - int64(len(prefix))
	for got := len(prefix); ; {
		if err := s.full(rec.Body[got:]); err != nil {
			if isTruncated(err) {
				return rec, truncated("record %s: truncated: %d of its %d bytes", name(rec.Type), s.Offset-bodyStart, n)
			}
			return rec, err
		}
		got = len(rec.Body)
		if got == int(n) {
			break
		}
		grown := make([]byte, min(int(n), 2*got))
		copy(grown, rec.Body)
		rec.Body = grown
	}
	if err := s.padding(int(n), rec.Type, name); err != nil {
		return rec, err
	}
	return rec, nil
}

// padding reads and checks the zero padding after an n-byte body.
func (s *Reader) padding(n int, typ uint32, name func(uint32) string) error {
	p := pad(n)
	if p == 0 {
		return nil
	}
	var z [8]byte
	if err := s.full(z[:p]); err != nil {
		if isTruncated(err) {
			return truncated("record %s: truncated in its padding", name(typ))
		}
		return err
	}
	for _, b := range z[:p] {
		if b != 0 {
			return bad("record %s: padding is not zero", name(typ))
		}
	}
	return nil
}

func isTruncated(err error) bool {
	fe, ok := err.(*FormatError)
	return ok && fe.Truncated
}

// upfrontRecord is the size of a PAGE_DATA record of MAX_BATCH_SIZE (1024)
// pages, all with data: the largest record a saver normally writes.
const upfrontRecord = 8 + 1024*8 + 1024*4096

// Next reads and validates the next libxc record.
func (s *Reader) Next() (Record, error) {
	rec, err := s.readFramed(RecordName)
	if err != nil {
		return rec, err
	}
	if err := s.validate(rec); err != nil {
		return rec, err
	}
	if rec.Type == RecStaticDataEnd {
		s.StaticDataEnd = true
	}
	return rec, nil
}

// validate checks one libxc record as verify-stream-v2 does, plus the
// ordering a v3 restorer requires (no memory before STATIC_DATA_END).
func (s *Reader) validate(rec Record) error {
	b, n := rec.Body, len(rec.Body)
	name := RecordName(rec.Type)
	switch rec.Type {
	case RecEnd, RecVerify, RecCheckpoint, RecStaticDataEnd:
		if n != 0 {
			return bad("record %s: %d bytes, must be empty", name, n)
		}
		if rec.Type == RecStaticDataEnd && s.Version < 3 {
			return bad("record STATIC_DATA_END in a version %d stream", s.Version)
		}
	case RecPageData:
		if _, err := DecodePageData(b); err != nil {
			return err
		}
		if s.Version >= 3 && !s.StaticDataEnd {
			return bad("record PAGE_DATA before STATIC_DATA_END")
		}
	case RecX86PVInfo:
		if n != 8 {
			return bad("record X86_PV_INFO: %d bytes, want 8", n)
		}
		if w := b[0]; w != 4 && w != 8 {
			return bad("record X86_PV_INFO: guest width %d", w)
		}
		if l := b[1]; l != 3 && l != 4 {
			return bad("record X86_PV_INFO: page-table levels %d", l)
		}
		for _, r := range b[2:] {
			if r != 0 {
				return bad("record X86_PV_INFO: reserved bytes set")
			}
		}
	case RecX86PVP2MFrames:
		if n < 8 || n%8 != 0 {
			return bad("record X86_PV_P2M_FRAMES: %d bytes", n)
		}
		if s.Version >= 3 && !s.StaticDataEnd {
			return bad("record X86_PV_P2M_FRAMES before STATIC_DATA_END")
		}
	case RecX86PVVCPUBasic, RecX86PVVCPUExtended, RecX86PVVCPUXSave, RecX86PVVCPUMSRs:
		if n < 8 {
			return bad("record %s: %d bytes, want at least 8", name, n)
		}
	case RecSharedInfo:
		if n != 4096 {
			return bad("record SHARED_INFO: %d bytes, want 4096", n)
		}
	case RecX86TSCInfo:
		if n != 24 {
			return bad("record X86_TSC_INFO: %d bytes, want 24", n)
		}
		if binary.LittleEndian.Uint32(b[20:]) != 0 {
			return bad("record X86_TSC_INFO: reserved field set")
		}
	case RecHVMContext:
		if n == 0 {
			return bad("record HVM_CONTEXT: empty")
		}
	case RecHVMParams:
		if n < 8 || binary.LittleEndian.Uint32(b[4:]) != 0 {
			return bad("record HVM_PARAMS: bad header")
		}
		if c := binary.LittleEndian.Uint32(b); uint64(n) != 8+16*uint64(c) {
			return bad("record HVM_PARAMS: %d bytes for %d params", n, c)
		}
	case RecX86CPUIDPolicy, RecX86MSRPolicy:
		size := 24
		if rec.Type == RecX86MSRPolicy {
			size = 16
		}
		if n%size != 0 {
			return bad("record %s: %d bytes, not a multiple of %d", name, n, size)
		}
		if s.Version < 3 {
			return bad("record %s in a version %d stream", name, s.Version)
		}
	case RecToolstack:
		return bad("record TOOLSTACK: deprecated")
	case RecCheckpointDirtyPFNs:
		return bad("record CHECKPOINT_DIRTY_PFN_LIST in a forward stream")
	default:
		// Unknown records are refused, optional ones too, as the
		// verifier does.
		return bad("unknown record type %#x", rec.Type)
	}
	return nil
}

// PageBatch is a decoded PAGE_DATA record.
type PageBatch struct {
	PFNs  []uint64 // frame numbers
	Types []uint8  // PAGE_* types
	// Data holds 4096 bytes for each page whose type carries data, in
	// order; Data[i] is nil for the others.
	Data [][]byte
}

// DecodePageData decodes and checks a PAGE_DATA body.
func DecodePageData(b []byte) (PageBatch, error) {
	if len(b) <= 8 {
		return PageBatch{}, bad("record PAGE_DATA: %d bytes", len(b))
	}
	count := binary.LittleEndian.Uint32(b)
	if binary.LittleEndian.Uint32(b[4:]) != 0 {
		return PageBatch{}, bad("record PAGE_DATA: reserved field set")
	}
	if count == 0 || uint64(count)*8 > uint64(len(b)-8) {
		return PageBatch{}, bad("record PAGE_DATA: count %d in %d bytes", count, len(b))
	}
	pb := PageBatch{PFNs: make([]uint64, count), Types: make([]uint8, count), Data: make([][]byte, count)}
	withData := 0
	for i := range pb.PFNs {
		w := binary.LittleEndian.Uint64(b[8+8*i:])
		t := uint8(w >> typeShift)
		if w&reservedPFN != 0 {
			return PageBatch{}, bad("record PAGE_DATA: pfn word %#x has reserved bits set", w)
		}
		if !ValidPageType(t) {
			return PageBatch{}, bad("record PAGE_DATA: page type %#x", t)
		}
		pb.PFNs[i], pb.Types[i] = w&pfnMask, t
		if PageHasData(t) {
			withData++
		}
	}
	want := 8 + 8*uint64(count) + 4096*uint64(withData)
	if uint64(len(b)) != want {
		return PageBatch{}, bad("record PAGE_DATA: %d bytes, want %d for %d pages with data", len(b), want, withData)
	}
	off := 8 + 8*int(count)
	for i, t := range pb.Types {
		if PageHasData(t) {
			pb.Data[i] = b[off : off+4096 : off+4096]
			off += 4096
		}
	}
	return pb, nil
}

// AppendPageDataHeader appends what precedes the page data of a PAGE_DATA
// record: the record header (type, length), the count and the PFN words.
// The record is complete once the 4096-byte pages of the types that carry
// data follow, in order (no padding: the length is a multiple of 8). It is
// what AppendRecord(b, RecPageData, EncodePageData(...)) writes, without
// the pages, so that a saver can write them from guest memory as they are.
func AppendPageDataHeader(b []byte, pfns []uint64, types []uint8) []byte {
	withData := 0
	for _, t := range types {
		if PageHasData(t) {
			withData++
		}
	}
	b = binary.LittleEndian.AppendUint32(b, RecPageData)
	b = binary.LittleEndian.AppendUint32(b, uint32(8+8*len(pfns)+4096*withData))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(pfns)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for i, pfn := range pfns {
		b = binary.LittleEndian.AppendUint64(b, uint64(types[i])<<typeShift|pfn&pfnMask)
	}
	return b
}

// EncodePageData builds a PAGE_DATA body; data[i] must be 4096 bytes for
// each type that carries data and is ignored otherwise.
func EncodePageData(pfns []uint64, types []uint8, data [][]byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(pfns)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for i, pfn := range pfns {
		b = binary.LittleEndian.AppendUint64(b, uint64(types[i])<<typeShift|pfn&pfnMask)
	}
	for i, t := range types {
		if PageHasData(t) {
			b = append(b, data[i]...)
		}
	}
	return b
}
