package stream

import (
	"encoding/binary"
	"fmt"
	"io"
)

// libxl stream (docs/specs/libxl-migration-stream.pandoc, version 2).
const (
	LibxlIdent   = 0x4c6962786c466d74 // "LibxlFmt"
	LibxlVersion = 2

	LibxlEnd                  = 0
	LibxlLibxcContext         = 1
	LibxlEmulatorXenstoreData = 2
	LibxlEmulatorContext      = 3
	LibxlCheckpointEnd        = 4
	LibxlCheckpointState      = 5
)

var libxlNames = map[uint32]string{
	LibxlEnd: "END", LibxlLibxcContext: "LIBXC_CONTEXT", LibxlEmulatorXenstoreData: "EMULATOR_XENSTORE_DATA",
	LibxlEmulatorContext: "EMULATOR_CONTEXT", LibxlCheckpointEnd: "CHECKPOINT_END", LibxlCheckpointState: "CHECKPOINT_STATE",
}

// LibxlRecordName names a libxl record type.
func LibxlRecordName(t uint32) string {
	if n, ok := libxlNames[t]; ok {
		return "libxl " + n
	}
	return fmt.Sprintf("libxl record(%#x)", t)
}

// AppendLibxlHeader appends the libxl stream header (little-endian data).
func AppendLibxlHeader(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, LibxlIdent)
	b = binary.BigEndian.AppendUint32(b, LibxlVersion)
	return binary.BigEndian.AppendUint32(b, 0)
}

// xl save-file header (tools/xl/xl.h).
const (
	XLMagic             = "Xen saved domain, xl format\n \x00 \r"
	XLByteOrder         = 0x01020304
	XLMandatoryJSON     = 1 << 0
	XLMandatoryStreamV2 = 1 << 1
	xlHeaderFixed       = 32 + 16
	maxXLOptionalData   = 1 << 20
)

// AppendXLHeader appends an xl save-file header carrying config (the
// domain's configuration in xl's syntax) and announcing a libxl stream.
func AppendXLHeader(b []byte, config string) []byte {
	b = append(b, XLMagic...)
	b = binary.LittleEndian.AppendUint32(b, XLByteOrder)
	b = binary.LittleEndian.AppendUint32(b, XLMandatoryStreamV2)
	b = binary.LittleEndian.AppendUint32(b, 0)
	opt := binary.LittleEndian.AppendUint32(nil, uint32(len(config)+1))
	opt = append(append(opt, config...), 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(opt)))
	return append(b, opt...)
}

// XLHeader is an xl save-file header.
type XLHeader struct {
	MandatoryFlags uint32 // XLMandatory*
	OptionalFlags  uint32
	// Config is the domain's configuration (JSON when MandatoryFlags has
	// XLMandatoryJSON), without its terminating NULs.
	Config string
}

// ReadXLHeader reads an xl save-file header and returns its configuration.
// Only STREAMv2 files (a libxl stream follows) are accepted.
func ReadXLHeader(r io.Reader) (string, error) {
	h, err := NewReader(r).ReadXLHeader()
	return h.Config, err
}

// ReadXLHeader reads an xl save-file header as xl's create_domain does
// (tools/xl/xl_vmcontrol.c): the magic, the byte order, no mandatory flag
// xl does not know, the optional data with the configuration's length
// within it. xenresume further requires STREAMv2 (a libxl stream follows,
// not a legacy one).
func (s *Reader) ReadXLHeader() (XLHeader, error) {
	var h [xlHeaderFixed]byte
	start := s.Offset
	if err := s.full(h[:]); err != nil {
		if isTruncated(err) {
			return XLHeader{}, truncated("xl header: truncated (%d of %d bytes)", s.Offset-start, xlHeaderFixed)
		}
		return XLHeader{}, err
	}
	if string(h[:32]) != XLMagic {
		return XLHeader{}, bad("not an xl save file (bad magic)")
	}
	if bo := binary.LittleEndian.Uint32(h[32:]); bo != XLByteOrder {
		return XLHeader{}, bad("xl header byte order %#x: only little-endian files are supported", bo)
	}
	xh := XLHeader{MandatoryFlags: binary.LittleEndian.Uint32(h[36:]), OptionalFlags: binary.LittleEndian.Uint32(h[40:])}
	if f := xh.MandatoryFlags; f&XLMandatoryStreamV2 == 0 || f&^(XLMandatoryJSON|XLMandatoryStreamV2) != 0 {
		return xh, bad("xl mandatory flags %#x: want STREAMv2 and nothing unknown", f)
	}
	n := binary.LittleEndian.Uint32(h[44:])
	if n > maxXLOptionalData {
		return xh, bad("xl optional data of %d bytes exceeds the %d-byte limit", n, maxXLOptionalData)
	}
	opt := make([]byte, n)
	if err := s.full(opt); err != nil {
		if isTruncated(err) {
			return xh, truncated("xl optional data: truncated (%d of %d bytes)", s.Offset-start-xlHeaderFixed, n)
		}
		return xh, err
	}
	if len(opt) == 0 {
		return xh, nil
	}
	// xl reads a 4-byte length and that many bytes of configuration from
	// any optional data ("Savefile truncated." if they are not there).
	if len(opt) < 4 {
		return xh, bad("xl optional data of %d bytes: too short for a configuration length", len(opt))
	}
	cn := binary.LittleEndian.Uint32(opt)
	if uint64(cn) > uint64(len(opt)-4) {
		return xh, bad("xl config of %d bytes in %d bytes of optional data", cn, len(opt)-4)
	}
	cfg := opt[4 : 4+cn]
	for len(cfg) > 0 && cfg[len(cfg)-1] == 0 {
		cfg = cfg[:len(cfg)-1]
	}
	xh.Config = string(cfg)
	return xh, nil
}

// ReadLibxlHeader reads and checks the libxl stream header.
func ReadLibxlHeader(r io.Reader) error { return NewReader(r).ReadLibxlHeader() }

// ReadLibxlHeader reads and checks the libxl stream header: the ident,
// version 2, and no options (little-endian, not converted from a legacy
// stream).
func (s *Reader) ReadLibxlHeader() error {
	var h [16]byte
	start := s.Offset
	if err := s.full(h[:]); err != nil {
		if isTruncated(err) {
			return truncated("libxl header: truncated (%d of %d bytes)", s.Offset-start, len(h))
		}
		return err
	}
	if id := binary.BigEndian.Uint64(h[:]); id != LibxlIdent {
		return bad("libxl ident %#x, want %#x", id, uint64(LibxlIdent))
	}
	if v := binary.BigEndian.Uint32(h[8:]); v != LibxlVersion {
		return bad("libxl stream version %d, want %d", v, LibxlVersion)
	}
	if o := binary.BigEndian.Uint32(h[12:]); o != 0 {
		return bad("libxl options %#x: only little-endian, non-legacy streams", o)
	}
	return nil
}

// ValidateLibxl checks a libxl record as verify-stream-v2 does.
func ValidateLibxl(rec Record) error {
	n := len(rec.Body)
	switch rec.Type {
	case LibxlEnd, LibxlLibxcContext, LibxlCheckpointEnd:
		if n != 0 {
			return bad("record %s: %d bytes, must be empty", LibxlRecordName(rec.Type), n)
		}
	case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
		if n < 8 {
			return bad("record %s: %d bytes, want at least 8", LibxlRecordName(rec.Type), n)
		}
		if id := binary.LittleEndian.Uint32(rec.Body); id > 2 {
			return bad("record %s: emulator id %d", LibxlRecordName(rec.Type), id)
		}
	case LibxlCheckpointState:
		if n == 0 {
			return bad("record libxl CHECKPOINT_STATE: empty")
		}
	default:
		return bad("unknown libxl record type %d", rec.Type)
	}
	return nil
}

// ReadLibxlRecord reads one libxl record (same framing as libxc's).
func (s *Reader) ReadLibxlRecord() (Record, error) {
	rec, err := s.readFramed(LibxlRecordName)
	if err != nil {
		return rec, err
	}
	return rec, ValidateLibxl(rec)
}
