package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// cmdInspect prints a save file's layers and records, in the spirit of
// verify-stream-v2 -v.
func cmdInspect(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "runvm inspect: usage: runvm inspect FILE")
		return exitUsage
	}
	f, err := os.Open(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	defer f.Close()
	if err := inspect(f, stdout); err != nil {
		fmt.Fprintf(stderr, "runvm: %s: %v\n", args[0], err)
		return exitError
	}
	return 0
}

func inspect(f io.Reader, out io.Writer) error {
	cfg, err := stream.ReadXLHeader(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "xl header: config %d bytes\n", len(cfg))
	if err := stream.ReadLibxlHeader(f); err != nil {
		return err
	}
	fmt.Fprintln(out, "libxl stream: version 2")
	r := stream.NewReader(f)
	if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlLibxcContext {
		return fmt.Errorf("no LIBXC_CONTEXT (%v)", err)
	}
	ih, err := r.ReadImageHeader()
	if err != nil {
		return err
	}
	dh, err := r.ReadDomainHeader()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "libxc stream: version %d, domain type %d, Xen %d.%d\n", ih.Version, dh.Type, dh.XenMajor, dh.XenMinor)
	pages, withData := 0, 0
	for {
		rec, err := r.Next()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("  %-22s %8d bytes", stream.RecordName(rec.Type), len(rec.Body))
		switch rec.Type {
		case stream.RecPageData:
			pb, _ := stream.DecodePageData(rec.Body)
			n := 0
			for _, d := range pb.Data {
				if d != nil {
					n++
				}
			}
			pages += len(pb.PFNs)
			withData += n
			line += fmt.Sprintf("  %d pages (%d with data), pfn %#x-%#x", len(pb.PFNs), n, pb.PFNs[0], pb.PFNs[len(pb.PFNs)-1])
		case stream.RecX86PVVCPUBasic:
			ur := xenabi.View[xenabi.CPUUserRegs](rec.Body[8+520:])
			line += fmt.Sprintf("  vcpu %d rip %#x rsp %#x rdx (start_info pfn) %#x", binary.LittleEndian.Uint32(rec.Body), ur.Rip, ur.Rsp, ur.Rdx)
		case stream.RecX86PVInfo:
			line += fmt.Sprintf("  %d-bit, %d levels", rec.Body[0]*8, rec.Body[1])
		}
		fmt.Fprintln(out, line)
		if rec.Type == stream.RecEnd {
			break
		}
	}
	if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlEnd {
		return fmt.Errorf("no libxl END (%v)", err)
	}
	fmt.Fprintf(out, "%d pages, %d with data (%d KiB)\n", pages, withData, withData*4)
	return nil
}
