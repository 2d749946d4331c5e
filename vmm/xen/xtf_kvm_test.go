package xen_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/syncbuf"
	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// syncBuffer is a console the guest's backend writes from its goroutines.
type syncBuffer = syncbuf.Buffer

// xtfImage reads an XTF pv64 test image from the build make xtf makes.
func xtfImage(t *testing.T, name string) []byte { return xentools.XTFImage(t, name) }

// runXTF boots an XTF pv64 test in the ring-3 model and returns its
// console output, its exit and the domain.
func runXTF(t *testing.T, name string) (string, xen.Exit, *toolstack.Domain) {
	t.Helper()
	kvmtest.Require(t)
	img := xtfImage(t, name)
	var con syncBuffer
	ts := toolstack.New(nil)
	d, err := ts.Create(toolstack.DomainConfig{Image: img, MemSize: 128 << 20, Console: &con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	if !d.Xen.Ring3() {
		t.Fatal("an XTF kernel (no supervisor_mode_kernel) was not given the ring-3 model")
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := d.Wait(ctx)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, con.String())
	}
	return con.String(), e, d
}

func wantSuccess(t *testing.T, out string, e xen.Exit) {
	t.Helper()
	if e.State != xen.Shutdown || e.Reason != xenabi.ShutdownPoweroff || !strings.Contains(out, "Test result: SUCCESS") {
		report := ""
		if e.Crash != nil {
			report = e.Crash.Report()
		}
		t.Fatalf("ended %v; console:\n%s%s", e, out, report)
	}
}

// XTF's example runs as on Xen: in ring 3 on Xen's selectors, with no
// GDT, IDT or TSS of its own, its output through the console ring.
func TestXTFExample(t *testing.T) {
	out, e, d := runXTF(t, "example")
	wantSuccess(t, out, e)
	if !strings.Contains(out, "Hello World") {
		t.Errorf("console:\n%s", out)
	}
	// Exits per hypercall on the port-I/O path: each is one IO exit; a
	// hypercall that changes page tables adds one HLT exit (the guest
	// makes the writes itself), an exception bounce is one HLT exit.
	v := d.Machine().VCPUs()[0]
	var calls uint64
	for nr := range 64 {
		calls += d.Xen.HypercallCount(nr)
	}
	t.Logf("%d hypercalls: %d IO exits, %d HLT exits (trampolines), %d exits in all",
		calls, v.Exits(kvmext.ExitIO), v.Exits(kvmext.ExitHLT), v.TotalExits())
}

// XTF's selftest: exceptions bounced through the trap table with the
// exception table's fixups, user mode through the iret hypercall and back
// with int $0x20, a NULL read as #PF with error code 0, int $0x21 through
// a DPL-1 entry, xenstore, grant table v1.
func TestXTFSelftest(t *testing.T) {
	out, e, _ := runXTF(t, "selftest")
	wantSuccess(t, out, e)
	for _, s := range []string{"Test: Userspace execution", "Test: NULL unmapped", "Test: Custom IDT entry", "Test: Xenstore read"} {
		if !strings.Contains(out, s) {
			t.Errorf("no %q in the console:\n%s", s, out)
		}
	}
}

// XTF's xsa-7 makes xen_version(0) with a raw syscall (the 64-bit PV
// hypercall instruction) whose return address is non-canonical: the
// syscall enters the VMM at its LSTAR trampoline (on PVM through the
// #PF fetching it from CPL 3), and the return faults as Xen's does.
func TestXTFRawSyscall(t *testing.T) {
	out, e, _ := runXTF(t, "xsa-7")
	wantSuccess(t, out, e)
}
