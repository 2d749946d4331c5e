package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/rundir"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// cmdRun boots a guest and owns its domain to the end.
func cmdRun(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	c := newCommand("run", "[GUEST.elf]", -1, stdout, stderr)
	mem := sizeFlag(32 << 20)
	c.fs.Var(&mem, "mem", "guest memory `size` (a multiple of 2M, at most 2G)")
	cmdline := c.fs.String("cmdline", "", "guest command line (the stub reads test=NAME)")
	trace := c.fs.Bool("trace", false, "log every hypercall (name, arguments, result) to stderr")
	clobber := c.fs.Bool("clobber-args", false, "poison hypercall argument registers after each call, as a debug Xen does")
	name := c.fs.String("name", "", "domain `name` (default domain-<domid>)")
	vcpus := c.fs.Int("vcpus", 1, fmt.Sprintf("number of vCPUs, `N` from 1 to %d (vCPU 0 boots; the guest brings the others up)", xen.MaxPVVCPUs))
	var disks diskFlag
	c.fs.Var(&disks, "disk", "attach a disk: an xl disk `SPEC` as in disk = [...] (repeatable; raw images)")
	runtime := c.runtimeFlag()
	of := c.ownerFlags()
	if code := c.parse(args); code >= 0 {
		return code
	}
	if *vcpus < 1 || *vcpus > xen.MaxPVVCPUs {
		return c.usageError(fmt.Errorf("--vcpus %d: want 1 to %d", *vcpus, xen.MaxPVVCPUs))
	}
	if *name != "" {
		if err := toolstack.ValidateName(*name); err != nil {
			return c.usageError(err)
		}
	}
	cfg := toolstack.DomainConfig{MemSize: uint64(mem), Cmdline: *cmdline, Console: stdout, ClobberArgs: *clobber, VCPUs: *vcpus}
	var err error
	if cfg.Disks, err = (&xlcfg.Config{Disks: disks}).ParseDisks(); err != nil {
		return c.usageError(fmt.Errorf("--disk: %w", err))
	}
	if c.fs.NArg() == 1 {
		if cfg.Image, err = readImage(c.fs.Arg(0)); err != nil {
			return c.fail(err)
		}
		cfg.ImageName, _ = filepath.Abs(c.fs.Arg(0))
	}
	if *trace {
		cfg.Trace = slog.New(slog.NewTextHandler(stderr, nil))
	}
	return own(c, *runtime, *name, true, of, func(ts *toolstack.Toolstack, slot *rundir.Slot) (*toolstack.Domain, error) {
		cfg.Name = slot.Name
		return ts.Create(cfg)
	})
}

// diskFlag collects --disk specifications, in order.
type diskFlag []string

func (f *diskFlag) String() string { return strings.Join(*f, " ") }

func (f *diskFlag) Set(spec string) error {
	*f = append(*f, spec)
	return nil
}

// cmdRestore restores a save file into a new domain and owns it like run.
func cmdRestore(args []string, stdout, stderr io.Writer) int {
	stdout, stderr = &syncWriter{w: stdout}, &syncWriter{w: stderr}
	c := newCommand("restore", "FILE", 1, stdout, stderr)
	paused := c.fs.Bool("paused", false, "leave the restored domain paused (runvm unpause runs it)")
	name := c.fs.String("name", "", "`name` for the restored domain (default: the saved one)")
	runtime := c.runtimeFlag()
	of := c.ownerFlags()
	if code := c.parse(args); code >= 0 {
		return code
	}
	path := c.fs.Arg(0)
	if *name == "" {
		saved, err := toolstack.SavedName(path)
		if err != nil {
			return c.fail(err)
		}
		*name = saved
	}
	if err := toolstack.ValidateName(*name); err != nil {
		return c.fail(fmt.Errorf("%w (use --name)", err))
	}
	if isHVM, err := toolstack.IsHVMSave(path); err != nil {
		return c.fail(err)
	} else if isHVM {
		return restoreHVM(c, *runtime, *name, path, *paused, of)
	}
	return own(c, *runtime, *name, !*paused, of, func(ts *toolstack.Toolstack, slot *rundir.Slot) (*toolstack.Domain, error) {
		cfg := toolstack.DomainConfig{Name: slot.Name, Console: stdout}
		if isTerminal(stderr) {
			cfg.Progress = (&progressLine{w: stderr, last: -1}).update
		}
		d, err := ts.Restore(context.Background(), path, cfg)
		if err == nil {
			fmt.Fprintf(stderr, "runvm: restored %s as domain %d (%s)\n", path, d.ID, d.Name)
		}
		return d, err
	})
}

// own claims a runtime slot for name, creates the domain with create,
// serves its control API and xenstored from the slot (failing to create
// either socket is fatal), runs the domain if asked, and follows it to its
// end: the exit status says how it ended (see the table in main.go). With
// --gdb it serves gdb too, and with --gdb-wait leaves the guest to gdb's
// continue.
func own(c *command, runtime, name string, unpause bool, of *ownerFlags,
	create func(*toolstack.Toolstack, *rundir.Slot) (*toolstack.Domain, error)) int {
	dbg := of.gdb
	if err := dbg.check(); err != nil {
		return c.usageError(err)
	}
	stderr := c.stderr
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	o, err := claimOwnerSlot(runtime, name)
	if err != nil {
		return c.fail(err)
	}
	defer o.close()
	slot := o.slot

	ts := toolstack.New(log)
	ts.SetNextDomid(slot.Domid)
	ts.Store().SetLimits(of.quotas.apply(ts.Store().Limits()))
	var tl *timeline.Recorder
	if of.traceFile != "" {
		tl = timeline.New(int(slot.Domid), fmt.Sprintf("domain %d (%s)", slot.Domid, slot.Name))
		ts.Store().SetTimeline(tl)
		ts.SetTimeline(tl) // restores, and the domain from its creation
		defer func() {     // last: after the domain is gone
			if err := writeTimeline(of.traceFile, tl); err != nil {
				fmt.Fprintf(stderr, "runvm %s: --trace-file: %v\n", c.name, err)
			}
		}()
	}
	dom, err := create(ts, slot)
	if err != nil {
		return c.fail(err)
	}
	defer dom.Destroy() // a no-op (WrongStateError) when it already is
	if isTerminal(stderr) {
		dom.SetProgress((&progressLine{w: stderr, last: -1}).update)
	}

	srv := startServers(ctx, log)
	defer srv.stop() // first of the deferred calls: the servers go first
	srv.owned(o, ts.Store(), &controlled{d: dom, store: ts.Store(), xsPath: o.xsPath, migrations: migrations{stderr: stderr}})

	if err := dbg.serve(srv.ctx, srv.serve, dom, log, stderr); err != nil {
		return c.fail(err)
	}
	if unpause && !dbg.waits() {
		start := dom.Unpause
		if of.start != nil {
			start = func() error { return of.start(dom) }
		}
		if err := start(); err != nil {
			return c.fail(err)
		}
	}
	return follow(ctx, dom, stderr)
}

// follow waits until the domain ends and returns runvm's exit status for
// how it ended. A suspended domain has not ended: it waits for `runvm
// resume` or `runvm destroy`, and says so. An interrupt destroys it.
func follow(ctx context.Context, dom *toolstack.Domain, stderr io.Writer) int {
	announced := false
	for {
		changed := dom.Changed()
		st := dom.Status()
		if st.State.Ended() {
			return exitStatus(st, stderr)
		}
		if st.State == toolstack.Suspended && !announced {
			fmt.Fprintf(stderr, "runvm: domain %d (%s) suspended (start_info MFN in rdx: %#x); `runvm resume [--fast] %s` or `runvm destroy %s`\n",
				dom.ID, dom.Name, st.Exit.SuspendRDX, dom.Name, dom.Name)
		}
		announced = st.State == toolstack.Suspended
		select {
		case <-changed:
		case <-ctx.Done():
			dom.Destroy()
			fmt.Fprintf(stderr, "runvm: interrupted; domain %d (%s) destroyed while %s\n", dom.ID, dom.Name, st.State)
			return exitSignal
		}
	}
}

// exitStatus reports how the domain ended, on stderr, and returns the
// matching exit status.
func exitStatus(st toolstack.Status, stderr io.Writer) int {
	state := st.State
	if state == toolstack.Destroyed {
		switch {
		case st.Saved:
			fmt.Fprintln(stderr, "runvm: domain saved; it is gone, as after xl save")
			return exitSuspend
		case st.Migrated:
			fmt.Fprintln(stderr, "runvm: domain migrated; it runs on the target, and is gone here")
			return exitSuspend
		case st.DestroyedFrom == toolstack.Suspended:
			fmt.Fprintln(stderr, "runvm: domain destroyed while suspended")
			return exitSuspend
		case st.DestroyedFrom == toolstack.Shutdown || st.DestroyedFrom == toolstack.Crashed:
			state = st.DestroyedFrom // it had ended already
		default:
			fmt.Fprintf(stderr, "runvm: domain destroyed while %s\n", st.DestroyedFrom)
			return exitDestroyed
		}
	}
	if state == toolstack.Crashed {
		if st.Exit.Crash != nil {
			fmt.Fprint(stderr, st.Exit.Crash.Report())
		}
		return exitVMMCrash
	}
	if e, ok := shutdownExits[st.Exit.Reason]; ok {
		if e.msg != "" {
			fmt.Fprintln(stderr, "runvm: "+e.msg)
		}
		return e.code
	}
	fmt.Fprintf(stderr, "runvm: domain shut down with unknown reason %d\n", st.Exit.Reason)
	return exitError
}

// shutdownExits maps a guest's SHUTDOWN_* reason to runvm's exit status and
// what it says on stderr.
var shutdownExits = map[uint32]struct {
	code int
	msg  string
}{
	xenabi.ShutdownPoweroff:  {exitPoweroff, ""},
	xenabi.ShutdownReboot:    {exitReboot, "domain rebooted"},
	xenabi.ShutdownCrash:     {exitCrash, "domain crashed (SHUTDOWN_crash)"},
	xenabi.ShutdownWatchdog:  {exitWatchdog, "domain shut down by its watchdog"},
	xenabi.ShutdownSoftReset: {exitSoftReset, "domain asked for a soft reset"},
}

// wrongState maps the toolstack's refusals to the API's 409.
func wrongState(err error) error {
	if errors.Is(err, toolstack.ErrWrongState) {
		return api.Conflict(err)
	}
	return err
}

// ownerFlags are the flags of the commands that own a domain (run, create,
// restore): xenstored's quotas, gdb, and the timeline file.
type ownerFlags struct {
	quotas    *xenstoreQuotas
	gdb       *gdbOptions
	traceFile string
	// start, when set, runs the new domain instead of Unpause (an
	// incoming migration's handshake).
	start func(*toolstack.Domain) error
	// startHVM is start for an HVM or PVH domain.
	startHVM func(*toolstack.HVMDomain) error
}

func (c *command) ownerFlags() *ownerFlags {
	of := &ownerFlags{quotas: c.quotaFlag(), gdb: c.gdbFlags()}
	c.fs.StringVar(&of.traceFile, "trace-file", "", "write a timeline of the domain to `FILE` when it ends: "+
		"Chrome trace-event JSON (Perfetto, chrome://tracing; runvm timeline draws it)")
	return of
}

// writeTimeline writes tl to path, through a temporary file renamed over
// it, so a failure leaves no half file.
func writeTimeline(path string, tl *timeline.Recorder) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tl.WriteJSON(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// xenstoreQuotas are the --xenstore-quota settings, in order.
type xenstoreQuotas struct {
	set []struct {
		kind xenstore.QuotaKind
		n    int
	}
}

// quotaFlag adds --xenstore-quota KIND=N (repeatable).
func (c *command) quotaFlag() *xenstoreQuotas {
	q := &xenstoreQuotas{}
	c.fs.Func("xenstore-quota", "set one of xenstored's limits, `KIND=N` (repeatable; 0 is no limit): nodes, node-size, "+
		"node-permissions, path-max, watches, transactions, transaction-nodes, outstanding, watch-events, output-bytes "+
		"(for the guest's connection, and dom0's where dom0 is held to it), connections, client-connections "+
		"(the socket); defaults are Xen's (docs/XENSTORE.md)", func(v string) error {
		kind, num, ok := strings.Cut(v, "=")
		var k xenstore.QuotaKind
		if !ok {
			return errors.New("want KIND=N")
		}
		if err := k.UnmarshalText([]byte(kind)); err != nil {
			return err
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a count", num)
		}
		q.set = append(q.set, struct {
			kind xenstore.QuotaKind
			n    int
		}{k, n})
		return nil
	})
	return q
}

// apply returns l with the settings made.
func (q *xenstoreQuotas) apply(l xenstore.Limits) xenstore.Limits {
	for _, s := range q.set {
		switch s.kind {
		case xenstore.QuotaConnections:
			l.MaxConnections = s.n
		case xenstore.QuotaClientConnections:
			l.MaxClientConnections = s.n
		default:
			l.Guest.Set(s.kind, s.n)
			if l.Privileged.Get(s.kind) != 0 {
				l.Privileged.Set(s.kind, s.n)
			}
		}
	}
	return l
}
