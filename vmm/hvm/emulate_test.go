package hvm

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
)

// Descriptor-table layout of the emulation tests, in offline's RAM.
const (
	gdtBase = 0x10000
	idtBase = 0x11000
	tssBase = 0x12000
	stack0  = 0x20000 // the TSS's ring-0 stack top
)

func putDesc(t *testing.T, d *Domain, sel int, access, flags byte) {
	t.Helper()
	b := []byte{0xff, 0xff, 0, 0, 0, access, flags | 0xf, 0}
	if err := d.mem.Write(gdtBase+uint64(sel&^7), b); err != nil {
		t.Fatal(err)
	}
}

// tables writes a GDT (0x08 ring-0 code, 0x10 ring-0 data, 0x1b ring-3
// code, 0x23 ring-3 data; 64-bit code when long), a TSS with the ring-0
// stack, and IDT gates: 0x20 DPL 3 interrupt gate, 0x21 DPL 0 trap gate,
// 0x22 not present.
func tables(t *testing.T, d *Domain, long bool) {
	t.Helper()
	codeFlags := byte(0xc0) // G, D
	if long {
		codeFlags = 0xa0 // G, L
	}
	putDesc(t, d, 0x08, 0x9b, codeFlags)
	putDesc(t, d, 0x10, 0x93, 0xc0)
	putDesc(t, d, 0x1b, 0xfb, codeFlags)
	putDesc(t, d, 0x23, 0xf3, 0xc0)
	le := binary.LittleEndian
	tss := make([]byte, 104)
	if long {
		le.PutUint64(tss[4:], stack0)
	} else {
		le.PutUint32(tss[4:], stack0)
		le.PutUint16(tss[8:], 0x10)
	}
	d.mem.Write(tssBase, tss)
	gate := func(vec int, attr byte, target uint64) {
		size := 8
		if long {
			size = 16
		}
		g := make([]byte, size)
		le.PutUint16(g[0:], uint16(target))
		le.PutUint16(g[2:], 0x08)
		g[5] = attr
		le.PutUint16(g[6:], uint16(target>>16))
		if long {
			le.PutUint32(g[8:], uint32(target>>32))
		}
		d.mem.Write(idtBase+uint64(vec*size), g)
	}
	gate(0x20, 0xee, 0x401000)
	gate(0x21, 0x8f, 0x402000)
	gate(0x22, 0x6e, 0x403000)
}

func userCPU(t *testing.T, long bool) (*cpu, *Domain) {
	t.Helper()
	d, _, _ := offline(t)
	tables(t, d, long)
	s := &kvm.Sregs{
		CS:  kvm.Segment{Selector: 0x1b, Typ: 0xb, S: 1, DPL: 3, Present: 1, G: 1, Limit: 0xffffffff},
		SS:  kvm.Segment{Selector: 0x23, Typ: 0x3, S: 1, DPL: 3, Present: 1, G: 1, DB: 1, Limit: 0xffffffff},
		DS:  kvm.Segment{Selector: 0x23, Typ: 0x3, S: 1, DPL: 3, Present: 1, G: 1, DB: 1, Limit: 0xffffffff},
		GDT: kvm.Descriptor{Base: gdtBase, Limit: 0x27},
		IDT: kvm.Descriptor{Base: idtBase, Limit: 0xfff},
		TR:  kvm.Segment{Base: tssBase, Limit: 0x67, Typ: 0xb, Present: 1},
		CR0: 0x11,
	}
	if long {
		s.CS.L, s.EFER = 1, 0x500
	} else {
		s.CS.DB = 1
	}
	r := &kvm.Regs{RIP: 0x300000, RSP: 0x30ff8, RFLAGS: 0x202}
	return &cpu{d: d, r: r, s: s, long: long, cpl: 3}, d
}

func TestSoftIntLong(t *testing.T) {
	c, d := userCPU(t, true)
	if err := c.softInt(0x20, 0x300002); err != nil {
		t.Fatal(err)
	}
	if c.r.RIP != 0x401000 || c.r.RSP != stack0-40 || c.r.RFLAGS != 0x002 || c.s.CS.Selector != 0x08 || c.s.CS.L != 1 ||
		c.s.SS.Selector != 0 || c.s.SS.DPL != 0 {
		t.Fatalf("after INT 0x20: rip %#x rsp %#x rflags %#x cs %#x ss %#x", c.r.RIP, c.r.RSP, c.r.RFLAGS, c.s.CS.Selector, c.s.SS.Selector)
	}
	f := make([]byte, 40)
	d.mem.Read(stack0-40, f)
	le := binary.LittleEndian
	want := []uint64{0x300002, 0x1b, 0x202, 0x30ff8, 0x23}
	for i, w := range want {
		if got := le.Uint64(f[i*8:]); got != w {
			t.Errorf("frame[%d] = %#x, want %#x", i, got, w)
		}
	}
	// And back: IRETQ returns to ring 3 where the INT left it.
	c.cpl = 0
	if err := c.iret64(); err != nil {
		t.Fatal(err)
	}
	if c.r.RIP != 0x300002 || c.r.RSP != 0x30ff8 || c.r.RFLAGS != 0x202 || c.s.CS.Selector != 0x1b || c.s.SS.Selector != 0x23 {
		t.Fatalf("after IRETQ: rip %#x rsp %#x rflags %#x cs %#x ss %#x", c.r.RIP, c.r.RSP, c.r.RFLAGS, c.s.CS.Selector, c.s.SS.Selector)
	}
}

func TestSoftInt32(t *testing.T) {
	c, d := userCPU(t, false)
	if err := c.softInt(0x20, 0x300002); err != nil {
		t.Fatal(err)
	}
	if c.r.RIP != 0x401000 || c.r.RSP != stack0-20 || c.s.CS.Selector != 0x08 || c.s.SS.Selector != 0x10 || c.r.RFLAGS&flagIF != 0 {
		t.Fatalf("after INT 0x20: rip %#x rsp %#x cs %#x ss %#x", c.r.RIP, c.r.RSP, c.s.CS.Selector, c.s.SS.Selector)
	}
	f := make([]byte, 20)
	d.mem.Read(stack0-20, f)
	want := []uint32{0x300002, 0x1b, 0x202, 0x30ff8, 0x23}
	for i, w := range want {
		if got := binary.LittleEndian.Uint32(f[i*4:]); got != w {
			t.Errorf("frame[%d] = %#x, want %#x", i, got, w)
		}
	}
	c.cpl = 0
	c.s.DS = kvm.Segment{Selector: 0x10, Typ: 0x3, S: 1, DPL: 0, Present: 1}
	if err := c.iret32(); err != nil {
		t.Fatal(err)
	}
	if c.r.RIP != 0x300002 || c.r.RSP != 0x30ff8 || c.s.CS.Selector != 0x1b || c.s.SS.Selector != 0x23 || c.s.DS.Unusable != 1 {
		t.Fatalf("after IRET: rip %#x rsp %#x cs %#x ss %#x ds %+v", c.r.RIP, c.r.RSP, c.s.CS.Selector, c.s.SS.Selector, c.s.DS)
	}
	// Same-level: INT 0x21 from ring 0 (a trap gate keeps IF), IRET back.
	c.cpl, c.s.CS, c.s.SS = 0, kvm.Segment{Selector: 0x08, Typ: 0xb, S: 1, Present: 1, DB: 1}, kvm.Segment{Selector: 0x10, Typ: 3, S: 1, Present: 1}
	c.r.RSP, c.r.RFLAGS = 0x28000, 0x202
	if err := c.softInt(0x21, 0x500005); err != nil {
		t.Fatal(err)
	}
	if c.r.RIP != 0x402000 || c.r.RSP != 0x28000-12 || c.r.RFLAGS&flagIF == 0 {
		t.Fatalf("after INT 0x21: rip %#x rsp %#x rflags %#x", c.r.RIP, c.r.RSP, c.r.RFLAGS)
	}
	if err := c.iret32(); err != nil || c.r.RIP != 0x500005 || c.r.RSP != 0x28000 {
		t.Fatalf("IRET: %v, rip %#x rsp %#x", err, c.r.RIP, c.r.RSP)
	}
}

// TestEmulateRefuses: what the processor would fault on is reported, not
// guessed.
func TestEmulateRefuses(t *testing.T) {
	for _, long := range []bool{false, true} {
		for _, tc := range []struct {
			name string
			run  func(c *cpu) error
			want string
		}{
			{"gate DPL below CPL", func(c *cpu) error { return c.softInt(0x21, 0) }, "#GP"},
			{"gate not present", func(c *cpu) error { return c.softInt(0x22, 0) }, "not present"},
			{"empty gate", func(c *cpu) error { return c.softInt(0x23, 0) }, "gate type"},
			{"past the IDT", func(c *cpu) error { c.s.IDT.Limit = 0x20; return c.softInt(0x20, 0) }, "IDT limit"},
			{"IRET with NT", func(c *cpu) error {
				c.r.RFLAGS |= flagNT
				if c.long {
					return c.iret64()
				}
				return c.iret32()
			}, "NT"},
			{"IRET to a bad selector", func(c *cpu) error {
				if c.long {
					c.d.mem.Write(c.r.RSP, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x33, 0, 0, 0, 0, 0, 0, 0})
					return c.iret64()
				}
				c.d.mem.Write(c.r.RSP, []byte{0, 0, 0, 0, 0x33, 0, 0, 0, 2, 0, 0, 0})
				return c.iret32()
			}, "past the GDT limit"},
			{"IRET to an inner level", func(c *cpu) error {
				c.d.mem.Write(c.r.RSP, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0})
				if c.long {
					return c.iret64()
				}
				c.d.mem.Write(c.r.RSP, []byte{0, 0, 0, 0, 0x08, 0, 0, 0})
				return c.iret32()
			}, "to CPL 0 from CPL 3"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, _ := userCPU(t, long)
				if err := tc.run(c); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("long %v: %v, want %q", long, err, tc.want)
				}
			})
		}
	}
}
