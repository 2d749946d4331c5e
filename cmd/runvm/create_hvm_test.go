package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
)

// startCreate writes image and an xl cfg of type kind for it, and runs
// `runvm create` on it in the background until stderr shows ready.
func startCreate(t *testing.T, dir, name, kind string, image []byte, ready string) (*syncBuf, chan int) {
	t.Helper()
	files := t.TempDir()
	img := filepath.Join(files, "guest.elf")
	if err := os.WriteFile(img, image, 0o600); err != nil {
		t.Fatal(err)
	}
	key := "firmware_override"
	if kind == "pvh" {
		key = "kernel"
	}
	cfg := filepath.Join(files, name+".cfg")
	body := "name = '" + name + "'\ntype = '" + kind + "'\nmemory = 4\n" + key + " = '" + img + "'\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() { done <- run([]string{"create", "--runtime-dir", dir, cfg}, out, errb) }()
	if ready != "" {
		waitOut(t, errb, ready)
	}
	return errb, done
}

// Claim 11 from the command line: an HVM guest that enters S3 is held
// (listed paused, reason s3; unpause does not wake it), and `runvm
// trigger DOM s3resume` runs the firmware's S3 path into its waking
// vector, where it finds its memory intact and powers off. The negative
// control sets no waking vector: the firmware's report ends the domain
// (exit 8), nothing hangs.
func TestCreateHVMS3Trigger(t *testing.T) {
	kvmtest.Require(t)
	for _, tc := range []struct {
		name   string
		vector uint32
		code   int
		want   string
	}{
		{"wakes", hvmtest.Wake, exitPoweroff, ""},
		{"no-vector", 0, exitVMMCrash, "no waking vector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			errb, done := startCreate(t, dir, tc.name, "hvm", hvmtest.PVHImage(hvmtest.S3Guest(tc.vector, true), true),
				"is in ACPI S3; `runvm trigger "+tc.name+" s3resume` wakes it")
			if l := mustCtl(t, dir, "list", "-l"); !strings.Contains(l, tc.name) || !strings.Contains(l, "paused") || !strings.Contains(l, " s3 ") {
				t.Errorf("list -l in S3:\n%s", l)
			}
			if code, _, errs := ctl(t, dir, "unpause", tc.name); code != exitError || !strings.Contains(errs, "trigger DOM s3resume") {
				t.Errorf("unpause in S3: exit %d %q", code, errs)
			}
			if code, _, errs := ctl(t, dir, "trigger", tc.name, "init"); code != exitUsage || !strings.Contains(errs, "s3resume, power and sleep") {
				t.Errorf("trigger init: exit %d %q", code, errs)
			}
			if s := mustCtl(t, dir, "trigger", tc.name, "s3resume"); !strings.Contains(s, "sent s3resume") {
				t.Errorf("trigger: %q", s)
			}
			if code := waitExit(t, done, errb); code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tc.code, tc.want, errb)
			}
		})
	}
}

// The toolstack's suspend of an HVM or PVH guest without PV drivers is
// remote (the guest takes no part); resume continues it; a second resume,
// a --fast resume and a shutdown (no PV control interface) are refused;
// destroy ends it.
func TestCreateHVMSuspendResume(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	code, _ := hvmtest.SpinGuest()
	errb, done := startCreate(t, dir, "sp", "hvm", hvmtest.PVHImage(code, true), "")
	waitCtl(t, dir, "sp", "running")
	if s := mustCtl(t, dir, "suspend", "sp"); !strings.Contains(s, "suspended") {
		t.Errorf("suspend: %q", s)
	}
	waitOut(t, errb, "suspended remotely; `runvm resume sp`")
	if c, _, errs := ctl(t, dir, "resume", "--fast", "sp"); c != exitError || !strings.Contains(errs, "without --fast") {
		t.Errorf("resume --fast: exit %d %q", c, errs)
	}
	if s := mustCtl(t, dir, "resume", "sp"); !strings.Contains(s, "running") {
		t.Errorf("resume: %q", s)
	}
	if c, _, errs := ctl(t, dir, "resume", "sp"); c != exitError || !strings.Contains(errs, "it is running") {
		t.Errorf("second resume: exit %d %q", c, errs)
	}
	if c, _, errs := ctl(t, dir, "shutdown", "sp"); c != exitError || !strings.Contains(errs, "no PV control interface") {
		t.Errorf("shutdown: exit %d %q", c, errs)
	}
	mustCtl(t, dir, "trigger", "sp", "power") // PM1a_STS's PWRBTN: the spinning guest ignores it
	mustCtl(t, dir, "trigger", "sp", "sleep")
	if c, _, errs := ctl(t, dir, "trigger", "sp", "nmi"); c != exitUsage || !strings.Contains(errs, "s3resume, power and sleep") {
		t.Errorf("trigger nmi: exit %d %q", c, errs)
	}
	mustCtl(t, dir, "pause", "sp")
	mustCtl(t, dir, "unpause", "sp")
	mustCtl(t, dir, "destroy", "sp")
	if c := waitExit(t, done, errb); c != exitDestroyed {
		t.Fatalf("exit %d\n%s", c, errb)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("runtime dir after the end: %v", ents)
	}
}

// A PVH guest is never suspended behind its back, PV drivers or not: libxl
// suspends remotely only LIBXL_DOMAIN_TYPE_HVM guests, and its PV control
// interface is always there for PVH (libxl__domain_pvcontrol_available).
// The spinning guest watches nothing, so the suspend times out with the
// request taken back and the guest still running; shutdown writes its
// request and the guest, ignoring it, runs on.
func TestCreatePVHSuspendAsksTheGuest(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	code, _ := hvmtest.SpinGuest()
	errb, done := startCreate(t, dir, "sp", "pvh", hvmtest.PVHImage(code, true), "")
	waitCtl(t, dir, "sp", "running")
	if c, _, errs := ctl(t, dir, "suspend", "--timeout", "300ms", "sp"); c != exitError || !strings.Contains(errs, "did not suspend itself") {
		t.Errorf("suspend of a PVH guest that does not answer: exit %d %q", c, errs)
	}
	if l := mustCtl(t, dir, "list"); !strings.Contains(l, "running") {
		t.Errorf("after the refused suspend:\n%s", l)
	}
	if s := mustCtl(t, dir, "shutdown", "sp"); s == "" {
		t.Error("shutdown printed nothing")
	}
	mustCtl(t, dir, "wait", "sp", "running")
	if c, _, errs := ctl(t, dir, "trigger", "sp", "power"); c != exitError || !strings.Contains(errs, "no ACPI PM block") {
		t.Errorf("trigger power on PVH: exit %d %q", c, errs)
	}
	if c, _, errs := ctl(t, dir, "trigger", "sp", "s3resume"); c != exitError || !strings.Contains(errs, "no ACPI (PVH)") {
		t.Errorf("trigger s3resume on PVH: exit %d %q", c, errs)
	}
	mustCtl(t, dir, "destroy", "sp")
	if c := waitExit(t, done, errb); c != exitDestroyed {
		t.Fatalf("exit %d\n%s", c, errb)
	}
}

// waitCtl is runvm wait DOM STATE.
func waitCtl(t *testing.T, dir, dom, state string) {
	t.Helper()
	mustCtl(t, dir, "wait", dom, state)
}

// xl's save workflow for an HVM guest without PV drivers: a checkpoint
// leaves it running; a save ends its owner (exit 4, "saved"); restore
// brings it back in a new owner, running, under its saved name.
func TestCreateHVMSaveRestore(t *testing.T) {
	kvmtest.Require(t)
	dir, files := t.TempDir(), t.TempDir()
	code, _ := hvmtest.SpinGuest()
	errb, done := startCreate(t, dir, "sv", "hvm", hvmtest.PVHImage(code, true), "")
	waitCtl(t, dir, "sv", "running")
	ck := filepath.Join(files, "ck.save")
	if s := mustCtl(t, dir, "save", "--checkpoint", "sv", ck); !strings.Contains(s, "saved to "+ck+"; running") {
		t.Errorf("checkpoint: %q", s)
	}
	if code, _, errs := runvm(t, "inspect", ck); code != exitError || !strings.Contains(errs, "reads PV save files only") {
		t.Errorf("inspect of an HVM save: exit %d %q", code, errs)
	}
	file := filepath.Join(files, "sv.save")
	mustCtl(t, dir, "save", "sv", file)
	if c := waitExit(t, done, errb); c != exitSuspend || !strings.Contains(errb.String(), "domain saved") {
		t.Fatalf("owner after save: exit %d\n%s", c, errb)
	}
	out, rerr := &syncBuf{}, &syncBuf{}
	rdone := make(chan int, 1)
	go func() { rdone <- run([]string{"restore", "--runtime-dir", dir, file}, out, rerr) }()
	waitOut(t, rerr, "runvm: restored "+file+" as domain")
	waitCtl(t, dir, "sv", "running")
	mustCtl(t, dir, "destroy", "sv")
	if c := waitExit(t, rdone, rerr); c != exitDestroyed {
		t.Fatalf("restored owner: exit %d\n%s", c, rerr)
	}
}

// xl's cmdline, root and extra reach a PVH kernel (hvm_start_info) and
// never HVM firmware, which Xen's builder hands no command line: runvm
// says so for type "hvm" instead of dropping it silently, and not for
// "pvh" or without one.
func TestCreateHVMCmdlineWarning(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.elf")
	if err := os.WriteFile(img, hvmtest.PVHImage([]byte{0xf4}, true), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		body string
		warn bool
	}{
		{"type = 'hvm'\nfirmware_override = '" + img + "'\ncmdline = 'test=s3'\n", true},
		{"type = 'hvm'\nfirmware_override = '" + img + "'\n", false},
		{"type = 'pvh'\nkernel = '" + img + "'\ncmdline = 'test=s3'\n", false},
	} {
		path := filepath.Join(dir, "g.cfg")
		if err := os.WriteFile(path, []byte("name = 'g'\nmemory = 8\n"+tc.body), 0o600); err != nil {
			t.Fatal(err)
		}
		code, _, errs := runvm(t, "create", "-n", path)
		if code != 0 || strings.Contains(errs, "is ignored for type") != tc.warn {
			t.Errorf("%q: exit %d, stderr %q; want a warning: %v", tc.body, code, errs, tc.warn)
		}
	}
}

// `runvm run` boots PV kernels: given the stub's HVM/PVH build (a
// PHYS32_ENTRY note, no LOADER) it says what the image is and how to run
// it, rather than only that a PV note is missing.
func TestRunPVHImageSaysCreate(t *testing.T) {
	img := filepath.Join(t.TempDir(), "stub-hvm.elf")
	if err := os.WriteFile(img, guest.ImageHVM, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := runvm(t, "run", img); code == 0 || !strings.Contains(errs, `type = "pvh" or "hvm"`) {
		t.Errorf("run of a PVH image: exit %d %q", code, errs)
	}
}
