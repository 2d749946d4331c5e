package blkback

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"
)

// BenchmarkBlkif4KiB compares 4 KiB requests through the ring (a Go fake
// frontend, the backend's worker, event channels as goroutine wake-ups)
// with the same pread/pwrite on the image file straight from Go, in the
// same run. ns/op is the ring's; "x-direct" is the ring's time per
// request over the direct one; IOPS both ways. qd is how many requests
// the frontend keeps in flight.
func BenchmarkBlkif4KiB(b *testing.B) {
	for _, op := range []string{"read", "write"} {
		for _, qd := range []int{1, 32} {
			for _, persistent := range []bool{false, true} {
				name := fmt.Sprintf("%s/qd%d", op, qd)
				if persistent {
					name += "/persistent"
				}
				b.Run(name, func(b *testing.B) { benchRing(b, op == "write", qd, persistent) })
			}
		}
	}
}

func benchRing(b *testing.B, write bool, qd int, persistent bool) {
	const sectors = 32768 // 16 MiB: in the page cache, as the direct path
	r := newRig(b, sectors, Config{}, true, nil)
	r.connect(ringOpts{proto: ProtoX86_64, order: -1, persistent: persistent})
	f := r.fe
	rng := rand.New(rand.NewPCG(19, 20))
	segs, _ := f.grantData(qd, rng, true)
	op := uint8(OpRead)
	if write {
		op = OpWrite
	}
	pages := sectors / sectorsPerPage
	offset := func(i int) uint64 { return uint64(i*7919%pages) * sectorsPerPage }

	// Direct: the same I/O from Go on the same file.
	file, err := os.OpenFile(r.img, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer file.Close()
	buf := make([]byte, PageSize)
	start := time.Now()
	for i := range b.N {
		off := int64(offset(i)) * SectorSize
		if write {
			_, err = file.WriteAt(buf, off)
		} else {
			_, err = file.ReadAt(buf, off)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	direct := time.Since(start)

	b.SetBytes(PageSize)
	b.ResetTimer()
	start = time.Now()
	issued, done := 0, 0
	for ; issued < min(qd, b.N); issued++ {
		f.queue(rwReq(ProtoX86_64, op, uint64(issued), offset(issued), segs[issued%qd:issued%qd+1]))
	}
	f.push()
	for done < b.N {
		rsps := f.poll()
		if len(rsps) == 0 {
			select {
			case <-f.ev.notify:
			case <-time.After(testTimeout):
				b.Fatalf("no response after %v (%d of %d done)", testTimeout, done, b.N)
			}
			continue
		}
		for _, rsp := range rsps {
			if rsp.status != RspOkay {
				b.Fatalf("response %+v", rsp)
			}
			done++
			if issued < b.N {
				slot := int(rsp.id) % qd
				f.queue(rwReq(ProtoX86_64, op, uint64(issued), offset(issued), segs[slot:slot+1]))
				issued++
			}
		}
		f.push()
	}
	ring := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(ring)/float64(direct), "x-direct")
	b.ReportMetric(float64(b.N)/ring.Seconds(), "IOPS")
	b.ReportMetric(float64(b.N)/direct.Seconds(), "direct-IOPS")
}
