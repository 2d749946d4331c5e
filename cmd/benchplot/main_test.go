package main

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `# 2026-11-29: xenresume alone, median of 3; sweep=touched
sweep	configured_mib	touched_mib	save_ms	restore_ms	file_bytes
touched	512	1	10.5	3.25	1400000
touched	512	2	11.0	3.50	2450000
touched	512	4	12.0	4.00	4548904
# 2026-11-29: xenresume alone, median of 3; sweep=configured
sweep	configured_mib	touched_mib	save_ms	restore_ms	file_bytes
configured	64	4	20	2	4548904
configured	128	4	21	3	4700000
`

// The sample parses into its two sweeps, and each draws as an SVG that
// is well-formed XML and names its axes.
func TestPlotSample(t *testing.T) {
	sweeps, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(sweeps) != 2 || sweeps[0].Kind != "touched" || len(sweeps[0].Points) != 3 || sweeps[1].Kind != "configured" || len(sweeps[1].Points) != 2 {
		t.Fatalf("parsed %+v", sweeps)
	}
	if p := sweeps[0].Points[2]; p != (Point{512, 4, 12, 4, 4548904}) {
		t.Fatalf("row %+v", p)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "sweep.tsv")
	if err := os.WriteFile(in, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := plotFile(in, dir, "svg"); err != nil {
		t.Fatal(err)
	}
	if err := plotFile(in, dir, "png"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "perf-touched.png")); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("no PNG: %v", err)
	}
	for _, kind := range []string{"touched", "configured"} {
		b, err := os.ReadFile(filepath.Join(dir, "perf-"+kind+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		for {
			if _, err := d.Token(); err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("%s: not well-formed: %v", kind, err)
				}
				break
			}
		}
		if !bytes.Contains(b, []byte(kind+" memory (MiB)")) || !bytes.Contains(b, []byte("time (ms)")) {
			t.Fatalf("%s: the axes are not labelled", kind)
		}
	}
}

// Malformed input is refused with the line at fault, never plotted.
func TestPlotRefusals(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"empty", "# nothing\n", "no rows"},
		{"short row", "touched\t1\t2\n", "line 1: 3 fields"},
		{"unknown sweep", "sideways\t1\t2\t3\t4\t5\n", "sweep \"sideways\""},
		{"not a number", "touched\t512\tx\t3\t4\t5\n", "field 3"},
		{"negative", "touched\t512\t1\t-3\t4\t5\n", "field 4"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse(strings.NewReader(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v, want an error about %q", err, tt.want)
			}
		})
	}
}
