package toolstack

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cutWriter fails every write once n bytes went through: the primary
// killed mid-stream, at a byte the test picks.
type cutWriter struct {
	w io.WriteCloser
	n int
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if len(b) > c.n {
		k, _ := c.w.Write(b[:c.n])
		c.n -= k
		c.w.Close() // the secondary sees the stream end mid-record
		return k, errors.New("connection reset (the test's cut)")
	}
	k, err := c.w.Write(b)
	c.n -= k
	return k, err
}

var workN = regexp.MustCompile(`work: n=(\d+)`)

func workReports(console string) []int {
	var ns []int
	for _, m := range workN.FindAllStringSubmatch(console, -1) {
		n, _ := strconv.Atoi(m[1])
		ns = append(ns, n)
	}
	return ns
}

// Remus with the primary "killed" (its stream cut) at random bytes, many
// times: the primary's guest sees 1 at every checkpoint and runs on; the
// secondary fails over to its last complete checkpoint, whose guest sees
// 0 in a new domain and continues the chain exactly from that checkpoint
// (n = 2000 per checkpoint + the 1000 after its resume), never from a
// torn one; a cut before the first complete checkpoint leaves no domain.
func TestRemusFailover(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)
	var before, after int
	for run := 0; run < 8; run++ {
		cut := 20<<10 + rng.IntN(900<<10)
		if run == 0 {
			cut = 1 << 30 // no cut: the primary stops after its checkpoints
		}
		t.Run(fmt.Sprintf("cut=%d", cut), func(t *testing.T) {
			ts := New(nil)
			d, con := create(t, ts, "test=idle")
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			pr, pw := io.Pipe()
			ts2 := New(nil)
			con2 := &syncBuffer{}
			type res struct {
				d   *Domain
				n   int
				err error
			}
			done := make(chan res, 1)
			go func() {
				nd, n, err := ts2.ReceiveCheckpoints(t.Context(), pr, DomainConfig{Console: con2}, nil)
				pr.CloseWithError(errors.New("secondary done"))
				done <- res{nd, n, err}
			}()
			var cps []RemusCheckpoint
			n, err := d.Remus(t.Context(), &cutWriter{w: pw, n: cut}, RemusOptions{Interval: 5 * time.Millisecond,
				Suspend: quick, Checkpoints: 6, Progress: func(c RemusCheckpoint) { cps = append(cps, c) }})
			pw.Close() // the primary is gone
			got := <-done
			if st := d.State(); st != Running {
				t.Fatalf("primary %s after %d checkpoints (%v)", st, n, err)
			}
			if cut == 1<<30 && (err != nil || n != 6) {
				t.Fatalf("uncut: %d checkpoints, %v", n, err)
			}
			if c := strings.Count(con.String(), "resume: rc=1 same-domain"); c < n || strings.Contains(con.String(), "rc=0") {
				t.Fatalf("the primary's guest saw 1 %d times for %d checkpoints:\n%s", c, n, con)
			}
			if got.err != nil {
				if !errors.Is(got.err, ErrNoCheckpoint) || n != 0 {
					t.Fatalf("secondary: %v after %d checkpoints sent", got.err, n)
				}
				for id := uint16(1); id < 8; id++ {
					if _, err := ts2.Lookup(id); err == nil {
						t.Errorf("domain %d left on the secondary", id)
					}
				}
				before++
				return
			}
			after++
			defer got.d.Destroy()
			// The secondary has every checkpoint the primary finished
			// sending, or the one being sent when it broke if that one
			// got through: never a torn one.
			if got.n < n || got.n > n+1 {
				t.Fatalf("secondary at checkpoint %d, the primary sent %d", got.n, n)
			}
			got.d.Unpause()
			want := 2000*got.n + 1000
			waitFor(t, con2, fmt.Sprintf("work: n=%d ", want))
			if ns := workReports(con2.String()); ns[0] != want || !strings.Contains(con2.String(), "resume: rc=0 new-domain") {
				t.Fatalf("secondary's chain %v, want it to continue at %d:\n%s", ns, want, con2)
			}
			// A prefix of the primary's chain: the checkpoint's n was
			// reached there.
			if !strings.Contains(con.String(), fmt.Sprintf("work: n=%d ", want-1000)) {
				t.Fatalf("the primary never reached n=%d:\n%s", want-1000, con)
			}
		})
	}
	t.Logf("%d runs broke before the first checkpoint, %d failed over", before, after)
}
