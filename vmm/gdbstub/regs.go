package gdbstub

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// reg is one register of the target description, in gdb's numbering (the
// order of targetXML): its name, size in bytes, and where it lives in
// Registers (nil for the x87 registers, which read as zero and ignore
// writes: xenresume's guests run with -mgeneral-regs-only, and the FPU
// state is not the stub's to show yet).
type reg struct {
	name string
	size int
	get  func(*Registers) *uint64
	seg  int // 1 + index into Registers.Seg, or 0
}

var regs = func() []reg {
	var rs []reg
	for i, n := range []string{"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
		"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"} {
		rs = append(rs, reg{name: n, size: 8, get: func(r *Registers) *uint64 { return &r.GPR[i] }})
	}
	rs = append(rs,
		reg{name: "rip", size: 8, get: func(r *Registers) *uint64 { return &r.RIP }},
		reg{name: "eflags", size: 4, get: func(r *Registers) *uint64 { return &r.RFLAGS }})
	for i, n := range []string{"cs", "ss", "ds", "es", "fs", "gs"} {
		rs = append(rs, reg{name: n, size: 4, seg: i + 1})
	}
	for i := 0; i < 8; i++ {
		rs = append(rs, reg{name: fmt.Sprintf("st%d", i), size: 10})
	}
	for _, n := range []string{"fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"} {
		rs = append(rs, reg{name: n, size: 4})
	}
	rs = append(rs,
		reg{name: "fs_base", size: 8, get: func(r *Registers) *uint64 { return &r.FSBase }},
		reg{name: "gs_base", size: 8, get: func(r *Registers) *uint64 { return &r.GSBase }},
		reg{name: "cr0", size: 8, get: func(r *Registers) *uint64 { return &r.CR0 }},
		reg{name: "cr2", size: 8, get: func(r *Registers) *uint64 { return &r.CR2 }},
		reg{name: "cr3", size: 8, get: func(r *Registers) *uint64 { return &r.CR3 }},
		reg{name: "cr4", size: 8, get: func(r *Registers) *uint64 { return &r.CR4 }},
		reg{name: "cr8", size: 8, get: func(r *Registers) *uint64 { return &r.CR8 }},
		reg{name: "efer", size: 8, get: func(r *Registers) *uint64 { return &r.EFER }})
	return rs
}()

// value returns register n's value (0 for the x87 registers).
func (g reg) value(r *Registers) uint64 {
	switch {
	case g.get != nil:
		return *g.get(r)
	case g.seg != 0:
		return uint64(r.Seg[g.seg-1])
	}
	return 0
}

// set stores v in register n (ignored for the x87 registers).
func (g reg) set(r *Registers, v uint64) {
	switch {
	case g.get != nil:
		if g.size == 4 {
			v = *g.get(r)&^0xffffffff | v&0xffffffff
		}
		*g.get(r) = v
	case g.seg != 0:
		r.Seg[g.seg-1] = uint16(v)
	}
}

// appendReg appends register g of r as gdb expects it: little-endian hex
// of its size.
func appendReg(dst []byte, g reg, r *Registers) []byte {
	var b [10]byte
	binary.LittleEndian.PutUint64(b[:], g.value(r))
	return appendHex(dst, b[:g.size])
}

// encodeRegisters is the body of a 'g' reply.
func encodeRegisters(r *Registers) []byte {
	var out []byte
	for _, g := range regs {
		out = appendReg(out, g, r)
	}
	return out
}

// decodeRegister stores a register value given as little-endian hex.
func decodeRegister(r *Registers, g reg, hex []byte) error {
	b, err := decodeHex(hex)
	if err != nil {
		return err
	}
	if len(b) != g.size {
		return fmt.Errorf("register %s: %d bytes, want %d", g.name, len(b), g.size)
	}
	var v [10]byte
	copy(v[:], b)
	g.set(r, binary.LittleEndian.Uint64(v[:8]))
	return nil
}

// decodeRegisters applies a 'G' packet's body to r.
func decodeRegisters(r *Registers, hex []byte) error {
	want := 0
	for _, g := range regs {
		want += 2 * g.size
	}
	if len(hex) != want {
		return fmt.Errorf("a G packet of %d hex digits, want %d", len(hex), want)
	}
	for _, g := range regs {
		if err := decodeRegister(r, g, hex[:2*g.size]); err != nil {
			return err
		}
		hex = hex[2*g.size:]
	}
	return nil
}

// targetXML is the target description gdb reads with qXfer:features:read:
// gdb's x86-64 core feature (general registers, eflags, selectors and the
// x87 registers it requires), its segments feature (fs_base, gs_base), and
// the control registers in a feature of xenresume's, which gdb shows as
// ordinary registers ($cr3 and so on).
var targetXML = func() string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
`)
	types := map[string]string{"rip": "code_ptr", "rsp": "data_ptr", "rbp": "data_ptr", "eflags": "int32"}
	group := func(name string) string {
		switch {
		case strings.HasPrefix(name, "st"):
			return ` type="i387_ext" group="float"`
		case strings.HasPrefix(name, "f") && name != "fs" && name != "fs_base":
			return ` type="int" group="float"`
		}
		if t, ok := types[name]; ok {
			return ` type="` + t + `"`
		}
		return ` type="int"`
	}
	for i, g := range regs {
		switch g.name {
		case "fs_base":
			b.WriteString("</feature>\n<feature name=\"org.gnu.gdb.i386.segments\">\n")
		case "cr0":
			b.WriteString("</feature>\n<feature name=\"org.xenresume.x86.control\">\n")
		}
		fmt.Fprintf(&b, "  <reg name=%q bitsize=\"%d\" regnum=\"%d\"%s/>\n", g.name, 8*g.size, i, group(g.name))
	}
	b.WriteString("</feature>\n</target>\n")
	return b.String()
}()
