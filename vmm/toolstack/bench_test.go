package toolstack

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// markerConsole timestamps the stub's "loop: start" and "loop: end" lines
// and reads the vCPU's exit counter at each. The console is written from
// the vCPU thread inside the console_io hypercall, so the counter already
// includes that call's own exit.
type markerConsole struct {
	mu         sync.Mutex
	line       []byte
	vcpu       *machine.VCPU
	first      time.Time
	start, end time.Time
	exitsFirst uint64 // at the first byte
	exitsStart uint64
	exitsEnd   uint64
	summary    string // the last line starting "blkfront-bench:"
	// cpuStart and cpuEnd are the process's CPU time (user and
	// system, every thread: the vCPU's in KVM_RUN, the backend's, the
	// VMM's) at the markers: what the loop cost in CPU, whatever
	// else the host runs meanwhile.
	cpuStart, cpuEnd time.Duration
}

func (c *markerConsole) Write(p []byte) (int, error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first.IsZero() {
		c.first = now
		if c.vcpu != nil {
			c.exitsFirst = c.vcpu.TotalExits()
		}
	}
	c.line = append(c.line, p...)
	for {
		i := bytes.IndexByte(c.line, '\n')
		if i < 0 {
			break
		}
		l := string(c.line[:i])
		c.line = c.line[i+1:]
		switch {
		case len(l) >= 11 && l[:11] == "loop: start":
			c.start, c.exitsStart = now, c.vcpu.TotalExits()
			c.cpuStart, _ = cpuTime()
		case l == "loop: end":
			c.end, c.exitsEnd = now, c.vcpu.TotalExits()
			c.cpuEnd, _ = cpuTime()
		case len(l) >= 15 && l[:15] == "blkfront-bench:":
			c.summary = l
		}
	}
	return len(p), nil
}

// guestLoop boots the stub running scenario with n iterations and returns
// the loop's wall time and the VM exits it took per iteration (the end
// marker's own console_io exit excluded).
func guestLoop(b *testing.B, scenario string, n int) (time.Duration, float64) {
	b.Helper()
	con := &markerConsole{}
	d, err := New(nil).Create(DomainConfig{
		Cmdline: fmt.Sprintf("test=%s n=%d", scenario, n), Console: con, MemSize: 16 << 20,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Destroy()
	con.vcpu = d.Machine().VCPUs()[0]
	d.Unpause()
	if exit, err := d.Wait(context.Background()); err != nil || exit.Reason != 0 {
		b.Fatalf("%s: %v %v", scenario, exit, err)
	}
	if con.start.IsZero() || con.end.IsZero() {
		b.Fatalf("%s printed no loop markers", scenario)
	}
	return con.end.Sub(con.start), float64(con.exitsEnd-con.exitsStart-1) / float64(n)
}

func benchLoops(b *testing.B) {
	kvmtest.Require(b)
	n := max(b.N, 1000)
	hc, hcExits := guestLoop(b, "hypercall-loop", n)
	bare, bareExits := guestLoop(b, "bare-loop", n)
	b.ReportMetric(float64(hc.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(float64(bare.Nanoseconds())/float64(n), "ns/bare-exit")
	b.ReportMetric(float64(hc)/float64(bare), "x-bare-exit")
	b.ReportMetric(hcExits, "exits/op")
	b.ReportMetric(bareExits, "exits/bare-exit")
}

// scenarioExits boots the stub with cmdline fmt.Sprintf(format, n) to its
// end and returns its console and the vCPU's total exits.
func scenarioExits(b *testing.B, format string, n int) (string, uint64) {
	b.Helper()
	d, con := create(b, nil, fmt.Sprintf(format, n))
	r := run(b, d, con)
	if r.exit.Reason != 0 {
		b.Fatalf("%v\n%s", r.exit, r.console)
	}
	return r.console, d.Machine().VCPUs()[0].TotalExits()
}

// exitsPerOp runs the scenario format with n and with n0 < n iterations,
// each iteration being opsPerIter operations, and returns the console of
// the n run and the VM exits per operation: the difference of the two
// runs' exits, so the boot and the scenario's fixed part cancel out.
func exitsPerOp(b *testing.B, format string, n, n0, opsPerIter int) (string, float64) {
	b.Helper()
	_, x0 := scenarioExits(b, format, n0)
	con, x := scenarioExits(b, format, n)
	return con, (float64(x) - float64(x0)) / float64((n-n0)*opsPerIter)
}

// BenchmarkHypercall times a guest loop of cheap hypercalls
// (xen_version(XENVER_version)) against a guest loop of bare port-I/O exits
// to a port the VMM ignores, booted in the same run: x-bare-exit is the
// cost of the hypercall path relative to the exit alone.
func BenchmarkHypercall(b *testing.B) { benchLoops(b) }

// BenchmarkHypercallInterleaved runs the stub's exit-cost scenario: b.N
// bare exits and b.N cheap hypercalls interleaved in chunks of 100 inside
// one guest, timed with the guest's TSC. Host noise (VM placement, thread
// migration, drift between runs) hits both sides alike, so its ratio is the
// stable one; x-bare-exit is hypercall TSC time over bare-exit TSC time.
// exits/op is per exit or hypercall, from a second run of 100 of each
// subtracted (so the boot does not count); it is 1 exactly.
func BenchmarkHypercallInterleaved(b *testing.B) {
	kvmtest.Require(b)
	n := (max(b.N, 1000) + 99) / 100 * 100 // the scenarios run in chunks of 100
	console, exits := exitsPerOp(b, "test=exit-cost n=%d", n, 100, 2)
	f := fields(console)
	bare, err1 := strconv.ParseFloat(f["exit-cost.bare_tsc"], 64)
	hc, err2 := strconv.ParseFloat(f["exit-cost.hypercall_tsc"], 64)
	if err1 != nil || err2 != nil || bare == 0 {
		b.Fatalf("exit-cost output: %v", f)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(hc/bare, "x-bare-exit")
	b.ReportMetric(hc/float64(n), "tsc/hypercall")
	b.ReportMetric(bare/float64(n), "tsc/bare-exit")
	b.ReportMetric(exits, "exits/op")
}

// BenchmarkBareExit times the bare port-I/O exit loop alone.
func BenchmarkBareExit(b *testing.B) {
	kvmtest.Require(b)
	n := max(b.N, 1000)
	bare, exits := guestLoop(b, "bare-loop", n)
	b.ReportMetric(float64(bare.Nanoseconds())/float64(n), "ns/op")
	b.ReportMetric(exits, "exits/op")
}

// bareVMFirstExit creates a 16 MiB one-vCPU VM whose first instruction (in
// real mode) is an OUT, and times creation to that first exit.
func bareVMFirstExit(b *testing.B) time.Duration {
	d, _ := bareVMCopyCPU(b, 16<<20, nil)
	return d
}

// bareVMCopy creates a one-vCPU VM of mem bytes, copies data into its RAM
// from 1 MiB (fresh memory, first touched by the copy, as a restore's
// pages are) and times creation, copy and the first exit of its first
// instruction (in real mode, an OUT).
func bareVMCopy(b *testing.B, mem uint64, data []byte) time.Duration {
	d, _ := bareVMCopyCPU(b, mem, data)
	return d
}

// processCPU is the process's CPU time so far, user and system.
func processCPU(b testing.TB) time.Duration {
	d, err := cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// cpuTime is processCPU for where there is no testing.TB to fail.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// bareVMCopyCPU is bareVMCopy, also returning the process's CPU time
// from the start to the first exit: on a loaded machine (other work
// queued on the cores), wall time there includes waiting for a core,
// CPU time does not.
func bareVMCopyCPU(b *testing.B, mem uint64, data []byte) (time.Duration, time.Duration) {
	cpu0 := processCPU(b)
	t0 := time.Now()
	m, err := machine.New(machine.Config{MemSize: mem, NumVCPUs: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Memory().Write(1<<20, data); err != nil {
		b.Fatal(err)
	}
	m.Memory().Write(0x1000, []byte{0xe6, 0x10, 0xf4}) // out %al,$0x10; hlt
	v := m.VCPUs()[0]
	s, _ := v.GetSregs()
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		b.Fatal(err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		b.Fatal(err)
	}
	type exit struct{ wall, cpu time.Duration }
	exited := make(chan exit, 1)
	m.Bus().Register(0x10, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		select {
		case exited <- exit{time.Since(t0), processCPU(b) - cpu0}:
		default:
		}
		return fmt.Errorf("done")
	}))
	m.Start(context.Background(), nil)
	e := <-exited
	return e.wall, e.cpu
}

// BenchmarkBoot times domain creation (parse, VM, builder, vCPU state) to
// the guest's first console byte, against creating a bare VM and taking its
// first exit in the same run; exits/op counts the guest's exits up to that
// byte, the console_io hypercall that writes it included.
func BenchmarkBoot(b *testing.B) {
	kvmtest.Require(b)
	var boot, bare time.Duration
	var exits uint64
	for i := 0; i < b.N; i++ {
		con := &markerConsole{}
		t0 := time.Now()
		d, err := New(nil).Create(DomainConfig{Console: con, MemSize: 16 << 20})
		if err != nil {
			b.Fatal(err)
		}
		con.vcpu = d.Machine().VCPUs()[0]
		d.Unpause()
		if _, err := d.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
		boot += con.first.Sub(t0)
		exits += con.exitsFirst
		d.Destroy()
		bare += bareVMFirstExit(b)
	}
	b.ReportMetric(float64(boot.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(float64(bare.Nanoseconds())/float64(b.N), "ns/bare-vm-first-exit")
	b.ReportMetric(float64(boot)/float64(bare), "x-bare-vm")
	b.ReportMetric(float64(exits)/float64(b.N), "exits/op")
}

// BenchmarkSuspendResume times b.N cycles of Suspend (xenstore method) +
// Resume(fast) + Unpause on one guest running the minimal suspend loop
// (test=suspend bench=1: no workload, no output), from the request to the
// guest running again. It reports the median and p90 and the VM exits per
// cycle, against a bare port-I/O exit measured in the same run.
func BenchmarkSuspendResume(b *testing.B) {
	kvmtest.Require(b)
	n := max(b.N, 20)
	d, con := create(b, nil, fmt.Sprintf("test=suspend bench=1 cycles=%d", n+1))
	ctx := context.Background()
	d.Unpause()
	waitFor(b, con, "suspend: ready cycle=0")
	v := d.Machine().VCPUs()[0]
	durs := make([]time.Duration, 0, n)
	exits0 := v.TotalExits()
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := d.Suspend(ctx, DefaultSuspendTimeouts); err != nil {
			b.Fatalf("cycle %d: %v\n%s", i, err, con)
		}
		if err := d.Resume(ctx, true); err != nil {
			b.Fatal(err)
		}
		d.Unpause()
		durs = append(durs, time.Since(t0))
	}
	exits := float64(v.TotalExits()-exits0) / float64(n)
	sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
	bare, _ := guestLoop(b, "bare-loop", 10000)
	p50 := durs[len(durs)/2]
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(durs[len(durs)*9/10].Nanoseconds()), "p90-ns")
	b.ReportMetric(exits, "exits/op")
	b.ReportMetric(float64(p50)/(float64(bare)/10000), "x-bare-exit")
}

// BenchmarkXenstoreRing runs test=xs-bench: b.N xenstore READs through the
// guest's ring against b.N null requests (answered ENOSYS without touching
// the store), interleaved, timed by the guest's system time.
func BenchmarkXenstoreRing(b *testing.B) {
	kvmtest.Require(b)
	n := (max(b.N, 1000) + 99) / 100 * 100 // the scenarios run in chunks of 100
	console, exits := exitsPerOp(b, "test=xs-bench n=%d", n, 100, 2)
	f := fields(console)
	rd, _ := strconv.ParseFloat(f["xs-bench.read_ns"], 64)
	null, _ := strconv.ParseFloat(f["xs-bench.null_ns"], 64)
	if rd == 0 || null == 0 {
		b.Fatalf("xs-bench output: %v", f)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(n)/(rd/1e9), "reads/s")
	b.ReportMetric(float64(n)/(null/1e9), "null/s")
	b.ReportMetric(rd/null, "x-null")
	b.ReportMetric(exits, "exits/op")
}
