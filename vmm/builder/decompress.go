package builder

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/therootcompany/xz"
	"github.com/ulikunitz/xz/lzma"
)

// MaxDecompressedSize bounds what a compressed kernel may decompress to
// unless Options.MaxDecompressed says otherwise. Xen's toolstack allows
// XC_DOM_DECOMPRESS_MAX, 1 GiB (xc_dom_kernel_check_size, against
// CVE-2012-4544 / XSA-25); xenresume's domains have at most 2 GiB of
// memory, and no PV kernel is near 256 MiB.
const MaxDecompressedSize = MaxImageSize

// maxDictSize bounds the LZMA dictionary (xz, lzma) and zstd window a
// payload may ask the decoder to allocate: Xen's lzma decoders run with a
// 256 MiB memory limit (LZMA_BLOCK_SIZE in xg_dom_bzimageloader.c). Linux
// uses 32 MiB (xz) and 64 MiB (lzma -9) dictionaries, 128 MiB zstd windows.
const maxDictSize = 256 << 20

// codec is one compression format xc_dom_probe_bzimage_kernel recognises,
// by the magic at the start of the payload, in Xen's order.
type codec struct {
	name  string
	magic string
	// fn is Xen's decoder (for the error message); decode is ours, nil
	// where xenresume has none.
	fn     string
	decode func(in []byte, size uint64) ([]byte, error)
}

var codecs = []codec{
	{"gzip", "\x1f\x8b", "xc_dom_try_gunzip", nil}, // handled by gunzip
	{"bzip2", "BZh", "xc_try_bzip2_decode", decodeBzip2},
	{"xz", "\xfd7zXZ\x00", "xc_try_xz_decode", decodeXZ},
	{"zstd", "\x28\xb5\x2f\xfd", "xc_try_zstd_decode", decodeZstd},
	{"lzma", "\x5d\x00", "xc_try_lzma_decode", decodeLZMA},
	{"lzop", "\x89LZO\x00", "xc_try_lzo1x_decode", nil},
	{"lz4", "\x02\x21", "xc_try_lz4_decode", decodeLZ4},
}

// errTooLarge marks a payload that would decompress past the limit.
var errTooLarge = errors.New("too large")

// readAtMost reads r to its end, refusing more than limit bytes; memory
// grows with what was actually decompressed, never with a size a header
// claims.
func readAtMost(r io.Reader, limit uint64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if uint64(n) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)
	}
	return buf.Bytes(), nil
}

// trailerSize splits a Linux compressed payload into the stream and the
// little-endian uncompressed size Linux's size_append puts after it, which
// every xc_try_*_decode reads as the output size.
func trailerSize(p []byte, minLen int) ([]byte, uint64, error) {
	if len(p) < minLen {
		return nil, 0, fmt.Errorf("%d bytes: too short for a compressed stream and its size", len(p))
	}
	n := len(p) - 4
	return p[:n], uint64(binary.LittleEndian.Uint32(p[n:])), nil
}

// exact checks a decoder's output against the size Linux appended (Xen:
// "got 0x.. bytes instead of 0x..").
func exact(out []byte, size uint64, err error) ([]byte, error) {
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("decompresses to more than the %d bytes its size field gives", size)
		}
		return nil, err
	}
	if uint64(len(out)) != size {
		return nil, fmt.Errorf("decompressed to %d bytes instead of the %d its size field gives", len(out), size)
	}
	return out, nil
}

// readExact reads r to its end, which must come after exactly size bytes.
func readExact(r io.Reader, size uint64) ([]byte, error) {
	out, err := readAtMost(r, size)
	return exact(out, size, err)
}

func decodeBzip2(in []byte, size uint64) ([]byte, error) {
	return readExact(bzip2.NewReader(bytes.NewReader(in)), size)
}

// decodeXZ decodes an xz stream with an xz-embedded decoder, which has the
// BCJ filters Linux's `xz --x86` uses; one stream (Linux appends the
// uncompressed size after it), and a dictionary of at most maxDictSize,
// refused before the decoder allocates it.
func decodeXZ(in []byte, size uint64) ([]byte, error) {
	r, err := xz.NewReader(bytes.NewReader(in), maxDictSize)
	if err != nil {
		return nil, err
	}
	r.Multistream(false)
	return readExact(r, size)
}

func decodeLZMA(in []byte, size uint64) ([]byte, error) {
	r, err := lzma.ReaderConfig{DictCap: maxDictSize}.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, err
	}
	return readExact(r, size)
}

func decodeZstd(in []byte, size uint64) ([]byte, error) {
	// Streaming, so that output past size stops the decoder; the window a
	// frame asks for is bounded like an LZMA dictionary.
	d, err := zstd.NewReader(bytes.NewReader(in), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(maxDictSize), zstd.WithDecoderMaxWindow(maxDictSize))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return readExact(d, size)
}

// lz4LegacyMagic starts the LZ4 legacy format Linux uses (lz4 -l), as
// xc_try_lz4_decode checks (ARCHIVE_MAGICNUMBER): then 4-byte compressed
// chunk sizes, each followed by a block of at most 8 MiB, to the end of the
// stream; the magic again starts a concatenated stream.
const lz4LegacyMagic = 0x184C2102

func decodeLZ4(in []byte, size uint64) ([]byte, error) {
	if len(in) < 4 || binary.LittleEndian.Uint32(in) != lz4LegacyMagic {
		return nil, errors.New("not the LZ4 legacy format (magic 0x184c2102)")
	}
	// pierrec/lz4 reads the legacy format, Linux's trailing size included;
	// the size is already cut off here.
	return readExact(lz4.NewReader(bytes.NewReader(in)), size)
}

// gunzip decompresses a gzip stream as xc_dom_try_gunzip does: the output
// size is the trailer's ISIZE (the last 4 bytes), refused above the limit;
// one gzip member is read, and it must end within ISIZE+16 bytes (the
// buffer Xen inflates into). The CRC and ISIZE are checked, as zlib does.
func gunzip(in []byte, limit uint64) ([]byte, error) {
	if len(in) < 6 {
		return nil, fmt.Errorf("%d bytes: too short for a gzip stream", len(in))
	}
	size := uint64(binary.LittleEndian.Uint32(in[len(in)-4:]))
	if size > limit {
		return nil, fmt.Errorf("its gzip size field gives %d bytes, more than the %d-byte limit (xc_dom_kernel_check_size)", size, limit)
	}
	r, err := gzip.NewReader(bytes.NewReader(in))
	if err != nil {
		return nil, err
	}
	r.Multistream(false)
	out, err := readAtMost(r, size+16)
	if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("decompresses to more than the %d bytes its gzip size field gives", size)
	}
	return out, err
}

// decompressPayload decompresses a bzImage payload by its magic
// (xc_dom_probe_bzimage_kernel), bounded by limit.
func decompressPayload(p []byte, limit uint64) ([]byte, string, error) {
	for _, c := range codecs {
		if !bytes.HasPrefix(p, []byte(c.magic)) {
			continue
		}
		if c.name == "gzip" {
			out, err := gunzip(p, limit)
			if err != nil {
				return nil, c.name, fmt.Errorf("bzImage payload (gzip): %w (%s)", err, c.fn)
			}
			return out, c.name, nil
		}
		if c.decode == nil {
			return nil, c.name, fmt.Errorf("bzImage payload is %s-compressed, which xenresume does not decompress (Xen: %s)", c.name, c.fn)
		}
		in, size, err := trailerSize(p, 9)
		if err != nil {
			return nil, c.name, fmt.Errorf("bzImage payload (%s): %w (%s)", c.name, err, c.fn)
		}
		if size > limit {
			return nil, c.name, fmt.Errorf("bzImage payload (%s): its size field gives %d bytes, more than the %d-byte limit (xc_dom_kernel_check_size)",
				c.name, size, limit)
		}
		out, err := c.decode(in, size)
		if err != nil {
			return nil, c.name, fmt.Errorf("bzImage payload (%s): %w (%s)", c.name, err, c.fn)
		}
		return out, c.name, nil
	}
	n := min(len(p), 6)
	return nil, "", fmt.Errorf("bzImage payload starts % x: unknown compression format (xc_dom_probe_bzimage_kernel)", p[:n])
}
