package benchpeers

import (
	"encoding/binary"
	"fmt"
)

// Multiboot (version 1) header fields, from the Multiboot specification.
const (
	multibootMagic    = 0x1BADB002
	multibootAOutKlud = 1 << 16 // the load addresses are in the header
	multibootLoadAddr = 0x100000
	multibootHdrSize  = 32
)

// TouchStart is where the QEMU guest starts touching memory: 8 MiB, as
// the xenresume side's host fill (vmm/toolstack's benchmarks) does.
const TouchStart = 8 << 20

// DoneByte is what the QEMU guest writes to the debug console port (0xe9)
// once its memory is touched.
const DoneByte = 'R'

// MultibootGuest returns a flat Multiboot kernel (loaded at 1 MiB by
// QEMU's -kernel) that, in 32-bit protected mode, fills touchMiB MiB from
// TouchStart with the bytes xenresume's benchmarks write, byte(addr>>12)|1
// (every page distinct from zero and from its neighbours), writes DoneByte
// to port 0xe9 and halts with interrupts off for good.
func MultibootGuest(touchMiB uint32) ([]byte, error) {
	if touchMiB == 0 || touchMiB > 2048 {
		return nil, fmt.Errorf("guest: %d MiB touched: want 1 to 2048", touchMiB)
	}
	hdr := make([]byte, multibootHdrSize)
	le := binary.LittleEndian
	le.PutUint32(hdr[0:], multibootMagic)
	le.PutUint32(hdr[4:], multibootAOutKlud)
	sum := uint32(multibootMagic + multibootAOutKlud)
	le.PutUint32(hdr[8:], -sum)                                // the three fields sum to zero
	le.PutUint32(hdr[12:], multibootLoadAddr)                  // header_addr
	le.PutUint32(hdr[16:], multibootLoadAddr)                  // load_addr
	le.PutUint32(hdr[20:], 0)                                  // load_end_addr: the whole file
	le.PutUint32(hdr[24:], 0)                                  // bss_end_addr: no bss
	le.PutUint32(hdr[28:], multibootLoadAddr+uint32(len(hdr))) // entry_addr
	code := []byte{0xbf}                                       // mov $TouchStart, %edi
	code = le.AppendUint32(code, TouchStart)
	code = append(code, 0xb9) // mov $dwords, %ecx
	code = le.AppendUint32(code, touchMiB<<18)
	code = append(code,
		0x89, 0xf8, // 1: mov %edi, %eax
		0xc1, 0xe8, 0x0c, // shr $12, %eax
		0x0c, 0x01, // or $1, %al
		0x0f, 0xb6, 0xc0, // movzbl %al, %eax
		0x69, 0xc0, 0x01, 0x01, 0x01, 0x01, // imul $0x01010101, %eax, %eax
		0xab,       // stos %eax, (%edi)
		0xe2, 0xed, // loop 1b
		0xb0, DoneByte, // mov $DoneByte, %al
		0xe6, 0xe9, // out %al, $0xe9
		0xfa,       // 2: cli
		0xf4,       // hlt
		0xeb, 0xfc, // jmp 2b
	)
	return append(hdr, code...), nil
}

// FillTouched writes, from the host, what the xenresume side's guest
// touches: touchMiB MiB of ram from TouchStart with byte(addr>>12)|1,
// except the first two pages of each 2 MiB, which the stub's own page
// tables hold (its map_ram makes the first frame of every 2 MiB an L1
// table, and the one after it an L2 where a GiB starts); those are saved
// too, in every configuration. It returns the bytes written.
func FillTouched(ram []byte, touchMiB uint64) (uint64, error) {
	end := TouchStart + touchMiB<<20
	if end > uint64(len(ram)) {
		return 0, fmt.Errorf("fill: %d MiB from %d MiB does not fit in %d MiB", touchMiB, TouchStart>>20, len(ram)>>20)
	}
	n := uint64(0)
	for pg := uint64(TouchStart); pg < end; pg += 4096 {
		if (pg>>12)%512 < 2 {
			continue
		}
		b := byte(pg>>12) | 1
		p := ram[pg : pg+4096]
		for i := range p {
			p[i] = b
		}
		n += 4096
	}
	return n, nil
}
