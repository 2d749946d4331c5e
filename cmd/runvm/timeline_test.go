package main

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/timeline"
)

// --trace-file writes a timeline of the domain's life: every lifecycle
// operation a span, in order, with the states it went between; xenstore
// traffic as instants; runvm timeline draws a suspend as SVG.
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
	var ops []string
	for _, s := range tr.Spans() {
		ops = append(ops, s.Name+":"+s.Args["from"].(string)+">"+s.Args["to"].(string))
	}
	want := "unpause:created>running suspend:running>suspended resume:suspended>paused unpause:paused>running shutdown:running>running"
	if got := strings.Join(ops, " "); got != want {
		t.Errorf("spans\n got %s\nwant %s", got, want)
	}
	xs := 0
	for _, e := range tr.TraceEvents {
		if e.Ph == "i" && e.TID == timeline.TrackXenstore && strings.HasPrefix(e.Name, "WRITE control/shutdown") {
			xs++
		}
	}
	if xs == 0 {
		t.Error("no xenstore traffic in the timeline")
	}
	svg := filepath.Join(t.TempDir(), "s.svg")
	if code, _, errs := runvm(t, "timeline", "-o", svg, trace); code != 0 {
		t.Fatalf("timeline: %d %s", code, errs)
	}
	sb, _ := os.ReadFile(svg)
	if err := xml.Unmarshal(sb, new(struct{})); err != nil || !strings.Contains(string(sb), "suspend: ") {
		t.Errorf("SVG: %v\n%.300s", err, sb)
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
