// Command xtf runs the Xen Test Framework's cases of one environment (pv64
// by default; hvm64, hvm32, ...) under `runvm create` and compares what it
// measures with the committed table: `make xtf` runs it, `make xtf-update`
// rewrites the tables (docs/XTF.md).
//
//	go run ./internal/xtf [-env pv64] [-runvm bin/runvm] [-xtf .cache/xtf] [-timeout 15s] [-idle 5s]
//	    [-expected testdata/xtf-ENV.txt] [-out .cache/xtf-ENV.txt] [-update] [-run REGEXP] [-j N] [-v]
//
// Every tests/*/test-ENV-*.cfg under the built XTF tree is one case (a
// test with variations has one file per variation), run as `runvm create
// --runtime-dir FRESH FILE.cfg` with a time limit and an idle limit (no
// output for that long is a hang). Each case gets one row: its name, its
// result (XTF's SUCCESS, SKIP, ERROR or FAILURE from the "Test result:"
// line; CRASH, TIMEOUT or LOADER-ERROR otherwise) and a one-line reason.
// Any difference from the expected table, better or worse, fails the run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	os.Exit(run(os.Args[1:], os.Stdout, log))
}

type options struct {
	env, runvm, xtf, expected, out string
	timeout, idle                  time.Duration
	update, verbose                bool
	filter                         *regexp.Regexp
	jobs                           int
}

func run(args []string, stdout io.Writer, log *slog.Logger) int {
	var o options
	fs := flag.NewFlagSet("xtf", flag.ContinueOnError)
	fs.StringVar(&o.env, "env", "pv64", "XTF's `environment`: pv64, hvm64, hvm32, hvm32pae or hvm32pse")
	fs.StringVar(&o.runvm, "runvm", "bin/runvm", "the runvm `binary`")
	fs.StringVar(&o.xtf, "xtf", ".cache/xtf", "the built XTF `tree`")
	fs.StringVar(&o.expected, "expected", "", "the committed expected `table` (default testdata/xtf-ENV.txt)")
	fs.StringVar(&o.out, "out", "", "where to write the measured `table` (default .cache/xtf-ENV.txt)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Second, "a case's time limit")
	fs.DurationVar(&o.idle, "idle", 5*time.Second, "a case that prints nothing for this long has hung")
	fs.BoolVar(&o.update, "update", false, "write the measured table to -expected instead of comparing")
	fs.BoolVar(&o.verbose, "v", false, "print each case's console and runvm's stderr")
	fs.IntVar(&o.jobs, "j", 1, "cases to run at once")
	runFilter := fs.String("run", "", "run only the cases matching `regexp` (the comparison and -update cover only those)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !regexp.MustCompile(`^[a-z0-9]+$`).MatchString(o.env) {
		log.Error("bad -env", "env", o.env)
		return 2
	}
	if o.expected == "" {
		o.expected = "testdata/xtf-" + o.env + ".txt"
	}
	if o.out == "" {
		o.out = ".cache/xtf-" + o.env + ".txt"
	}
	tableComment = commentFor(o.env)
	if *runFilter != "" {
		re, err := regexp.Compile(*runFilter)
		if err != nil {
			log.Error("bad -run", "err", err)
			return 2
		}
		o.filter = re
	}
	if o.timeout <= 0 || o.idle <= 0 || o.jobs < 1 {
		log.Error("-timeout and -idle must be positive, -j at least 1")
		return 2
	}
	if err := kvmUsable(); err != nil {
		if os.Getenv("XENRESUME_REQUIRE_KVM") == "1" {
			log.Error("XENRESUME_REQUIRE_KVM=1 but KVM is unusable", "err", err)
			return 1
		}
		fmt.Fprintf(stdout, "xtf: skipped, KVM is unusable: %v\n", err)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, o, stdout); err != nil {
		if !errors.Is(err, errDiffers) { // that one has been shown
			log.Error("xtf", "err", err)
		}
		return 1
	}
	return 0
}

// kvmUsable is kvmtest's test: /dev/kvm opens for reading and writing.
func kvmUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// errDiffers says the measured table is not the expected one.
var errDiffers = errors.New("the measured table differs from the expected one")

func runAll(ctx context.Context, o options, stdout io.Writer) error {
	var err error
	if o.runvm, err = filepath.Abs(o.runvm); err != nil {
		return err
	}
	if o.xtf, err = filepath.Abs(o.xtf); err != nil {
		return err
	}
	cfgs, err := filepath.Glob(filepath.Join(o.xtf, "tests", "*", "test-"+o.env+"-*.cfg"))
	if err != nil {
		return err
	}
	var cases []string
	for _, c := range cfgs {
		if o.filter == nil || o.filter.MatchString(caseName(c)) {
			cases = append(cases, c)
		}
	}
	sort.Slice(cases, func(i, j int) bool { return caseName(cases[i]) < caseName(cases[j]) })
	if len(cases) == 0 {
		return fmt.Errorf("no tests/*/test-%s-*.cfg under %s matches (make xtf builds XTF there)", o.env, o.xtf)
	}

	start := time.Now()
	results := make([]result, len(cases))
	ready := make([]bool, len(cases))
	var mu sync.Mutex
	printed := 0
	width := 0
	for _, c := range cases {
		width = max(width, len(caseName(c)))
	}
	fmt.Fprintf(stdout, "xtf: %d %s cases under %s (limit %v each, %v without output)\n", len(cases), o.env, o.runvm, o.timeout, o.idle)
	fmt.Fprint(stdout, header(width))
	// Rows print in order as soon as every earlier case is done.
	report := func(i int, r result, log string) {
		mu.Lock()
		defer mu.Unlock()
		results[i], ready[i] = r, true
		for printed < len(cases) && ready[printed] {
			fmt.Fprint(stdout, results[printed].row(width))
			printed++
		}
		if o.verbose && log != "" {
			fmt.Fprint(stdout, log)
		}
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range o.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				r, log := runCase(ctx, o, cases[i])
				report(i, r, log)
			}
		}()
	}
	for i := range cases {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}

	counts := map[string]int{}
	for _, r := range results {
		counts[r.Result]++
	}
	var summary []string
	for _, k := range resultOrder {
		if counts[k] > 0 {
			summary = append(summary, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	fmt.Fprintf(stdout, "xtf: %d cases in %.0fs: %s\n", len(results), time.Since(start).Seconds(), strings.Join(summary, ", "))

	measured := formatTable(results)
	if o.filter == nil {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(measured), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "xtf: measured table in %s\n", o.out)
	}
	old, err := os.ReadFile(o.expected)
	if err != nil && !(o.update && errors.Is(err, os.ErrNotExist)) {
		return fmt.Errorf("the expected table: %w (make xtf-update writes it)", err)
	}
	expected, err := parseTable(string(old))
	if err != nil {
		return fmt.Errorf("%s: %w", o.expected, err)
	}
	if o.update {
		merged := merge(expected, results, o.filter == nil)
		if err := os.WriteFile(o.expected, []byte(formatTable(merged)), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "xtf: wrote %s: review it with git diff and commit it\n", o.expected)
		return nil
	}
	if diff := compare(expected, results, o.filter == nil); diff != "" {
		fmt.Fprintf(stdout, "xtf: the results differ from %s (- expected, + measured):\n%s", o.expected, diff)
		fmt.Fprintf(stdout, "xtf: a regression or an improvement: if it is meant, run make xtf-update and commit %s\n", o.expected)
		return errDiffers
	}
	fmt.Fprintf(stdout, "xtf: as expected (%s)\n", o.expected)
	return nil
}

// caseName is the case a .cfg file runs: test-ENV-NAME[~VARIATION].cfg
// gives NAME[~VARIATION] (environment names have no dash).
func caseName(cfg string) string {
	s := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(cfg), "test-"), ".cfg")
	if _, name, ok := strings.Cut(s, "-"); ok {
		return name
	}
	return s
}

// activity records when a writer was last written to.
type activity struct {
	mu   sync.Mutex
	buf  strings.Builder
	last *atomic.Int64
}

func (a *activity) Write(p []byte) (int, error) {
	a.last.Store(time.Now().UnixNano())
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.Write(p)
}

func (a *activity) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.buf.String()
}

// runCase runs one case and returns its row and, for -v, its output.
func runCase(ctx context.Context, o options, cfg string) (result, string) {
	name := caseName(cfg)
	rt, err := os.MkdirTemp("", "xtf-runtime-")
	if err != nil {
		return result{Case: name, Result: "CRASH", Reason: "runner: " + err.Error()}, ""
	}
	defer os.RemoveAll(rt)
	var last atomic.Int64
	stdout, stderr := &activity{last: &last}, &activity{last: &last}
	cmd := exec.Command(o.runvm, "create", "--runtime-dir", rt, cfg)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	start := time.Now()
	last.Store(start.UnixNano())
	if err := cmd.Start(); err != nil {
		return result{Case: name, Result: "CRASH", Reason: "runner: " + err.Error()}, ""
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	timedOut := ""
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-ctx.Done():
			timedOut = "interrupted"
		case now := <-tick.C:
			switch {
			case now.Sub(start) > o.timeout:
				timedOut = fmt.Sprintf("still running after %v", o.timeout)
			case now.Sub(time.Unix(0, last.Load())) > o.idle:
				timedOut = fmt.Sprintf("no output for %v", o.idle)
			}
		}
		if timedOut != "" {
			// runvm destroys its domain on SIGTERM; a runvm that does not
			// end is killed.
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			break
		}
	}
	exit := cmd.ProcessState.ExitCode()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		exit = 128 + int(ws.Signal())
	}
	r := classify(name, exit, stdout.String(), stderr.String(), timedOut)
	r.Reason = strings.ReplaceAll(r.Reason, o.xtf+"/", "")
	log := fmt.Sprintf("--- %s: runvm exit %d after %.1fs\n--- console:\n%s--- stderr:\n%s", name, exit,
		time.Since(start).Seconds(), withNewline(stdout.String()), withNewline(stderr.String()))
	return r, log
}

func withNewline(s string) string {
	if s != "" && !strings.HasSuffix(s, "\n") {
		return s + "\n"
	}
	return s
}
