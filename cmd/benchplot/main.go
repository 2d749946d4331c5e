// Command benchplot draws how save and restore cost grows, from the
// tables `benchpeers -sweep touched|configured` prints: for each sweep in
// the input, an SVG with time (save, restore) and save-file size against
// the swept memory size, side by side.
//
//	benchplot -out docs/ sweep-touched.tsv sweep-configured.tsv
//
// writes docs/perf-touched.svg and docs/perf-configured.svg (the command
// in docs/PERFORMANCE.md regenerates them).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Point is one row of a sweep.
type Point struct {
	ConfiguredMiB, TouchedMiB float64
	SaveMs, RestoreMs         float64
	FileBytes                 float64
}

// Sweep is one sweep's rows, with the comment lines that say how they were
// measured.
type Sweep struct {
	Kind   string // "touched" or "configured"
	Notes  []string
	Points []Point
}

func main() {
	out := flag.String("out", ".", "directory for the plots")
	format := flag.String("format", "svg", "svg or png")
	flag.Parse()
	if *format != "svg" && *format != "png" {
		fmt.Fprintln(os.Stderr, "benchplot: -format svg or png")
		os.Exit(2)
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: benchplot [-out DIR] SWEEP.tsv...")
		os.Exit(2)
	}
	for _, path := range flag.Args() {
		if err := plotFile(path, *out, *format); err != nil {
			fmt.Fprintln(os.Stderr, "benchplot:", err)
			os.Exit(1)
		}
	}
}

func plotFile(path, out, format string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sweeps, err := Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, s := range sweeps {
		name := filepath.Join(out, "perf-"+s.Kind+"."+format)
		w, err := os.Create(name)
		if err != nil {
			return err
		}
		if err := Draw(w, s, format); err != nil {
			w.Close()
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return nil
}

// Parse reads benchpeers' sweep tables: "#" comment lines, a header line
// and tab-separated rows (sweep, configured_mib, touched_mib, save_ms,
// restore_ms, file_bytes), one sweep or several.
func Parse(r io.Reader) ([]*Sweep, error) {
	var sweeps []*Sweep
	var notes []string
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		t := strings.TrimSpace(sc.Text())
		switch {
		case t == "":
			continue
		case strings.HasPrefix(t, "#"):
			notes = append(notes, strings.TrimSpace(strings.TrimPrefix(t, "#")))
			continue
		case strings.HasPrefix(t, "sweep\t"):
			continue
		}
		f := strings.Split(t, "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("line %d: %d fields, want 6", line, len(f))
		}
		if f[0] != "touched" && f[0] != "configured" {
			return nil, fmt.Errorf("line %d: sweep %q, want touched or configured", line, f[0])
		}
		var v [5]float64
		for i := range v {
			x, err := strconv.ParseFloat(f[i+1], 64)
			if err != nil || x < 0 {
				return nil, fmt.Errorf("line %d: field %d %q: not a non-negative number", line, i+2, f[i+1])
			}
			v[i] = x
		}
		if len(sweeps) == 0 || sweeps[len(sweeps)-1].Kind != f[0] {
			sweeps = append(sweeps, &Sweep{Kind: f[0], Notes: notes})
			notes = nil
		}
		s := sweeps[len(sweeps)-1]
		s.Points = append(s.Points, Point{v[0], v[1], v[2], v[3], v[4]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(sweeps) == 0 {
		return nil, fmt.Errorf("no rows")
	}
	return sweeps, nil
}

// Draw writes s as an SVG or a PNG (format): time against the swept size on the left, the
// save file's size on the right, both axes logarithmic in the size.
func Draw(w io.Writer, s *Sweep, format string) error {
	x := func(p Point) float64 { return p.TouchedMiB }
	xlabel := "touched memory (MiB), configured " + strconv.FormatFloat(s.Points[0].ConfiguredMiB, 'f', -1, 64) + " MiB"
	if s.Kind == "configured" {
		x = func(p Point) float64 { return p.ConfiguredMiB }
		xlabel = "configured memory (MiB), " + strconv.FormatFloat(s.Points[0].TouchedMiB, 'f', -1, 64) + " MiB touched"
	}
	xy := func(y func(Point) float64) plotter.XYs {
		pts := make(plotter.XYs, len(s.Points))
		for i, p := range s.Points {
			pts[i].X, pts[i].Y = x(p), y(p)
		}
		return pts
	}
	title := "xenresume save and restore"
	if len(s.Notes) > 0 {
		title += ", " + strings.SplitN(s.Notes[0], ":", 2)[0] // the date
	}
	var ticks []plot.Tick
	for _, p := range s.Points {
		ticks = append(ticks, plot.Tick{Value: x(p), Label: strconv.FormatFloat(x(p), 'f', -1, 64)})
	}
	times := plot.New()
	times.Title.Text = title
	times.X.Label.Text, times.Y.Label.Text = xlabel, "time (ms)"
	sizes := plot.New()
	sizes.Title.Text = "save file size"
	sizes.X.Label.Text, sizes.Y.Label.Text = xlabel, "file size (MiB)"
	for _, p := range []*plot.Plot{times, sizes} {
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.ConstantTicks(ticks)
		p.Add(plotter.NewGrid())
		p.Legend.Top, p.Legend.Left = true, true
	}
	for i, l := range []struct {
		name string
		y    func(Point) float64
	}{{"save (fsynced)", func(p Point) float64 { return p.SaveMs }}, {"restore (to running)", func(p Point) float64 { return p.RestoreMs }}} {
		line, points, err := plotter.NewLinePoints(xy(l.y))
		if err != nil {
			return err
		}
		line.Color, points.Color = plotColor(i), plotColor(i)
		points.Shape = draw.CircleGlyph{}
		times.Add(line, points)
		times.Legend.Add(l.name, line, points)
	}
	line, points, err := plotter.NewLinePoints(xy(func(p Point) float64 { return p.FileBytes / (1 << 20) }))
	if err != nil {
		return err
	}
	line.Color, points.Color = plotColor(2), plotColor(2)
	sizes.Add(line, points)
	sizes.Legend.Add("file", line, points)

	const width, height = 11 * vg.Inch, 4 * vg.Inch
	var c interface {
		vg.CanvasSizer
		io.WriterTo
	}
	if format == "png" {
		c = vgimg.PngCanvas{Canvas: vgimg.New(width, height)}
	} else {
		c = vgsvg.New(width, height)
	}
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 4}
	canvases := plot.Align([][]*plot.Plot{{times, sizes}}, tiles, dc)
	times.Draw(canvases[0][0])
	sizes.Draw(canvases[0][1])
	_, err = c.WriteTo(w)
	return err
}

func plotColor(i int) color.Color {
	return []color.Color{
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	}[i%3]
}
