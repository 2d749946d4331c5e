package hvm

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/vmm/machine"
)

// This file emulates the few instructions KVM's emulator cannot run in
// protected and long mode, on a host that emulates all of an HVM guest
// (PVM): INT n and INT3 (delivery through the guest's IDT, with the stack
// switch from its TSS) and IRET. An instruction that would fault, or that
// needs what is not modelled here (task gates and task returns, virtual-8086
// mode, LDT selectors, 16-bit gates), is reported, and the vCPU ends with
// KVM's crash report: a clean report, never a wrong guess.

// RFLAGS bits.
const (
	flagTF   = 1 << 8
	flagIF   = 1 << 9
	flagIOPL = 3 << 12
	flagNT   = 1 << 14
	flagRF   = 1 << 16
	flagVM   = 1 << 17
	// iretFlags are the flags IRET may load (CF..ID less the reserved
	// bits); bit 1 always reads 1.
	iretFlags = 0x3f7fd5
)

// cpu is the state one emulated instruction works on.
type cpu struct {
	d      *Domain
	r      *kvm.Regs
	s      *kvm.Sregs
	paging machine.Paging
	long   bool // 64-bit mode (EFER.LMA and CS.L)
	cpl    int
}

func (c *cpu) read(lin uint64, n int) ([]byte, error) {
	b := make([]byte, n)
	if err := c.d.mem.ReadVirt(c.paging, lin, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (c *cpu) write(lin uint64, b []byte) error { return c.d.mem.WriteVirt(c.paging, lin, b) }

// emulate is VCPU.Emulate for the container's vCPUs.
func (d *Domain) emulate(v *machine.VCPU) (bool, error) {
	r, err := v.Regs()
	if err != nil {
		return false, err
	}
	s, err := v.Sregs()
	if err != nil {
		return false, err
	}
	if s.CR0&1 == 0 || r.RFLAGS&flagVM != 0 {
		return false, nil // real and virtual-8086 mode are KVM's own
	}
	c := &cpu{d: d, r: r, s: s, paging: machine.Paging{CR0: s.CR0, CR3: s.CR3, CR4: s.CR4, EFER: s.EFER},
		long: s.EFER&(1<<10) != 0 && s.CS.L == 1, cpl: int(s.CS.Selector & 3)}
	rip := r.RIP
	if !c.long {
		rip = uint64(uint32(rip))
	}
	insn, err := c.read(s.CS.Base+rip, 2)
	if err != nil {
		return false, nil // KVM's report says where
	}
	switch {
	case insn[0] == 0xcd:
		err = c.softInt(int(insn[1]), rip+2)
	case insn[0] == 0xcc:
		err = c.softInt(3, rip+1)
	case insn[0] == 0xcf && !c.long:
		err = c.iret32()
	case insn[0] == 0x48 && insn[1] == 0xcf && c.long:
		err = c.iret64()
	default:
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("emulating % x at %#x: %w", insn, rip, err)
	}
	if err := v.SetRegsDirty(); err != nil {
		return false, err
	}
	return true, v.SetSregsDirty()
}

// descriptor reads the GDT descriptor for selector sel.
func (c *cpu) descriptor(sel uint16) (kvm.Segment, error) {
	if sel&4 != 0 {
		return kvm.Segment{}, fmt.Errorf("selector %#x is in the LDT (not modelled)", sel)
	}
	idx := uint64(sel &^ 7)
	if idx == 0 || idx+7 > uint64(c.s.GDT.Limit) {
		return kvm.Segment{}, fmt.Errorf("selector %#x: null or past the GDT limit %#x (#GP)", sel, c.s.GDT.Limit)
	}
	b, err := c.read(c.s.GDT.Base+idx, 8)
	if err != nil {
		return kvm.Segment{}, fmt.Errorf("GDT entry %#x: %w", sel, err)
	}
	seg := kvm.Segment{
		Limit:    uint32(binary.LittleEndian.Uint16(b)) | uint32(b[6]&0xf)<<16,
		Base:     uint64(b[2]) | uint64(b[3])<<8 | uint64(b[4])<<16 | uint64(b[7])<<24,
		Selector: sel,
		Typ:      b[5] & 0xf, S: b[5] >> 4 & 1, DPL: b[5] >> 5 & 3, Present: b[5] >> 7,
		AVL: b[6] >> 4 & 1, L: b[6] >> 5 & 1, DB: b[6] >> 6 & 1, G: b[6] >> 7,
	}
	if seg.G == 1 {
		seg.Limit = seg.Limit<<12 | 0xfff
	}
	if seg.Present == 0 || seg.S == 0 {
		return kvm.Segment{}, fmt.Errorf("selector %#x: not present or not a code/data segment (#NP/#GP)", sel)
	}
	return seg, nil
}

// codeSegment loads a code segment for selector sel at privilege rpl.
func (c *cpu) codeSegment(sel uint16) (kvm.Segment, error) {
	seg, err := c.descriptor(sel)
	if err != nil {
		return seg, err
	}
	if seg.Typ&8 == 0 || seg.Typ&4 != 0 {
		return seg, fmt.Errorf("selector %#x is not a non-conforming code segment", sel)
	}
	seg.Typ |= 1 // accessed
	return seg, nil
}

func (c *cpu) stackSegment(sel uint16, cpl int) (kvm.Segment, error) {
	seg, err := c.descriptor(sel)
	if err != nil {
		return seg, err
	}
	if seg.Typ&8 != 0 || seg.Typ&2 == 0 || int(seg.DPL) != cpl || int(sel&3) != cpl {
		return seg, fmt.Errorf("selector %#x is not a writable data segment at CPL %d (#TS)", sel, cpl)
	}
	seg.Typ |= 1
	return seg, nil
}

// softInt delivers INT vector from the instruction ending at next, as
// the processor does for a software interrupt through an interrupt or
// trap gate.
func (c *cpu) softInt(vector int, next uint64) error {
	gateSize := uint64(8)
	if c.long {
		gateSize = 16
	}
	off := uint64(vector) * gateSize
	if off+gateSize-1 > uint64(c.s.IDT.Limit) {
		return fmt.Errorf("vector %#x is past the IDT limit %#x (#GP)", vector, c.s.IDT.Limit)
	}
	g, err := c.read(c.s.IDT.Base+off, int(gateSize))
	if err != nil {
		return fmt.Errorf("IDT entry %#x: %w", vector, err)
	}
	typ, dpl, present := g[5]&0xf, int(g[5]>>5&3), g[5]>>7
	if typ != 0xe && typ != 0xf {
		return fmt.Errorf("vector %#x: gate type %#x (only 32/64-bit interrupt and trap gates are modelled)", vector, typ)
	}
	if dpl < c.cpl {
		return fmt.Errorf("vector %#x: gate DPL %d below CPL %d (#GP)", vector, dpl, c.cpl)
	}
	if present == 0 {
		return fmt.Errorf("vector %#x: gate not present (#NP)", vector)
	}
	le := binary.LittleEndian
	target := uint64(le.Uint16(g[0:])) | uint64(le.Uint16(g[6:]))<<16
	if c.long {
		target |= uint64(le.Uint32(g[8:])) << 32
	}
	cs, err := c.codeSegment(le.Uint16(g[2:]))
	if err != nil {
		return fmt.Errorf("vector %#x: %w", vector, err)
	}
	newCPL := int(cs.DPL)
	if newCPL > c.cpl {
		return fmt.Errorf("vector %#x: target DPL %d above CPL %d (#GP)", vector, newCPL, c.cpl)
	}
	cs.Selector = cs.Selector&^3 | uint16(newCPL)
	flags := c.r.RFLAGS
	newFlags := flags &^ (flagTF | flagNT | flagRF | flagVM)
	if typ == 0xe {
		newFlags &^= flagIF
	}
	if c.long {
		if cs.L != 1 {
			return fmt.Errorf("vector %#x: target is not a 64-bit code segment", vector)
		}
		rsp, ss := c.r.RSP, c.s.SS
		ist := int(g[4] & 7)
		if newCPL < c.cpl || ist != 0 {
			at := 4 + 8*uint64(newCPL)
			if ist != 0 {
				at = 36 + 8*uint64(ist-1)
			}
			b, err := c.read(c.s.TR.Base+at, 8)
			if err != nil {
				return fmt.Errorf("vector %#x: TSS: %w", vector, err)
			}
			rsp = le.Uint64(b)
		}
		if newCPL < c.cpl { // SS becomes null, with the new RPL
			ss = kvm.Segment{Selector: uint16(newCPL), Limit: 0xffffffff, Typ: 3, S: 1, DPL: uint8(newCPL), Present: 1, DB: 1, G: 1}
		}
		rsp &^= 0xf
		frame := make([]byte, 40)
		le.PutUint64(frame[0:], next)
		le.PutUint64(frame[8:], uint64(c.s.CS.Selector))
		le.PutUint64(frame[16:], flags)
		le.PutUint64(frame[24:], c.r.RSP)
		le.PutUint64(frame[32:], uint64(c.s.SS.Selector))
		if err := c.write(rsp-40, frame); err != nil {
			return fmt.Errorf("vector %#x: pushing the frame at %#x: %w", vector, rsp-40, err)
		}
		c.r.RSP, c.r.RIP, c.r.RFLAGS = rsp-40, target, newFlags
		c.s.CS, c.s.SS = cs, ss
		return nil
	}
	// 32-bit protected mode.
	var frame []byte
	esp, ss := uint32(c.r.RSP), c.s.SS
	if newCPL < c.cpl {
		b, err := c.read(c.s.TR.Base+4+8*uint64(newCPL), 6)
		if err != nil {
			return fmt.Errorf("vector %#x: TSS: %w", vector, err)
		}
		if ss, err = c.stackSegment(le.Uint16(b[4:]), newCPL); err != nil {
			return fmt.Errorf("vector %#x: TSS stack: %w", vector, err)
		}
		esp = le.Uint32(b)
		frame = le.AppendUint32(frame, uint32(next))
		frame = le.AppendUint32(frame, uint32(c.s.CS.Selector))
		frame = le.AppendUint32(frame, uint32(flags))
		frame = le.AppendUint32(frame, uint32(c.r.RSP))
		frame = le.AppendUint32(frame, uint32(c.s.SS.Selector))
	} else {
		frame = le.AppendUint32(frame, uint32(next))
		frame = le.AppendUint32(frame, uint32(c.s.CS.Selector))
		frame = le.AppendUint32(frame, uint32(flags))
	}
	esp -= uint32(len(frame))
	if err := c.write(ss.Base+uint64(esp), frame); err != nil {
		return fmt.Errorf("vector %#x: pushing the frame at %#x: %w", vector, esp, err)
	}
	c.r.RSP, c.r.RIP, c.r.RFLAGS = uint64(esp), target, newFlags
	c.s.CS, c.s.SS = cs, ss
	return nil
}

// popFlags is the RFLAGS an IRET at the current CPL loads from popped.
func (c *cpu) popFlags(popped uint64) uint64 {
	old := c.r.RFLAGS
	mask := uint64(iretFlags)
	if c.cpl > 0 {
		mask &^= flagIOPL
	}
	if c.cpl > int(old&flagIOPL>>12) {
		mask &^= flagIF
	}
	return (old &^ mask) | (popped & mask) | 2
}

// iret32 is IRET with a 32-bit operand in protected mode.
func (c *cpu) iret32() error {
	if c.r.RFLAGS&flagNT != 0 {
		return fmt.Errorf("IRET with NT set: a task return (not modelled)")
	}
	le := binary.LittleEndian
	esp := uint32(c.r.RSP)
	b, err := c.read(c.s.SS.Base+uint64(esp), 12)
	if err != nil {
		return fmt.Errorf("IRET: popping at %#x: %w", esp, err)
	}
	eip, sel, flags := le.Uint32(b), uint16(le.Uint32(b[4:])), uint64(le.Uint32(b[8:]))
	if flags&flagVM != 0 {
		return fmt.Errorf("IRET to virtual-8086 mode (not modelled)")
	}
	rpl := int(sel & 3)
	if rpl < c.cpl {
		return fmt.Errorf("IRET to CPL %d from CPL %d (#GP)", rpl, c.cpl)
	}
	cs, err := c.codeSegment(sel)
	if err != nil {
		return fmt.Errorf("IRET: %w", err)
	}
	if int(cs.DPL) != rpl {
		return fmt.Errorf("IRET: code segment %#x has DPL %d, RPL %d (#GP)", sel, cs.DPL, rpl)
	}
	newFlags := c.popFlags(flags)
	esp += 12
	ss := c.s.SS
	if rpl > c.cpl {
		b, err := c.read(c.s.SS.Base+uint64(esp), 8)
		if err != nil {
			return fmt.Errorf("IRET: popping the outer stack: %w", err)
		}
		if ss, err = c.stackSegment(uint16(le.Uint32(b[4:])), rpl); err != nil {
			return fmt.Errorf("IRET: %w", err)
		}
		esp = le.Uint32(b)
		// Data segments the outer level may not use become null.
		for _, seg := range []*kvm.Segment{&c.s.DS, &c.s.ES, &c.s.FS, &c.s.GS} {
			conformingCode := seg.Typ&0xc == 0xc
			if seg.Unusable == 0 && !conformingCode && int(seg.DPL) < rpl {
				*seg = kvm.Segment{Unusable: 1}
			}
		}
	}
	c.r.RIP, c.r.RFLAGS, c.r.RSP = uint64(eip), newFlags, uint64(esp)
	c.s.CS, c.s.SS = cs, ss
	return nil
}

// iret64 is IRETQ in 64-bit mode.
func (c *cpu) iret64() error {
	if c.r.RFLAGS&flagNT != 0 {
		return fmt.Errorf("IRETQ with NT set (#GP)")
	}
	le := binary.LittleEndian
	b, err := c.read(c.r.RSP, 40)
	if err != nil {
		return fmt.Errorf("IRETQ: popping at %#x: %w", c.r.RSP, err)
	}
	rip, sel, flags := le.Uint64(b), uint16(le.Uint64(b[8:])), le.Uint64(b[16:])
	rsp, ssSel := le.Uint64(b[24:]), uint16(le.Uint64(b[32:]))
	if flags&flagVM != 0 {
		return fmt.Errorf("IRETQ with VM set (#GP)")
	}
	rpl := int(sel & 3)
	if rpl < c.cpl {
		return fmt.Errorf("IRETQ to CPL %d from CPL %d (#GP)", rpl, c.cpl)
	}
	cs, err := c.codeSegment(sel)
	if err != nil {
		return fmt.Errorf("IRETQ: %w", err)
	}
	var ss kvm.Segment
	if ssSel&^3 == 0 && cs.L == 1 && rpl < 3 {
		ss = kvm.Segment{Selector: ssSel, Limit: 0xffffffff, Typ: 3, S: 1, DPL: uint8(rpl), Present: 1, DB: 1, G: 1}
	} else if ss, err = c.stackSegment(ssSel, rpl); err != nil {
		return fmt.Errorf("IRETQ: %w", err)
	}
	c.r.RIP, c.r.RFLAGS, c.r.RSP = rip, c.popFlags(flags), rsp
	c.s.CS, c.s.SS = cs, ss
	return nil
}
