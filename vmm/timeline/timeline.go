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

// Span is a phase in progress; End closes it.
type Span struct {
	r     *Recorder
	name  string
	cat   string
	tid   int
	begin time.Time
	args  map[string]any
	once  sync.Once
}

// Begin opens a span on track tid. args may be nil.
func (r *Recorder) Begin(tid int, cat, name string, args map[string]any) *Span {
	if r == nil {
		return nil
	}
	return &Span{r: r, name: name, cat: cat, tid: tid, begin: r.now(), args: args}
}

// End closes the span, adding args to those it began with; a second End
// does nothing.
func (s *Span) End(args map[string]any) {
	if s == nil {
		return
	}
	s.once.Do(func() {
		r := s.r
		end := r.now()
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
		r.mu.Lock()
		defer r.mu.Unlock()
		r.add(Event{Name: s.name, Cat: s.cat, Ph: "X", TS: r.us(s.begin), Dur: r.us(end) - r.us(s.begin),
			PID: r.pid, TID: s.tid, Args: all})
	})
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
