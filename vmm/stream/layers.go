package stream

import (
	"encoding/binary"
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

// ReadXLHeader reads an xl save-file header and returns its configuration.
// Only STREAMv2 files (a libxl stream follows) are accepted.
func ReadXLHeader(r io.Reader) (string, error) {
	var h [xlHeaderFixed]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", bad("xl header: %v", err)
	}
	if string(h[:32]) != XLMagic {
		return "", bad("not an xl save file (bad magic)")
	}
	if bo := binary.LittleEndian.Uint32(h[32:]); bo != XLByteOrder {
		return "", bad("xl header byte order %#x: only little-endian files are supported", bo)
	}
	mflags := binary.LittleEndian.Uint32(h[36:])
	if mflags&XLMandatoryStreamV2 == 0 || mflags&^(XLMandatoryJSON|XLMandatoryStreamV2) != 0 {
		return "", bad("xl mandatory flags %#x: want STREAMv2 and nothing unknown", mflags)
	}
	n := binary.LittleEndian.Uint32(h[44:])
	if n > maxXLOptionalData {
		return "", bad("xl optional data of %d bytes", n)
	}
	opt := make([]byte, n)
	if _, err := io.ReadFull(r, opt); err != nil {
		return "", bad("xl optional data: %v", err)
	}
	if len(opt) < 4 {
		return "", nil
	}
	cn := binary.LittleEndian.Uint32(opt)
	if uint64(cn) > uint64(len(opt)-4) {
		return "", bad("xl config of %d bytes in %d bytes of optional data", cn, len(opt)-4)
	}
	cfg := opt[4 : 4+cn]
	for len(cfg) > 0 && cfg[len(cfg)-1] == 0 {
		cfg = cfg[:len(cfg)-1]
	}
	return string(cfg), nil
}

// ReadLibxlHeader reads and checks the libxl stream header.
func ReadLibxlHeader(r io.Reader) error {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return bad("libxl header: %v", err)
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
			return bad("libxl record %d must be empty, has %d bytes", rec.Type, n)
		}
	case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
		if n < 8 {
			return bad("libxl emulator record of %d bytes", n)
		}
		if id := binary.LittleEndian.Uint32(rec.Body); id > 2 {
			return bad("libxl emulator id %d", id)
		}
	case LibxlCheckpointState:
		if n == 0 {
			return bad("empty libxl CHECKPOINT_STATE")
		}
	default:
		return bad("unknown libxl record type %d", rec.Type)
	}
	return nil
}

// ReadLibxlRecord reads one libxl record (same framing as libxc's).
func (s *Reader) ReadLibxlRecord() (Record, error) {
	rec, err := s.readFramed()
	if err != nil {
		return rec, err
	}
	return rec, ValidateLibxl(rec)
}
