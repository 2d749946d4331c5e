package main

import (
	"encoding/json"
	"encoding/xml"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/timeline"
)

// timelineSVG, when set, is where TestTraceFile also writes the suspend
// cycle it drew: docs/timeline-suspend.svg is made with
//
//	go test ./cmd/runvm -run 'TestTraceFile$' -count=1 -timeline-svg ../../docs/timeline-suspend.svg
var timelineSVG = flag.String("timeline-svg", "", "write TestTraceFile's suspend cycle as SVG to `FILE` (relative to cmd/runvm)")

// --trace-file writes a timeline of the domain's life: every lifecycle
// operation a span, in order, with the states it went between, and its
// phases nested inside it (a suspend's request, ack, suspend hypercall and
// pause, in order, adding up to the suspend within 5%); hypercalls and
// xenstore traffic as instants; runvm timeline draws a suspend as SVG.
func TestTraceFile(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	trace := filepath.Join(t.TempDir(), "g.json")
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"run", "--runtime-dir", dir, "--name", "tl", "--mem", "16M", "--cmdline", "test=idle",
			"--trace-file", trace}, out, errb)
	}()
	waitOut(t, out, "suspend: ready cycle=0")
	mustCtl(t, dir, "suspend", "tl")
	mustCtl(t, dir, "resume", "--fast", "tl")
	waitOut(t, out, "suspend: ready cycle=1")
	mustCtl(t, dir, "shutdown", "tl")
	if code := waitExit(t, done, errb); code != exitPoweroff {
		t.Fatalf("exit %d\n%s", code, errb)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	f, _ := os.Open(trace)
	defer f.Close()
	tr, err := timeline.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.CheckNesting(); err != nil {
		t.Error(err)
	}
	var ops []string
	var suspend timeline.Event
	for _, s := range tr.Spans() {
		if s.Cat != "lifecycle" {
			continue
		}
		if s.Name == "suspend" {
			suspend = s
		}
		ops = append(ops, s.Name+":"+s.Args["from"].(string)+">"+s.Args["to"].(string))
	}
	var phases []string
	sum := 0.0
	for _, p := range tr.Children(suspend) {
		phases = append(phases, p.Name)
		sum += p.Dur
	}
	if got, want := strings.Join(phases, ","), "request,ack,suspend hypercall,pause"; got != want {
		t.Errorf("suspend phases %q, want %q", got, want)
	}
	if math.Abs(sum-suspend.Dur) > 0.05*suspend.Dur {
		t.Errorf("suspend phases add up to %.1f µs, the suspend took %.1f µs", sum, suspend.Dur)
	}
	want := "unpause:created>running suspend:running>suspended resume:suspended>paused unpause:paused>running shutdown:running>running"
	if got := strings.Join(ops, " "); got != want {
		t.Errorf("spans\n got %s\nwant %s", got, want)
	}
	xs, hc := 0, 0
	for _, e := range tr.TraceEvents {
		if e.Ph == "i" && e.TID == timeline.TrackXenstore && strings.HasPrefix(e.Name, "WRITE control/shutdown") {
			xs++
		}
		if e.Ph == "i" && e.TID == timeline.TrackGuest && e.Cat == "hypercall" {
			hc++
		}
	}
	if xs == 0 || hc == 0 {
		t.Errorf("%d xenstore requests, %d hypercalls in the timeline", xs, hc)
	}
	svg := filepath.Join(t.TempDir(), "s.svg")
	if code, _, errs := runvm(t, "timeline", "-o", svg, trace); code != 0 {
		t.Fatalf("timeline: %d %s", code, errs)
	}
	sb, _ := os.ReadFile(svg)
	if err := xml.Unmarshal(sb, new(struct{})); err != nil || !strings.Contains(string(sb), "suspend: ") ||
		!strings.Contains(string(sb), "suspend hypercall") {
		t.Errorf("SVG: %v\n%.300s", err, sb)
	}
	if *timelineSVG != "" {
		if err := os.WriteFile(*timelineSVG, sb, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Bad input: one line, exit 1.
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte("{nope"), 0o600)
	for _, args := range [][]string{{"timeline", bad}, {"timeline", "--op", "save", trace}} {
		if code, _, errs := runvm(t, args...); code != exitError || strings.Count(errs, "\n") != 1 {
			t.Errorf("%v: exit %d %q", args, code, errs)
		}
	}
}
