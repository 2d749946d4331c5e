package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/toolstack"
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
