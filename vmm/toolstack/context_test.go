package toolstack

import (
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The frames of a context go to the stream and back; what the domain does
// not own is refused with its name.
func TestTranslateContext(t *testing.T) {
	const base = 0x200000
	toPFN := func(m uint64) (uint64, bool) { return m - base, m >= base && m < base+64 }
	toMFN := func(p uint64) (uint64, bool) { return p + base, p < 64 }
	var c xenabi.VCPUGuestContext
	c.Gdt_ents, c.Gdt_frames[0], c.Ctrlreg[3], c.Ctrlreg[1] = 16, base+5, (base+7)<<12, (base+9)<<12
	if err := translateContext(&c, toPFN, toStream); err != nil {
		t.Fatal(err)
	}
	if c.Gdt_frames[0] != 5 || c.Ctrlreg[3] != 7<<12 || c.Ctrlreg[1] != 1|9<<12 {
		t.Fatalf("to the stream: gdt %#x cr3 %#x cr1 %#x", c.Gdt_frames[0], c.Ctrlreg[3], c.Ctrlreg[1])
	}
	if err := translateContext(&c, toMFN, toDomain); err != nil {
		t.Fatal(err)
	}
	if c.Gdt_frames[0] != base+5 || c.Ctrlreg[3] != (base+7)<<12 || c.Ctrlreg[1] != (base+9)<<12 {
		t.Fatalf("back: gdt %#x cr3 %#x cr1 %#x", c.Gdt_frames[0], c.Ctrlreg[3], c.Ctrlreg[1])
	}
	for want, bad := range map[string]func(*xenabi.VCPUGuestContext){
		"GDT frame 0: PFN 0x63":  func(c *xenabi.VCPUGuestContext) { c.Gdt_frames[0] = 99 },
		"CR3 0x63000: not a PFN": func(c *xenabi.VCPUGuestContext) { c.Ctrlreg[3] = 99 << 12 },
		"user L4 0x63000":        func(c *xenabi.VCPUGuestContext) { c.Ctrlreg[1] = 99 << 12 },
		"8193 GDT entries":       func(c *xenabi.VCPUGuestContext) { c.Gdt_ents = 16*512 + 1 },
	} {
		var c xenabi.VCPUGuestContext
		c.Gdt_ents = 16
		bad(&c)
		if err := translateContext(&c, toMFN, toDomain); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
}
