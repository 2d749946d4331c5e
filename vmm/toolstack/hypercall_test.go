package toolstack

import (
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

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
	if !strings.Contains(r.console, "bad-pointer: 8 of 8 calls got -EFAULT") {
		t.Errorf("console:\n%s", r.console)
	}
	if r.exit.State != xen.Shutdown || r.exit.Reason != xenabi.ShutdownPoweroff {
		t.Errorf("exit %v", r.exit)
	}
	// And the host can boot another guest afterwards.
	requireSuccess(t, boot(t, ""))
}

func TestXenVersion(t *testing.T) {
	r := boot(t, "test=version")
	requireSuccess(t, r)
	f := fields(r.console)
	if f["version.major"] != "4" || f["version.minor"] != "17" || f["version.extra"] != xen.Extraversion ||
		f["version.capabilities"] != xen.Capabilities || f["version.pagesize"] != "4096" {
		t.Errorf("fields %v", f)
	}
	if got := hexField(t, f, "version.features[0]"); got != xen.PVFeatures {
		t.Errorf("features %#x, want %#x (a ring-3 PV domU's)", got, xen.PVFeatures)
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

// console_io is -EPERM for a domU in the ring-3 model, reads and writes,
// as on a release Xen; the stub's console is the ring.
func TestConsoleIOIsPrivileged(t *testing.T) {
	r := boot(t, "test=console-read")
	requireSuccess(t, r)
	if f := fields(r.console); f["console-read.rc"] != "-1" {
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
		`call="event_channel_op(send, 0x`, `ret=0`,
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
// TotalExits. The bare loop, with the virtual IOPL it sets, is one IO exit
// per iteration, as in the ring-0 container.
func TestExitCounters(t *testing.T) {
	exits := func(n int) (io, total uint64) {
		r := boot(t, fmt.Sprintf("test=bare-loop n=%d", n))
		requireSuccess(t, r)
		v := r.dom.Machine().VCPUs()[0]
		return v.Exits(kvmext.ExitIO), v.TotalExits()
	}
	io1, total1 := exits(500)
	io2, total2 := exits(1500)
	if total1 < io1 || total2 < io2 {
		t.Errorf("IO exits %d, %d; total %d, %d", io1, io2, total1, total2)
	}
	if io2-io1 != 1000 || total2-total1 != 1000 {
		t.Errorf("1000 more bare exits cost %d more IO exits, %d more exits; want 1000", io2-io1, total2-total1)
	}
}

// A debug Xen poisons the argument registers a hypercall declares; sched_op
// declares two, so %rdx survives either way. The stub passes SCHEDOP_yield
// in %rdi and 0x1111 in %rsi: with --clobber-args both come back
// poisoned, which is what catches a guest that relies on them surviving.
func TestClobberArgs(t *testing.T) {
	for _, clobber := range []bool{false, true} {
		r := boot(t, "test=clobber", func(c *DomainConfig) { c.ClobberArgs = clobber })
		requireSuccess(t, r)
		f := fields(r.console)
		wantRDI, wantRSI := "0x0", "0x1111"
		if clobber {
			wantRDI, wantRSI = "0xdeadbeefdeadf00d", "0xdeadbeefdeadf00d"
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
