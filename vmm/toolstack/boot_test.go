package toolstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// syncBuffer is a console that tests can read while the guest writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type result struct {
	console string
	exit    xen.Exit
	dom     *Domain
}

// create builds (paused) a domain running the stub with cmdline and a
// console tests can read; it is destroyed at cleanup, unless the test
// destroys it itself.
func create(t testing.TB, ts *Toolstack, cmdline string, edit ...func(*DomainConfig)) (*Domain, *syncBuffer) {
	t.Helper()
	kvmtest.Require(t)
	con := &syncBuffer{}
	cfg := DomainConfig{Cmdline: cmdline, Console: con, MemSize: 16 << 20}
	for _, e := range edit {
		e(&cfg)
	}
	if ts == nil {
		ts = New(nil)
	}
	d, err := ts.Create(cfg)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		if _, err := ts.Lookup(d.ID); err == nil {
			if err := d.Destroy(); err != nil {
				t.Errorf("destroy: %v", err)
			}
		}
	})
	return d, con
}

// run unpauses d and waits, with a timeout, until it stops.
func run(t testing.TB, d *Domain, con *syncBuffer) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v (console so far:\n%s)", err, con)
	}
	return result{console: con.String(), exit: exit, dom: d}
}

// boot creates a domain running the stub with cmdline and runs it to its
// end.
func boot(t *testing.T, cmdline string, edit ...func(*DomainConfig)) result {
	t.Helper()
	d, con := create(t, nil, cmdline, edit...)
	return run(t, d, con)
}

// waitFor polls until the console shows s.
func waitFor(t testing.TB, con *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(con.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("console never showed %q:\n%s", s, con)
		}
		time.Sleep(time.Millisecond)
	}
}

// resultLine returns the stub's one "Test result:" line, failing the test
// when there is not exactly one.
func resultLine(t *testing.T, console string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "Test result: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d result lines in console:\n%s", len(lines), console)
	}
	return lines[0]
}

func requireSuccess(t *testing.T, r result) {
	t.Helper()
	if l := resultLine(t, r.console); l != "Test result: SUCCESS" {
		t.Fatalf("%s\nconsole:\n%s", l, r.console)
	}
}

// fields parses "key: a=1 b=2" console lines into a map of "key.a" -> "1".
func fields(console string) map[string]string {
	out := map[string]string{}
	re := regexp.MustCompile(`([\w\[\]()-]+)=(\S*)`)
	for _, l := range strings.Split(console, "\n") {
		key, rest, ok := strings.Cut(l, ": ")
		if !ok || strings.Contains(key, " ") {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(rest, -1) {
			out[key+"."+m[1]] = m[2]
		}
	}
	return out
}

func hexField(t *testing.T, f map[string]string, key string) uint64 {
	t.Helper()
	s, ok := f[key]
	if !ok {
		t.Fatalf("console has no %s", key)
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", key, s, err)
	}
	return v
}

func TestHello(t *testing.T) {
	r := boot(t, "")
	requireSuccess(t, r)
	if !strings.Contains(r.console, "Hello from a Xen PV guest") {
		t.Errorf("console:\n%s", r.console)
	}
	if r.exit.State != xen.Shutdown || r.exit.Reason != xenabi.ShutdownPoweroff {
		t.Errorf("exit %v, want poweroff", r.exit)
	}
}

// The guest's view of start_info and of its entry registers is what the
// builder wrote.
func TestBootStartInfo(t *testing.T) {
	r := boot(t, "test=startinfo extra=words")
	requireSuccess(t, r)
	f := fields(r.console)
	l, d := r.dom.Layout, r.dom
	frames := d.Xen.Frames()
	mfn := func(va uint64) uint64 { m, _ := frames.MFN(l.PFN(va)); return m }
	for key, want := range map[string]uint64{
		"entry.rsi":               l.StartInfo,
		"entry.rsp":               l.StackTop,
		"startinfo.nr_pages":      frames.NrPages,
		"startinfo.shared_info":   d.Xen.SharedInfoMFN() << 12,
		"startinfo.flags":         0,
		"startinfo.store_mfn":     mfn(l.Store),
		"startinfo.console_mfn":   mfn(l.Console),
		"startinfo.pt_base":       l.PageTables,
		"startinfo.nr_pt_frames":  l.PTFrames,
		"startinfo.mfn_list":      l.P2M,
		"startinfo.first_p2m_pfn": l.PFN(l.P2M),
		"startinfo.nr_p2m_frames": l.P2MFrames,
		"p2m.store_pfn":           l.PFN(l.Store),
		"p2m.console_pfn":         l.PFN(l.Console),
		"p2m.start_info_mfn":      mfn(l.StartInfo),
		"p2m.bad":                 0,
		"startinfo.mod_start":     0,
	} {
		if got := hexField(t, f, key); got != want {
			t.Errorf("%s = %#x, want %#x", key, got, want)
		}
	}
	if f["startinfo.magic"] != "xen-3.0-x86_64" || f["startinfo.cmd_line"] != "test=startinfo" {
		t.Errorf("fields: %v", f)
	}
	// The store and console ports are real: bound to dom0's backends.
	for _, key := range []string{"startinfo.store_evtchn", "startinfo.console_evtchn"} {
		port, _ := strconv.Atoi(f[key])
		st, err := d.Xen.Status(uint32(port))
		if err != nil || st.State != xen.StatInterdomain || st.RemoteDom != 0 {
			t.Errorf("%s = %d: %+v %v", key, port, st, err)
		}
	}
	if f["p2m.shared_info_in_p2m"] != "0" {
		t.Error("guest found shared_info in its P2M")
	}
	// The machine frames the builder handed out are all distinct from
	// their PFNs and translate back through the P2M.
	for _, m := range []uint64{mfn(l.Store), mfn(l.Console), mfn(l.StartInfo)} {
		if pfn, ok := frames.PFN(m); !ok || pfn == m {
			t.Errorf("MFN %#x: PFN %#x %v", m, pfn, ok)
		}
	}
}

func TestShutdownReasons(t *testing.T) {
	for reason, name := range []string{"poweroff", "reboot", "suspend", "crash", "watchdog", "soft_reset"} {
		t.Run(name, func(t *testing.T) {
			r := boot(t, "test=shutdown reason="+name)
			requireSuccess(t, r)
			if r.exit.State != xen.Shutdown || r.exit.Reason != uint32(reason) {
				t.Fatalf("exit %v, want shutdown %s", r.exit, name)
			}
			if !r.dom.Machine().VCPUs()[0].Parked() {
				t.Error("vCPU 0 still runs after the shutdown")
			}
			if name != "suspend" {
				return
			}
			// %rdx carried the start_info MFN, which the toolstack
			// turns back into the start_info page.
			l := r.dom.Layout
			want, _ := r.dom.Xen.Frames().MFN(l.PFN(l.StartInfo))
			if r.exit.SuspendRDX != want {
				t.Errorf("suspend rdx %#x, want start_info MFN %#x", r.exit.SuspendRDX, want)
			}
			pfn, err := r.dom.StartInfoPFN(r.exit)
			if err != nil || pfn != l.PFN(l.StartInfo) {
				t.Errorf("StartInfoPFN = %#x, %v", pfn, err)
			}
		})
	}
}

// Negative control: a guest that passes its start_info PFN instead of the
// MFN is caught by the toolstack.
func TestSuspendWithPFNInRDXIsCaught(t *testing.T) {
	r := boot(t, "test=shutdown reason=suspend rdx=pfn")
	if r.exit.Reason != xenabi.ShutdownSuspend {
		t.Fatalf("exit %v", r.exit)
	}
	l := r.dom.Layout
	if r.exit.SuspendRDX != l.PFN(l.StartInfo) {
		t.Fatalf("rdx %#x, the scenario should have passed PFN %#x", r.exit.SuspendRDX, l.PFN(l.StartInfo))
	}
	_, err := r.dom.StartInfoPFN(r.exit)
	if err == nil || !strings.Contains(err.Error(), "not one of its machine frames") {
		t.Fatalf("StartInfoPFN accepted a PFN: %v", err)
	}
}

func TestInvalidShutdownReason(t *testing.T) {
	r := boot(t, "test=shutdown reason=99")
	requireSuccess(t, r)
	if f := fields(r.console); f["shutdown.rc"] != "-22" {
		t.Errorf("rc %q, want -EINVAL", f["shutdown.rc"])
	}
	if r.exit.Reason != xenabi.ShutdownPoweroff {
		t.Errorf("exit %v", r.exit)
	}
}

// Negative control: bad guest pointers get -EFAULT and the host is fine.
func TestBadPointers(t *testing.T) {
	r := boot(t, "test=bad-pointer")
	requireSuccess(t, r)
	if !strings.Contains(r.console, "bad-pointer: 7 of 7 calls got -EFAULT") {
		t.Errorf("console:\n%s", r.console)
	}
	if r.exit.State != xen.Shutdown || r.exit.Reason != xenabi.ShutdownPoweroff {
		t.Errorf("exit %v", r.exit)
	}
	// And the host can boot another guest afterwards.
	requireSuccess(t, boot(t, ""))
}

func TestTripleFaultReport(t *testing.T) {
	r := boot(t, "test=triple-fault")
	if r.exit.State != xen.Crashed {
		t.Fatalf("exit %v, want crashed", r.exit)
	}
	c := r.exit.Crash
	if !strings.Contains(c.Reason, "triple fault") || c.Regs == nil || len(c.Code) == 0 {
		t.Fatalf("crash %+v", c)
	}
	if c.Code[0].Text != "ud2" || c.Code[0].Addr != c.Regs.RIP {
		t.Errorf("faulting instruction %v at RIP %#x, want ud2", c.Code[0], c.Regs.RIP)
	}
	if !r.dom.Kernel.Contains(c.Regs.RIP) {
		t.Errorf("RIP %#x is outside the kernel", c.Regs.RIP)
	}
	rep := c.Report()
	for _, want := range []string{"triple fault", fmt.Sprintf("rip %#016x", c.Regs.RIP), "=> ", "ud2", "idt 0x0/0x0"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}

// A guest exception the guest itself handles ends as SHUTDOWN_crash with
// its own report, not a VMM crash.
func TestGuestException(t *testing.T) {
	r := boot(t, "test=exception")
	if !strings.Contains(r.console, "Guest exception 0 at rip") {
		t.Errorf("console:\n%s", r.console)
	}
	if l := resultLine(t, r.console); !strings.HasPrefix(l, "Test result: ERROR") {
		t.Errorf("result %q", l)
	}
	if r.exit.State != xen.Shutdown || r.exit.Reason != xenabi.ShutdownCrash {
		t.Errorf("exit %v", r.exit)
	}
}

// Negative control for the result line itself.
func TestFailingScenarioReportsFailure(t *testing.T) {
	r := boot(t, "test=fail")
	if l := resultLine(t, r.console); l != "Test result: FAILURE: deliberate failure (negative control)" {
		t.Errorf("result %q", l)
	}
	if r.exit.Reason != xenabi.ShutdownCrash {
		t.Errorf("exit %v, want crash", r.exit)
	}
}

func TestUnknownScenario(t *testing.T) {
	r := boot(t, "test=no-such-test")
	if l := resultLine(t, r.console); !strings.Contains(l, "ERROR: unknown test 'no-such-test'") {
		t.Errorf("result %q", l)
	}
}

func TestXenVersion(t *testing.T) {
	r := boot(t, "test=version")
	requireSuccess(t, r)
	f := fields(r.console)
	if f["version.major"] != "4" || f["version.minor"] != "17" || f["version.extra"] != xen.Extraversion ||
		f["version.capabilities"] != xen.Capabilities || f["version.pagesize"] != "4096" {
		t.Errorf("fields %v", f)
	}
	if got := hexField(t, f, "version.features[0]"); got != xen.Features {
		t.Errorf("features %#x, want %#x", got, xen.Features)
	}
}

func TestVCPUIsUp(t *testing.T) {
	r := boot(t, "test=vcpu")
	requireSuccess(t, r)
	f := fields(r.console)
	if f["vcpu.is_up(0)"] != "1" || f["vcpu.is_up(1)"] != "-2" {
		t.Errorf("fields %v", f)
	}
}

func TestUnimplementedHypercalls(t *testing.T) {
	var logs syncBuffer
	d, con := create(t, New(slog.New(slog.NewTextHandler(&logs, nil))), "test=enosys")
	requireSuccess(t, run(t, d, con))
	// Each unimplemented hypercall is logged once.
	if n := strings.Count(logs.String(), "hypercall=dm_op"); n != 1 {
		t.Errorf("dm_op logged %d times:\n%s", n, logs.String())
	}
}

// Console input reaches the guest; a read into a bad buffer gets -EFAULT
// and loses nothing.
func TestConsoleRead(t *testing.T) {
	d, con := create(t, nil, "test=console-read")
	if err := d.Xen.QueueConsoleInput([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	r := run(t, d, con)
	requireSuccess(t, r)
	f := fields(r.console)
	if f["console-read.rc"] != "-14" || f["console-read.data"] != "ping" || f["console-read.n"] != "4" {
		t.Errorf("fields %v\n%s", f, r.console)
	}
}

func TestTrace(t *testing.T) {
	var trace syncBuffer
	r := boot(t, "test=hello", func(c *DomainConfig) {
		c.Trace = slog.New(slog.NewTextHandler(&trace, nil))
	})
	requireSuccess(t, r)
	out := trace.String()
	for _, want := range []string{
		`call="console_io(write, 0x`, `ret=0`,
		`call="sched_op(shutdown, 0x`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("trace lacks %q:\n%s", want, out)
		}
	}
}

// Exactly one VM exit per hypercall: n more calls cost n more exits.
func TestOneExitPerHypercall(t *testing.T) {
	exits := func(n int) (uint64, uint64) {
		r := boot(t, fmt.Sprintf("test=hypercall-loop n=%d", n))
		requireSuccess(t, r)
		v := r.dom.Machine().VCPUs()[0]
		return v.TotalExits(), r.dom.Xen.HypercallCount(xenabi.HypervisorXenVersion)
	}
	e1, c1 := exits(1000)
	e2, c2 := exits(3000)
	if c2-c1 != 2000 {
		t.Fatalf("xen_version count grew by %d, want 2000", c2-c1)
	}
	if e2-e1 != 2000 {
		t.Errorf("2000 more hypercalls cost %d more exits, want 2000", e2-e1)
	}
}

// The vCPU exit counters see every kind; KVM_EXIT_INTR is not counted in
// TotalExits.
func TestExitCounters(t *testing.T) {
	r := boot(t, "test=bare-loop n=500")
	v := r.dom.Machine().VCPUs()[0]
	if v.Exits(kvmext.ExitIO) < 500 || v.TotalExits() < v.Exits(kvmext.ExitIO) {
		t.Errorf("IO exits %d total %d", v.Exits(kvmext.ExitIO), v.TotalExits())
	}
}

func TestPauseUnpause(t *testing.T) {
	d, con := create(t, nil, "test=hypercall-loop n=200000")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "loop: start")
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	v := d.Machine().VCPUs()[0]
	r1, err := v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	n1 := d.Xen.HypercallCount(xenabi.HypervisorXenVersion)
	time.Sleep(20 * time.Millisecond)
	r2, _ := v.GetRegs()
	if r1.RIP != r2.RIP || d.Xen.HypercallCount(xenabi.HypervisorXenVersion) != n1 {
		t.Fatalf("paused domain ran: rip %#x -> %#x", r1.RIP, r2.RIP)
	}
	// Paused state is consistent: RIP is never left on a trapping
	// instruction whose exit was already handled.
	if !d.Kernel.Contains(r1.RIP) && (r1.RIP < d.Layout.HypercallPage || r1.RIP >= d.Layout.HypercallPage+4096) {
		t.Errorf("paused RIP %#x outside the kernel", r1.RIP)
	}
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v, %v", exit, err)
	}
	requireSuccess(t, result{console: con.String()})
}

func TestDestroyRunningDomain(t *testing.T) {
	d, con := create(t, nil, "test=hypercall-loop n=100000000")
	d.Unpause()
	waitFor(t, con, "loop: start")
	done := make(chan error)
	go func() { done <- d.Destroy() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("destroying a running domain hung")
	}
}

func TestCreateRejectsBadImage(t *testing.T) {
	_, err := New(nil).Create(DomainConfig{Image: []byte("not a kernel")})
	if !errors.Is(err, builder.ErrBadImage) {
		t.Fatalf("got %v", err)
	}
}

// A debug Xen poisons the argument registers a hypercall declares; sched_op
// declares two, so %rdx survives either way.
func TestClobberArgs(t *testing.T) {
	poison := fmt.Sprintf("%#x", uint64(xen.Poison))
	for _, clobber := range []bool{false, true} {
		r := boot(t, "test=clobber", func(c *DomainConfig) { c.ClobberArgs = clobber })
		requireSuccess(t, r)
		f := fields(r.console)
		wantRDI, wantRSI := "0x0", "0x1111"
		if clobber {
			wantRDI, wantRSI = poison, poison
		}
		if f["clobber.rdi"] != wantRDI || f["clobber.rsi"] != wantRSI || f["clobber.rdx"] != "0x2222" ||
			f["clobber.r10"] != "0x3333" || f["clobber.r8"] != "0x4444" || f["clobber.ret"] != "0" {
			t.Errorf("clobber=%v: %v", clobber, f)
		}
	}
}

// The hypercall dispatch allocates nothing: a loop of hypercalls costs no
// Go heap growth per call.
func TestHypercallDispatchAllocs(t *testing.T) {
	kvmtest.Require(t)
	mallocs := func(n int) uint64 {
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		r := boot(t, fmt.Sprintf("test=hypercall-loop n=%d", n))
		runtime.ReadMemStats(&b)
		requireSuccess(t, r)
		return b.Mallocs - a.Mallocs
	}
	small, large := mallocs(100), mallocs(20100)
	if large > small+2000 {
		t.Errorf("20000 more hypercalls cost %d more allocations", large-small)
	}
}

func TestHaltWithInterruptsDisabledCrashes(t *testing.T) {
	r := boot(t, "test=hlt")
	if r.exit.State != xen.Crashed || !strings.Contains(r.exit.Crash.Reason, "HLT with interrupts disabled") {
		t.Fatalf("exit %v", r.exit)
	}
}

// A vCPU halted with interrupts enabled blocks without spinning; a pause
// takes it out of the block, and it runs on after the unpause.
func TestHaltBlocksAndPauses(t *testing.T) {
	d, con := create(t, nil, "test=hlt sti=1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d.Unpause()
	v := d.Machine().VCPUs()[0]
	for v.Exits(kvmext.ExitHLT) == 0 {
		time.Sleep(time.Millisecond)
	}
	exits := v.TotalExits()
	time.Sleep(50 * time.Millisecond)
	if v.TotalExits() != exits {
		t.Fatalf("a blocked vCPU kept exiting: %d -> %d", exits, v.TotalExits())
	}
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	d.Unpause()
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v", exit, err)
	}
	if !strings.Contains(con.String(), "hlt: woke up") {
		t.Errorf("console:\n%s", con)
	}
}

func TestUnbackedMemoryAccessCrashes(t *testing.T) {
	r := boot(t, "test=mmio")
	if r.exit.State != xen.Crashed {
		t.Fatalf("exit %v\n%s", r.exit, r.console)
	}
	c := r.exit.Crash
	if !strings.Contains(c.Reason, "read from unbacked guest-physical address 0xf0000000") {
		t.Errorf("reason %q", c.Reason)
	}
	if len(c.Code) == 0 || !strings.HasPrefix(c.Code[0].Text, "mov") {
		t.Errorf("faulting instruction %v", c.Code)
	}
}

// Event channels end to end: the guest's own checks (loopback, IPI, mask
// and unmask, status and close, VIRQs, poll, the errors an unprivileged
// guest must get, update_va_mapping by MFN only), then a round trip with
// dom0: dom0 binds to the guest's unbound port and signals it; the guest,
// blocked in SCHEDOP_poll, takes the upcall and answers.
func TestEventChannels(t *testing.T) {
	ts := New(nil)
	d, con := create(t, ts, "test=evtchn")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "evtchn: host-port=")
	port := atoiField(t, fields(con.String())["evtchn.host-port"])
	var calls atomic.Int32
	got := make(chan struct{}, 4)
	dom0 := ts.Xen().Dom0()
	local, err := dom0.BindInterdomain(d.ID, uint32(port), func() {
		calls.Add(1)
		got <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	<-got // binding sets dom0's new port pending
	if st, _ := d.Xen.Status(uint32(port)); st.State != xen.StatInterdomain || st.RemoteDom != 0 || st.RemotePort != local {
		t.Errorf("guest port after dom0 bound: %+v", st)
	}
	if err := dom0.Send(local); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatalf("the guest never answered dom0:\n%s", con)
	}
	exit, err := d.Wait(ctx)
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v", exit, err)
	}
	r := result{console: con.String()}
	requireSuccess(t, r)
	f := fields(r.console)
	// a: b's send and the unmask; b: its bind and a's send; c: one IPI;
	// e: dom0's send. dom0: its bind, and the guest's answer.
	if f["evtchn-events.a"] != "2" || f["evtchn-events.b"] != "2" || f["evtchn-events.c"] != "1" ||
		f["evtchn-events.e"] != "1" || calls.Load() != 2 {
		t.Errorf("dom0 handler called %d times; fields %v", calls.Load(), f)
	}
	if v := d.Machine().VCPUs()[0]; v.Injected() == 0 {
		t.Error("no interrupt was injected")
	}
	// Destroying the guest leaves dom0's port unbound, not dangling.
	d.Destroy()
	if st, _ := dom0.Status(local); st.State != xen.StatUnbound {
		t.Errorf("dom0's port after the guest died: %+v", st)
	}
}

func atoiField(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

// Domains are introduced to xenstored with libxl's layout, and released
// when destroyed.
func TestDomainIntroduction(t *testing.T) {
	ts := New(nil)
	d, _ := create(t, ts, "", func(c *DomainConfig) { c.Name = "guest-a" })
	s := ts.Store()
	home := fmt.Sprintf("/local/domain/%d", d.ID)
	for path, want := range map[string]string{
		home + "/name": "guest-a", home + "/domid": strconv.Itoa(int(d.ID)),
		home + "/control/platform-feature-xs_reset_watches": "1",
		home + "/device/suspend/event-channel":              "",
		home + "/memory/target":                             "16384",
	} {
		if got, err := s.Read(path); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	for path, want := range map[string]string{
		home:                                   "n0,r1",
		home + "/control":                      "n0,r1",
		home + "/control/shutdown":             "n1",
		home + "/control/feature-suspend":      "n1",
		home + "/device/suspend/event-channel": "n1",
	} {
		want = strings.ReplaceAll(want, "1", strconv.Itoa(int(d.ID)))
		perms, err := s.GetPerms(path)
		var got []string
		for _, p := range perms {
			got = append(got, p.String())
		}
		if err != nil || strings.Join(got, ",") != want {
			t.Errorf("perms of %s = %v, %v; want %s", path, got, err, want)
		}
	}
	if !s.Introduced(uint32(d.ID)) {
		t.Error("domain not introduced")
	}
	if _, err := ts.Create(DomainConfig{Name: "guest-a"}); err == nil {
		t.Error("a second domain with the same name was created")
	}
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(home + "/name"); err == nil || s.Introduced(uint32(d.ID)) {
		t.Error("destroyed domain still in xenstore")
	}
}

// Time: the guest's system time (vcpu_time_info) tracks the host's, the
// wallclock is the domain's creation time, and VIRQ_TIMER fires no earlier
// than asked. Blocking costs a handful of SCHEDOP_block calls, not a spin:
// the call re-enables delivery, so the upcall cannot be lost or delayed.
func TestTimer(t *testing.T) {
	start := time.Now()
	r := boot(t, "test=timer")
	requireSuccess(t, r)
	f := fields(r.console)
	wc, _ := strconv.ParseInt(f["timer.wallclock"], 10, 64)
	if d := wc - start.Unix(); d < -2 || d > 2 {
		t.Errorf("wallclock %d is %ds from the host's", wc, d)
	}
	fired, _ := strconv.ParseUint(f["timer.fired-after-ns"], 10, 64)
	if fired < 5_000_000 || fired > 500_000_000 {
		t.Errorf("a 5 ms timer fired after %d ns", fired)
	}
	if n := r.dom.Xen.HypercallCount(xenabi.HypervisorSchedOp); n > 50 {
		t.Errorf("%d sched_op calls: the guest spun instead of blocking", n)
	}
}

// The PV console ring reaches the console backend, wrapping many times.
func TestConsoleRing(t *testing.T) {
	r := boot(t, "test=console-ring")
	requireSuccess(t, r)
	if n := strings.Count(r.console, "console-ring: hello through the ring\n"); n != 200 {
		t.Errorf("%d of 200 ring lines arrived", n)
	}
}
