// Package hvmtest builds the small HVM and PVH test guests the toolstack
// and runvm tests boot: an ELF32 image at 1 MiB (with or without a
// PHYS32_ENTRY note) and a few hand-assembled 32-bit instructions.
package hvmtest

import (
	"debug/elf"
	"encoding/binary"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Load is where the image's one PT_LOAD and its entry are.
const Load = 0x100000

// PVHImage is an ELF32 PVH image (one PT_LOAD at Load, a PHYS32_ENTRY
// note at Load when entryNote) holding code; its bss runs to Load + 16
// KiB.
func PVHImage(code []byte, entryNote bool) []byte {
	le := binary.LittleEndian
	var notes []byte
	if entryNote {
		notes = le.AppendUint32(notes, 4) // namesz ("Xen\0")
		notes = le.AppendUint32(notes, 4) // descsz
		notes = le.AppendUint32(notes, xenabi.ElfnotePhys32Entry)
		notes = append(notes, "Xen\x00"...)
		notes = le.AppendUint32(notes, Load)
	}
	nph := 1
	if entryNote {
		nph = 2
	}
	hdr := 52 + 32*nph
	out := make([]byte, hdr)
	codeOff := len(out)
	out = append(out, code...)
	notesOff := len(out)
	out = append(out, notes...)
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS], out[elf.EI_DATA], out[elf.EI_VERSION] = byte(elf.ELFCLASS32), byte(elf.ELFDATA2LSB), 1
	le.PutUint16(out[16:], uint16(elf.ET_EXEC))
	le.PutUint16(out[18:], uint16(elf.EM_X86_64))
	le.PutUint32(out[20:], 1)
	le.PutUint32(out[24:], Load)
	le.PutUint32(out[28:], 52)
	le.PutUint16(out[40:], 52)
	le.PutUint16(out[42:], 32)
	le.PutUint16(out[44:], uint16(nph))
	ph := out[52:]
	le.PutUint32(ph[0:], uint32(elf.PT_LOAD))
	le.PutUint32(ph[4:], uint32(codeOff))
	le.PutUint32(ph[8:], Load)
	le.PutUint32(ph[12:], Load)
	le.PutUint32(ph[16:], uint32(len(code)))
	le.PutUint32(ph[20:], 0x4000)
	le.PutUint32(ph[24:], uint32(elf.PF_R|elf.PF_W|elf.PF_X))
	if entryNote {
		ph = out[84:]
		le.PutUint32(ph[0:], uint32(elf.PT_NOTE))
		le.PutUint32(ph[4:], uint32(notesOff))
		le.PutUint32(ph[16:], uint32(len(notes)))
		le.PutUint32(ph[20:], uint32(len(notes)))
	}
	return out
}

// Code32 assembles a test guest's few 32-bit instructions at Load.
type Code32 struct{ B []byte }

// Emit appends raw bytes.
func (c *Code32) Emit(b ...byte) { c.B = append(c.B, b...) }

// Imm appends opcode op with a 32-bit immediate.
func (c *Code32) Imm(op byte, v uint32) { c.Emit(op); c.B = binary.LittleEndian.AppendUint32(c.B, v) }

// Call calls hypercall nr's stub in the hypercall page at page.
func (c *Code32) Call(page uint32, nr int) {
	next := Load + uint32(len(c.B)) + 5
	c.Imm(0xe8, page+uint32(nr)*32-next)
}

// StoreByte appends `movb $v, addr`.
func (c *Code32) StoreByte(addr uint32, v byte) {
	c.Emit(0xc6, 0x05)
	c.B = binary.LittleEndian.AppendUint32(c.B, addr)
	c.Emit(v)
}

// StoreWord appends `movl $v, addr`.
func (c *Code32) StoreWord(addr, v uint32) {
	c.Emit(0xc7, 0x05)
	c.B = binary.LittleEndian.AppendUint32(c.B, addr)
	c.B = binary.LittleEndian.AppendUint32(c.B, v)
}

// Where the S3 guests keep things (see S3Guest).
const (
	FACS   = 0xfc001000 // where the toolstack puts an HVM guest's FACS
	Wake   = 0x8000     // the real-mode waking code
	Marker = 0x9000     // a word the waking code checks survived S3
	Stack  = 0x104000
)

// WakeCode, in real mode at Wake: if the marker survived, S5 (poweroff);
// else hlt with interrupts off (a crash report).
var WakeCode = []byte{
	0x66, 0x81, 0x3e, 0x00, 0x90, 0xbe, 0xba, 0xfe, 0xca, // cmpl $0xcafebabe, marker
	0x75, 0x07, // jne fail
	0xb8, 0x00, 0x20, // mov $SLP_EN, %ax
	0xba, 0x04, 0xb0, // mov $0xb004, %dx
	0xef, // out %ax, %dx
	0xf4, // fail: hlt
}

// S3Guest writes a marker, sets the FACS waking vector to vector, and
// enters S3 (SLP_TYP 1 | SLP_EN on PM1a_CNT); it halts with interrupts
// off if the write did not suspend it. With copyWake it first copies
// WakeCode to Wake itself (a test that cannot write guest memory: the
// image is one segment at 1 MiB, above real mode's reach).
func S3Guest(vector uint32, copyWake bool) []byte {
	var c Code32
	c.Imm(0xbc, Stack) // mov $stack, %esp
	if copyWake {
		for i, b := range WakeCode {
			c.StoreByte(Wake+uint32(i), b)
		}
	}
	c.StoreWord(Marker, 0xcafebabe)
	c.StoreWord(FACS+12, vector)   // FACS.firmware_waking_vector
	c.Emit(0x66, 0xb8, 0x00, 0x24) // mov $(SLP_TYP 1 | SLP_EN), %ax
	c.Emit(0x66, 0xba, 0x04, 0xb0) // mov $0xb004, %dx
	c.Emit(0x66, 0xef)             // out %ax, %dx
	c.Emit(0xf4)                   // hlt
	return c.B
}

// SpinGuest counts in %ecx for ever: `xor %ecx, %ecx; loop: inc %ecx;
// jmp loop`. It returns the code and the loop's address.
func SpinGuest() ([]byte, uint64) {
	var c Code32
	c.Imm(0xbc, Stack) // mov $stack, %esp
	c.Emit(0x31, 0xc9) // xor %ecx, %ecx
	loop := uint64(Load + len(c.B))
	c.Emit(0x41, 0xeb, 0xfd) // loop: inc %ecx; jmp loop
	return c.B, loop
}
