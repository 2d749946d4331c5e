// Command runvm runs Xen PV guests on KVM under xenresume's emulated Xen
// and toolstack.
//
//	runvm run [--mem SIZE] [--cmdline STR] [--trace] [GUEST.elf]
//
// boots GUEST.elf (the embedded guest stub when none is named), streams its
// console to stdout and exits with a status that says how the domain ended:
//
//	0  poweroff            5  crash (SHUTDOWN_crash, e.g. a failed test)
//	1  runvm error         6  watchdog
//	2  usage               7  soft_reset
//	3  reboot              8  the VMM crashed the domain (triple fault,
//	4  suspend                bad exit); the report goes to stderr
//	9  destroyed while running (runvm destroy)
//	130 interrupted (SIGINT/SIGTERM)
//
// While it runs, the domain is controlled from other terminals:
//
//	runvm list
//	runvm suspend DOM | resume [--fast] DOM | pause DOM | unpause DOM
//	runvm shutdown DOM | reboot DOM | destroy DOM
//	runvm xenstore-path DOM     prints XENSTORED_PATH=... for xenstore-utils
//
// DOM is a domid or a name. Domains are found under the runtime directory
// (--runtime-dir, $XENRESUME_RUNTIME_DIR, else $XDG_RUNTIME_DIR/xenresume or
// /run/xenresume), where each serves a JSON-over-HTTP API (package api).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/xenresume/xenresume/vmm/api"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Exit statuses.
const (
	exitPoweroff  = 0
	exitError     = 1
	exitUsage     = 2
	exitReboot    = 3
	exitSuspend   = 4
	exitCrash     = 5
	exitWatchdog  = 6
	exitSoftReset = 7
	exitVMMCrash  = 8
	exitDestroyed = 9
	exitSignal    = 130
)

const usage = `usage: runvm <command> [flags]

commands:
  run [--mem SIZE] [--cmdline STR] [--name NAME] [--trace] [--clobber-args] [GUEST.elf]
        boot a Xen PV guest (default: the embedded guest stub), stream its
        console to stdout and serve its control API and xenstored
  list                          the running domains
  suspend [--timeout DUR] DOM   Xen's suspend protocol (control/shutdown)
  resume [--fast] DOM           resume a suspended domain in the same domain:
                                --fast is cooperative (the guest sees 1),
                                otherwise it believes it is in a new domain (0)
  pause DOM | unpause DOM
  shutdown DOM | reboot DOM     ask the guest (control/shutdown)
  destroy DOM
  xenstore-path DOM             print XENSTORED_PATH=... for xenstore-utils
  save [--checkpoint] DOM FILE  save to an xl save file (the domain is gone
                                afterwards, as with xl save, unless --checkpoint)
  restore [--paused] [--name NAME] FILE
                                restore into a new domain, console attached
  inspect FILE                  list a save file's records

every command but run takes --runtime-dir DIR (default: $XENRESUME_RUNTIME_DIR,
else $XDG_RUNTIME_DIR/xenresume, else /run/xenresume); DOM is a domid or name

exit status of run: 0 poweroff, 3 reboot, 4 suspend (destroyed while
suspended), 5 crash, 6 watchdog, 7 soft_reset, 8 crashed by the VMM (report
on stderr), 9 destroyed while running, 1 runvm error, 2 usage, 130 interrupted
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "list", "suspend", "resume", "pause", "unpause", "shutdown", "reboot", "destroy", "xenstore-path", "save":
		return cmdControl(args[0], args[1:], stdout, stderr)
	case "restore":
		return cmdRestore(args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "runvm: unknown command %q\n%s", args[0], usage)
	return exitUsage
}

// parseSize reads sizes like 64M, 1G, 65536K or a byte count.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	num := strings.TrimSuffix(strings.ToUpper(s), "B")
	switch {
	case strings.HasSuffix(num, "K"):
		mult, num = 1<<10, num[:len(num)-1]
	case strings.HasSuffix(num, "M"):
		mult, num = 1<<20, num[:len(num)-1]
	case strings.HasSuffix(num, "G"):
		mult, num = 1<<30, num[:len(num)-1]
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n == 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("bad size %q: want a number with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

func readImage(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > builder.MaxImageSize {
		return nil, fmt.Errorf("%s: %d bytes is larger than the %d-byte image limit", path, st.Size(), builder.MaxImageSize)
	}
	return io.ReadAll(io.LimitReader(f, builder.MaxImageSize))
}

// syncWriter serializes writes from the vCPU threads, the servers and the
// main goroutine.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mem := fs.String("mem", "32M", "guest memory `size` (a multiple of 2M, at most 2G)")
	cmdline := fs.String("cmdline", "", "guest command line (the stub reads test=NAME)")
	trace := fs.Bool("trace", false, "log every hypercall (name, arguments, result) to stderr")
	clobber := fs.Bool("clobber-args", false, "poison hypercall argument registers after each call, as a debug Xen does")
	name := fs.String("name", "", "domain name (default domain-<domid>)")
	runtime := fs.String("runtime-dir", api.RuntimeDir(), "where the control and xenstored sockets go")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "runvm run: at most one guest image, got %d\n", fs.NArg())
		return exitUsage
	}
	size, err := parseSize(*mem)
	if err != nil {
		fmt.Fprintf(stderr, "runvm run: --mem: %v\n", err)
		return exitUsage
	}
	var image []byte
	if fs.NArg() == 1 {
		if image, err = readImage(fs.Arg(0)); err != nil {
			fmt.Fprintf(stderr, "runvm: %v\n", err)
			return exitError
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	slot, domid, err := runtimeSlot(ctx, *runtime, *name)
	if err != nil {
		fmt.Fprintf(stderr, "runvm: runtime directory %s: %v\n", *runtime, err)
		return exitError
	}
	defer os.RemoveAll(slot)
	cfg := toolstack.DomainConfig{
		Name: filepath.Base(slot), Image: image, MemSize: size, Cmdline: *cmdline, Console: stdout, ClobberArgs: *clobber,
	}
	if fs.NArg() == 1 {
		cfg.ImageName, _ = filepath.Abs(fs.Arg(0))
	}
	if *trace {
		cfg.Trace = slog.New(slog.NewTextHandler(stderr, nil))
	}
	ts := toolstack.New(log)
	ts.SetNextDomid(domid)
	dom, err := ts.Create(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	defer dom.Destroy()

	return serveDomain(ctx, ts, dom, slot, size>>20, true, log, stderr)
}

// serveDomain serves a created (paused) domain's control API and
// xenstored from its runtime slot, unpauses it if asked, and waits until
// it ends, returning runvm's exit status. A suspended domain
// waits for `runvm resume` or `runvm destroy`.
func serveDomain(ctx context.Context, ts *toolstack.Toolstack, dom *toolstack.Domain, slot string, memMiB uint64,
	unpause bool, log *slog.Logger, stderr io.Writer) int {
	xsPath := filepath.Join(slot, "xenstored.sock")
	ctl := newControlled(dom, memMiB, xsPath)
	if isTerminal(stderr) {
		dom.SetProgress((&progressLine{w: stderr, last: -1}).update)
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	var serving sync.WaitGroup
	// Runs first among the deferred calls: the servers are gone before
	// the domain and its runtime slot are.
	defer func() {
		stopServing()
		serving.Wait()
	}()
	serve := func(what string, fn func() error) {
		serving.Add(1)
		go func() {
			defer serving.Done()
			if err := fn(); err != nil && serveCtx.Err() == nil {
				log.Warn(what, "err", err)
			}
		}()
	}
	serve("xenstored socket", func() error { return ts.Store().ServeUnix(serveCtx, xsPath) })
	serve("control API", func() error { return api.Serve(serveCtx, filepath.Join(slot, "api.sock"), ctl) })

	if unpause {
		dom.Unpause()
	}
	for {
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-ctl.destroyed:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		exit, err := dom.Wait(waitCtx)
		cancel()
		select {
		case <-ctl.destroyed:
			fmt.Fprintln(stderr, "runvm: domain destroyed")
			if exit.State == xen.Shutdown && exit.Reason == xenabi.ShutdownSuspend {
				return exitSuspend
			}
			return exitDestroyed
		default:
		}
		if err != nil {
			if errors.Is(err, context.Canceled) {
				fmt.Fprintln(stderr, "runvm: interrupted; domain destroyed")
				return exitSignal
			}
			fmt.Fprintf(stderr, "runvm: %v\n", err)
			return exitError
		}
		if exit.State != xen.Shutdown || exit.Reason != xenabi.ShutdownSuspend {
			return report(exit, stderr)
		}
		fmt.Fprintf(stderr, "runvm: domain %d suspended (start_info MFN in rdx: %#x); `runvm resume [--fast] %s` or `runvm destroy %s`\n",
			dom.ID, exit.SuspendRDX, dom.Name, dom.Name)
		select {
		case <-ctl.resumed:
		case <-ctl.destroyed:
			fmt.Fprintln(stderr, "runvm: domain destroyed")
			return exitSuspend
		case <-ctx.Done():
			fmt.Fprintln(stderr, "runvm: interrupted; domain destroyed")
			return exitSignal
		}
	}
}

// cmdControl runs the commands that talk to a running domain's API.
func cmdControl(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	runtime := fs.String("runtime-dir", api.RuntimeDir(), "where running domains are found")
	fast := fs.Bool("fast", false, "resume: cooperative (the guest's suspend returns 1)")
	checkpoint := fs.Bool("checkpoint", false, "save: keep the domain running (it sees its suspend return 1)")
	timeout := fs.Duration("timeout", 60*time.Second, "suspend: how long the guest has to acknowledge, then to suspend")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cmd == "list" {
		doms, err := api.Running(ctx, *runtime)
		if err != nil {
			fmt.Fprintf(stderr, "runvm: %v\n", err)
			return exitError
		}
		fmt.Fprintf(stdout, "%-6s %-20s %-10s %s\n", "DOMID", "NAME", "STATE", "MEM(MiB)")
		for _, d := range doms {
			fmt.Fprintf(stdout, "%-6d %-20s %-10s %d\n", d.Domid, d.Name, d.State, d.MemMiB)
		}
		return 0
	}
	wantArgs := 1
	if cmd == "save" {
		wantArgs = 2
	}
	if fs.NArg() != wantArgs {
		if cmd == "save" {
			fmt.Fprintln(stderr, "runvm save: usage: runvm save [--checkpoint] DOM FILE")
		} else {
			fmt.Fprintf(stderr, "runvm %s: name one domain (domid or name)\n", cmd)
		}
		return exitUsage
	}
	client, info, err := api.Find(ctx, *runtime, fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	if cmd == "xenstore-path" {
		fmt.Fprintf(stdout, "XENSTORED_PATH=%s\n", info.XenstoredPath)
		return 0
	}
	action := api.Action{Action: cmd, Fast: *fast}
	if cmd == "suspend" {
		action.TimeoutMS = int(timeout.Milliseconds())
	}
	if cmd == "save" {
		path, err := filepath.Abs(fs.Arg(1))
		if err != nil {
			fmt.Fprintf(stderr, "runvm: %v\n", err)
			return exitError
		}
		action.Path, action.Checkpoint = path, *checkpoint
	}
	info, err = client.Do(ctx, action)
	if err != nil {
		fmt.Fprintf(stderr, "runvm %s %s: %v\n", cmd, fs.Arg(0), err)
		return exitError
	}
	fmt.Fprintf(stdout, "domain %d (%s): %s\n", info.Domid, info.Name, info.State)
	return 0
}

func report(e xen.Exit, stderr io.Writer) int {
	if e.State == xen.Crashed {
		fmt.Fprint(stderr, e.Crash.Report())
		return exitVMMCrash
	}
	switch e.Reason {
	case xenabi.ShutdownPoweroff:
		return exitPoweroff
	case xenabi.ShutdownReboot:
		fmt.Fprintln(stderr, "runvm: domain rebooted")
		return exitReboot
	case xenabi.ShutdownSuspend:
		fmt.Fprintf(stderr, "runvm: domain suspended (start_info MFN in rdx: %#x); nothing to resume it\n", e.SuspendRDX)
		return exitSuspend
	case xenabi.ShutdownCrash:
		fmt.Fprintln(stderr, "runvm: domain crashed (SHUTDOWN_crash)")
		return exitCrash
	case xenabi.ShutdownWatchdog:
		fmt.Fprintln(stderr, "runvm: domain shut down by its watchdog")
		return exitWatchdog
	case xenabi.ShutdownSoftReset:
		fmt.Fprintln(stderr, "runvm: domain asked for a soft reset")
		return exitSoftReset
	}
	fmt.Fprintf(stderr, "runvm: domain shut down with unknown reason %d\n", e.Reason)
	return exitError
}
