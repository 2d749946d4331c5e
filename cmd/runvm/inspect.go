package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/toolstack"
)

// cmdInspect prints a save file's layers and records, in the spirit of
// verify-stream-v2 -v. It checks the file with the reader restore uses
// (stream.ReadSave), so it refuses what restore refuses, with one line on
// stderr and exit status 1; the records before the fault are listed.
func cmdInspect(args []string, stdout, stderr io.Writer) int {
	c := newCommand("inspect", "FILE", 1, stdout, stderr)
	if code := c.parse(args); code >= 0 {
		return code
	}
	name := c.fs.Arg(0)
	if hvm, err := toolstack.IsHVMSave(name); err == nil && hvm {
		return c.fail(fmt.Errorf("%s: an HVM or PVH save: runvm inspect reads PV save files only (runvm restore takes this one; Xen's verify-stream-v2 lists its records)", name))
	}
	f, err := os.Open(name)
	if err != nil {
		return c.fail(err)
	}
	defer f.Close()
	if err := inspect(bufio.NewReaderSize(f, 1<<20), stdout); err != nil {
		return c.fail(fmt.Errorf("%s: %w", name, err))
	}
	return 0
}

// inspect lists a save file as stream.ReadSave checks it.
func inspect(f io.Reader, out io.Writer) error {
	opts := &stream.ReadOptions{
		Headers: func(s *stream.Save) error {
			fmt.Fprintf(out, "xl header: config %d bytes\n", len(s.XL.Config))
			fmt.Fprintf(out, "libxl stream: version %d\n", stream.LibxlVersion)
			fmt.Fprintf(out, "libxc stream: version %d, domain type %d, Xen %d.%d\n",
				s.Image.Version, s.Domain.Type, s.Domain.XenMajor, s.Domain.XenMinor)
			return nil
		},
		Record: func(_ *stream.Save, r stream.RecordInfo) error {
			if r.Libxl {
				return nil
			}
			line := fmt.Sprintf("  %-22s %8d bytes", r.Name(), r.Length)
			switch d := r.Decoded.(type) {
			case stream.PageBatch:
				n := 0
				for _, p := range d.Data {
					if p != nil {
						n++
					}
				}
				if len(d.PFNs) > 0 {
					line += fmt.Sprintf("  %d pages (%d with data), pfn %#x-%#x", len(d.PFNs), n, d.PFNs[0], d.PFNs[len(d.PFNs)-1])
				}
				line += pageTypes(d)
			case *stream.VCPUBasic:
				ur := &d.Context.User_regs
				line += fmt.Sprintf("  vcpu %d rip %#x rsp %#x rdx (start_info pfn) %#x", d.ID, ur.Rip, ur.Rsp, ur.Rdx)
			case stream.PVInfo:
				line += fmt.Sprintf("  %d-bit, %d levels", d.GuestWidth*8, d.PTLevels)
			}
			fmt.Fprintln(out, line)
			return nil
		},
	}
	s, err := stream.ReadSave(f, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d pages, %d with data (%d KiB)\n", s.Pages, s.PagesWithData, s.PagesWithData*4)
	return nil
}

// pageTypes lists a batch's page-table pages by type, " L4+pin 0x5" for
// each, as XEN_DOMCTL_PFINFO names them (L1TAB to L4TAB, LPINTAB); normal
// and allocate-only pages are not listed.
func pageTypes(b stream.PageBatch) string {
	out := ""
	for i, t := range b.Types {
		if l := t & 7; l >= stream.PageL1 && l <= stream.PageL4 && t < stream.PageBroken {
			out += fmt.Sprintf(" L%d", l)
			if t&stream.PagePinned != 0 {
				out += "+pin"
			}
			out += fmt.Sprintf(" %#x", b.PFNs[i])
		}
	}
	if out != "" {
		out = ";" + out
	}
	return out
}
