package toolstack

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/benchpeers"
	"github.com/xenresume/xenresume/internal/kvmtest"
)

// suspendedGuest returns a suspended stub with touchMiB of its memory
// (from 8 MiB up, its page tables left alone) filled by the host: the
// touched set the benchmarks save.
func suspendedGuest(b *testing.B, mem, touchMiB uint64) *Domain {
	b.Helper()
	d, con := create(b, New(nil), "test=suspend", func(c *DomainConfig) { c.MemSize = mem })
	d.Unpause()
	waitFor(b, con, "suspend: ready cycle=0")
	if err := d.Suspend(b.Context(), DefaultSuspendTimeouts); err != nil {
		b.Fatal(err)
	}
	if _, err := benchpeers.FillTouched(d.Machine().Memory().Regions()[0].Mem, touchMiB); err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkSave: saving a guest with 4 MiB touched, configured with 64 MiB
// and with 1 GiB; time and bytes must not grow with the configured size.
func BenchmarkSave(b *testing.B) {
	kvmtest.Require(b)
	for _, mem := range []uint64{64 << 20, 1 << 30} {
		b.Run(fmt.Sprintf("mem=%dMiB", mem>>20), func(b *testing.B) {
			d := suspendedGuest(b, mem, 4)
			path := filepath.Join(b.TempDir(), "g.save")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := d.Save(b.Context(), path, false); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			st, _ := os.Stat(path)
			b.ReportMetric(float64(st.Size()), "file-bytes")
		})
	}
}

// BenchmarkRestore: restoring the 64 MiB and 1 GiB guests, from the
// request to the guest running (Restore + Unpause), against creating a
// bare VM and taking its first exit in the same run.
func BenchmarkRestore(b *testing.B) {
	kvmtest.Require(b)
	for _, mem := range []uint64{64 << 20, 1 << 30} {
		b.Run(fmt.Sprintf("mem=%dMiB", mem>>20), func(b *testing.B) {
			d := suspendedGuest(b, mem, 4)
			path := filepath.Join(b.TempDir(), "g.save")
			if err := d.Save(b.Context(), path, false); err != nil {
				b.Fatal(err)
			}
			d.Destroy()
			ts := New(nil)
			var durs []time.Duration
			var bare time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				nd, err := ts.Restore(b.Context(), path, DomainConfig{Name: fmt.Sprintf("r%d", i)})
				if err != nil {
					b.Fatal(err)
				}
				nd.Unpause()
				durs = append(durs, time.Since(t0))
				nd.Destroy()
				bare += bareVMFirstExit(b)
			}
			sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
			p50 := durs[len(durs)/2]
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(p50)/(float64(bare)/float64(b.N)), "x-bare-vm")
		})
	}
}

// BenchmarkSaveThroughput: saving a guest that touched all of 256 MiB,
// against copying 256 MiB in memory in the same run.
func BenchmarkSaveThroughput(b *testing.B) {
	kvmtest.Require(b)
	d := suspendedGuest(b, 264<<20, 256)
	path := filepath.Join(b.TempDir(), "g.save")
	src, dst := make([]byte, 256<<20), make([]byte, 256<<20)
	for i := range src {
		src[i] = byte(i)
	}
	var save, cp time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := d.Save(b.Context(), path, false); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		copy(dst, src)
		cp += time.Since(t1)
		save += t1.Sub(t0)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(256*b.N)/save.Seconds(), "save-MiB/s")
	b.ReportMetric(float64(256*b.N)/cp.Seconds(), "memcpy-MiB/s")
	b.ReportMetric(float64(save)/float64(cp), "x-memcpy")
}
