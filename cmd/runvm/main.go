// Command runvm runs Xen PV guests on KVM under xenresume's emulated Xen
// and toolstack.
//
//	runvm run [--mem SIZE] [--cmdline STR] [--name NAME] [--disk SPEC ...] [--trace] [GUEST.elf]
//	runvm restore [--paused] [--name NAME] FILE
//	runvm migrate-receive [--name NAME] --listen ADDR:PORT|-
//
// boot a guest (the embedded guest stub when none is named), restore a
// saved one or receive a migrating one, stream its console to stdout, and follow the domain to its
// end, exiting with a status that says how it ended:
//
//	0  poweroff            5  crash (SHUTDOWN_crash, e.g. a failed test)
//	1  runvm error         6  watchdog
//	2  usage               7  soft_reset
//	3  reboot              8  the VMM crashed the domain (triple fault,
//	4  saved, migrated away,  bad exit); the report goes to stderr
//	   or destroyed while  9  destroyed while running (runvm destroy)
//	   suspended
//	130 interrupted (SIGINT/SIGTERM)
//
// While it runs, the domain is controlled from other terminals:
//
//	runvm list [-l]
//	runvm suspend DOM | resume [--fast] DOM | pause DOM | unpause DOM
//	runvm shutdown DOM | reboot DOM | destroy DOM
//	runvm save [--checkpoint] DOM FILE
//	runvm migrate [--live=false] DOM HOST:PORT
//	runvm remus [--interval 200ms] DOM HOST:PORT
//	runvm xenstore-path DOM     prints export XENSTORED_PATH=... for xenstore-utils
//
// DOM is a domid or a name. Domains are found under the runtime directory
// (--runtime-dir, $XENRESUME_RUNTIME_DIR, else $XDG_RUNTIME_DIR/xenresume or
// /run/xenresume), where each owner holds a slot (package rundir) and
// serves a JSON-over-HTTP API (package api).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/builder"
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

const usage = `usage: runvm <command> [flags] [args]

commands:
  run [GUEST.elf]          boot a Xen PV guest (default: the embedded stub), stream
                           its console to stdout, serve its control API and xenstored
  create FILE.cfg [KEY=VALUE ...]
                           boot the guest an xl domain configuration describes (as
                           xl create -F -c) and serve it likewise; -n prints it only
  restore FILE             restore a save file into a new domain and serve it likewise
  list                     the domains under the runtime directory
  suspend DOM              Xen's suspend protocol (control/shutdown); an HVM guest
                           without PV drivers is suspended remotely, as libxl does
  resume DOM               resume a suspended domain in the same domain: --fast is
                           cooperative (the guest sees 1), otherwise it believes it
                           is in a new domain (0)
  pause DOM | unpause DOM
  shutdown DOM | reboot DOM   ask the guest (control/shutdown)
  destroy DOM
  save DOM FILE            save to an xl save file (the domain is gone afterwards, as
                           with xl save, unless --checkpoint)
  migrate DOM HOST:PORT    live-migrate to a runvm migrate-receive (xl's protocol); the
                           domain is gone here once the target runs it, and runs on
                           here if anything fails before that (--live=false: suspend
                           first; HVM and PVH domains: --live=false only)
  remus [--interval 200ms] DOM HOST:PORT
                           replicate to a runvm migrate-receive --remus: a checkpoint
                           every interval (the guest sees 1 each time); the receiver
                           fails over to the last complete one when the stream breaks
  migrate-receive --listen ADDR:PORT|-
                           receive one migration into a new domain and serve it like
                           restore (- : the migration on stdin/stdout, as over ssh)
  wait DOM STATE           wait until the domain is in STATE (running, suspended, ...)
  vcpu-set DOM N           make N vCPUs available to the guest (cpu/N/availability,
                           as xl vcpu-set; up to the domain's maxvcpus)
  trigger DOM s3resume     wake an HVM guest from ACPI S3 through the firmware's
                           S3 path (xl trigger DOM s3resume)
  trigger DOM power|sleep  press an HVM guest's ACPI power or sleep button
                           (PM1a_STS and the SCI, as xl trigger DOM power|sleep)
  xenstore-path DOM        print 'export XENSTORED_PATH=...' for xenstore-utils
  inspect FILE             list a save file's records
  timeline [-o OUT.svg] [--op NAME] [-n N] FILE
                           draw one cycle of a --trace-file timeline as SVG

DOM is a domid or a name. 'runvm COMMAND --help' lists a command's flags.

exit status of run, create, restore and migrate-receive: 0 poweroff, 3 reboot,
4 saved, migrated away or destroyed while suspended, 5 crash, 6 watchdog, 7 soft_reset, 8 crashed by the
VMM (report on stderr), 9 destroyed while running, 1 runvm error, 2 usage,
130 interrupted
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
	case "create":
		return cmdCreate(args[1:], stdout, stderr)
	case "restore":
		return cmdRestore(args[1:], stdout, stderr)
	case "migrate-receive":
		return cmdMigrateReceive(args[1:], stdout, stderr)
	case "list", "suspend", "resume", "pause", "unpause", "shutdown", "reboot", "destroy", "xenstore-path", "save", "wait", "migrate", "remus", "vcpu-set", "trigger":
		return cmdControl(args[0], args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	case "timeline":
		return cmdTimeline(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "runvm: unknown command %q (runvm --help lists them)\n", args[0])
	return exitUsage
}

// command is one subcommand's flags and how it is called.
type command struct {
	name   string
	args   string // the positional arguments, for its usage line
	nargs  int    // how many it takes; -1 for 0 or 1
	fs     *flag.FlagSet
	stdout io.Writer
	stderr io.Writer
}

func newCommand(name, args string, nargs int, stdout, stderr io.Writer) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are ours to print, in one line
	fs.Usage = func() {}
	return &command{name: name, args: args, nargs: nargs, fs: fs, stdout: stdout, stderr: stderr}
}

// runtimeFlag adds --runtime-dir.
func (c *command) runtimeFlag() *string {
	return c.fs.String("runtime-dir", api.RuntimeDir(), "the runtime `directory` where domains are found")
}

// parse parses args. It returns -1 to go on, or the exit status: 0 after
// --help (the command's own flags, on stdout), exitUsage after one line
// on stderr for anything else wrong.
func (c *command) parse(args []string) int {
	err := c.fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(c.stdout, "%s\n\nflags:\n", strings.TrimSpace(fmt.Sprintf("usage: runvm %s [flags] %s", c.name, c.args)))
		c.fs.SetOutput(c.stdout)
		c.fs.PrintDefaults()
		return 0
	}
	if err == nil {
		switch n := c.fs.NArg(); {
		case c.nargs >= 0 && n != c.nargs:
			err = fmt.Errorf("want %s, got %d argument(s)", c.args, n)
		case c.nargs < 0 && n > 1:
			err = fmt.Errorf("at most one %s, got %d", strings.Trim(c.args, "[]"), n)
		}
	}
	if err != nil {
		return c.usageError(err)
	}
	return -1
}

func (c *command) usageError(err error) int {
	fmt.Fprintf(c.stderr, "runvm %s: %v (usage: runvm %s [flags] %s; --help lists the flags)\n", c.name, err, c.name, c.args)
	return exitUsage
}

// fail prints one line and returns exitError.
func (c *command) fail(err error) int {
	fmt.Fprintf(c.stderr, "runvm %s: %v\n", c.name, err)
	return exitError
}

// sizeFlag is a memory size: a multiple of 2 MiB up to 2 GiB.
type sizeFlag uint64

func (s *sizeFlag) String() string { return fmt.Sprintf("%dM", uint64(*s)>>20) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	if n%(2<<20) != 0 || n > 2<<30 {
		return errors.New("want a multiple of 2M, at most 2G")
	}
	*s = sizeFlag(n)
	return nil
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
