package timeline

import (
	"fmt"
	"html"
	"io"
	"math"
	"sort"
	"strings"
)

// Cycle picks the spans to draw: the n-th (from 0) top-level span on the
// toolstack track whose name starts with prefix ("" for any), and every
// event inside it. It returns the root and its contents.
func (t *Trace) Cycle(prefix string, n int) (Event, []Event, error) {
	var roots []Event
	var end float64
	for _, s := range t.Spans() {
		if s.TID != TrackToolstack {
			continue
		}
		if s.TS < end-Epsilon { // inside the previous root
			continue
		}
		end = s.TS + s.Dur
		if strings.HasPrefix(s.Name, prefix) {
			roots = append(roots, s)
		}
	}
	if n < 0 || n >= len(roots) {
		return Event{}, nil, fmt.Errorf("timeline: %d top-level spans named %q*, no number %d", len(roots), prefix, n)
	}
	root := roots[n]
	var in []Event
	for _, e := range t.TraceEvents {
		same := e.Ph == root.Ph && e.TS == root.TS && e.Dur == root.Dur && e.TID == root.TID && e.Name == root.Name
		if (e.Ph == "X" || e.Ph == "i") && Inside(e, root) && !same {
			in = append(in, e)
		}
	}
	return root, in, nil
}

var trackNames = map[int]string{TrackToolstack: "toolstack", TrackGuest: "guest", TrackXenstore: "xenstore"}

// SVG draws a root span and the events inside it as a static timeline:
// one band per track, spans as bars nested by depth, instants as ticks,
// a time axis in microseconds or milliseconds, and each span's duration.
func SVG(w io.Writer, root Event, events []Event) error {
	const (
		width, left, right = 1200.0, 110.0, 20.0
		rowH, top          = 22.0, 40.0
	)
	scale := (width - left - right) / math.Max(root.Dur, 1e-3)
	x := func(ts float64) float64 { return left + (ts-root.TS)*scale }

	// Tracks present, and each span's depth within its track.
	type placed struct {
		e     Event
		depth int
	}
	byTrack := map[int][]placed{}
	spans := append([]Event{root}, events...)
	sort.SliceStable(spans, func(i, j int) bool {
		if spans[i].TS != spans[j].TS {
			return spans[i].TS < spans[j].TS
		}
		return spans[i].Dur > spans[j].Dur
	})
	for _, e := range spans {
		if e.Ph != "X" {
			continue
		}
		open := byTrack[e.TID]
		depth := 0
		for i := len(open) - 1; i >= 0; i-- { // the innermost span that contains e
			p := open[i]
			if Inside(e, p.e) {
				depth = p.depth + 1
				break
			}
		}
		byTrack[e.TID] = append(open, placed{e, depth})
	}
	for _, e := range events {
		if e.Ph == "i" {
			if _, ok := byTrack[e.TID]; !ok {
				byTrack[e.TID] = nil
			}
		}
	}
	tracks := make([]int, 0, len(byTrack))
	for tid := range byTrack {
		tracks = append(tracks, tid)
	}
	sort.Ints(tracks)
	trackTop := map[int]float64{}
	y := top
	for _, tid := range tracks {
		trackTop[tid] = y
		depth := 0
		for _, p := range byTrack[tid] {
			depth = max(depth, p.depth)
		}
		y += float64(depth+2) * rowH
	}
	height := y + 30

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="monospace" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="14">%s: %s</text>`+"\n", left, html.EscapeString(root.Name), duration(root.Dur))
	// Time axis: about ten ticks at a round step.
	step := roundStep(root.Dur / 10)
	for t := 0.0; t <= root.Dur+1e-9; t += step {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ddd"/>`+"\n", x(root.TS+t), top-8, x(root.TS+t), height-25)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#666">%s</text>`+"\n", x(root.TS+t), height-10, duration(t))
	}
	palette := []string{"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#e15759", "#9c755f"}
	color := func(name string) string {
		h := 0
		for _, c := range name {
			h = h*31 + int(c)
		}
		return palette[(h%len(palette)+len(palette))%len(palette)]
	}
	for _, tid := range tracks {
		ty := trackTop[tid]
		name := trackNames[tid]
		if name == "" {
			name = fmt.Sprintf("track %d", tid)
		}
		fmt.Fprintf(&b, `<text x="8" y="%.0f" font-weight="bold">%s</text>`+"\n", ty+15, name)
		for _, p := range byTrack[tid] {
			e := p.e
			bx, bw := x(e.TS), math.Max(e.Dur*scale, 1)
			by := ty + float64(p.depth)*rowH
			label := e.Name + " " + duration(e.Dur)
			fmt.Fprintf(&b, `<g><title>%s</title><rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s" stroke="white"/>`,
				html.EscapeString(label), bx, by, bw, rowH-3, color(e.Name))
			if float64(len(label))*6.6 < bw {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" fill="white">%s</text>`, bx+3, by+14, html.EscapeString(label))
			}
			b.WriteString("</g>\n")
		}
		for _, e := range events {
			if e.Ph == "i" && e.TID == tid {
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#333"><title>%s</title></line>`+"\n",
					x(e.TS), ty, x(e.TS), ty+rowH-3, html.EscapeString(e.Name))
			}
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// duration formats microseconds.
func duration(us float64) string {
	switch {
	case us >= 1000:
		return fmt.Sprintf("%.2f ms", us/1000)
	case us >= 10:
		return fmt.Sprintf("%.0f µs", us)
	}
	return fmt.Sprintf("%.1f µs", us)
}

// roundStep rounds a tick step up to 1, 2 or 5 times a power of ten.
func roundStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
