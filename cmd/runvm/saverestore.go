package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// cmdRestore restores a save file into a new domain and serves it like
// `runvm run`.
func cmdRestore(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	paused := fs.Bool("paused", false, "leave the restored domain paused (runvm unpause runs it)")
	name := fs.String("name", "", "name for the restored domain (default: the saved one)")
	runtime := fs.String("runtime-dir", api.RuntimeDir(), "where the control and xenstored sockets go")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "runvm restore: usage: runvm restore [--paused] [--name NAME] FILE")
		return exitUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	slotName := *name
	if slotName == "" {
		slotName = "restored"
	}
	slot, domid, err := runtimeSlot(ctx, *runtime, slotName)
	if err != nil {
		fmt.Fprintf(stderr, "runvm: runtime directory %s: %v\n", *runtime, err)
		return exitError
	}
	defer os.RemoveAll(slot)
	ts := toolstack.New(log)
	ts.SetNextDomid(domid)
	rcfg := toolstack.DomainConfig{Name: slotName, Console: stdout}
	if isTerminal(stderr) {
		rcfg.Progress = (&progressLine{w: stderr, last: -1}).update
	}
	dom, err := ts.Restore(ctx, fs.Arg(0), rcfg)
	if err != nil {
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	defer dom.Destroy()
	fmt.Fprintf(stderr, "runvm: restored %s as domain %d (%s)\n", fs.Arg(0), dom.ID, dom.Name)
	return serveDomain(ctx, ts, dom, slot, dom.Xen.Frames().NrPages>>8, !*paused, log, stderr)
}

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
