package toolstack

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

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

func TestCreateRejectsBadImage(t *testing.T) {
	_, err := New(nil).Create(DomainConfig{Image: []byte("not a kernel")})
	if !errors.Is(err, builder.ErrBadImage) {
		t.Fatalf("got %v", err)
	}
}

func TestUnknownScenario(t *testing.T) {
	r := boot(t, "test=no-such-test")
	if l := resultLine(t, r.console); !strings.Contains(l, "ERROR: unknown test 'no-such-test'") {
		t.Errorf("result %q", l)
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
