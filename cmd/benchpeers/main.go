// Command benchpeers measures xenresume's save and restore against QEMU's,
// in one process tree and interleaved (`make bench-peers`; numbers and
// method in docs/PERFORMANCE.md).
//
//	benchpeers [-mem 64,1024] [-touch 4] [-rounds 5] [-accel kvm]
//	benchpeers -sweep touched|configured [-rounds 3] > sweep.tsv
//
// The first form needs QEMU (-qemu or $QEMU; $QEMU_DATADIR lists its
// firmware directories, $QEMU_LD_LIBRARY_PATH its libraries, as
// scripts/qemu-deps.sh prints them) and prints each pair of times with
// its ratio, then the medians. The second measures xenresume alone at
// growing touched (1 to 256 MiB, 512 MiB configured) or configured
// (64 MiB to 2 GiB, 4 MiB touched) memory and prints a table that
// cmd/benchplot draws.
//
// Both sides' guests have their memory touched from 8 MiB up, with the
// same bytes (byte(addr>>12)|1): xenresume's stub is suspended and the
// host fills its memory; QEMU's guest (a 69-byte Multiboot kernel) fills
// its own and halts, and is stopped (QMP stop) before it is saved.
//
// What is timed: xenresume's save is Save (a checkpoint of the suspended
// domain: stream, fsync, rename); QEMU's is migrate to a file descriptor
// until the MIGRATION event says completed, then an fsync of the file.
// xenresume's restore is Restore + Unpause, VM creation included; QEMU's
// is migrate-incoming into a QEMU already started with -incoming defer
// (its process and VM made before the clock starts) until the migration
// completes, then cont until the RESUME event; a third figure times QEMU
// from its process start to the same point.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xenresume/xenresume/internal/benchpeers"
	"github.com/xenresume/xenresume/internal/syncbuf"
	"github.com/xenresume/xenresume/vmm/toolstack"
)

func main() {
	mems := flag.String("mem", "64,1024", "configured memory sizes, MiB, comma-separated")
	touch := flag.Uint64("touch", 4, "MiB touched in each guest, from 8 MiB up")
	rounds := flag.Int("rounds", 5, "interleaved rounds per memory size")
	accel := flag.String("accel", "kvm", "QEMU accelerator (kvm or tcg)")
	qemu := flag.String("qemu", os.Getenv("QEMU"), "qemu-system-x86_64 to run")
	sweep := flag.String("sweep", "", "xenresume alone: touched or configured (a table on stdout)")
	dir := flag.String("dir", "", "directory for the save files (default: a new temporary one)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *mems, *touch, *rounds, *accel, *qemu, *sweep, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "benchpeers:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mems string, touch uint64, rounds int, accel, qemu, sweep, dir string) error {
	if rounds < 1 {
		return fmt.Errorf("-rounds %d: want at least 1", rounds)
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "benchpeers-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if sweep != "" {
		return runSweep(ctx, sweep, rounds, dir)
	}
	if qemu == "" {
		return fmt.Errorf("no QEMU: set -qemu or $QEMU (scripts/qemu-deps.sh fetches one)")
	}
	var sizes []uint64
	for _, f := range strings.Split(mems, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil || n < 8+touch {
			return fmt.Errorf("-mem %q: want MiB sizes of at least %d (8 + touched)", f, 8+touch)
		}
		sizes = append(sizes, n)
	}
	qcfg := benchpeers.QEMUConfig{Binary: qemu, Accel: accel}
	if p := os.Getenv("QEMU_LD_LIBRARY_PATH"); p != "" {
		qcfg.Env = append(qcfg.Env, "LD_LIBRARY_PATH="+p)
	}
	if p := os.Getenv("QEMU_DATADIR"); p != "" {
		qcfg.Firmware = filepath.SplitList(p)
	}
	kernel, err := benchpeers.MultibootGuest(uint32(touch))
	if err != nil {
		return err
	}
	qcfg.Kernel = filepath.Join(dir, "guest.mb")
	if err := os.WriteFile(qcfg.Kernel, kernel, 0o644); err != nil {
		return err
	}
	fmt.Printf("# %s, %d MiB touched, QEMU accel=%s, %d rounds; times from request to done (save: file fsynced; restore: guest running)\n",
		time.Now().UTC().Format(time.DateOnly), touch, accel, rounds)
	for _, mem := range sizes {
		if err := compare(ctx, mem, touch, rounds, qcfg, dir); err != nil {
			return fmt.Errorf("%d MiB: %w", mem, err)
		}
	}
	return nil
}

// ours is one suspended xenresume stub domain with touchMiB MiB filled.
func ours(ctx context.Context, ts *toolstack.Toolstack, memMiB, touchMiB uint64) (*toolstack.Domain, error) {
	con := &syncbuf.Buffer{}
	d, err := ts.Create(toolstack.DomainConfig{Name: "bench", Cmdline: "test=suspend", Console: con, MemSize: memMiB << 20})
	if err != nil {
		return nil, err
	}
	if err := d.Unpause(); err != nil {
		d.Destroy()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for !strings.Contains(con.String(), "suspend: ready cycle=0") {
		select {
		case <-wctx.Done():
			d.Destroy()
			return nil, fmt.Errorf("the stub never got ready: %w\n%s", wctx.Err(), con.String())
		case <-time.After(time.Millisecond):
		}
	}
	if err := d.Suspend(ctx, toolstack.DefaultSuspendTimeouts); err != nil {
		d.Destroy()
		return nil, err
	}
	if _, err := benchpeers.FillTouched(d.Machine().Memory().Regions()[0].Mem, touchMiB); err != nil {
		d.Destroy()
		return nil, err
	}
	return d, nil
}

// restoreOnce restores path and runs the guest, returning the time from
// the request to running; the domain is destroyed after (not timed).
func restoreOnce(ctx context.Context, ts *toolstack.Toolstack, path string, i int) (time.Duration, error) {
	t0 := time.Now()
	nd, err := ts.Restore(ctx, path, toolstack.DomainConfig{Name: fmt.Sprintf("restored%d", i), Console: &syncbuf.Buffer{}})
	if err != nil {
		return 0, err
	}
	if err := nd.Unpause(); err != nil {
		nd.Destroy()
		return 0, err
	}
	dt := time.Since(t0)
	return dt, nd.Destroy()
}

func timed(fn func() error) (time.Duration, error) {
	t0 := time.Now()
	err := fn()
	return time.Since(t0), err
}

// compare runs rounds of the four measurements for one memory size,
// alternating which side goes first, and prints each pair.
func compare(ctx context.Context, mem, touch uint64, rounds int, qcfg benchpeers.QEMUConfig, dir string) error {
	ts := toolstack.New(slog.New(slog.DiscardHandler))
	d, err := ours(ctx, ts, mem, touch)
	if err != nil {
		return fmt.Errorf("xenresume guest: %w", err)
	}
	defer d.Destroy()
	qcfg.MemMiB = mem
	qcfg.Dir = filepath.Join(dir, fmt.Sprintf("qemu-src-%d", mem))
	if err := os.MkdirAll(qcfg.Dir, 0o755); err != nil {
		return err
	}
	bootCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	src, err := benchpeers.StartQEMU(bootCtx, qcfg)
	if err != nil {
		return err
	}
	defer src.Kill()
	if err := src.WaitDone(bootCtx); err != nil {
		return err
	}
	if err := src.Stop(ctx); err != nil {
		return err
	}
	ourFile, qFile := filepath.Join(dir, "xenresume.save"), filepath.Join(dir, "qemu.save")
	var saves, restores [2][]time.Duration // [0] xenresume, [1] QEMU
	var qemuStarted []time.Duration        // QEMU's restore from its process start
	// Round -1 warms both sides up (page cache, first-use costs) and is
	// not reported.
	for r := -1; r < rounds; r++ {
		saveOurs := func() error {
			dt, err := timed(func() error { return d.Save(ctx, ourFile, true) })
			saves[0] = append(saves[0], dt)
			return err
		}
		saveQEMU := func() error {
			if err := src.Rearm(ctx); err != nil {
				return err
			}
			dt, err := timed(func() error { return src.Save(ctx, qFile) })
			saves[1] = append(saves[1], dt)
			return err
		}
		restoreOurs := func() error {
			dt, err := restoreOnce(ctx, ts, ourFile, r+1)
			restores[0] = append(restores[0], dt)
			return err
		}
		restoreQEMU := func() error {
			dcfg := qcfg
			dcfg.Incoming = true
			dcfg.Dir = filepath.Join(dir, fmt.Sprintf("qemu-dst-%d", mem))
			if err := os.MkdirAll(dcfg.Dir, 0o755); err != nil {
				return err
			}
			t0 := time.Now()
			dst, err := benchpeers.StartQEMU(bootCtx, dcfg)
			if err != nil {
				return err
			}
			defer dst.Kill()
			dt, err := timed(func() error { return dst.Restore(ctx, qFile) })
			restores[1] = append(restores[1], dt)
			qemuStarted = append(qemuStarted, time.Since(t0))
			return err
		}
		steps := []func() error{saveOurs, saveQEMU, restoreOurs, restoreQEMU}
		if r%2 != 0 {
			steps = []func() error{saveQEMU, saveOurs, restoreQEMU, restoreOurs}
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		if r < 0 {
			saves, restores, qemuStarted = [2][]time.Duration{}, [2][]time.Duration{}, nil
			continue
		}
		fmt.Printf("%5d MiB round %d: save    xenresume %8.2f ms  qemu %8.2f ms  ratio %.3fx\n", mem, r+1, ms(saves[0][r]), ms(saves[1][r]), ratio(saves[0][r], saves[1][r]))
		fmt.Printf("%5d MiB round %d: restore xenresume %8.2f ms  qemu %8.2f ms  ratio %.3fx  (qemu from its process start %.2f ms: %.3fx)\n", mem, r+1,
			ms(restores[0][r]), ms(restores[1][r]), ratio(restores[0][r], restores[1][r]), ms(qemuStarted[r]), ratio(restores[0][r], qemuStarted[r]))
	}
	oursSize, qSize := fileSize(ourFile), fileSize(qFile)
	pairs := func(a, b []time.Duration) float64 {
		rs := make([]float64, len(a))
		for i := range a {
			rs[i] = ratio(a[i], b[i])
		}
		slices.Sort(rs)
		return rs[len(rs)/2]
	}
	fmt.Printf("%5d MiB median : save    xenresume %8.2f ms  qemu %8.2f ms  ratio %.3fx\n", mem, ms(median(saves[0])), ms(median(saves[1])), ratio(median(saves[0]), median(saves[1])))
	fmt.Printf("%5d MiB median : restore xenresume %8.2f ms  qemu %8.2f ms  ratio %.3fx  (qemu from its process start %.2f ms: %.3fx)\n", mem,
		ms(median(restores[0])), ms(median(restores[1])), ratio(median(restores[0]), median(restores[1])), ms(median(qemuStarted)), ratio(median(restores[0]), median(qemuStarted)))
	fmt.Printf("%5d MiB pairs  : median ratio of a round's pair: save %.3fx, restore %.3fx (from QEMU's process start %.3fx)\n", mem,
		pairs(saves[0], saves[1]), pairs(restores[0], restores[1]), pairs(restores[0], qemuStarted))
	fmt.Printf("%5d MiB file   : xenresume %d bytes  qemu %d bytes\n", mem, oursSize, qSize)
	return nil
}

// runSweep prints, tab-separated, xenresume's median save and restore
// times and file size at each point of a sweep (the input of cmd/benchplot).
func runSweep(ctx context.Context, kind string, rounds int, dir string) error {
	type point struct{ mem, touch uint64 }
	var points []point
	switch kind {
	case "touched":
		for t := uint64(1); t <= 256; t *= 2 {
			points = append(points, point{512, t})
		}
	case "configured":
		for m := uint64(64); m <= 2048; m *= 2 {
			points = append(points, point{m, 4})
		}
	default:
		return fmt.Errorf("-sweep %q: want touched or configured", kind)
	}
	fmt.Printf("# %s: xenresume alone, median of %d; %s\n", time.Now().UTC().Format(time.DateOnly), rounds, "sweep="+kind)
	fmt.Println("sweep\tconfigured_mib\ttouched_mib\tsave_ms\trestore_ms\tfile_bytes")
	ts := toolstack.New(slog.New(slog.DiscardHandler))
	path := filepath.Join(dir, "sweep.save")
	for _, p := range points {
		d, err := ours(ctx, ts, p.mem, p.touch)
		if err != nil {
			return err
		}
		var saves, restores []time.Duration
		// Round -1 warms both sides up (page cache, first-use costs) and is
		// not reported.
		for r := -1; r < rounds; r++ {
			dt, err := timed(func() error { return d.Save(ctx, path, true) })
			if err != nil {
				d.Destroy()
				return err
			}
			saves = append(saves, dt)
			if dt, err = restoreOnce(ctx, ts, path, r); err != nil {
				d.Destroy()
				return err
			}
			restores = append(restores, dt)
		}
		d.Destroy()
		fmt.Printf("%s\t%d\t%d\t%.3f\t%.3f\t%d\n", kind, p.mem, p.touch, ms(median(saves)), ms(median(restores)), fileSize(path))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return st.Size()
}
