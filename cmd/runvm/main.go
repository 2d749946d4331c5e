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
//	130 interrupted (SIGINT/SIGTERM)
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
	"strconv"
	"strings"
	"syscall"

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
	exitSignal    = 130
)

const usage = `usage: runvm <command> [flags]

commands:
  run [--mem SIZE] [--cmdline STR] [--trace] [--clobber-args] [GUEST.elf]
        boot a Xen PV guest (default: the embedded guest stub) and stream
        its console to stdout

exit status of run: 0 poweroff, 3 reboot, 4 suspend, 5 crash, 6 watchdog,
7 soft_reset, 8 crashed by the VMM (report on stderr), 1 runvm error,
2 usage, 130 interrupted
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

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mem := fs.String("mem", "32M", "guest memory `size` (a multiple of 2M, at most 2G)")
	cmdline := fs.String("cmdline", "", "guest command line (the stub reads test=NAME)")
	trace := fs.Bool("trace", false, "log every hypercall (name, arguments, result) to stderr")
	clobber := fs.Bool("clobber-args", false, "poison hypercall argument registers after each call, as a debug Xen does")
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
	cfg := toolstack.DomainConfig{
		Image: image, MemSize: size, Cmdline: *cmdline, Console: stdout, ClobberArgs: *clobber,
	}
	if *trace {
		cfg.Trace = slog.New(slog.NewTextHandler(stderr, nil))
	}
	ts := toolstack.New(log)
	dom, err := ts.Create(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	defer dom.Destroy()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dom.Unpause()
	exit, err := dom.Wait(ctx)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(stderr, "runvm: interrupted; domain destroyed")
			return exitSignal
		}
		fmt.Fprintf(stderr, "runvm: %v\n", err)
		return exitError
	}
	return report(exit, stderr)
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
