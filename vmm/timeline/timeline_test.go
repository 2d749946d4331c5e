package timeline

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

// clock is a fake time source advancing by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }

func newTest() (*Recorder, *clock) {
	r := New(7, "domain 7")
	c := &clock{t: r.start}
	r.now = c.now
	return r, c
}

// A suspend cycle's phases as the toolstack would record them.
func cycle(r *Recorder, c *clock) {
	all := r.Begin(TrackToolstack, "suspend", "suspend cycle", nil)
	req := r.Begin(TrackToolstack, "suspend", "request", nil)
	c.add(100 * time.Microsecond)
	r.Instant(TrackXenstore, "xenstore", "WRITE control/shutdown", nil)
	c.add(200 * time.Microsecond)
	req.End(nil)
	ack := r.Begin(TrackToolstack, "suspend", "ack", nil)
	c.add(time.Millisecond)
	ack.End(map[string]any{"value": ""})
	r.Instant(TrackGuest, "hypercall", "sched_op(shutdown, suspend)", nil)
	c.add(50 * time.Microsecond)
	all.End(nil)
}

func TestRecordAndNest(t *testing.T) {
	r, c := newTest()
	cycle(r, c)
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(buf.Bytes(), &generic); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	tr, err := Read(&buf)
	if err != nil {
		t.Fatal(err)
	}
	spans := tr.Spans()
	if len(spans) != 3 || spans[0].Name != "suspend cycle" || spans[1].Name != "request" || spans[2].Name != "ack" {
		t.Fatalf("spans %+v", spans)
	}
	// Children inside their parent; phases in order; durations add up.
	root := spans[0]
	sum := 0.0
	for _, s := range spans[1:] {
		if s.TS < root.TS || s.TS+s.Dur > root.TS+root.Dur {
			t.Errorf("%s escapes its parent", s.Name)
		}
		sum += s.Dur
	}
	if spans[1].TS+spans[1].Dur > spans[2].TS {
		t.Error("phases overlap")
	}
	if root.Dur != 1350 || sum != 1300 || spans[2].Args["value"] != "" {
		t.Errorf("durations: root %v, phases %v, args %v", root.Dur, sum, spans[2].Args)
	}
}

func TestSamplingAndBudget(t *testing.T) {
	r, _ := newTest()
	r.KeepFirst, r.Sample = 10, 100
	for i := 0; i < 1010; i++ {
		r.Instant(TrackGuest, "exit", "io", nil)
	}
	tr := r.Snapshot()
	n := 0
	for _, e := range tr.TraceEvents {
		if e.Name == "io" {
			n++
		}
	}
	if n != 20 || tr.OtherData["instant_counts"].(map[string]uint64)["io"] != 1010 {
		t.Errorf("kept %d of 1010; metadata %v", n, tr.OtherData)
	}
	r.MaxEvents = len(r.events)
	r.Begin(TrackToolstack, "x", "late", nil).End(nil)
	if d := r.Snapshot().OtherData["left_out"].(map[string]uint64); d["late"] != 1 {
		t.Errorf("left out: %v", d)
	}
	var nilRec *Recorder
	nilRec.Begin(1, "x", "y", nil).End(nil) // records nothing, does not panic
	nilRec.Instant(1, "x", "y", nil)
	nilRec.Counter("c", nil)
}

func TestReadRefuses(t *testing.T) {
	for _, in := range []string{"", "{", "[]", `{"other":1}`, "not json"} {
		if _, err := Read(strings.NewReader(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestSVG(t *testing.T) {
	r, c := newTest()
	cycle(r, c)
	c.add(time.Millisecond)
	cycle(r, c)
	tr := r.Snapshot()
	root, in, err := tr.Cycle("suspend", 1)
	if err != nil {
		t.Fatal(err)
	}
	if root.Name != "suspend cycle" || len(in) != 4 {
		t.Fatalf("cycle 1: %v, %d events inside", root.Name, len(in))
	}
	if _, _, err := tr.Cycle("suspend", 2); err == nil {
		t.Error("a third cycle was found")
	}
	var buf bytes.Buffer
	if err := SVG(&buf, root, in); err != nil {
		t.Fatal(err)
	}
	svg := buf.String()
	if err := xml.Unmarshal(buf.Bytes(), new(struct{})); err != nil {
		t.Fatalf("not XML: %v", err)
	}
	for _, want := range []string{"suspend cycle: 1.35 ms", "request 300 µs", "ack 1.00 ms", ">toolstack<", ">guest<", ">xenstore<"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

// Phases tile their span: each begins where the previous ended, the first
// where the span began, the last ends with it; phases nest, and
// CheckNesting and Children see them so.
func TestPhasesTile(t *testing.T) {
	r, c := newTest()
	op := r.Begin(TrackToolstack, "lifecycle", "save", map[string]any{"from": "running"})
	c.add(10 * time.Microsecond) // before the first phase: it is the first's
	sus := op.Phase("suspend", nil)
	for _, p := range []string{"request", "ack", "hypercall", "pause"} {
		sus.Phase(p, nil)
		c.add(100 * time.Microsecond)
	}
	pages := op.Phase("PAGE_DATA", nil)
	c.add(time.Millisecond)
	pages.Set("pages", 42)
	op.Phase("fsync", nil)
	c.add(30 * time.Microsecond)
	op.End(map[string]any{"to": "destroyed"})
	op.End(nil)                               // a second End does nothing
	if p := op.Phase("late", nil); p != nil { // nor a phase after it
		t.Error("Phase after End returned a span")
	}
	tr := r.Snapshot()
	if err := tr.CheckNesting(); err != nil {
		t.Fatal(err)
	}
	spans := tr.Spans()
	if len(spans) != 8 {
		t.Fatalf("%d spans, want 8: %+v", len(spans), spans)
	}
	root := spans[0]
	tests := []struct {
		parent Event
		want   string
	}{
		{root, "suspend PAGE_DATA fsync"},
		{spans[1], "request ack hypercall pause"},
	}
	for _, tc := range tests {
		kids := tr.Children(tc.parent)
		var names []string
		sum, at := 0.0, tc.parent.TS
		for _, k := range kids {
			names = append(names, k.Name)
			if k.TS != at {
				t.Errorf("%s begins at %v, the previous phase ended at %v", k.Name, k.TS, at)
			}
			at = k.TS + k.Dur
			sum += k.Dur
		}
		if got := strings.Join(names, " "); got != tc.want {
			t.Errorf("children of %s: %q, want %q", tc.parent.Name, got, tc.want)
		}
		if sum != tc.parent.Dur {
			t.Errorf("children of %s add up to %v µs, it lasts %v", tc.parent.Name, sum, tc.parent.Dur)
		}
	}
	if root.Args["from"] != "running" || root.Args["to"] != "destroyed" {
		t.Errorf("root args %v", root.Args)
	}
	for _, s := range spans {
		if s.Name == "PAGE_DATA" && s.Args["pages"] != 42 {
			t.Errorf("PAGE_DATA args %v", s.Args)
		}
	}
	var nilSpan *Span
	if nilSpan.Phase("x", nil) != nil {
		t.Error("a nil span's phase is not nil")
	}
	nilSpan.Set("k", 1)
}

// CheckNesting finds spans on one track that overlap without nesting, and
// allows the same overlap on two tracks.
func TestCheckNesting(t *testing.T) {
	tests := []struct {
		name   string
		spans  []Event
		wantOK bool
	}{
		{"nested", []Event{{Name: "a", Ph: "X", TS: 0, Dur: 10, TID: 1}, {Name: "b", Ph: "X", TS: 2, Dur: 8, TID: 1}}, true},
		{"disjoint", []Event{{Name: "a", Ph: "X", TS: 0, Dur: 10, TID: 1}, {Name: "b", Ph: "X", TS: 10, Dur: 8, TID: 1}}, true},
		{"overlap", []Event{{Name: "a", Ph: "X", TS: 0, Dur: 10, TID: 1}, {Name: "b", Ph: "X", TS: 5, Dur: 8, TID: 1}}, false},
		{"float rounding", []Event{{Name: "a", Ph: "X", TS: 0, Dur: 10.0000001, TID: 1}, {Name: "b", Ph: "X", TS: 10, Dur: 5, TID: 1}}, true},
		{"other track", []Event{{Name: "a", Ph: "X", TS: 0, Dur: 10, TID: 1}, {Name: "b", Ph: "X", TS: 5, Dur: 8, TID: 2}}, true},
	}
	for _, tc := range tests {
		err := (&Trace{TraceEvents: tc.spans}).CheckNesting()
		if (err == nil) != tc.wantOK {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
