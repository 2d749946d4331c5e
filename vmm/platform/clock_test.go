package platform

import (
	"math"
	"sort"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock the test moves: Advance runs the timers that fall
// due, in order, on the test's goroutine.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Duration
	wall0  time.Time
	timers []*fakeTimer
	seq    int
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Duration
	seq     int
	f       func()
	stopped bool
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

func newFakeClock(wall time.Time) *fakeClock { return &fakeClock{wall0: wall} }

func (c *fakeClock) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Wall() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wall0.Add(c.now)
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	at := c.now + d
	if at < c.now { // saturate, as the runtime's timers do
		at = math.MaxInt64
	}
	t := &fakeTimer{c: c, at: at, seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// pending counts the timers not yet run or stopped.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Advance moves time on by d, running each timer at its time.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now + d
	c.mu.Unlock()
	for {
		c.mu.Lock()
		live := c.timers[:0]
		for _, t := range c.timers {
			if !t.stopped {
				live = append(live, t)
			}
		}
		c.timers = live
		sort.Slice(c.timers, func(i, j int) bool {
			if c.timers[i].at != c.timers[j].at {
				return c.timers[i].at < c.timers[j].at
			}
			return c.timers[i].seq < c.timers[j].seq
		})
		if len(c.timers) == 0 || c.timers[0].at > end {
			c.now = end
			c.mu.Unlock()
			return
		}
		t := c.timers[0]
		t.stopped = true
		if t.at > c.now {
			c.now = t.at
		}
		c.mu.Unlock()
		t.f()
	}
}

// irqLog records an IRQFunc's calls.
type irqLog struct {
	mu    sync.Mutex
	level map[uint32]bool
	rises map[uint32]int
}

func newIRQLog() *irqLog { return &irqLog{level: map[uint32]bool{}, rises: map[uint32]int{}} }

func (l *irqLog) fn() IRQFunc {
	return func(irq uint32, high bool) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if high && !l.level[irq] {
			l.rises[irq]++
		}
		l.level[irq] = high
	}
}

func (l *irqLog) Rises(irq uint32) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rises[irq]
}

func (l *irqLog) High(irq uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level[irq]
}

func TestFakeClockOrder(t *testing.T) {
	c := newFakeClock(time.Unix(0, 0))
	var got []int
	c.AfterFunc(3*time.Millisecond, func() { got = append(got, 3) })
	c.AfterFunc(time.Millisecond, func() {
		got = append(got, 1)
		c.AfterFunc(time.Millisecond, func() { got = append(got, 2) })
	})
	s := c.AfterFunc(2*time.Millisecond, func() { got = append(got, -1) })
	s.Stop()
	c.Advance(5 * time.Millisecond)
	if len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("ran %v", got)
	}
	if c.Now() != 5*time.Millisecond {
		t.Fatalf("now %v", c.Now())
	}
}
