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

// Where EventGuest keeps things.
const (
	EvtPage    = 0x102000 // its hypercall page
	EvtGDT     = 0x110000
	EvtGDTR    = 0x110100
	EvtIDTR    = 0x110108
	EvtArg     = 0x110200 // hypercall arguments
	EvtPortArg = 0x110280 // EVTCHNOP_send's
	// EvtCounter counts the guest's event upcalls.
	EvtCounter = 0x110300
	EvtIDT     = 0x111000
	// EvtSharedInfo is where the guest places shared_info (its GFN <<
	// 12); vcpu_info 0 is at its start.
	EvtSharedInfo = 0x120000
)

// Event delivery modes of EventGuest.
const (
	EvtNone     = iota // no callback registered: the negative control
	EvtCallback        // HVM_PARAM_CALLBACK_IRQ type 2 (the global vector)
	EvtUpcall          // HVMOP_set_evtchn_upcall_vector for vCPU 0, LAPIC enabled, CALLBACK_IRQ 1 as Linux
	// EvtUpcallLAPICOff registers the upcall vector but leaves the LAPIC
	// software-disabled (its reset state): the negative control of
	// EvtUpcall, since a disabled LAPIC accepts no interrupt.
	EvtUpcallLAPICOff
	// EvtGSI is HVM_PARAM_CALLBACK_IRQ type 0, GSI EvtGSINum, whose
	// IO-APIC pin the guest programs (level, active high, vector, to
	// APIC 0, unmasked) with its LAPIC enabled.
	EvtGSI
	// EvtGSIMasked is EvtGSI with the pin left masked: the negative
	// control.
	EvtGSIMasked
)

// EvtGSINum is the callback GSI of EvtGSI.
const EvtGSINum = 10

// The LAPIC and IO-APIC registers the guests program (xAPIC MMIO).
const (
	lapicSVR    = 0xfee000f0
	lapicEOI    = 0xfee000b0
	ioapicSel   = 0xfec00000
	ioapicWin   = 0xfec00010
	evtWaitLoop = 200_000 // iterations of evtSendWait's loop
)

// EventGuest is a PV-aware HVM guest that takes events: it loads a flat
// GDT and an IDT whose gate at vector runs a handler that counts the
// upcall in EvtCounter (and, with clear, consumes the events as a guest's
// handler does: vcpu_info 0's evtchn_upcall_pending and selector, and the
// first word of pending bits; and it EOIs its LAPIC for the modes that
// go through it), places shared_info at
// EvtSharedInfo, registers vector as mode says, binds an IPI port on vCPU
// 0 and sends on it, enables interrupts and waits (a bounded loop) until
// the counter reaches want. Then it shuts down with poweroff.
func EventGuest(mode int, vector byte, clear bool, want uint32) []byte {
	var c Code32
	evtSetup(&c, vector, clear, mode != EvtCallback && mode != EvtNone)
	evtPlatform(&c, mode, vector)
	evtConnect(&c, mode, vector)
	evtSendWait(&c, want)
	evtPoweroff(&c)
	return c.B
}

// Where PVHVMGuest keeps things.
const (
	// EvtGo is the word the guest waits on before it suspends: a test
	// sets it when it sees control/shutdown = "suspend", as the guest's
	// xenstore watch would fire.
	EvtGo = 0x110310
	// EvtResult is SCHEDOP_shutdown(SHUTDOWN_suspend)'s result plus 0x100
	// (0 until it returned).
	EvtResult = 0x110314
)

// PVHVMGuest is a PVHVM guest's suspend and resume (xen-hvm-pvh.md §6.6):
// it connects events by the global callback vector and takes one (as
// EventGuest), waits for EvtGo, and suspends itself with
// SCHEDOP_shutdown(SHUTDOWN_suspend). The call's result goes to
// EvtResult. On 0 (a resume in a new domain, or a slow one) it redoes
// what a new domain lost: shared_info, the callback vector (unless
// skipCallback: the negative control) and its IPI port; on 1 (a
// cancelled, fast resume) it keeps all. Then it sends on its port and
// waits for a second upcall before it powers off.
func PVHVMGuest(vector byte, skipCallback bool) []byte {
	return PVHVMGuestMode(EvtCallback, vector, skipCallback)
}

// PVHVMGuestMode is PVHVMGuest taking its events as mode says (EvtCallback,
// EvtUpcall or EvtGSI). It programs its LAPIC and IO-APIC once, at boot:
// after a resume in a new domain it redoes only what xen-hvm-pvh.md §6.5
// lists (the platform's state is the domain's, carried by the save), as
// Linux does.
func PVHVMGuestMode(mode int, vector byte, skipCallback bool) []byte {
	var c Code32
	evtSetup(&c, vector, true, mode != EvtCallback)
	evtPlatform(&c, mode, vector)
	evtConnect(&c, mode, vector)
	evtSendWait(&c, 1)
	c.Emit(0x83, 0x3d) // wait: cmpl $0, go
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtGo)
	c.Emit(0x00)
	c.Emit(0x74, 0xf7)                                     // je wait
	c.Emit(0xfa)                                           // cli
	c.StoreWord(EvtArg, xenabi.ShutdownSuspend)            // reason
	c.Imm(0xbb, xenabi.SchedopShutdown)                    // mov $SCHEDOP_shutdown, %ebx
	c.Imm(0xb9, EvtArg)                                    // mov $reason, %ecx
	c.Call(EvtPage, xenabi.HypervisorSchedOp)              //
	c.Emit(0x8d, 0x88, 0x00, 0x01, 0x00, 0x00)             // lea 0x100(%eax), %ecx
	c.Emit(0x89, 0x0d)                                     // mov %ecx, result
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtResult) //
	c.Emit(0x85, 0xc0)                                     // test %eax, %eax
	c.Emit(0x0f, 0x85, 0, 0, 0, 0)                         // jnz kept (rel32, patched)
	jnz := len(c.B)
	if skipCallback {
		mode = EvtNone
	}
	evtConnect(&c, mode, vector)
	binary.LittleEndian.PutUint32(c.B[jnz-4:], uint32(len(c.B)-jnz)) // kept:
	evtSendWait(&c, 2)
	evtPoweroff(&c)
	return c.B
}

// evtSetup emits the upcall handler (which EOIs its LAPIC when eoi), the
// hypercall page, the GDT and IDT.
func evtSetup(c *Code32, vector byte, clear, eoi bool, extra ...byte) {
	c.Emit(0xeb, 0) // jmp start (patched)
	handler := Load + uint32(len(c.B))
	c.Emit(0xff, 0x05) // incl counter
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtCounter)
	if clear { // what a guest's handler consumes (the 32-bit layout)
		c.StoreByte(EvtSharedInfo, 0)      // vcpu_info[0].evtchn_upcall_pending = 0
		c.StoreWord(EvtSharedInfo+4, 0)    // evtchn_pending_sel
		c.StoreWord(EvtSharedInfo+2048, 0) // evtchn_pending[0]
	}
	c.Emit(extra...) // the handler's own work, before its EOI
	if eoi {
		c.StoreWord(lapicEOI, 0)
	}
	c.Emit(0xcf) // iret
	c.B[1] = byte(len(c.B) - 2)

	c.Imm(0xbc, Stack)                              // mov $stack, %esp
	c.Imm(0xb9, 0x40000000)                         // mov $HypercallMSR, %ecx
	c.Imm(0xb8, EvtPage)                            // mov $page, %eax
	c.Emit(0x31, 0xd2, 0x0f, 0x30)                  // xor %edx, %edx; wrmsr
	c.StoreWord(EvtGDT+8, 0x0000ffff)               // 0x08: flat 32-bit code
	c.StoreWord(EvtGDT+12, 0x00cf9a00)              //
	c.StoreWord(EvtGDT+16, 0x0000ffff)              // 0x10: flat data
	c.StoreWord(EvtGDT+20, 0x00cf9200)              //
	c.StoreWord(EvtGDTR, 23|(EvtGDT&0xffff)<<16)    // limit, base low
	c.StoreWord(EvtGDTR+4, EvtGDT>>16)              // base high
	c.StoreWord(EvtIDTR, 0x7ff|(EvtIDT&0xffff)<<16) //
	c.StoreWord(EvtIDTR+4, EvtIDT>>16)              //
	gate := EvtIDT + 8*uint32(vector)
	c.StoreWord(gate, 0x08<<16|handler&0xffff)
	c.StoreWord(gate+4, handler&0xffff0000|0x8e00) // present, DPL 0, 32-bit interrupt gate
	c.Emit(0x0f, 0x01, 0x15)                       // lgdt
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtGDTR)
	c.Emit(0x0f, 0x01, 0x1d) // lidt
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtIDTR)
	next := Load + uint32(len(c.B)) + 7
	c.Imm(0xea, next) // ljmp $0x08, $next
	c.Emit(0x08, 0x00)
	c.Emit(0x66, 0xb8, 0x10, 0x00)             // mov $0x10, %ax
	c.Emit(0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0) // mov %ax, %ds; %es; %ss
}

// evtPlatform programs the interrupt controllers mode needs: the LAPIC
// enabled for the upcall vector and the callback GSI, and the GSI's
// IO-APIC pin (level, active high, vector, to APIC 0; masked for
// EvtGSIMasked).
func evtPlatform(c *Code32, mode int, vector byte) {
	switch mode {
	case EvtUpcall, EvtGSI, EvtGSIMasked:
		c.StoreWord(lapicSVR, 0x1ff) // LAPIC enabled, spurious vector 0xff
	}
	if mode != EvtGSI && mode != EvtGSIMasked {
		return
	}
	lo := uint32(vector) | 1<<15 // level, active high, fixed, physical
	if mode == EvtGSIMasked {
		lo |= 1 << 16
	}
	c.StoreWord(ioapicSel, 0x10+2*EvtGSINum) // redirection entry, low half
	c.StoreWord(ioapicWin, lo)
	c.StoreWord(ioapicSel, 0x11+2*EvtGSINum) // high half: APIC ID 0
	c.StoreWord(ioapicWin, 0)
}

// evtConnect places shared_info, registers vector as mode says and binds
// an IPI port on vCPU 0, kept at EvtPortArg.
func evtConnect(c *Code32, mode int, vector byte) {
	c.StoreWord(EvtArg, 0x7ff0)                // add_to_physmap: DOMID_SELF, size 0
	c.StoreWord(EvtArg+4, 0)                   // XENMAPSPACE_shared_info
	c.StoreWord(EvtArg+8, 0)                   // idx
	c.StoreWord(EvtArg+12, EvtSharedInfo>>12)  // gpfn
	c.Imm(0xbb, 7)                             // mov $XENMEM_add_to_physmap, %ebx
	c.Imm(0xb9, EvtArg)                        // mov $arg, %ecx
	c.Call(EvtPage, xenabi.HypervisorMemoryOp) //
	switch mode {
	case EvtCallback:
		c.StoreWord(EvtArg, 0x7ff0)             // DOMID_SELF
		c.StoreWord(EvtArg+4, 0)                // HVM_PARAM_CALLBACK_IRQ
		c.StoreWord(EvtArg+8, uint32(vector))   // value: vector ...
		c.StoreWord(EvtArg+12, 2<<24)           // ... type 2 (bits 63:56)
		c.Imm(0xbb, 0)                          // mov $HVMOP_set_param, %ebx
		c.Imm(0xb9, EvtArg)                     // mov $arg, %ecx
		c.Call(EvtPage, xenabi.HypervisorHVMOp) //
	case EvtGSI, EvtGSIMasked:
		c.StoreWord(EvtArg, 0x7ff0)             // DOMID_SELF
		c.StoreWord(EvtArg+4, 0)                // HVM_PARAM_CALLBACK_IRQ
		c.StoreWord(EvtArg+8, EvtGSINum)        // value: the GSI ...
		c.StoreWord(EvtArg+12, 0)               // ... type 0
		c.Imm(0xbb, 0)                          // mov $HVMOP_set_param, %ebx
		c.Imm(0xb9, EvtArg)                     // mov $arg, %ecx
		c.Call(EvtPage, xenabi.HypervisorHVMOp) //
	case EvtUpcall, EvtUpcallLAPICOff:
		c.StoreWord(EvtArg, 0)                  // vCPU 0
		c.StoreWord(EvtArg+4, uint32(vector))   // vector
		c.Imm(0xbb, 23)                         // mov $HVMOP_set_evtchn_upcall_vector, %ebx
		c.Imm(0xb9, EvtArg)                     // mov $arg, %ecx
		c.Call(EvtPage, xenabi.HypervisorHVMOp) //
		// CALLBACK_IRQ = 1 (GSI 1), as Linux writes it beside its
		// upcall vectors so that the toolstack sees PV drivers; the
		// vCPU's vector wins over the GSI (xen-hvm-pvh.md §5.3).
		c.StoreWord(EvtArg, 0x7ff0)             // DOMID_SELF
		c.StoreWord(EvtArg+4, 0)                // HVM_PARAM_CALLBACK_IRQ
		c.StoreWord(EvtArg+8, 1)                // GSI 1 ...
		c.StoreWord(EvtArg+12, 0)               // ... type 0
		c.Imm(0xbb, 0)                          // mov $HVMOP_set_param, %ebx
		c.Imm(0xb9, EvtArg)                     // mov $arg, %ecx
		c.Call(EvtPage, xenabi.HypervisorHVMOp) //
	}
	c.StoreWord(EvtArg, 0)                                // bind_ipi: vCPU 0
	c.Imm(0xbb, 7)                                        // mov $EVTCHNOP_bind_ipi, %ebx
	c.Imm(0xb9, EvtArg)                                   // mov $arg, %ecx
	c.Call(EvtPage, xenabi.HypervisorEventChannelOp)      //
	c.Emit(0xa1)                                          // mov arg+4 (the port), %eax
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtArg+4) //
	c.Imm(0xa3, EvtPortArg)                               // mov %eax, portarg
}

// evtSendWait sends on the port at EvtPortArg, enables interrupts and
// waits (a bounded loop) until EvtCounter reaches want; then cli.
func evtSendWait(c *Code32, want uint32) {
	c.Imm(0xbb, 4)                                   // mov $EVTCHNOP_send, %ebx
	c.Imm(0xb9, EvtPortArg)                          // mov $portarg, %ecx
	c.Call(EvtPage, xenabi.HypervisorEventChannelOp) //
	c.Emit(0xfb)                                     // sti
	c.Imm(0xbe, evtWaitLoop)                         // mov $n, %esi
	loop := len(c.B)
	c.Emit(0x81, 0x3d) // cmpl $want, counter
	c.B = binary.LittleEndian.AppendUint32(c.B, EvtCounter)
	c.B = binary.LittleEndian.AppendUint32(c.B, want)
	c.Emit(0x73, 0) // jae done (patched)
	jae := len(c.B)
	c.Emit(0x4e)                          // dec %esi
	c.Emit(0x75, byte(loop-(len(c.B)+2))) // jnz loop
	c.B[jae-1] = byte(len(c.B) - jae)     // done:
	c.Emit(0xfa)                          // cli
}

// evtPoweroff shuts down with poweroff.
func evtPoweroff(c *Code32) {
	c.StoreWord(EvtArg, xenabi.ShutdownPoweroff) // reason
	c.Imm(0xbb, xenabi.SchedopShutdown)          // mov $SCHEDOP_shutdown, %ebx
	c.Imm(0xb9, EvtArg)                          // mov $reason, %ecx
	c.Call(EvtPage, xenabi.HypervisorSchedOp)    //
	c.Emit(0xf4)                                 // hlt
}

// Where SCIGuest keeps things (EvtCounter counts its SCIs).
const (
	SCIReady = 0x110310 // 1 once the pin and PM1a_EN are programmed
	SCISeen  = 0x110314 // 1 once its poll saw PWRBTN_STS set
	// SCIVector is the vector it routes the SCI's pin to.
	SCIVector = 0x39
)

// SCIGuest takes the ACPI SCI: it enables its LAPIC, routes IO-APIC pin 9
// (the SCI, level, active high as Xen's MADT override says) to SCIVector
// on APIC 0 (masked with masked: the negative control), sets PWRBTN_EN in
// PM1a_EN (pm1aEvt is the PM1a event block's port) and, interrupts on,
// polls PM1a_STS. Its handler counts in EvtCounter, clears PWRBTN_STS (a
// level SCI stays up until the guest clears the status) and EOIs; its
// poll stores SCISeen once it sees PWRBTN_STS still set, which only a
// guest whose handler never ran does for long.
func SCIGuest(pm1aEvt uint16, masked bool) []byte {
	var c Code32
	clearSts := []byte{0x66, 0xba, byte(pm1aEvt), byte(pm1aEvt >> 8), // mov $PM1a_STS, %dx
		0x66, 0xb8, 0x00, 0x01, // mov $PWRBTN_STS, %ax
		0x66, 0xef} // out %ax, (%dx)
	evtSetup(&c, SCIVector, false, true, clearSts...)
	c.StoreWord(lapicSVR, 0x1ff)
	lo := uint32(SCIVector) | 1<<15 // level, active high, fixed, physical
	if masked {
		lo |= 1 << 16
	}
	c.StoreWord(ioapicSel, 0x10+2*9)
	c.StoreWord(ioapicWin, lo)
	c.StoreWord(ioapicSel, 0x11+2*9)
	c.StoreWord(ioapicWin, 0)
	en := pm1aEvt + 2
	c.Emit(0x66, 0xba, byte(en), byte(en>>8)) // mov $PM1a_EN, %dx
	c.Emit(0x66, 0xb8, 0x00, 0x01)            // mov $PWRBTN_EN, %ax
	c.Emit(0x66, 0xef)                        // out %ax, (%dx)
	c.StoreWord(SCIReady, 1)
	c.Emit(0xfb) // sti
	poll := len(c.B)
	c.Emit(0x66, 0xba, byte(pm1aEvt), byte(pm1aEvt>>8)) // mov $PM1a_STS, %dx
	c.Emit(0x66, 0xed)                                  // in (%dx), %ax
	c.Emit(0x66, 0xa9, 0x00, 0x01)                      // test $PWRBTN_STS, %ax
	c.Emit(0x74, byte(int8(poll-(len(c.B)+2))))         // jz poll
	c.StoreWord(SCISeen, 1)
	c.Emit(0xeb, 0xfe) // jmp .
	return c.B
}
