package toolstack

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"

	"fmt"
	"github.com/xenresume/xenresume/vmm/stream"
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
			pr0, pw := io.Pipe()
			var captured bytes.Buffer
			pr := io.TeeReader(pr0, &captured)
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
				pr0.CloseWithError(errors.New("secondary done"))
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
			if cut == 1<<30 {
				if err != nil || n != 6 {
					t.Fatalf("uncut: %d checkpoints, %v", n, err)
				}
				verifyCheckpointed(t, captured.Bytes(), 6)
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

// verifyCheckpointed checks a Remus stream with Xen's verify-stream-v2,
// which cannot read a libxl-wrapped checkpointed stream (its libxc
// verifier reads on to a libxc END): the libxc part alone, each libxl
// CHECKPOINT_END taken out and an END appended, as the shared reference
// (§9) suggests. The stream must hold want checkpoints and no END.
func verifyCheckpointed(t *testing.T, s []byte, want int) {
	t.Helper()
	r := stream.NewReader(bytes.NewReader(s))
	if _, err := r.ReadXLHeader(); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadLibxlHeader(); err != nil {
		t.Fatal(err)
	}
	if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlLibxcContext {
		t.Fatalf("LIBXC_CONTEXT: %v %v", rec, err)
	}
	libxc := []byte{}
	from := r.Offset
	if _, err := r.ReadImageHeader(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadDomainHeader(); err != nil {
		t.Fatal(err)
	}
	checkpoints := 0
	for int(r.Offset) < len(s) {
		rec, err := r.Next()
		if err != nil {
			t.Fatalf("after %d checkpoints: %v", checkpoints, err)
		}
		if rec.Type == stream.RecEnd {
			t.Fatal("a Remus stream with an END record")
		}
		if rec.Type != stream.RecCheckpoint {
			continue
		}
		checkpoints++
		libxc = append(libxc, s[from:r.Offset]...)
		if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlCheckpointEnd {
			t.Fatalf("after CHECKPOINT %d: %v %v", checkpoints, rec, err)
		}
		from = r.Offset
	}
	if checkpoints != want || from != int64(len(s)) {
		t.Fatalf("%d checkpoints, %d of %d bytes in them", checkpoints, from, len(s))
	}
	libxc = stream.AppendRecord(libxc, stream.RecEnd, nil)
	path := filepath.Join(t.TempDir(), "remus.libxc")
	if err := os.WriteFile(path, libxc, 0o600); err != nil {
		t.Fatal(err)
	}
	verifyFormat(t, path, "libxc")
}

// A page only the VMM writes between checkpoints reaches the secondary
// through the VMM's dirty set; without the set (the negative control) it
// does not, and the tests' cross-check (verifyDirty) stops the replication
// at the checkpoint that missed it, the primary running on.
func TestRemusVMMDirty(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("skipVMMDirty=%v", skip), func(t *testing.T) {
			d, con := create(t, New(nil), "test=idle")
			d.Unpause()
			waitFor(t, con, "suspend: ready cycle=0")
			skipVMMDirty = skip
			defer func() { skipVMMDirty = false }()
			last := d.Xen.Frames().NrPages - 1
			marker := func(n int) []byte { return fmt.Appendf(nil, "written by the VMM after checkpoint %d", n) }
			pr, pw := io.Pipe()
			type res struct {
				d   *Domain
				n   int
				err error
			}
			done := make(chan res, 1)
			ts2 := New(nil)
			go func() {
				nd, n, err := ts2.ReceiveCheckpoints(t.Context(), pr, DomainConfig{Console: &syncBuffer{}}, nil)
				pr.CloseWithError(errors.New("secondary done"))
				done <- res{nd, n, err}
			}()
			n, err := d.Remus(t.Context(), pw, RemusOptions{Interval: 5 * time.Millisecond, Suspend: quick, Checkpoints: 3,
				Progress: func(c RemusCheckpoint) {
					if err := d.Machine().Memory().Write(last<<12+8, marker(c.N)); err != nil {
						t.Error(err)
					}
				}})
			pw.Close()
			got := <-done
			if got.d != nil {
				defer got.d.Destroy()
			}
			if st := d.State(); st != Running {
				t.Fatalf("primary %s after %d checkpoints (%v)", st, n, err)
			}
			if skip {
				if !errors.Is(err, errDirtyMissed) || n != 1 {
					t.Fatalf("without the VMM's dirty set: %d checkpoints, %v; want 1 and %v", n, err, errDirtyMissed)
				}
				return
			}
			if err != nil || n != 3 || got.err != nil || got.n != 3 {
				t.Fatalf("primary: %d checkpoints, %v; secondary: %d, %v", n, err, got.n, got.err)
			}
			// The secondary holds checkpoint 3, taken after the write
			// that followed checkpoint 2.
			want := marker(2)
			b := make([]byte, len(want))
			if err := got.d.Machine().Memory().Read(last<<12+8, b); err != nil || !bytes.Equal(b, want) {
				t.Fatalf("the secondary's page reads %q (%v), want %q", b, err, want)
			}
		})
	}
}
