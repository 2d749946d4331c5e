package toolstack

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// BenchmarkBlkfront4KiB runs the stub's blkfront bench=N op=OP depth=D:
// N 4 KiB requests through the real guest's ring, up to D in flight at a
// time, walking a 4 MiB image page by page. At depth 1 each request is
// the guest's push and event, the backend's pread/pwrite on its
// goroutine, the response event and the guest's wake-up; at depth 32 the
// guest keeps the ring full as Linux's blkfront does, one event each way
// per batch (req_event and rsp_event suppression); /persistent adds
// feature-persistent, as Linux's blkfront asks by default, so the backend
// keeps the data pages mapped instead of mapping each per request; a
// depth past one page's 32 entries asks for the smallest multi-page ring
// that holds it (ring-order=O: 512 entries at order 4, the backend's
// max-ring-page-order). /seq walks the image page by page, so the
// backend merges a batch's adjacent requests into one preadv/pwritev (as
// Linux's block layer merges a plugged batch); /scatter walks it as page
// i*7919 mod 1024, no two requests in a row adjacent, one pread/pwrite
// each. Then the same N preads
// or pwrites of the same offsets on an image file of the same size,
// as new, straight from Go, in the same run (twice, the faster kept). ns/op is the ring's time per request, x-direct its ratio
// to the direct one into one buffer (the goal's baseline), x-direct-bufs
// its ratio to the same loop into depth page buffers used in turn (the
// memory the ring's requests land in: what the copy alone costs), exits/req the guest's VM exits per request (counted
// on its vCPU between the markers), x-bare-exit the time per request over
// a bare port-I/O exit's (the stub's bare-loop, in the same run): what a
// request costs in exits' worth on this host; ios/req the backend's
// preadv/pwritev (or pread/pwrite) calls per request. Where the time
// goes: fill-ns/req, wait-ns/req and reap-ns/req split ns/op by the
// stub's own TSC (filling the free slots and pushing; waiting for a done
// response; taking the done ones), serve-ns/req is the backend's time
// serving batches (Stats.Busy) and handoff-ns/req the rest of the wait
// (the kick's and the notification's wake-ups); cpu-ns/req is the
// process's CPU time per request between the markers (every thread) and
// x-direct-cpu its ratio to the direct one-buffer loop's CPU: less
// disturbed than the wall clock by other jobs on the host.
func BenchmarkBlkfront4KiB(b *testing.B) {
	for _, op := range []string{"read", "write"} {
		for _, walk := range []string{"seq", "scatter"} {
			for _, c := range []struct {
				depth      int
				persistent bool
			}{{1, false}, {32, false}, {32, true}, {128, true}, {512, false}, {512, true}} {
				name := fmt.Sprintf("%s/%s/depth=%d", op, walk, c.depth)
				if c.persistent {
					name += "/persistent"
				}
				b.Run(name, func(b *testing.B) { benchBlkfront(b, op, walk == "scatter", c.depth, c.persistent) })
			}
		}
	}
}

func benchBlkfront(b *testing.B, op string, scatter bool, depth int, persistent bool) {
	kvmtest.Require(b)
	const size = 4 << 20
	n := max(b.N, 2000)
	img := rawImage(b, size)
	disk, err := xlcfg.ParseDisk("vdev=xvda, target=" + img)
	if err != nil {
		b.Fatal(err)
	}
	order := 0
	for ringSize(order) < depth {
		order++
	}
	con := &markerConsole{}
	d, err := New(nil).Create(DomainConfig{Cmdline: fmt.Sprintf("test=blkfront bench=%d op=%s depth=%d persistent=%d ring-order=%d scatter=%d", n, op, depth, b2i(persistent), order, b2i(scatter)),
		Console: con, MemSize: 16 << 20, Disks: []xlcfg.Disk{disk}})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Destroy()
	if !d.Xen.Ring3() {
		b.Skip("blkfront needs the ring-3 model's grant table")
	}
	con.vcpu = d.Machine().VCPUs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	before := d.Disks()[0].Stats()
	d.Unpause()
	if exit, err := d.Wait(ctx); err != nil || exit.Reason != 0 {
		b.Fatalf("blkfront bench: %v %v", exit, err)
	}
	if con.start.IsZero() || con.end.IsZero() {
		b.Fatal("the guest printed no loop markers")
	}
	ring := con.end.Sub(con.start)
	var batches int
	var gotDepth int
	if _, err := fmt.Sscanf(con.summary, "blkfront-bench: op=%s n=%d depth=%d batches=%d",
		new(string), new(int), &gotDepth, &batches); err != nil || gotDepth != depth || batches == 0 {
		b.Fatalf("guest summary %q (depth %d, batches %d): %v", con.summary, gotDepth, batches, err)
	}
	// The guest's own account of its loop, in TSC cycles: filling the
	// free slots and pushing, waiting (blocked, or taking responses
	// until one is done), reaping the done ones; and how many times
	// the wait looked at the ring.
	var wakes, tscLoop, tscFill, tscWait, tscReap uint64
	if i := strings.Index(con.summary, " wakes="); i >= 0 {
		if _, err := fmt.Sscanf(con.summary[i:], " wakes=%d tsc-loop=%d tsc-fill=%d tsc-wait=%d tsc-reap=%d",
			&wakes, &tscLoop, &tscFill, &tscWait, &tscReap); err != nil || tscLoop == 0 {
			b.Fatalf("guest summary %q: %v", con.summary, err)
		}
	}
	exits := float64(con.exitsEnd-con.exitsStart-1) / float64(n)
	s := d.Disks()[0].Stats()
	done := s.Reads - before.Reads
	if op == "write" {
		done = s.Writes - before.Writes
	}
	if done < uint64(n) || s.Errors != 0 {
		b.Fatalf("the backend served %d %ss (%d errors), the guest asked for %d", done, op, s.Errors, n)
	}

	// The baseline's own image, as new as the ring's was: the page
	// cache state the ring's I/O left (ext4's large folios after merged
	// 2 MiB pwritev make later 4 KiB pwrites several times slower) is
	// not the baseline's.
	f, err := os.OpenFile(rawImage(b, size), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = 0x5a
	}
	stride := 1
	if scatter {
		stride = 7919 // the stub's walk
	}
	// bufs: as many page buffers as the ring keeps requests in flight,
	// used in turn, as the ring's I/O goes to the guest's data pages:
	// the same loop into them measures what the copy into that much
	// memory costs by itself (x-direct-bufs), beside the goal's one
	// buffer (x-direct).
	bufs := make([]byte, depth*4096)
	for i := range bufs {
		bufs[i] = 0x5a
	}
	var directCPU time.Duration // the CPU of the fastest one-buffer run
	directRun := func(rotate bool) time.Duration {
		// No writeback of the first run's writes in progress under
		// the second.
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		cpu0 := processCPU(b)
		defer func() {
			if cpu := processCPU(b) - cpu0; !rotate && (directCPU == 0 || cpu < directCPU) {
				directCPU = cpu
			}
		}()
		t0 := time.Now()
		for i := range n {
			off := int64(i*stride%(size/4096)) * 4096
			p := buf
			if rotate {
				p = bufs[i%depth*4096:][:4096]
			}
			if op == "write" {
				_, err = f.WriteAt(p, off)
			} else {
				_, err = f.ReadAt(p, off)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	// Twice, keeping the faster: a host busy with other work slows the
	// baseline as it slows the ring, and the ratio errs on the ring's
	// side.
	direct := min(directRun(false), directRun(false))
	directBufs := min(directRun(true), directRun(true))
	bare, _ := guestLoop(b, "bare-loop", 10000)
	bareNs := float64(bare.Nanoseconds()) / 10000

	perReq := float64(ring.Nanoseconds()) / float64(n)
	b.ReportMetric(perReq, "ns/op")
	b.ReportMetric(float64(direct.Nanoseconds())/float64(n), "direct-ns/op")
	b.ReportMetric(float64(ring)/float64(direct), "x-direct")
	b.ReportMetric(float64(ring)/float64(directBufs), "x-direct-bufs")
	b.ReportMetric(1e9/perReq, "IOPS")
	b.ReportMetric(float64(n)/direct.Seconds(), "direct-IOPS")
	b.ReportMetric(4096*1e9/perReq/(1<<20), "MiB/s")
	b.ReportMetric(exits, "exits/req")
	b.ReportMetric(perReq/bareNs, "x-bare-exit")
	b.ReportMetric(float64(batches)/float64(n), "pushes/req")
	b.ReportMetric(float64(s.IOs-before.IOs)/float64(n), "ios/req")
	// CPU time per request, the ring's (every thread of the process
	// between the markers) against the direct loop's: less sensitive
	// than the wall clock to other jobs on the host, which delay both
	// sides' wake-ups but do not add to their CPU time.
	ringCPU := con.cpuEnd - con.cpuStart
	b.ReportMetric(float64(ringCPU.Nanoseconds())/float64(n), "cpu-ns/req")
	if directCPU > 0 {
		b.ReportMetric(float64(ringCPU)/float64(directCPU), "x-direct-cpu")
	}
	if tscLoop > 0 {
		// The phases as shares of the ring's time per request.
		b.ReportMetric(perReq*float64(tscFill)/float64(tscLoop), "fill-ns/req")
		b.ReportMetric(perReq*float64(tscWait)/float64(tscLoop), "wait-ns/req")
		b.ReportMetric(perReq*float64(tscReap)/float64(tscLoop), "reap-ns/req")
		b.ReportMetric(float64(wakes)/float64(max(batches, 1)), "wakes/push")
		// The wait split: the backend serving (its batches' time) and
		// the rest, the hand-offs (the guest's push to the backend's
		// worker, its notification to the guest running again).
		serve := float64((s.Busy - before.Busy).Nanoseconds()) / float64(n)
		b.ReportMetric(serve, "serve-ns/req")
		b.ReportMetric(perReq*float64(tscWait)/float64(tscLoop)-serve, "handoff-ns/req")
	}
	b.Logf("%s depth=%d: n=%s ring %v direct %v", op, depth, strconv.Itoa(n), ring, direct)
}

func b2i(v bool) int {
	if v {
		return 1
	}
	return 0
}
