package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
)

func runvm(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRunExitStatus(t *testing.T) {
	kvmtest.Require(t)
	for _, c := range []struct {
		cmdline string
		code    int
		stderr  string
	}{
		{"", exitPoweroff, ""},
		{"test=shutdown reason=reboot", exitReboot, "rebooted"},
		{"test=shutdown reason=suspend", exitSuspend, "suspended"},
		{"test=shutdown reason=crash", exitCrash, "SHUTDOWN_crash"},
		{"test=shutdown reason=watchdog", exitWatchdog, "watchdog"},
		{"test=shutdown reason=soft_reset", exitSoftReset, "soft reset"},
		{"test=fail", exitCrash, "SHUTDOWN_crash"},
		{"test=triple-fault", exitVMMCrash, "ud2"},
	} {
		t.Run(c.cmdline, func(t *testing.T) {
			code, out, errs := runvm(t, "run", "--mem", "16M", "--cmdline", c.cmdline)
			if code != c.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, out, errs)
			}
			if c.code != exitVMMCrash && !strings.Contains(out, "Test result: ") {
				t.Errorf("no result line on stdout:\n%s", out)
			}
			if !strings.Contains(errs, c.stderr) {
				t.Errorf("stderr lacks %q:\n%s", c.stderr, errs)
			}
		})
	}
}

func TestRunTrace(t *testing.T) {
	kvmtest.Require(t)
	code, _, errs := runvm(t, "run", "--trace", "--cmdline", "test=version")
	if code != 0 || !strings.Contains(errs, `call="xen_version(capabilities, 0x`) {
		t.Errorf("exit %d, trace:\n%s", code, errs)
	}
}

func TestRunGuestFile(t *testing.T) {
	kvmtest.Require(t)
	img, err := os.ReadFile("../../guest/xenresume-stub.elf")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "guest.elf")
	os.WriteFile(path, img, 0o644)
	if code, out, errs := runvm(t, "run", path); code != 0 || !strings.Contains(out, "SUCCESS") {
		t.Errorf("exit %d\n%s\n%s", code, out, errs)
	}
}

// Errors are one clear line, never a Go stack.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "x.elf")
	os.WriteFile(notELF, []byte("hello"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "usage"},
		{[]string{"bogus"}, exitUsage, "unknown command"},
		{[]string{"run", "--mem", "lots"}, exitUsage, "bad size"},
		{[]string{"run", "a", "b"}, exitUsage, "at most one"},
		{[]string{"run", filepath.Join(dir, "missing.elf")}, exitError, "no such file"},
		{[]string{"run", dir}, exitError, "not a regular file"},
		{[]string{"run", notELF}, exitError, "not an ELF file"},
		{[]string{"run", "--mem", "3M"}, exitError, ""},
	} {
		code, _, errs := runvm(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("runvm %v: exit %d, stderr %q", c.args, code, errs)
		}
		if strings.Contains(errs, "goroutine") || strings.Contains(errs, "panic") {
			t.Errorf("runvm %v printed a Go stack:\n%s", c.args, errs)
		}
		if c.code == exitError && strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("runvm %v: error is not one line:\n%s", c.args, errs)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"32M": 32 << 20, "1G": 1 << 30, "4096K": 4 << 20, "2097152": 2 << 20, "64mb": 64 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "-1M", "12Q", "99999999999G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}
