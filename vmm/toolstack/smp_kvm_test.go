package toolstack

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// The stub's SMP scenario (guest/src/smp.c) on real KVM: secondaries
// brought up with VCPUOP_initialise and VCPUOP_up, each running a hash
// chain vCPU 0 replays, taken down before every suspend and up after it,
// their runstate areas checked for live, sane times.

const smpVCPUs = 3

var smpLine = regexp.MustCompile(`smp: vcpu (\d+) steps=(\d+) starts=(\d+) running=(\d+) blocked=(\d+) offline=(\d+)`)

// checkSMP checks every secondary's report: its chain ran the budget of
// every cycle (cycles+1 of them), it entered secondary_main starts times,
// and it spent time running.
func checkSMP(t *testing.T, r result, cycles, starts int) {
	t.Helper()
	checkSMPSteps(t, r, 200000*(cycles+1), starts)
}

func checkSMPSteps(t *testing.T, r result, want, starts int) {
	t.Helper()
	requireSuccess(t, r)
	ms := smpLine.FindAllStringSubmatch(r.console, -1)
	if len(ms) != smpVCPUs-1 {
		t.Fatalf("%d secondary reports, want %d:\n%s", len(ms), smpVCPUs-1, r.console)
	}
	for _, m := range ms {
		steps, _ := strconv.Atoi(m[2])
		st, _ := strconv.Atoi(m[3])
		running, _ := strconv.ParseUint(m[4], 10, 64)
		if steps != want || st != starts || running == 0 {
			t.Errorf("vcpu %s: steps %d (want %d), starts %d (want %d), running %dns", m[1], steps, want, st, starts, running)
		}
	}
}

func smpGuest(t *testing.T, ts *Toolstack, cmdline string) (*Domain, *syncBuffer) {
	t.Helper()
	return create(t, ts, cmdline, func(c *DomainConfig) { c.VCPUs = smpVCPUs })
}

func TestSMP(t *testing.T) {
	d, con := smpGuest(t, nil, "test=smp")
	if n := len(d.Machine().VCPUs()); n != smpVCPUs {
		t.Fatalf("%d vCPUs, want %d", n, smpVCPUs)
	}
	checkSMP(t, run(t, d, con), 0, 1)
}

// A domain of one vCPU has no secondary to bring up: the scenario says so
// (the guest finds vCPU 1 is -ENOENT).
func TestSMPOneVCPU(t *testing.T) {
	d, con := create(t, nil, "test=smp")
	r := run(t, d, con)
	if l := resultLine(t, r.console); !strings.Contains(l, "needs vcpus >= 2") {
		t.Fatalf("%s\n%s", l, r.console)
	}
}

// Checkpoints keep the secondaries initialised (they come back from their
// VCPUOP_down) and their runstate areas registered.
func TestSMPCheckpoint(t *testing.T) {
	d, con := smpGuest(t, nil, "test=smp cycles=2")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	for c := range 2 {
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
		if err := d.Save(ctx, filepath.Join(t.TempDir(), "g.save"), true); err != nil {
			t.Fatalf("checkpoint %d: %v", c, err)
		}
	}
	checkSMP(t, waitPoweroff(t, ctx, d, con), 2, 1)
}

// A fast resume keeps the secondaries (starts stays 1); fast=0 resets
// them as xc_domain_resume_any does, and the guest initialises them again
// (a start per resume).
func TestSMPSuspendResume(t *testing.T) {
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "fast", false: "noncooperative"}[fast]
		t.Run(name, func(t *testing.T) {
			d, con := smpGuest(t, nil, "test=smp cycles=2")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			for c := range 2 {
				waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
				suspendAndCheck(t, ctx, d)
				for i := 1; i < smpVCPUs; i++ {
					if d.Xen.VCPUOnline(i) {
						t.Errorf("vCPU %d is up in the suspended domain", i)
					}
				}
				resumeAndCheck(t, ctx, d, fast)
			}
			starts := 1
			if !fast {
				starts = 3
			}
			checkSMP(t, waitPoweroff(t, ctx, d, con), 2, starts)
		})
	}
}

// Save and restore into a new domain, twice: the saved configuration
// carries vcpus, the new domain has as many, its secondaries start down
// and uninitialised, and the guest initialises them again.
func TestSMPSaveRestore(t *testing.T) {
	ts := New(nil)
	d, con := smpGuest(t, ts, "test=smp cycles=2")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	for c := range 2 {
		dd := d
		t.Cleanup(func() {
			if x := dd.Xen.Exit(); x.Crash != nil {
				t.Logf("domain %d: %s", dd.ID, x.Crash.Report())
			}
		})
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
		if xl := d.XLConfig(); !strings.Contains(xl, "vcpus = 3\n") {
			t.Errorf("XLConfig lacks vcpus:\n%s", xl)
		}
		path := filepath.Join(t.TempDir(), "g.save")
		if err := d.Save(ctx, path, false); err != nil {
			t.Fatalf("save %d: %v", c, err)
		}
		nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
		if err != nil {
			t.Fatalf("restore %d: %v", c, err)
		}
		t.Cleanup(func() {
			if _, err := ts.Lookup(nd.ID); err == nil {
				nd.Destroy()
			}
		})
		if n := len(nd.Machine().VCPUs()); n != smpVCPUs {
			t.Fatalf("restored domain has %d vCPUs, want %d", n, smpVCPUs)
		}
		for i := 1; i < smpVCPUs; i++ {
			if nd.Xen.VCPUOnline(i) || nd.Xen.RunstateArea(i) != 0 {
				t.Errorf("restored vCPU %d: online %v, runstate area %#x: want down, none", i, nd.Xen.VCPUOnline(i), nd.Xen.RunstateArea(i))
			}
		}
		d = nd
		d.Unpause()
	}
	checkSMP(t, waitPoweroff(t, ctx, d, con), 2, 3)
}

// The negative controls: a guest that does not re-register its runstate
// areas after a resume in a new domain sees them stop updating, and one
// that does not bring a secondary up finds it stuck down. In the same
// domain (a checkpoint), the areas are kept and the first guest passes.
func TestSMPNegativeControls(t *testing.T) {
	for _, c := range []struct {
		name, cmdline string
		restore       bool
		want          string // "" for SUCCESS
	}{
		{"forget-runstate, new domain", "forget-runstate=1", true, "runstate area stopped updating after a new-domain resume"},
		{"forget-runstate, checkpoint", "forget-runstate=1", false, ""},
		{"forget-up, new domain", "forget-up=1", true, "vcpu 2 is stuck after a new-domain resume"},
		{"forget-up, checkpoint", "forget-up=1", false, "vcpu 2 is stuck after a same-domain resume"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := New(nil)
			d, con := smpGuest(t, ts, "test=smp cycles=1 "+c.cmdline)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			path := filepath.Join(t.TempDir(), "g.save")
			if err := d.Save(ctx, path, !c.restore); err != nil {
				t.Fatal(err)
			}
			if c.restore {
				nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { nd.Destroy() })
				d = nd
				d.Unpause()
			}
			exit, err := d.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			r := result{console: con.String(), exit: exit, dom: d}
			l := resultLine(t, r.console)
			if c.want == "" {
				if l != "Test result: SUCCESS" {
					t.Fatalf("%s\n%s", l, r.console)
				}
				return
			}
			if !strings.HasPrefix(l, "Test result: FAILURE") || !strings.Contains(l, c.want) {
				t.Fatalf("%s: want a FAILURE with %q\n%s", l, c.want, r.console)
			}
		})
	}
}

// keep-up=1: the secondaries stay up, busy, through every suspend, as
// Linux's do: every vCPU's context is in the save stream (one
// X86_PV_VCPU_BASIC each, which Xen's verifier accepts) and restored up,
// carrying on where it was (one start each); a fast resume keeps them; a
// fast=0 resume resets them, and the guest starts them again.
func TestSMPKeepUp(t *testing.T) {
	const cycles = 2
	steps := 200000 * (1 + 2*cycles)
	t.Run("save-restore", func(t *testing.T) {
		ts := New(nil)
		d, con := smpGuest(t, ts, "test=smp keep-up=1 cycles=2")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		d.Unpause()
		for c := range cycles {
			waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
			path := filepath.Join(t.TempDir(), "g.save")
			if err := d.Save(ctx, path, false); err != nil {
				t.Fatalf("save %d: %v", c, err)
			}
			verify(t, path)
			_, recs := readSave(t, path)
			n := 0
			for _, r := range recs {
				if r.Type == stream.RecX86PVVCPUBasic {
					n++
				}
			}
			if n != smpVCPUs {
				t.Fatalf("%d X86_PV_VCPU_BASIC records, want %d", n, smpVCPUs)
			}
			nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
			if err != nil {
				t.Fatalf("restore %d: %v", c, err)
			}
			t.Cleanup(func() {
				if _, err := ts.Lookup(nd.ID); err == nil {
					nd.Destroy()
				}
			})
			for i := range smpVCPUs {
				if !nd.Xen.VCPUOnline(i) {
					t.Errorf("restored vCPU %d is down", i)
				}
			}
			d = nd
			d.Unpause()
		}
		checkSMPSteps(t, waitPoweroff(t, ctx, d, con), steps, 1)
	})
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "fast", false: "noncooperative"}[fast]
		t.Run(name, func(t *testing.T) {
			d, con := smpGuest(t, nil, "test=smp keep-up=1 cycles=2")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			for c := range cycles {
				waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
				suspendAndCheck(t, ctx, d)
				resumeAndCheck(t, ctx, d, fast)
			}
			starts := 1
			if !fast {
				starts = 1 + cycles
			}
			checkSMPSteps(t, waitPoweroff(t, ctx, d, con), steps, starts)
		})
	}
}

// Hot-plug through cpu/N/availability, as xl vcpu-set: the domain has
// maxvcpus vCPUs, the first vcpus "online" at boot; the guest (hotplug=1,
// a watch on "cpu" as Linux's cpu_hotplug.c) brings up only those, then
// follows every change; the nodes are the guest's to read, not to write.
func TestSMPHotplug(t *testing.T) {
	d, con := create(t, nil, "test=smp hotplug=1", func(c *DomainConfig) { c.VCPUs, c.MaxVCPUs = 2, smpVCPUs })
	store := d.ts.Store()
	for i, want := range []string{"online", "online", "offline"} {
		path := fmt.Sprintf("%s/cpu/%d/availability", xenstore.DomainPath(uint32(d.ID)), i)
		if v, err := store.Read(path); err != nil || v != want {
			t.Errorf("%s = %q, %v; want %q", path, v, err, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "smp: 3 vcpus online=2")
	if d.Xen.VCPUOnline(2) {
		t.Error("vCPU 2 is up while offline in cpu/2/availability")
	}
	for _, c := range []struct{ n, want int }{{3, 3}, {1, 1}, {2, 2}} {
		// The guest may pass through other counts on its way (3 -> 1
		// prints online=2 first): only a line printed after this
		// vcpu-set, and the last count, say it is done.
		from := len(con.String())
		if err := d.SetVCPUs(c.n); err != nil {
			t.Fatal(err)
		}
		waitForAfter(t, con, from, fmt.Sprintf("smp: online=%d\n", c.want))
		for i := 1; i < smpVCPUs; i++ {
			if up := d.Xen.VCPUOnline(i); up != (i < c.want) {
				t.Errorf("vcpu-set %d: vCPU %d up %v", c.n, i, up)
			}
		}
	}
	for _, n := range []int{0, smpVCPUs + 1} {
		if err := d.SetVCPUs(n); err == nil {
			t.Errorf("vcpu-set %d accepted", n)
		}
	}
	if err := d.RequestShutdown("poweroff"); err != nil {
		t.Fatal(err)
	}
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	if xl := d.XLConfig(); !strings.Contains(xl, "vcpus = 2\nmaxvcpus = 3\n") {
		t.Errorf("XLConfig:\n%s", xl)
	}
}
