// Package stream reads and writes Xen's save/migration stream: the libxc
// stream (docs/specs/libxc-migration-stream.pandoc, image version 3; 2 is
// accepted on read), the libxl stream around it, and the xl save-file
// header, so that files xenresume writes are files Xen's own tools accept
// (verify-stream-v2 checks each layer in CI).
//
// The reader treats every byte as hostile: lengths are checked against
// limits and against the bytes actually present before anything is
// allocated, padding must be zero, and each record is validated the way
// verify-stream-v2 validates it.
package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrFormat is wrapped by every error about a malformed stream.
var ErrFormat = errors.New("malformed stream")

// FormatError is a malformed stream: what is wrong and, when ReadSave
// found it, where. It wraps ErrFormat.
type FormatError struct {
	// Offset is the file offset (from the first byte of the xl header) of
	// the header or record at fault, or -1 when the error came from
	// decoding a body or a stream read without ReadSave.
	Offset int64
	// Msg says what is wrong.
	Msg string
	// Truncated reports that the input ended early.
	Truncated bool
}

func (e *FormatError) Error() string {
	if e.Offset < 0 {
		return "malformed stream: " + e.Msg
	}
	return fmt.Sprintf("at offset %#x: %s", e.Offset, e.Msg)
}

// Unwrap makes errors.Is(err, ErrFormat) hold.
func (e *FormatError) Unwrap() error { return ErrFormat }

func bad(format string, args ...any) error {
	return &FormatError{Offset: -1, Msg: fmt.Sprintf(format, args...)}
}

func truncated(format string, args ...any) error {
	return &FormatError{Offset: -1, Msg: fmt.Sprintf(format, args...), Truncated: true}
}

// at places an error at a file offset: a FormatError without one gets off,
// any other error (I/O, a caller's callback) is prefixed with it.
func at(off int64, err error) error {
	if err == nil {
		return nil
	}
	if fe, ok := err.(*FormatError); ok {
		if fe.Offset >= 0 {
			return fe
		}
		c := *fe
		c.Offset = off
		return &c
	}
	return fmt.Errorf("at offset %#x: %w", off, err)
}

// libxc image and domain headers.
const (
	Marker          = 0xFFFFFFFFFFFFFFFF
	ID              = 0x58454E46 // "XENF"
	Version         = 3
	DomainX86PV     = 1
	DomainX86HVM    = 2
	PageShift       = 12
	imageHeaderSize = 24
	domHeaderSize   = 16
	// RecLengthMax is libxc's implementation limit on one record.
	RecLengthMax = 128 << 20
)

// libxc record types.
const (
	RecEnd                 = 0x00
	RecPageData            = 0x01
	RecX86PVInfo           = 0x02
	RecX86PVP2MFrames      = 0x03
	RecX86PVVCPUBasic      = 0x04
	RecX86PVVCPUExtended   = 0x05
	RecX86PVVCPUXSave      = 0x06
	RecSharedInfo          = 0x07
	RecX86TSCInfo          = 0x08
	RecHVMContext          = 0x09
	RecHVMParams           = 0x0A
	RecToolstack           = 0x0B
	RecX86PVVCPUMSRs       = 0x0C
	RecVerify              = 0x0D
	RecCheckpoint          = 0x0E
	RecCheckpointDirtyPFNs = 0x0F
	RecStaticDataEnd       = 0x10
	RecX86CPUIDPolicy      = 0x11
	RecX86MSRPolicy        = 0x12
	recOptional            = 0x80000000
)

var recNames = map[uint32]string{
	RecEnd: "END", RecPageData: "PAGE_DATA", RecX86PVInfo: "X86_PV_INFO",
	RecX86PVP2MFrames: "X86_PV_P2M_FRAMES", RecX86PVVCPUBasic: "X86_PV_VCPU_BASIC",
	RecX86PVVCPUExtended: "X86_PV_VCPU_EXTENDED", RecX86PVVCPUXSave: "X86_PV_VCPU_XSAVE",
	RecSharedInfo: "SHARED_INFO", RecX86TSCInfo: "X86_TSC_INFO", RecHVMContext: "HVM_CONTEXT",
	RecHVMParams: "HVM_PARAMS", RecToolstack: "TOOLSTACK", RecX86PVVCPUMSRs: "X86_PV_VCPU_MSRS",
	RecVerify: "VERIFY", RecCheckpoint: "CHECKPOINT", RecCheckpointDirtyPFNs: "CHECKPOINT_DIRTY_PFN_LIST",
	RecStaticDataEnd: "STATIC_DATA_END", RecX86CPUIDPolicy: "X86_CPUID_POLICY", RecX86MSRPolicy: "X86_MSR_POLICY",
}

// RecordName names a libxc record type.
func RecordName(t uint32) string {
	if n, ok := recNames[t]; ok {
		return n
	}
	return fmt.Sprintf("record(%#x)", t)
}

// PAGE_DATA page types (the top nibble of each pfn word, XEN_DOMCTL_PFINFO_*).
const (
	PageNormal  = 0x0
	PageL1      = 0x1
	PageL2      = 0x2
	PageL3      = 0x3
	PageL4      = 0x4
	PagePinned  = 0x8 // or-ed with L1..L4
	PageBroken  = 0xD
	PageXAlloc  = 0xE
	PageXTab    = 0xF
	pfnMask     = (1 << 52) - 1
	typeShift   = 60
	reservedPFN = 0xFF << 52
)

// ValidPageType reports whether t is a PAGE_DATA type (5 to 8 are reserved).
func ValidPageType(t uint8) bool { return t <= 0xF && (t <= PageL4 || t > PagePinned) }

// PageHasData reports whether a page of a valid type carries 4096 bytes:
// normal and page-table pages do; BROKEN, XALLOC and XTAB do not.
func PageHasData(t uint8) bool { return t&7 <= 4 && t < PageBroken }

// ImageHeader is the libxc image header (big-endian).
type ImageHeader struct {
	Version uint32
	Options uint16 // bit 0: big-endian
}

// DomainHeader is the libxc domain header.
type DomainHeader struct {
	Type               uint32
	XenMajor, XenMinor uint32
}

// Record is one libxc or libxl record.
type Record struct {
	Type uint32
	Body []byte
}

func (r Record) String() string { return fmt.Sprintf("%s (%d bytes)", RecordName(r.Type), len(r.Body)) }

// AppendImageHeader appends a libxc image header (version 3,
// little-endian).
func AppendImageHeader(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, Marker)
	b = binary.BigEndian.AppendUint32(b, ID)
	b = binary.BigEndian.AppendUint32(b, Version)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, 0)
	return binary.BigEndian.AppendUint32(b, 0)
}

// AppendDomainHeader appends a libxc domain header.
func AppendDomainHeader(b []byte, h DomainHeader) []byte {
	b = binary.LittleEndian.AppendUint32(b, h.Type)
	b = binary.LittleEndian.AppendUint16(b, PageShift)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, h.XenMajor)
	return binary.LittleEndian.AppendUint32(b, h.XenMinor)
}

// AppendRecord appends a record: type, length, body, zero padding to 8.
func AppendRecord(b []byte, typ uint32, body []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	return append(b, make([]byte, pad(len(body)))...)
}

func pad(n int) int { return (8 - n%8) % 8 }
