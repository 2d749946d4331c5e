package toolstack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/benchpeers"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// suspendedGuest returns a suspended stub with touchMiB of its memory
// (from 8 MiB up, its page tables left alone) filled by the host: the
// touched set the benchmarks save.
func suspendedGuest(b testing.TB, mem, touchMiB uint64) *Domain {
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

// BenchmarkSave: saving a suspended guest (a checkpoint: it stays
// suspended for the next iteration) with 4 MiB touched, configured with
// 64 MiB and with 1 GiB, and with 256 MiB touched; each save against
// writing and fsyncing a file of the same size in the same run (the
// disk's speed: x-write-fsync) and against that plus the directory's
// fsync after the rename, which a save does for the rename's durability
// (x-write-fsync-dir), interleaved, each first in turn; the -p50 ratios
// are of the medians. exits/op
// is the suspended guest's vCPU exits during the saves: 0, as a save runs
// no guest code.
func BenchmarkSave(b *testing.B) {
	kvmtest.Require(b)
	for _, c := range []struct{ mem, touch uint64 }{{64 << 20, 4}, {1 << 30, 4}, {264 << 20, 256}} {
		b.Run(fmt.Sprintf("mem=%dMiB/touch=%dMiB", c.mem>>20, c.touch), func(b *testing.B) {
			d := suspendedGuest(b, c.mem, c.touch)
			dir := b.TempDir()
			path := filepath.Join(dir, "g.save")
			if err := d.Save(b.Context(), path, true); err != nil {
				b.Fatal(err)
			}
			st, err := os.Stat(path)
			if err != nil {
				b.Fatal(err)
			}
			data := make([]byte, st.Size())
			for i := range data {
				data[i] = byte(i>>12) | 1
			}
			var save, base, baseDir time.Duration
			var saves, bases, baseDirs []time.Duration
			v := d.Machine().VCPUs()[0]
			exits0 := v.TotalExits()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				saveOnce := func() {
					t0 := time.Now()
					if err := d.Save(b.Context(), path, true); err != nil {
						b.Fatal(err)
					}
					save += time.Since(t0)
					saves = append(saves, time.Since(t0))
				}
				baseOnce := func() {
					t0 := time.Now()
					if err := writeFsync(filepath.Join(dir, "baseline"), data); err != nil {
						b.Fatal(err)
					}
					base += time.Since(t0)
					bases = append(bases, time.Since(t0))
				}
				baseDirOnce := func() {
					t0 := time.Now()
					if err := writeFsync(filepath.Join(dir, "baseline-dir"), data); err != nil {
						b.Fatal(err)
					}
					if err := syncDir(dir); err != nil {
						b.Fatal(err)
					}
					baseDir += time.Since(t0)
					baseDirs = append(baseDirs, time.Since(t0))
				}
				order := []func(){saveOnce, baseOnce, baseDirOnce}
				for k := range order { // each goes first in turn
					order[(k+i)%len(order)]()
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(save.Nanoseconds())/float64(b.N), "ns/op")
			b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "write-fsync-ns/op")
			b.ReportMetric(float64(save)/float64(base), "x-write-fsync")
			b.ReportMetric(float64(save)/float64(baseDir), "x-write-fsync-dir")
			// The same ratios of medians: one fsync that waits for the
			// disk 20 to 40 times longer than the others (seen under
			// load, on either side) moves the ratio of sums by more than
			// the difference being measured.
			med := func(ds []time.Duration) float64 {
				slices.Sort(ds)
				return float64(ds[len(ds)/2])
			}
			b.ReportMetric(med(saves)/med(bases), "x-write-fsync-p50")
			b.ReportMetric(med(saves)/med(baseDirs), "x-write-fsync-dir-p50")
			b.ReportMetric(float64(st.Size()), "file-bytes")
			b.ReportMetric(float64(v.TotalExits()-exits0)/float64(b.N), "exits/op")
		})
	}
}

// writeFsync is the save's baseline: a new file of the same bytes, written
// in 1 MiB writes, fsynced, renamed over the last (as a save does).
func writeFsync(path string, data []byte) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(off+1<<20, len(data))]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// syncDir fsyncs directory dir, as a save does after its rename.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// BenchmarkRestore: restoring the 64 MiB and 1 GiB guests, from the
// request to the guest running (Restore + Unpause), against creating a
// bare VM and taking its first exit in the same run (x-bare-vm), and
// against what a restore cannot avoid (x-create-copy): creating a bare VM
// of the same size, copying the save file's bytes (read beforehand) into
// its fresh memory, and taking its first exit. exits/op is the
// restored vCPU's exits by the time Unpause returns (the restore itself
// runs no guest code). cpu-p50-ns and x-create-copy-cpu are the same
// in the process's CPU time (user and system, every thread), medians:
// on a machine whose cores other work keeps busy, wall times there
// include waiting for a core, which CPU time does not.
func BenchmarkRestore(b *testing.B) {
	kvmtest.Require(b)
	for _, mem := range []uint64{64 << 20, 1 << 30} {
		b.Run(fmt.Sprintf("mem=%dMiB", mem>>20), func(b *testing.B) {
			d := suspendedGuest(b, mem, 4)
			path := filepath.Join(b.TempDir(), "g.save")
			if err := d.Save(b.Context(), path, false); err != nil {
				b.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			ts := New(nil)
			var durs, cpus, copiedCPUs []time.Duration
			var bare, copied time.Duration
			var exits uint64
			for i := 0; i < b.N; i++ {
				cpu0 := processCPU(b)
				t0 := time.Now()
				nd, err := ts.Restore(b.Context(), path, DomainConfig{Name: fmt.Sprintf("r%d", i)})
				if err != nil {
					b.Fatal(err)
				}
				nd.Unpause()
				durs = append(durs, time.Since(t0))
				cpus = append(cpus, processCPU(b)-cpu0)
				exits += nd.Machine().VCPUs()[0].TotalExits()
				nd.Destroy()
				bare += bareVMFirstExit(b)
				w, c := bareVMCopyCPU(b, mem, data)
				copied += w
				copiedCPUs = append(copiedCPUs, c)
			}
			med := func(ds []time.Duration) float64 {
				slices.Sort(ds)
				return float64(ds[len(ds)/2])
			}
			b.ReportMetric(med(cpus), "cpu-p50-ns")
			b.ReportMetric(med(cpus)/med(copiedCPUs), "x-create-copy-cpu")
			sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
			p50 := durs[len(durs)/2]
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(p50)/(float64(bare)/float64(b.N)), "x-bare-vm")
			b.ReportMetric(float64(copied.Nanoseconds())/float64(b.N), "create-copy-ns/op")
			b.ReportMetric(float64(p50)/(float64(copied)/float64(b.N)), "x-create-copy")
			b.ReportMetric(float64(exits)/float64(b.N), "exits/op")
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
	v := d.Machine().VCPUs()[0]
	exits0 := v.TotalExits()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := d.Save(b.Context(), path, true); err != nil {
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
	b.ReportMetric(float64(v.TotalExits()-exits0)/float64(b.N), "exits/op")
}

// BenchmarkRestoreConfigured restores, interleaved in one run, a guest of
// 64 MiB and one of 1 GiB configured, each with the same 4 MiB touched by
// the host's fill: x-64MiB is the 1 GiB restore's median over the 64 MiB
// one's (x-64MiB-cpu: in process CPU time). The stub's own page tables and P2M list grow with configured
// memory (an L1 table per 2 MiB, 8 bytes of P2M per page: 4 MiB more at
// 1 GiB), so the files differ: x-file is the 1 GiB file's size over the
// 64 MiB one's, and x-create-copy-64MiB the same ratio for a bare VM
// create plus a copy of each file's bytes, what the growth costs at the
// least.
func BenchmarkRestoreConfigured(b *testing.B) {
	kvmtest.Require(b)
	mems := []uint64{64 << 20, 1 << 30}
	paths := make([]string, len(mems))
	data := make([][]byte, len(mems))
	for i, mem := range mems {
		d := suspendedGuest(b, mem, 4)
		paths[i] = filepath.Join(b.TempDir(), "g.save")
		if err := d.Save(b.Context(), paths[i], false); err != nil {
			b.Fatal(err)
		}
		d.Destroy()
		var err error
		if data[i], err = os.ReadFile(paths[i]); err != nil {
			b.Fatal(err)
		}
	}
	ts := New(nil)
	durs := make([][]time.Duration, len(mems))
	cpus := make([][]time.Duration, len(mems))
	copied := make([]time.Duration, len(mems))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range mems {
			j := (k + i) % len(mems) // each goes first in turn
			cpu0 := processCPU(b)
			t0 := time.Now()
			nd, err := ts.Restore(b.Context(), paths[j], DomainConfig{Name: fmt.Sprintf("r%d-%d", i, j)})
			if err != nil {
				b.Fatal(err)
			}
			nd.Unpause()
			durs[j] = append(durs[j], time.Since(t0))
			cpus[j] = append(cpus[j], processCPU(b)-cpu0)
			nd.Destroy()
			copied[j] += bareVMCopy(b, mems[j], data[j])
		}
	}
	b.StopTimer()
	p50 := func(ds []time.Duration) float64 {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return float64(ds[len(ds)/2])
	}
	small, large := p50(durs[0]), p50(durs[1])
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(small, "p50-ns-64MiB")
	b.ReportMetric(large, "p50-ns-1GiB")
	b.ReportMetric(large/small, "x-64MiB")
	b.ReportMetric(p50(cpus[1])/p50(cpus[0]), "x-64MiB-cpu")
	b.ReportMetric(float64(len(data[1]))/float64(len(data[0])), "x-file")
	b.ReportMetric(float64(copied[1])/float64(copied[0]), "x-create-copy-64MiB")
}

// BenchmarkMigrateDowntime: a live migration of a 64 MiB stub (idle, and
// writing 64 pages per step over its 512 KiB buffer: dirty=64), over an
// in-process pipe into a restore, against a plain save to a file and a
// restore of the same guest in the same run. Downtime is from the suspend
// request to the guest unpaused on the target, for both.
func BenchmarkMigrateDowntime(b *testing.B) {
	kvmtest.Require(b)
	verifyDirty = false // the tests' hash pass over all memory
	defer func() { verifyDirty = true }()
	running := func(b *testing.B, cmdline string) *Domain {
		d, con := create(b, New(nil), cmdline, func(c *DomainConfig) { c.MemSize = 64 << 20 })
		d.Unpause()
		waitFor(b, con, "suspend: ready cycle=0")
		return d
	}
	for _, cmdline := range []string{"test=suspend", "test=suspend dirty=64"} {
		b.Run(cmdline[5:], func(b *testing.B) {
			var mig, total, plain []time.Duration
			var bytes uint64
			rounds := 0
			for i := 0; i < b.N; i++ {
				d := running(b, cmdline)
				t0 := time.Now()
				m := migrateTo(b, d, New(nil), io.Discard, MigrateOptions{}, 0, func(nd *Domain, err error) (Handoff, error) {
					if err != nil {
						return NotHandedOver, err
					}
					nd.Unpause()
					return HandedOver, nil
				})
				if m.err != nil {
					b.Fatal(m.err)
				}
				total = append(total, time.Since(t0))
				mig = append(mig, m.stats.Downtime)
				bytes += m.stats.Bytes
				rounds += len(m.stats.Rounds)
				m.target.Destroy()

				d = running(b, cmdline)
				path := filepath.Join(b.TempDir(), "g.save")
				t1 := time.Now()
				if err := d.Save(b.Context(), path, false); err != nil {
					b.Fatal(err)
				}
				nd, err := New(nil).Restore(b.Context(), path, DomainConfig{})
				if err != nil {
					b.Fatal(err)
				}
				nd.Unpause()
				plain = append(plain, time.Since(t1))
				nd.Destroy()
			}
			p50 := func(d []time.Duration) time.Duration {
				sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
				return d[len(d)/2]
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(p50(mig).Nanoseconds()), "downtime-p50-ns")
			b.ReportMetric(float64(p50(plain).Nanoseconds()), "save+restore-p50-ns")
			b.ReportMetric(float64(p50(mig))/float64(p50(plain)), "x-save+restore")
			b.ReportMetric(float64(p50(total).Nanoseconds()), "migration-total-p50-ns")
			b.ReportMetric(float64(bytes)/float64(b.N), "stream-bytes")
			b.ReportMetric(float64(rounds)/float64(b.N), "rounds")
		})
	}
}

// BenchmarkRemus: checkpoints per second and the primary's pause per
// checkpoint (the rate from the first checkpoint's end to the last's: the
// first epoch's full copy is not counted), with no interval between
// checkpoints, into a secondary that
// buffers them; against a plain suspend and fast resume of the same guest
// in the same run (the least a checkpoint can pause it). The evtchn/ cases
// run the stub's minimal suspend cycle (bench=1: no checks, no output)
// with the suspend event channel (suspend-evtchn=1, no xenstore
// handshake), as a Linux guest is suspended; the others the full cycle
// through control/shutdown. The stub is idle,
// or writes 64 pages per step over its 512 KiB buffer (dirty=64), or
// (1MiB) the benchmark writes 1 MiB of the guest's RAM per epoch (256
// pages at the top of RAM, which the stub does not use, new content each
// time) through Memory.Write, as the emulated Xen and the backends do:
// the 1 MiB reaches the stream through the VMM's dirty set. 1MiB-hashall
// adds the tests' cross-check (verify: a hash of every page in use at each
// checkpoint), which costs what the last round cost before the VMM's
// dirty set.
func BenchmarkRemus(b *testing.B) {
	kvmtest.Require(b)
	verifyDirty = false // the tests' hash pass over all memory
	defer func() { verifyDirty = true }()
	const perOp = 20
	for _, c := range []struct {
		name, cmdline string
		hostPages     uint64 // written by the benchmark per epoch
		hashAll       bool   // each checkpoint hashes all memory, as before the VMM's dirty set
	}{
		{"idle", "test=idle", 0, false},
		{"dirty=64", "test=idle dirty=64", 0, false},
		{"1MiB", "test=idle", 256, false},
		{"1MiB-hashall", "test=idle", 256, true},
		{"evtchn/idle", "test=idle bench=1 suspend-evtchn=1", 0, false},
		{"evtchn/1MiB", "test=idle bench=1 suspend-evtchn=1", 256, false},
		{"evtchn/1MiB-hashall", "test=idle bench=1 suspend-evtchn=1", 256, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			verifyDirty = c.hashAll
			defer func() { verifyDirty = false }()
			d, con := create(b, New(nil), c.cmdline, func(c *DomainConfig) { c.MemSize = 64 << 20 })
			d.Unpause()
			waitFor(b, con, "suspend: ready cycle=0")
			mem := d.Machine().Memory()
			top := d.Xen.Frames().NrPages - c.hostPages
			for pfn := top; pfn < top+c.hostPages; pfn++ {
				pg := make([]byte, machine.PageSize)
				if err := mem.Read(pfn<<12, pg); err != nil || !bytes.Equal(pg, make([]byte, machine.PageSize)) {
					b.Fatalf("PFN %#x is in use (%v): the benchmark would clobber the guest", pfn, err)
				}
			}
			var epoch uint64
			stamp := make([]byte, machine.PageSize)
			writeEpoch := func() {
				epoch++
				for pfn := top; pfn < top+c.hostPages; pfn++ {
					binary.LittleEndian.PutUint64(stamp, epoch)
					binary.LittleEndian.PutUint64(stamp[machine.PageSize-8:], pfn)
					if err := mem.Write(pfn<<12, stamp); err != nil {
						b.Fatal(err)
					}
				}
			}
			var pauses, bare []time.Duration
			var total time.Duration
			var pages uint64
			for i := 0; i < b.N; i++ {
				pr, pw := io.Pipe()
				done := make(chan error, 1)
				go func() {
					_, _, err := New(nil).ReceiveCheckpoints(b.Context(), pr, DomainConfig{}, nil)
					pr.Close()
					done <- err
				}()
				t0 := time.Now()
				n, err := d.Remus(b.Context(), pw, RemusOptions{Interval: time.Nanosecond, Checkpoints: perOp,
					Progress: func(c RemusCheckpoint) {
						pauses = append(pauses, c.Pause)
						pages += c.Pages
						if c.N == 1 {
							t0 = time.Now() // the steady state, after the first epoch's full copy
						}
						writeEpoch()
					}})
				total += time.Since(t0)
				pw.Close()
				if err != nil || n != perOp {
					b.Fatalf("%d checkpoints: %v", n, err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				// The baseline: suspend and a fast resume, no stream.
				t1 := time.Now()
				if err := d.Suspend(b.Context(), DefaultSuspendTimeouts); err != nil {
					b.Fatal(err)
				}
				if err := d.Resume(b.Context(), true); err != nil {
					b.Fatal(err)
				}
				d.Unpause()
				bare = append(bare, time.Since(t1))
			}
			p50 := func(d []time.Duration) time.Duration {
				sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
				return d[len(d)/2]
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64((perOp-1)*b.N)/total.Seconds(), "checkpoints/s")
			b.ReportMetric(float64(p50(pauses).Nanoseconds()), "pause-p50-ns")
			b.ReportMetric(float64(p50(bare).Nanoseconds()), "suspend+resume-p50-ns")
			b.ReportMetric(float64(p50(pauses))/float64(p50(bare)), "x-suspend+resume")
			b.ReportMetric(float64(pages)/float64(perOp*b.N), "pages/checkpoint")
		})
	}
}
