package toolstack

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

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
	// In the ring-3 model events arrive by the event callback's bounce,
	// not an injected interrupt: the counts above are the proof.
	// Destroying the guest leaves dom0's port unbound, not dangling.
	d.Destroy()
	if st, _ := dom0.Status(local); st.State != xen.StatUnbound {
		t.Errorf("dom0's port after the guest died: %+v", st)
	}
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
