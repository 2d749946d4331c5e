package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/vmm/blkback"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// The stub's blkfront scenario against a real backend: the guest writes
// its pattern through the ring and reads it back; the image file must
// then hold the pattern byte for byte.

// blkPattern is the stub's pattern (guest/src/blkfront.c): word i of
// sector s written in cycle c holds c<<48 | s<<16 | i.
func blkPattern(cycle, sectors uint64) []byte {
	b := make([]byte, sectors*512)
	for s := range sectors {
		for i := range uint64(64) {
			binary.LittleEndian.PutUint64(b[s*512+i*8:], cycle<<48|s<<16|i)
		}
	}
	return b
}

// checkImage checks that img holds cycle's pattern over the region the
// guest reported and zeros after it.
func checkImage(t *testing.T, img string, f map[string]string, cycle uint64) {
	t.Helper()
	region, err := strconv.ParseUint(f["blkfront.region"], 10, 64)
	if err != nil || region == 0 {
		t.Fatalf("blkfront.region %q", f["blkfront.region"])
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	want := blkPattern(cycle, region)
	if !bytes.Equal(got[:len(want)], want) {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("image byte %d (sector %d) = %#x, want %#x (cycle %d)", i, i/512, got[i], want[i], cycle)
			}
		}
	}
	if !bytes.Equal(got[len(want):], make([]byte, len(got)-len(want))) {
		t.Error("the image changed past the pattern's region")
	}
}

// blkGuest creates a domain with a 1 MiB raw image as xvda running the
// stub with cmdline.
func blkGuest(t *testing.T, ts *Toolstack, cmdline string) (*Domain, *syncBuffer, string) {
	t.Helper()
	img := rawImage(t, 1<<20)
	disk, err := xlcfg.ParseDisk("vdev=xvda, target=" + img)
	if err != nil {
		t.Fatal(err)
	}
	d, con := create(t, ts, cmdline, func(c *DomainConfig) { c.Disks = []xlcfg.Disk{disk} })
	if !d.Xen.Ring3() {
		t.Skip("blkfront needs the ring-3 model's grant table")
	}
	return d, con, img
}

// The scenario without a suspend: one cycle written and read back, each
// request applied once (the backend's counts are the guest's).
func TestBlkfront(t *testing.T) {
	d, con, img := blkGuest(t, nil, "test=blkfront")
	r := run(t, d, con)
	requireSuccess(t, r)
	f := fields(r.console)
	checkImage(t, img, f, 1)
	s := d.Disks()[0].Stats()
	if strconv.FormatUint(s.Writes, 10) != f["blkfront.writes"] || strconv.FormatUint(s.Reads, 10) != f["blkfront.reads"] || s.Errors != 0 {
		t.Errorf("backend %+v, guest writes=%s reads=%s", s, f["blkfront.writes"], f["blkfront.reads"])
	}
}

// The negative control: writes past the last sector and straddling it
// get BLKIF_RSP_ERROR, and the image (filled beforehand) is unchanged.
func TestBlkfrontOutsideImage(t *testing.T) {
	d, con, img := blkGuest(t, nil, "test=blkfront-outside")
	before := bytes.Repeat([]byte("xenresume"), (1<<20)/9+1)[:1<<20]
	if err := os.WriteFile(img, before, 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, d, con)
	requireSuccess(t, r)
	f := fields(r.console)
	if f["blkfront-outside.status"] != "-1" {
		t.Errorf("status %q, want -1 (BLKIF_RSP_ERROR):\n%s", f["blkfront-outside.status"], r.console)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before) {
		t.Error("the image changed")
	}
	if s := d.Disks()[0].Stats(); s.Errors != 2 || s.Requests != 2 {
		t.Errorf("backend stats %+v, want 2 requests, both errors", s)
	}
}

// checkCycles checks what the guest reports after cycles suspends: each
// cycle verified, SUCCESS, the image holding the last cycle's pattern,
// and, when the backend is the same one throughout, each write request
// applied once: the backend counted exactly the guest's writes.
func checkCycles(t *testing.T, r result, img string, cycles int, backend *Domain) map[string]string {
	t.Helper()
	requireSuccess(t, r)
	f := fields(r.console)
	for c := range cycles + 1 {
		if !strings.Contains(r.console, "blkfront: verified cycle="+strconv.Itoa(c)+" ") {
			t.Errorf("cycle %d never verified:\n%s", c, r.console)
		}
	}
	if f["blkfront.last-cycle"] != strconv.Itoa(cycles) {
		t.Errorf("last-cycle %q, want %d", f["blkfront.last-cycle"], cycles)
	}
	checkImage(t, img, f, uint64(cycles))
	t.Logf("guest: writes=%s reads=%s resubmitted=%s answered-on-old-ring=%s", f["blkfront.writes"],
		f["blkfront.reads"], f["blkfront.resubmitted"], f["blkfront.answered-on-old-ring"])
	if backend != nil {
		s := backend.Disks()[0].Stats()
		if strconv.FormatUint(s.Writes, 10) != f["blkfront.writes"] || s.Errors != 0 {
			t.Errorf("backend %+v, guest writes=%s: a write lost or applied twice", s, f["blkfront.writes"])
		}
	}
	return f
}

// ringOrders are the ring sizes the suspend scenarios run with: one page
// (ring-ref) and the largest multi-page ring (ring-page-order 4,
// ring-ref0..15), each checked in the guest's "connected" lines.
var ringOrders = []struct {
	name, args string
	order      int
}{{"ring-ref", "", 0}, {"ring-order=4", " ring-order=4", 4}}

// checkRingOrder checks that every connection the guest made had a ring
// of 2^order pages.
func checkRingOrder(t *testing.T, console string, order int) {
	t.Helper()
	want := fmt.Sprintf("ring-order=%d ring-size=%d ", order, ringSize(order))
	n := 0
	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "blkfront: connected ") {
			n++
			if !strings.Contains(l, want) {
				t.Errorf("%q, want %q", l, want)
			}
		}
	}
	if n == 0 {
		t.Errorf("the guest never connected:\n%s", console)
	}
}

// ringSize is __CONST_RING_SIZE for the x86_64 blkif ring of 2^order pages.
func ringSize(order int) int {
	return int(blkback.RingSize(blkback.ProtoX86_64, 1<<order))
}

// Two checkpoints with cycle N's writes in flight at each: the guest
// carries on in the same domain (rc=1) on the same ring, and every write
// lands once.
func TestBlkfrontCheckpoint(t *testing.T) {
	for _, ro := range ringOrders {
		t.Run(ro.name, func(t *testing.T) {
			d, con, img := blkGuest(t, nil, "test=blkfront cycles=2"+ro.args)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			for c := range 2 {
				waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
				if err := d.Save(ctx, filepath.Join(t.TempDir(), "g.save"), true); err != nil {
					t.Fatalf("checkpoint %d: %v", c, err)
				}
			}
			r := waitPoweroff(t, ctx, d, con)
			checkCycles(t, r, img, 2, d)
			checkRingOrder(t, r.console, ro.order)
			if n := strings.Count(r.console, "resume: rc=1 same-domain"); n != 2 {
				t.Errorf("%d same-domain resumes", n)
			}
		})
	}
}

// A suspend, then a fast resume (rc=1, the ring kept) or a
// non-cooperative one (rc=0: the guest reconnects with new grant
// references and a new port, resubmitting what had no response).
func TestBlkfrontSuspendResume(t *testing.T) {
	for _, tc := range []struct {
		fast bool
		ro   int
	}{{true, 0}, {false, 0}, {true, 1}, {false, 1}} {
		fast, ro := tc.fast, ringOrders[tc.ro]
		name := map[bool]string{true: "fast", false: "noncooperative"}[fast] + "/" + ro.name
		t.Run(name, func(t *testing.T) {
			d, con, img := blkGuest(t, nil, "test=blkfront cycles=2"+ro.args)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			for c := range 2 {
				waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
				suspendAndCheck(t, ctx, d)
				resumeAndCheck(t, ctx, d, fast)
			}
			r := waitPoweroff(t, ctx, d, con)
			checkCycles(t, r, img, 2, d)
			checkRingOrder(t, r.console, ro.order)
			if n := strings.Count(r.console, "blkfront: reconnected"); fast && n != 0 || !fast && n != 2 {
				t.Errorf("%d reconnections:\n%s", n, r.console)
			}
			if !fast && d.Disks()[0].Stats().Connects != 3 {
				t.Errorf("backend connects %d, want 3", d.Disks()[0].Stats().Connects)
			}
		})
	}
}

// Save and restore into a new domain, twice: the new domain's backend
// (the disk passed to Restore the first time, read back from the saved
// configuration's disk = [...] the second) sees the frontend reconnect and gets the
// writes that had no response on the old ring.
func TestBlkfrontSaveRestore(t *testing.T) {
	for _, ro := range ringOrders {
		t.Run(ro.name, func(t *testing.T) {
			ts := New(nil)
			d, con, img := blkGuest(t, ts, "test=blkfront cycles=2"+ro.args)
			disk, err := xlcfg.ParseDisk("vdev=xvda, target=" + img)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			d.Unpause()
			for c := range 2 {
				waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
				path := filepath.Join(t.TempDir(), "g.save")
				if xl := d.XLConfig(); !strings.Contains(xl, `disk = ["format=raw, vdev=xvda, access=rw, target=`+img+`"]`) {
					t.Errorf("XLConfig lacks the disk:\n%s", xl)
				}
				if err := d.Save(ctx, path, false); err != nil {
					t.Fatalf("save %d: %v", c, err)
				}
				cfg := DomainConfig{Console: con}
				if c == 0 {
					cfg.Disks = []xlcfg.Disk{disk} // the second time, from the saved disk = [...]
				}
				nd, err := ts.Restore(ctx, path, cfg)
				if err != nil {
					t.Fatalf("restore %d: %v", c, err)
				}
				t.Cleanup(func() {
					if _, err := ts.Lookup(nd.ID); err == nil {
						nd.Destroy()
					}
				})
				d = nd
				d.Unpause()
			}
			r := waitPoweroff(t, ctx, d, con)
			checkCycles(t, r, img, 2, nil)
			checkRingOrder(t, r.console, ro.order)
			if n := strings.Count(r.console, "blkfront: reconnected"); n != 2 {
				t.Errorf("%d reconnections:\n%s", n, r.console)
			}
		})
	}
}

// Live migration, twice, of a guest with a disk: the backend writes guest
// memory through its mapped grants (kept while mapped: the VMM's dirty
// set), and the tests' cross-check (verifyDirty) finds no page that
// changed outside KVM's log and that set; the target's backend, from the
// stream's disk = [...], gets the frontend's reconnection. (The stub's
// I/O is done before each migration starts, so this is not the negative
// control for the VMM's set: TestMigrateVMMDirtyNeeded is.)
func TestBlkfrontMigrate(t *testing.T) {
	d, con, img := blkGuest(t, New(nil), "test=blkfront cycles=2")
	d.Unpause()
	for c := range 2 {
		waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(c))
		m := migrateTo(t, d, New(nil), con, MigrateOptions{MaxRounds: 3, TargetDirty: -1, Suspend: quick}, 0, nil)
		if m.err != nil || m.restErr != nil {
			t.Fatalf("migration %d: %v; restore: %v", c, m.err, m.restErr)
		}
		d = m.target
		d.Unpause()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := waitPoweroff(t, ctx, d, con)
	checkCycles(t, r, img, 2, nil)
	if n := strings.Count(r.console, "blkfront: reconnected"); n != 2 {
		t.Errorf("%d reconnections:\n%s", n, r.console)
	}
}

// The stub's blkfront with each ring-page-order the backend allows (0: a
// one-page ring under ring-ref; 1 to 4: ring-page-order and
// ring-ref0..N-1): the backend maps 2^order pages, and a full ring of
// requests (depth = the ring's entries) is served, each once. The
// negative controls: an order past the backend's max-ring-page-order is
// refused (error node, Closing; no request served), and one past the
// stub's own rings is refused by the stub before it publishes anything.
func TestBlkfrontRingOrder(t *testing.T) {
	for order := range 5 {
		t.Run(fmt.Sprintf("order=%d", order), func(t *testing.T) {
			n, size := 2*ringSize(order), ringSize(order)
			d, con, _ := blkGuest(t, nil, fmt.Sprintf("test=blkfront bench=%d depth=%d ring-order=%d op=write", n, size, order))
			d.Unpause()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			waitFor(t, con, "loop: start")
			s := d.Disks()[0].Stats()
			if s.RingPages != 1<<order || s.RingEntries != size {
				t.Errorf("backend ring %d pages, %d entries; want %d, %d", s.RingPages, s.RingEntries, 1<<order, size)
			}
			r := waitPoweroff(t, ctx, d, con)
			requireSuccess(t, r)
			checkRingOrder(t, r.console, order)
			s = d.Disks()[0].Stats()
			f := fields(r.console)
			if s.Requests != uint64(n) || s.Writes != uint64(n) || s.Errors != 0 || f["blkfront-bench.errors"] != "0" {
				t.Errorf("backend %+v, guest %v", s, f)
			}
			if b, _ := strconv.Atoi(f["blkfront-bench.batches"]); b < 2 || b > n/2 {
				t.Errorf("%s batches for %d requests at depth %d", f["blkfront-bench.batches"], n, size)
			}
		})
	}
	for _, tc := range []struct{ name, args, result, console, errNode string }{
		{"past the backend's max", "ring-order=5 ring-order-unchecked=1", "Test result: FAIL",
			"blkfront: backend state 5 ", "22 requested ring page order 5 exceed max:4"},
		{"past the stub's rings", "ring-order=5", "Test result: ERROR", "ring-order=5: the stub has rings of up to 16 pages", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := New(nil)
			d, con, _ := blkGuest(t, ts, "test=blkfront bench=64 depth=32 "+tc.args)
			r := run(t, d, con)
			if l := resultLine(t, r.console); !strings.HasPrefix(l, tc.result) {
				t.Errorf("%s, want %s:\n%s", l, tc.result, r.console)
			}
			if !strings.Contains(r.console, tc.console) {
				t.Errorf("console lacks %q:\n%s", tc.console, r.console)
			}
			// The error node is dom0's (the guest may not read it).
			errPath := fmt.Sprintf("/local/domain/0/error/backend/vbd/%d/51712/error", d.ID)
			if got, _ := ts.Store().Read(errPath); got != tc.errNode {
				t.Errorf("%s = %q, want %q", errPath, got, tc.errNode)
			}
			if s := d.Disks()[0].Stats(); s.Requests != 0 || s.RingPages != 0 {
				t.Errorf("backend %+v, want no ring and no requests", s)
			}
		})
	}
}

// The stub's bench mode at each queue depth: every request served once
// and OK, pushed in batches (one per request at depth 1, fewer deeper);
// a depth the ring cannot hold, or 0, is refused before any request
// (the negative control).
func TestBlkfrontBenchDepth(t *testing.T) {
	for _, tc := range []struct {
		args string
		ok   bool
	}{
		{"depth=1", true},
		{"depth=32", true},
		{"depth=32 persistent=1", true},
		{"depth=7 op=write", true},
		{"depth=0", false},
		{"depth=33", false},
		{"depth=512 ring-order=4 persistent=1", true},
		{"depth=32 scatter=1", true},
		{"depth=512 ring-order=4 scatter=1 op=write", true},
		{"depth=65 ring-order=1", false},
	} {
		t.Run(tc.args, func(t *testing.T) {
			const n = 1200
			d, con, _ := blkGuest(t, nil, fmt.Sprintf("test=blkfront bench=%d %s", n, tc.args))
			r := run(t, d, con)
			s := d.Disks()[0].Stats()
			if !tc.ok {
				if l := resultLine(t, r.console); !strings.HasPrefix(l, "Test result: ERROR") {
					t.Errorf("%s, want ERROR:\n%s", l, r.console)
				}
				if s.Requests != 0 {
					t.Errorf("backend %+v, want no requests", s)
				}
				return
			}
			requireSuccess(t, r)
			f := fields(r.console)
			if s.Requests != n || s.Errors != 0 || f["blkfront-bench.n"] != strconv.Itoa(n) || f["blkfront-bench.errors"] != "0" {
				t.Errorf("backend %+v, guest %v", s, f)
			}
			batches, err := strconv.Atoi(f["blkfront-bench.batches"])
			depth, _ := strconv.Atoi(f["blkfront-bench.depth"])
			if err != nil || batches < n/depth || batches > n || depth == 1 && batches != n || depth > 1 && batches == n {
				t.Errorf("batches %q at depth %d for %d requests", f["blkfront-bench.batches"], depth, n)
			}
			// The sequential walk's batches are merged into a few
			// preadv/pwritev; the scattered walk's requests, never
			// adjacent, and depth 1's, alone in their batch, are not.
			merged := depth > 1 && !strings.Contains(tc.args, "scatter=1")
			if merged && s.IOs > uint64(2*batches) || !merged && s.IOs != n {
				t.Errorf("%d I/O calls for %d requests in %d batches (merged: %v)", s.IOs, n, batches, merged)
			}
		})
	}
}
