// Package timeline records what happens to a domain over time as Chrome
// trace events (the JSON that Perfetto and chrome://tracing open): spans
// for the phases of a suspend, checkpoint, save, restore or migration,
// instants for single events (a hypercall, a xenstore request), and
// counters. Spans nest by time on one track (tid), as the viewers nest
// them.
//
// A long run stays small: every kind of event is counted, and past a
// budget per name only one in Sample is kept (spans are always kept, up
// to MaxEvents in all; what was left out is recorded in the trace's
// metadata).
package timeline

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// Tracks (Chrome's tid) a domain's events go on.
const (
	TrackToolstack = 1 // requests and their phases
	TrackGuest     = 2 // what the guest does: hypercalls, exits
	TrackXenstore  = 3 // xenstore traffic
)

// Defaults for a Recorder's budget.
const (
	DefaultMaxEvents = 200_000
	DefaultKeepFirst = 1000 // instants of one name kept before sampling
	DefaultSample    = 100  // then one in this many
)

// Event is one Chrome trace event. Times are microseconds since the
// recording began.
type Event struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`            // X complete span, i instant, C counter, M metadata
	TS   float64        `json:"ts"`            // µs
	Dur  float64        `json:"dur,omitempty"` // µs, for X
	PID  int            `json:"pid"`
	TID  int            `json:"tid"`
	S    string         `json:"s,omitempty"` // instant scope: "t"
	Args map[string]any `json:"args,omitempty"`
}

// Recorder collects a domain's events. Its methods are safe for
// concurrent use; a nil *Recorder records nothing, so callers need not
// check.
type Recorder struct {
	// MaxEvents, KeepFirst and Sample bound the trace (see the package
	// doc); set them before recording.
	MaxEvents, KeepFirst, Sample int

	mu      sync.Mutex
	start   time.Time
	pid     int
	events  []Event
	seen    map[string]uint64 // instants by name
	dropped map[string]uint64 // by name, when MaxEvents or sampling left them out
	now     func() time.Time
}

// New starts a recording for process pid (a domid, say) named name.
func New(pid int, name string) *Recorder {
	r := &Recorder{MaxEvents: DefaultMaxEvents, KeepFirst: DefaultKeepFirst, Sample: DefaultSample,
		start: time.Now(), pid: pid, seen: map[string]uint64{}, dropped: map[string]uint64{}, now: time.Now}
	r.events = append(r.events,
		Event{Name: "process_name", Ph: "M", PID: pid, Args: map[string]any{"name": name}},
		Event{Name: "thread_name", Ph: "M", PID: pid, TID: TrackToolstack, Args: map[string]any{"name": "toolstack"}},
		Event{Name: "thread_name", Ph: "M", PID: pid, TID: TrackGuest, Args: map[string]any{"name": "guest"}},
		Event{Name: "thread_name", Ph: "M", PID: pid, TID: TrackXenstore, Args: map[string]any{"name": "xenstore"}})
	return r
}

func (r *Recorder) us(t time.Time) float64 { return float64(t.Sub(r.start).Nanoseconds()) / 1e3 }

// add appends e unless the budget is spent.
func (r *Recorder) add(e Event) {
	if len(r.events) >= r.MaxEvents {
		r.dropped[e.Name]++
		return
	}
	r.events = append(r.events, e)
}

// Span is a phase in progress; End closes it. A span may be divided into
// phases (Phase): child spans on the same track that tile it.
type Span struct {
	r     *Recorder
	name  string
	cat   string
	tid   int
	begin time.Time

	mu    sync.Mutex
	args  map[string]any
	owned bool  // args is the span's own copy (Set)
	cur   *Span // the phase in progress; nil: none
	done  bool
}

// Begin opens a span on track tid. args may be nil.
func (r *Recorder) Begin(tid int, cat, name string, args map[string]any) *Span {
	if r == nil {
		return nil
	}
	return &Span{r: r, name: name, cat: cat, tid: tid, begin: r.now(), args: args}
}

// End closes the span, adding args to those it began with, and the phase
// in progress at the same instant; a second End does nothing.
func (s *Span) End(args map[string]any) {
	if s == nil {
		return
	}
	s.endAt(s.r.now(), args)
}

func (s *Span) endAt(end time.Time, args map[string]any) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	cur := s.cur
	s.cur = nil
	all := s.args
	if len(args) > 0 {
		all = make(map[string]any, len(s.args)+len(args))
		for k, v := range s.args {
			all[k] = v
		}
		for k, v := range args {
			all[k] = v
		}
	}
	s.mu.Unlock()
	// The span before its last phase, so that where the two have the
	// same extent the parent still comes first (Spans keeps the order).
	r := s.r
	r.mu.Lock()
	r.add(Event{Name: s.name, Cat: s.cat, Ph: "X", TS: r.us(s.begin), Dur: r.us(end) - r.us(s.begin),
		PID: r.pid, TID: s.tid, Args: all})
	r.mu.Unlock()
	if cur != nil {
		cur.endAt(end, nil)
	}
}

// Phase ends the span's phase in progress, if any, and begins the next one,
// named name, at the same instant: a child span on the same track. The
// first phase begins when the span did, and End closes the last one when
// the span ends, so a span's phases tile it: their durations add up to
// its own. A phase may have phases of its own; its category is "phase".
// Phase on a nil or ended
// span returns nil (which records nothing).
func (s *Span) Phase(name string, args map[string]any) *Span {
	if s == nil {
		return nil
	}
	t := s.r.now()
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil
	}
	prev := s.cur
	if prev == nil {
		t = s.begin
	}
	next := &Span{r: s.r, name: name, cat: "phase", tid: s.tid, begin: t, args: args}
	s.cur = next
	s.mu.Unlock()
	if prev != nil {
		prev.endAt(t, nil)
	}
	return next
}

// Set adds an argument the span will be written with (a count known only
// at its end, say).
func (s *Span) Set(key string, value any) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.owned {
		// The map Begin got is the caller's: copy before writing into it.
		m := make(map[string]any, len(s.args)+1)
		for k, v := range s.args {
			m[k] = v
		}
		s.args, s.owned = m, true
	}
	s.args[key] = value
}

// Mark records a point event on track tid that is never sampled out (a
// rare event that matters: the first instruction after a resume). Only
// MaxEvents bounds it.
func (r *Recorder) Mark(tid int, cat, name string, args map[string]any) {
	if r == nil {
		return
	}
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(Event{Name: name, Cat: cat, Ph: "i", S: "t", TS: r.us(t), PID: r.pid, TID: tid, Args: args})
}

// Instant records a point event on track tid: the first KeepFirst of each
// name, then one in Sample (every one is counted).
func (r *Recorder) Instant(tid int, cat, name string, args map[string]any) {
	if r == nil {
		return
	}
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.seen[name]
	r.seen[name] = n + 1
	if n >= uint64(r.KeepFirst) && (r.Sample <= 1 || (n-uint64(r.KeepFirst))%uint64(r.Sample) != 0) {
		r.dropped[name]++
		return
	}
	r.add(Event{Name: name, Cat: cat, Ph: "i", S: "t", TS: r.us(t), PID: r.pid, TID: tid, Args: args})
}

// Counter records values of a counter series (exits so far, pages sent).
func (r *Recorder) Counter(name string, values map[string]any) {
	if r == nil {
		return
	}
	t := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.add(Event{Name: name, Ph: "C", TS: r.us(t), PID: r.pid, TID: TrackGuest, Args: values})
}

// Trace is a recording as written: its events and metadata.
type Trace struct {
	TraceEvents     []Event        `json:"traceEvents"`
	DisplayTimeUnit string         `json:"displayTimeUnit,omitempty"`
	OtherData       map[string]any `json:"otherData,omitempty"`
}

// Snapshot returns what has been recorded so far.
func (r *Recorder) Snapshot() *Trace {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := &Trace{TraceEvents: append([]Event(nil), r.events...), DisplayTimeUnit: "ns",
		OtherData: map[string]any{"recorder": "xenresume"}}
	if len(r.dropped) > 0 {
		d := map[string]uint64{}
		for k, v := range r.dropped {
			d[k] = v
		}
		t.OtherData["left_out"] = d
	}
	counts := map[string]uint64{}
	for k, v := range r.seen {
		counts[k] = v
	}
	if len(counts) > 0 {
		t.OtherData["instant_counts"] = counts
	}
	return t
}

// WriteJSON writes the recording as Chrome trace-event JSON.
func (r *Recorder) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	return enc.Encode(r.Snapshot())
}

// Read parses a trace file, refusing anything that is not one.
func Read(rd io.Reader) (*Trace, error) {
	var t Trace
	dec := json.NewDecoder(io.LimitReader(rd, 1<<30))
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("timeline: not a trace file: %w", err)
	}
	if t.TraceEvents == nil {
		return nil, fmt.Errorf("timeline: not a trace file: no traceEvents")
	}
	return &t, nil
}

// Spans returns the trace's complete spans, by start time (longer first
// for equal starts, so parents come before their children).
func (t *Trace) Spans() []Event {
	var out []Event
	for _, e := range t.TraceEvents {
		if e.Ph == "X" {
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].TS != out[j].TS {
			return out[i].TS < out[j].TS
		}
		return out[i].Dur > out[j].Dur
	})
	return out
}

// Epsilon is how far apart, in µs, two times in a trace may be and still
// be the same instant: a span's end is written as a start and a duration,
// and the sum need not round to the next phase's start.
const Epsilon = 1e-3

// Inside reports whether event e lies within span p (to Epsilon).
func Inside(e, p Event) bool {
	return e.TS >= p.TS-Epsilon && e.TS+e.Dur <= p.TS+p.Dur+Epsilon
}

// CheckNesting reports the first pair of spans on one track that overlap
// without one containing the other (viewers would draw them wrongly), or
// nil when every span on every track nests.
func (t *Trace) CheckNesting() error {
	type key struct{ pid, tid int }
	open := map[key][]Event{} // per track, the spans containing the current one
	for _, s := range t.Spans() {
		k := key{s.PID, s.TID}
		stack := open[k]
		for len(stack) > 0 && stack[len(stack)-1].TS+stack[len(stack)-1].Dur <= s.TS+Epsilon {
			stack = stack[:len(stack)-1]
		}
		if n := len(stack); n > 0 && s.TS+s.Dur > stack[n-1].TS+stack[n-1].Dur+Epsilon {
			p := stack[n-1]
			return fmt.Errorf("timeline: span %q [%.3f, %.3f] µs overlaps %q [%.3f, %.3f] µs on track %d without nesting",
				s.Name, s.TS, s.TS+s.Dur, p.Name, p.TS, p.TS+p.Dur, s.TID)
		}
		open[k] = append(stack, s)
	}
	return nil
}

// Children returns the spans directly inside parent on its track (inside
// it, and inside no other span that is inside it), by start time.
func (t *Trace) Children(parent Event) []Event {
	var in []Event
	for _, s := range t.Spans() {
		if s.PID != parent.PID || s.TID != parent.TID {
			continue
		}
		if Inside(s, parent) && !(s.TS == parent.TS && s.Dur == parent.Dur && s.Name == parent.Name) {
			in = append(in, s)
		}
	}
	var out []Event
	var end float64 = -1
	for _, s := range in { // Spans' order: parents before their children
		if s.TS < end-Epsilon {
			continue
		}
		out = append(out, s)
		end = s.TS + s.Dur
	}
	return out
}
