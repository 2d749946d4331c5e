package toolstack

import (
	"bytes"
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/timeline"
)

// A suspend, a resume and a checkpoint of the stub on a timeline: the file
// is JSON, its spans nest on every track, each operation's phases appear
// in order and tile its span (their durations add up to the measured
// operation within 5%, the rule; by construction they do
// exactly), and the hypercalls, the first one after the resume and the
// exit counters are there.
func TestTimelinePhases(t *testing.T) {
	d, con, ctx := startGuest(t, "test=idle", "suspend: ready cycle=0")
	tl := timeline.New(int(d.ID), "test")
	d.SetTimeline(tl)
	if err := d.Suspend(ctx, quick); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=1")
	if err := d.Save(ctx, filepath.Join(t.TempDir(), "g.save"), true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, con, "suspend: ready cycle=2")
	d.Destroy()

	var buf bytes.Buffer
	if err := tl.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if !json.Valid(buf.Bytes()) {
		t.Fatal("the trace is not JSON")
	}
	tr, err := timeline.Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.CheckNesting(); err != nil {
		t.Fatal(err)
	}
	ops := map[string]timeline.Event{}
	for _, s := range tr.Spans() {
		if s.Cat == "lifecycle" && s.TID == timeline.TrackToolstack {
			if _, dup := ops[s.Name]; !dup {
				ops[s.Name] = s
			}
		}
	}
	byName := func(parent timeline.Event, name string) timeline.Event {
		for _, c := range tr.Children(parent) {
			if c.Name == name {
				return c
			}
		}
		t.Fatalf("%s has no phase %s", parent.Name, name)
		return timeline.Event{}
	}
	tests := []struct {
		name   string
		parent func() timeline.Event
		want   string
	}{
		{"suspend", func() timeline.Event { return ops["suspend"] }, "request ack suspend hypercall pause"},
		{"resume", func() timeline.Event { return ops["resume"] }, "registers time and event channels XS_RESUME"},
		{"save", func() timeline.Event { return ops["save"] }, "suspend stream fsync rename resume unpause"},
		{"save/suspend", func() timeline.Event { return byName(ops["save"], "suspend") }, "request ack suspend hypercall pause"},
		{"save/stream", func() timeline.Event { return byName(ops["save"], "stream") },
			"headers X86_PV_INFO STATIC_DATA_END X86_PV_P2M_FRAMES PAGE_DATA X86_TSC_INFO SHARED_INFO X86_PV_VCPU_BASIC END LIBXL_END"},
		{"save/resume", func() timeline.Event { return byName(ops["save"], "resume") }, "registers time and event channels XS_RESUME"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.parent()
			if p.Dur <= 0 {
				t.Fatalf("no span %s", tc.name)
			}
			kids := tr.Children(p)
			var names []string
			sum := 0.0
			for _, k := range kids {
				names = append(names, k.Name)
				sum += k.Dur
			}
			if got := strings.Join(names, " "); got != tc.want {
				t.Errorf("phases %q, want %q", got, tc.want)
			}
			if math.Abs(sum-p.Dur) > 0.05*p.Dur {
				t.Errorf("phases add up to %.1f µs, the operation took %.1f µs", sum, p.Dur)
			}
		})
	}
	if pd := byName(byName(ops["save"], "stream"), "PAGE_DATA"); pd.Args["pages"].(float64) < 1 || pd.Args["records"].(float64) < 1 {
		t.Errorf("PAGE_DATA args %v", pd.Args)
	}
	var hypercalls, first, exits int
	for _, e := range tr.TraceEvents {
		switch {
		case e.Ph == "i" && e.Cat == "hypercall" && e.TID == timeline.TrackGuest:
			hypercalls++
		case e.Ph == "i" && e.Name == "first hypercall after resume" && e.TS >= ops["resume"].TS+ops["resume"].Dur:
			first++
		case e.Ph == "C" && e.Name == "exits" && len(e.Args) > 0:
			exits++
		}
	}
	if hypercalls == 0 || first != 2 || exits == 0 {
		t.Errorf("%d hypercall instants, %d first-hypercall marks after a resume (want 2), %d exit samples", hypercalls, first, exits)
	}
}
