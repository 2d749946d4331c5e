package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode"
)

// The results a case can have: XTF's own four, from its "Test result:"
// line, and the three ways a case ends without one.
const (
	Success     = "SUCCESS"
	Skip        = "SKIP"
	Error       = "ERROR"
	Failure     = "FAILURE"
	Crash       = "CRASH"        // runvm ended the domain, or the guest crashed, before a result
	Timeout     = "TIMEOUT"      // the time or idle limit ran out
	LoaderError = "LOADER-ERROR" // runvm refused the configuration or the kernel
)

// resultOrder is the summary's order, best first.
var resultOrder = []string{Success, Skip, Error, Failure, Crash, Timeout, LoaderError}

// resultPrefix starts XTF's result line (common/report.c).
const resultPrefix = "Test result: "

// maxReason bounds a reason, so a row stays one line of a readable table.
const maxReason = 160

// tableComment heads every table file; run sets it for its -env.
var tableComment = commentFor("pv64")

func commentFor(env string) string {
	return "# XTF " + env + " cases under runvm create: make xtf compares, make xtf-update rewrites (docs/XTF.md)\n"
}

// result is one case's row.
type result struct {
	Case, Result, Reason string
}

// classify turns how a case ended into its row: the runvm exit status, the
// guest's console (runvm's stdout), runvm's stderr, and why the runner
// stopped it ("" if it ended by itself).
func classify(name string, exit int, console, stderr, stopped string) result {
	r := result{Case: name}
	lines := nonEmptyLines(console)
	lastConsole := ""
	if len(lines) > 0 {
		lastConsole = lines[len(lines)-1]
	}
	if stopped != "" {
		r.Result, r.Reason = Timeout, stopped
		if lastConsole != "" {
			r.Reason += fmt.Sprintf("; last line %q", lastConsole)
		}
		return r.clean()
	}
	for i := len(lines) - 1; i >= 0; i-- {
		at := strings.Index(lines[i], resultPrefix)
		if at < 0 {
			continue
		}
		status, rest, _ := strings.Cut(lines[i][at+len(resultPrefix):], " ")
		status = strings.TrimSuffix(status, ":")
		switch status {
		case Success, Skip, Error, Failure:
		default:
			r.Result, r.Reason = Crash, fmt.Sprintf("exit %d: bad result line %q", exit, lines[i])
			return r.clean()
		}
		r.Result, r.Reason = status, strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
		if r.Reason == "" && status != Success && i > 0 {
			r.Reason = lines[i-1] // XTF prints why just before its result
		}
		if exit != 0 {
			r.Reason = strings.TrimPrefix(fmt.Sprintf("%s; runvm exit %d", r.Reason, exit), "; ")
		}
		return r.clean()
	}
	report := ""
	for _, l := range nonEmptyLines(stderr) {
		if !strings.Contains(l, ": warning: ") {
			report = l
			break
		}
	}
	if (exit == 1 || exit == 2) && console == "" {
		r.Result, r.Reason = LoaderError, strings.TrimPrefix(report, "runvm create: ")
		return r.clean()
	}
	// KVM's internal-error data words hold instruction bytes and addresses
	// that move with the build (XTF embeds its source paths); the
	// instruction named after " at " says what failed.
	report = kvmData.ReplaceAllString(report, "data [...]")
	r.Result, r.Reason = Crash, fmt.Sprintf("exit %d: %s", exit, report)
	if insn := reportInstruction(stderr); insn != "" {
		r.Reason += " at " + insn
	}
	if panic := panicMessage(lines); panic != "" {
		r.Reason += " after " + panic
	} else if last := lastMeaningful(lines); last != "" {
		r.Reason += fmt.Sprintf(" after %q", last)
	}
	return r.clean()
}

// hexRun is a number long enough to be an address.
var hexRun = regexp.MustCompile(`[0-9a-fA-F]{8,}`)

// panicMessage is XTF's last panic() message, which it frames with lines
// of stars ("PANIC: Unhandled exception at e030:ADDRESS" then "Vec 13
// #GP[0000]"), on one line with the addresses masked: they move when a
// rebuild moves code, and the row should not.
func panicMessage(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.HasPrefix(lines[i], "PANIC:") {
			continue
		}
		msg := lines[i : i+1]
		for _, l := range lines[i+1:] {
			if lastMeaningful([]string{l}) == "" {
				break
			}
			msg = append(msg, l)
		}
		return hexRun.ReplaceAllString(strings.Join(msg, " "), "<addr>")
	}
	return ""
}

// lastMeaningful is the last line with a letter or a digit in it, not a
// rule of stars.
func lastMeaningful(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.IndexFunc(lines[i], func(c rune) bool { return unicode.IsLetter(c) || unicode.IsDigit(c) }) >= 0 {
			return lines[i]
		}
	}
	return ""
}

// reportInstruction is the mnemonic of the instruction a crash report
// shows at RIP ("=> ADDRESS: BYTES MNEMONIC OPERANDS"): without addresses,
// so the row does not change when a build moves code.
func reportInstruction(stderr string) string {
	for l := range strings.SplitSeq(stderr, "\n") {
		_, insn, ok := strings.Cut(strings.TrimSpace(l), "=> ")
		if !ok {
			continue
		}
		if _, insn, ok = strings.Cut(insn, ": "); !ok {
			return ""
		}
		for _, f := range strings.Fields(insn) {
			if len(f) == 2 && strings.Trim(f, "0123456789abcdef") == "" {
				continue // a byte of the encoding
			}
			return f
		}
		return ""
	}
	return ""
}

// kvmData matches the data words of a KVM internal error in a crash report.
var kvmData = regexp.MustCompile(`data \[[^\]]*\]`)

// clean makes the reason one printable line of at most maxReason bytes.
func (r result) clean() result {
	r.Reason = strings.Map(func(c rune) rune {
		switch {
		case c == '\t' || c == '\n' || c == '\r':
			return ' '
		case c < ' ' || c == 0x7f:
			return '?'
		}
		return c
	}, strings.TrimSpace(r.Reason))
	if len(r.Reason) > maxReason {
		r.Reason = strings.ToValidUTF8(r.Reason[:maxReason-3], "") + "..."
	}
	return r
}

func nonEmptyLines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimRight(l, " \t\r"); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// header is the table's first lines for cases up to width bytes long.
func header(width int) string {
	return result{Case: "CASE", Result: "RESULT", Reason: "REASON"}.row(width)
}

// row is r as one table line.
func (r result) row(width int) string {
	return strings.TrimRight(fmt.Sprintf("%-*s  %-12s  %s", width, r.Case, r.Result, r.Reason), " ") + "\n"
}

// formatTable is the table file for results, sorted by case.
func formatTable(results []result) string {
	sorted := append([]result(nil), results...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Case < sorted[j].Case })
	width := len("CASE")
	for _, r := range sorted {
		width = max(width, len(r.Case))
	}
	var b strings.Builder
	b.WriteString(tableComment)
	b.WriteString(header(width))
	for _, r := range sorted {
		b.WriteString(r.row(width))
	}
	return b.String()
}

// parseTable reads a table file.
func parseTable(s string) (map[string]result, error) {
	out := map[string]result{}
	for i, l := range strings.Split(s, "\n") {
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "CASE ") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want CASE RESULT [REASON], got %q", i+1, l)
		}
		r := result{Case: f[0], Result: f[1]}
		if len(f) > 2 {
			after := strings.Index(l, f[0]) + len(f[0])
			after += strings.Index(l[after:], f[1]) + len(f[1])
			r.Reason = strings.TrimSpace(l[after:])
		}
		if _, dup := out[r.Case]; dup {
			return nil, fmt.Errorf("line %d: case %s twice", i+1, r.Case)
		}
		out[r.Case] = r
	}
	return out, nil
}

// compare lists the rows that differ, "- expected" then "+ measured";
// with all, expected cases that were not run count as differences.
func compare(expected map[string]result, measured []result, all bool) string {
	got := map[string]result{}
	names := map[string]bool{}
	for _, r := range measured {
		got[r.Case], names[r.Case] = r, true
	}
	if all {
		for name := range expected {
			names[name] = true
		}
	}
	var sorted []string
	for name := range names {
		sorted = append(sorted, name)
	}
	sort.Strings(sorted)
	var b strings.Builder
	for _, name := range sorted {
		e, inE := expected[name]
		m, inM := got[name]
		switch {
		case inE && inM && e == m:
		case !inM:
			fmt.Fprintf(&b, "- %s+ %s: no such case any more\n", e.row(0), name)
		case !inE:
			fmt.Fprintf(&b, "- %s: not in the table\n+ %s", name, m.row(0))
		default:
			fmt.Fprintf(&b, "- %s+ %s", e.row(0), m.row(0))
		}
	}
	return b.String()
}

// merge is the expected table with the measured rows in place; with all,
// the measured rows alone.
func merge(expected map[string]result, measured []result, all bool) []result {
	if all {
		return measured
	}
	m := map[string]result{}
	for k, v := range expected {
		m[k] = v
	}
	for _, r := range measured {
		m[r.Case] = r
	}
	out := make([]result, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	return out
}
