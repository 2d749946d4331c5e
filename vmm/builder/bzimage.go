package builder

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// The Linux boot protocol's setup header fields xc_dom_probe_bzimage_kernel
// (tools/libs/guest/xg_dom_bzimageloader.c) reads, by offset in the image.
const (
	bzSetupSects    = 0x1f1 // u8: setup sectors after the boot sector
	bzHeaderMagic   = 0x202 // "HdrS"
	bzVersion       = 0x206 // u16: boot protocol version
	bzPayloadOffset = 0x248 // u32: from the end of the setup code
	bzPayloadLength = 0x24c // u32
	bzSetupHeaderSz = 0x250 // sizeof(struct setup_header) in Xen's loader
)

// isBzImage is the probe: an image at least as long as the setup header,
// with "HdrS" at 0x202.
func isBzImage(b []byte) bool {
	return len(b) >= bzSetupHeaderSz && string(b[bzHeaderMagic:bzHeaderMagic+4]) == "HdrS"
}

// bzPayload returns a bzImage's compressed payload: boot protocol 2.08 or
// later, at (setup_sects+1)*512 + payload_offset, payload_length bytes,
// inside the image (xc_dom_probe_bzimage_kernel).
func bzPayload(b []byte) ([]byte, error) {
	if v := binary.LittleEndian.Uint16(b[bzVersion:]); v < 0x208 {
		return nil, fmt.Errorf("bzImage boot protocol %d.%02d is too old: the ELF payload needs 2.08 (xc_dom_probe_bzimage_kernel)", v>>8, v&0xff)
	}
	off := (uint64(b[bzSetupSects])+1)*512 + uint64(binary.LittleEndian.Uint32(b[bzPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(b[bzPayloadLength:]))
	if off >= uint64(len(b)) {
		return nil, fmt.Errorf("bzImage payload offset %#x is past the %d-byte image (xc_dom_probe_bzimage_kernel)", off, len(b))
	}
	if off+n > uint64(len(b)) {
		return nil, fmt.Errorf("bzImage payload %#x+%#x runs past the %d-byte image (xc_dom_probe_bzimage_kernel)", off, n, len(b))
	}
	return b[off : off+n], nil
}

func isELF(b []byte) bool { return bytes.HasPrefix(b, []byte(elf.ELFMAG)) }

// unwrap finds the ELF image inside a kernel file as xc_dom does: the whole
// file is gunzipped first if it is gzip (xc_dom_kernel_file ->
// xc_dom_try_gunzip), then it is an ELF image or a bzImage whose payload
// decompresses to one. It returns the ELF bytes and a description of the
// wrapping.
func unwrap(image []byte, limit uint64) ([]byte, string, error) {
	var format string
	// xc_dom_check_gzip: at least 6 bytes, starting 1f 8b.
	if len(image) >= 6 && image[0] == 0x1f && image[1] == 0x8b {
		out, err := gunzip(image, limit)
		if err != nil {
			return nil, "", bad("gzip-compressed kernel: %v (xc_dom_try_gunzip)", err)
		}
		image, format = out, "gzip: "
	}
	switch {
	case isELF(image):
		return image, format + "ELF", nil
	case isBzImage(image):
		p, err := bzPayload(image)
		if err != nil {
			return nil, "", bad("%v", err)
		}
		out, codec, err := decompressPayload(p, limit)
		if err != nil {
			return nil, "", bad("%v", err)
		}
		if !isELF(out) {
			return nil, "", bad("bzImage payload (%s) decompresses to %d bytes that are not an ELF image (Xen's ELF loader probe)", codec, len(out))
		}
		return out, format + "bzImage (" + codec + "): ELF", nil
	}
	if format != "" {
		return nil, "", bad("gzip-compressed kernel decompresses to neither an ELF file nor a bzImage")
	}
	return nil, "", bad("not an ELF file, a gzip-compressed ELF file or a bzImage")
}
