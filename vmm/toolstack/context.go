package toolstack

import (
	"fmt"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// direction says which way translateContext maps a context's frames.
type direction int

const (
	toStream direction = iota // machine frames to PFNs (save)
	toDomain                  // PFNs to the new domain's machine frames (restore)
)

// translateContext maps the frames a vcpu_guest_context names (its GDT
// frames, CR3, and a user L4 in CR1) through conv, as libxc does: to the
// stream as write_one_vcpu_basic does (CR1 then carries 1 | pfn << 12),
// back into a domain as update_vcpu_context does. A frame conv does not
// know is an error naming it.
func translateContext(c *xenabi.VCPUGuestContext, conv func(uint64) (uint64, bool), dir direction) error {
	what := map[direction]string{toStream: "MFN", toDomain: "PFN"}[dir]
	if c.Gdt_ents > uint64(len(c.Gdt_frames))*512 {
		return fmt.Errorf("%d GDT entries", c.Gdt_ents)
	}
	for i := uint64(0); i < (c.Gdt_ents+511)/512; i++ {
		f, ok := conv(c.Gdt_frames[i])
		if !ok {
			return fmt.Errorf("GDT frame %d: %s %#x is not the domain's", i, what, c.Gdt_frames[i])
		}
		c.Gdt_frames[i] = f
	}
	f, ok := conv(c.Ctrlreg[3] >> 12)
	if !ok {
		return fmt.Errorf("CR3 %#x: not a %s of the domain", c.Ctrlreg[3], what)
	}
	c.Ctrlreg[3] = f << 12
	if c.Ctrlreg[1] != 0 {
		f, ok := conv(c.Ctrlreg[1] >> 12)
		if !ok {
			return fmt.Errorf("user L4 %#x: not a %s of the domain", c.Ctrlreg[1], what)
		}
		c.Ctrlreg[1] = f << 12
		if dir == toStream {
			c.Ctrlreg[1] |= 1
		}
	}
	return nil
}
