package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	const banner = "--- Xen Test Framework ---\nEnvironment: PV 64bit (Long mode 4 levels)\n"
	for _, c := range []struct {
		name                     string
		exit                     int
		console, stderr, stopped string
		want                     result
	}{
		{"success", 0, banner + "Hello World\nTest result: SUCCESS\n", "", "",
			result{"c", Success, ""}},
		{"success with warnings", 0, banner + "Test result: SUCCESS with warnings\n", "", "",
			result{"c", Success, "with warnings"}},
		{"skip: the line before says why", 0, banner + "Skip: Argo not available\nTest result: SKIP\n", "", "",
			result{"c", Skip, "Skip: Argo not available"}},
		{"failure", 0, banner + "Fail: got 5, expected 6\nTest result: FAILURE\n", "", "",
			result{"c", Failure, "Fail: got 5, expected 6"}},
		{"the stub's style: reason on the result line", 5, "Test result: ERROR: no peer\n", "runvm: domain crashed (SHUTDOWN_crash)\n", "",
			result{"c", Error, "no peer; runvm exit 5"}},
		{"result then a crash", 8, banner + "Test result: SUCCESS\n", "vCPU 0 crashed: triple fault\n", "",
			result{"c", Success, "runvm exit 8"}},
		{"bad result", 0, "Test result: MAYBE\n", "", "",
			result{"c", Crash, `exit 0: bad result line "Test result: MAYBE"`}},
		{"triple fault before any output", 8, "", "vCPU 0 crashed: triple fault (KVM_EXIT_SHUTDOWN)\n  rip 0x1030af\n" +
			"  code at rip:\n  => 0x00000000001030af: 0f 0b                    ud2\n     0x00000000001030b1: 78 65  js 0x103118\n", "",
			result{"c", Crash, "exit 8: vCPU 0 crashed: triple fault (KVM_EXIT_SHUTDOWN) at ud2"}},
		{"KVM internal error: its data words move with the build", 8, "", "vCPU 0 crashed: KVM internal error: suberror 1, data [0x1 0xc539c58941d0d90f 0x1000]\n" +
			"  code at rip:\n  => 0x0000000000103000: d9 d0                    fnop\n", "",
			result{"c", Crash, "exit 8: vCPU 0 crashed: KVM internal error: suberror 1, data [...] at fnop"}},
		{"a report without code", 8, "", "vCPU 0 crashed: emulation failure\n  => 0x10: ??\n", "",
			result{"c", Crash, "exit 8: vCPU 0 crashed: emulation failure at ??"}},
		{"panic", 5, banner + "******************************\nPANIC: Unhandled exception at e030:00000000001034dc\nVec 13 #GP[0000]\n******************************\n",
			"runvm create: warning: x.cfg: ignoring keys runvm does not use: hap (line 3)\nrunvm: domain crashed (SHUTDOWN_crash)\n", "",
			result{"c", Crash, "exit 5: runvm: domain crashed (SHUTDOWN_crash) after PANIC: Unhandled exception at e030:<addr> Vec 13 #GP[0000]"}},
		{"crash after a rule of stars", 5, banner + "Doing things\n*****\n", "runvm: domain crashed (SHUTDOWN_crash)\n", "",
			result{"c", Crash, `exit 5: runvm: domain crashed (SHUTDOWN_crash) after "Doing things"`}},
		{"loader", 1, "", "runvm create: bad kernel image: no ENTRY note\n", "",
			result{"c", LoaderError, "bad kernel image: no ENTRY note"}},
		{"refused configuration after a warning", 1, "",
			"runvm create: warning: x.cfg: ignoring keys runvm does not use: hap (line 3)\nrunvm create: x.cfg: vcpus = 2, maxvcpus = 2: runvm runs one vCPU\n", "",
			result{"c", LoaderError, "x.cfg: vcpus = 2, maxvcpus = 2: runvm runs one vCPU"}},
		{"hang", 130, banner, "runvm: interrupted\n", "no output for 5s",
			result{"c", Timeout, `no output for 5s; last line "Environment: PV 64bit (Long mode 4 levels)"`}},
		{"hang before output", 130, "", "", "still running after 15s",
			result{"c", Timeout, "still running after 15s"}},
		{"control characters and length", 0, "\x1b[1mFail\tnow\x00 " + strings.Repeat("x", 300) + "\nTest result: FAILURE\n", "", "",
			result{"c", Failure, "?[1mFail now? " + strings.Repeat("x", maxReason-3-14) + "..."}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := classify("c", c.exit, c.console, c.stderr, c.stopped); got != c.want {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestTableRoundTrip(t *testing.T) {
	rows := []result{
		{"xsa-7", Crash, "exit 8: vCPU 0 crashed:  two  spaces"},
		{"example", Success, ""},
		{"pv-iopl~hypercall", LoaderError, "SKIP in the reason; CRASH too"},
	}
	text := formatTable(rows)
	if !strings.HasPrefix(text, tableComment+"CASE               RESULT        REASON\nexample            SUCCESS\n") {
		t.Errorf("table:\n%s", text)
	}
	got, err := parseTable(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]result{}
	for _, r := range rows {
		want[r.Case] = r
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if _, err := parseTable("x\n"); err == nil {
		t.Error("a row without a result parsed")
	}
	if _, err := parseTable("x SKIP\nx SKIP\n"); err == nil {
		t.Error("a case twice parsed")
	}
}

func TestCompare(t *testing.T) {
	expected := map[string]result{
		"a": {"a", Success, ""},
		"b": {"b", Crash, "exit 8"},
		"c": {"c", Skip, "why"},
	}
	measured := []result{{"a", Success, ""}, {"b", Success, ""}, {"d", Timeout, "no output"}}
	want := "- b  CRASH         exit 8\n+ b  SUCCESS\n- c  SKIP          why\n+ c: no such case any more\n- d: not in the table\n+ d  TIMEOUT       no output\n"
	if got := compare(expected, measured, true); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// With -run, cases not run are not differences.
	if got := compare(expected, measured[:1], false); got != "" {
		t.Errorf("filtered: %q", got)
	}
	if got := merge(expected, measured[1:2], false); len(got) != 3 {
		t.Errorf("merge: %v", got)
	}
}

func TestCaseName(t *testing.T) {
	for in, want := range map[string]string{
		"/x/tests/example/test-pv64-example.cfg":           "example",
		"/x/tests/pv-iopl/test-pv64-pv-iopl~hypercall.cfg": "pv-iopl~hypercall",
		"/x/tests/xsa-122/test-hvm64-xsa-122.cfg":          "xsa-122",
		"/x/tests/selftest/test-hvm32pae-selftest.cfg":     "selftest",
	} {
		if got := caseName(in); got != want {
			t.Errorf("caseName(%q) = %q, want %q", in, got, want)
		}
	}
}
