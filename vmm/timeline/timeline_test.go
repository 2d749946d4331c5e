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
