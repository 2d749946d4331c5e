package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/guest"
	"github.com/xenresume/xenresume/internal/kvmtest"
)

// stubConfig writes the embedded stub as stub.elf and an xl configuration
// that boots it (kernel relative to the file) with extra appended, and
// returns the configuration's path.
func stubConfig(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stub.elf"), guest.Image, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "stub.cfg")
	cfg := "# the guest stub as an xl guest\nname = \"stub\"\ntype = \"pv\"\nmemory = 16\nvcpus = 1\nkernel = \"stub.elf\"\n" + extra
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Bad configurations and kernels are one line and the exit status run
// gives the like: 2 for what the user wrote wrong, 1 for files and for
// what runvm does not do.
func TestCreateErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	notELF := write("k.txt", "hello")
	good := "name = 'g'\nkernel = 'stub.elf'\n"
	os.WriteFile(filepath.Join(dir, "stub.elf"), guest.Image, 0o644)
	rt := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no file", nil, exitUsage, "want FILE.cfg"},
		{"bad flag", []string{"--bogus", "x.cfg"}, exitUsage, "not defined: -bogus"},
		{"bad --name", []string{"--name", "a/b", "x.cfg"}, exitUsage, "invalid domain name"},
		{"missing file", []string{filepath.Join(dir, "none.cfg")}, exitError, "no such file"},
		{"syntax", []string{write("syntax.cfg", "name = 'g'\nmemory = 128M\n")}, exitUsage, "syntax.cfg:2: unexpected 'M'"},
		{"python", []string{write("py.cfg", "kernel = os.path.join('a')\n")}, exitUsage, "py.cfg:1: expected a value, got `os': an xl configuration is not Python"},
		{"memory word", []string{write("mem.cfg", good+"memory = 'lots'\n")}, exitUsage, `mem.cfg:3: memory = "lots": not a number`},
		{"memory odd", []string{write("odd.cfg", good+"memory = 3\n")}, exitUsage, "odd.cfg:3: memory = 3 (MiB): want a multiple of 2M"},
		{"memory big", []string{write("big.cfg", good+"memory = 4096\n")}, exitUsage, "at most 2G"},
		{"bad action", []string{write("act.cfg", good+"on_crash = 'explode'\n")}, exitUsage, `act.cfg:3: on_crash = "explode": want one of`},
		{"no name", []string{write("noname.cfg", "kernel = 'stub.elf'\n")}, exitUsage, "noname.cfg: no name = : xl requires one"},
		{"no kernel", []string{write("nokernel.cfg", "name = 'g'\n")}, exitUsage, "nokernel.cfg: no kernel = "},
		{"bad name", []string{write("badname.cfg", "name = '42'\nkernel = 'stub.elf'\n")}, exitUsage, "badname.cfg:1: invalid domain name \"42\""},
		{"bad override", []string{write("ok.cfg", good), "memory=lots"}, exitUsage, "command line:1: expected a value"},
		{"hvm", []string{write("hvm.cfg", good+"type = 'hvm'\n")}, exitUsage, "type = \"hvm\" without firmware_override: runvm has no hvmloader"},
		{"builder hvm", []string{write("builder.cfg", good+"builder = 'hvm'\n")}, exitUsage, "without firmware_override"},
		{"hvm with a kernel", []string{write("hvmk.cfg", good+"type = 'hvm'\nfirmware_override = 'stub.elf'\n")}, exitUsage, "direct kernel boot"},
		{"hvm with a PV kernel as firmware", []string{write("hvmpv.cfg", "name = 'g'\ntype = 'hvm'\nfirmware_override = '"+filepath.Join(dir, "stub.elf")+"'\n")}, exitError,
			"a PV kernel, not a PVH or HVM image"},
		{"pvh with a PV kernel", []string{write("ok.cfg", good), "type='pvh'"}, exitError, "a PV kernel, not a PVH or HVM image (use type = \"pv\")"},
		{"too many vCPUs for hot-plug", []string{write("hp.cfg", good+"vcpus = 2\nmaxvcpus = 17\n")}, exitUsage, "hp.cfg:4: maxvcpus = 17: a PV domain has at most 16"},
		{"too many vCPUs", []string{write("many.cfg", good+"vcpus = 17\n")}, exitUsage, "many.cfg:3: vcpus = 17: a PV domain has at most 16"},
		{"too many vCPUs by flag", []string{"--vcpus", "17", write("ok.cfg", good)}, exitUsage, "vcpus = 17: a PV domain has at most 16"},
		{"ramdisk", []string{write("rd.cfg", good+"ramdisk = '/boot/initrd'\n")}, exitError, "does not load a ramdisk"},
		{"missing kernel", []string{write("gone.cfg", "name = 'g'\nkernel = 'gone.elf'\n")}, exitError, "gone.cfg: kernel: open " + filepath.Join(dir, "gone.elf") + ": no such file"},
		{"kernel not ELF", []string{write("txt.cfg", "name = 'g'\nkernel = '"+notELF+"'\n")}, exitError, "not an ELF file"},
		{"kernel not ELF, dry run", []string{"-n", write("txt.cfg", "name = 'g'\nkernel = '"+notELF+"'\n")}, exitError, "not an ELF file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"create", "--runtime-dir", rt}, c.args...)
			code, out, errs := runvm(t, args...)
			if code != c.code || !strings.Contains(errs, c.want) || strings.Count(errs, "\n") != 1 {
				t.Errorf("runvm %v: exit %d (want %d)\nstderr %q\nwant %q", c.args, code, c.code, errs, c.want)
			}
			if out != "" {
				t.Errorf("stdout: %q", out)
			}
		})
	}
	if ents, _ := os.ReadDir(rt); len(ents) > 2 {
		t.Errorf("failed creates left slots: %v", ents)
	}
}

// --dry-run prints the configuration as xl's keys, with the defaults and
// the kernel resolved, and says what it ignores in one warning line each.
func TestCreateDryRun(t *testing.T) {
	path := stubConfig(t, "extra = 'test=hello'\nroot = '/dev/xvda'\nmax_event_channels = 4096\nhap = 1\non_crash = 'preserve'\ndisk = ['phy:/dev/x,xvda,w']\n")
	code, out, errs := runvm(t, "create", "-n", path, "memory = 32", "on_reboot = 'destroy'")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	for k, want := range map[string]any{
		"name": "stub", "type": "pv", "memory": 32.0, "maxmem": 32.0, "vcpus": 1.0, "maxvcpus": 1.0,
		"kernel": filepath.Join(filepath.Dir(path), "stub.elf"), "cmdline": "root=/dev/xvda test=hello",
		"on_poweroff": "destroy", "on_reboot": "destroy", "on_crash": "preserve", "on_soft_reset": "soft-reset",
	} {
		if got[k] != want {
			t.Errorf("%s: got %v, want %v", k, got[k], want)
		}
	}
	lines := strings.Split(strings.TrimSuffix(errs, "\n"), "\n")
	want := []string{
		"ignoring keys runvm does not use: max_event_channels (line 9), hap (line 10)",
		`not supported yet, runvm destroys the domain and exits with its status instead: on_crash = "preserve"`,
	}
	if len(lines) != len(want) {
		t.Fatalf("warnings:\n%s", errs)
	}
	for i, w := range want {
		if lines[i] != "runvm create: warning: "+path+": "+w {
			t.Errorf("warning %d: %q, want %q", i, lines[i], w)
		}
	}
	if code, out, _ := runvm(t, "create", "--dry-run", "--name", "other", path); code != 0 || !strings.Contains(out, `"name": "other"`) {
		t.Errorf("--name: exit %d\n%s", code, out)
	}
}

// The stub boots from a configuration file and powers off: exit 0; a
// KEY=VALUE override changes what it runs, and the exit status follows.
func TestCreateBoots(t *testing.T) {
	kvmtest.Require(t)
	path := stubConfig(t, "cmdline = \"test=hello\"\n")
	code, out, errs := runvm(t, "create", "--runtime-dir", t.TempDir(), path)
	if code != exitPoweroff || !strings.Contains(out, "Test result: SUCCESS") || errs != "" {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	code, out, errs = runvm(t, "create", "--runtime-dir", t.TempDir(), path, `cmdline = "test=shutdown reason=reboot"`, "on_reboot = 'destroy'")
	if code != exitReboot || !strings.Contains(out, "reason=reboot") || errs != "runvm: domain rebooted\n" {
		t.Errorf("reboot: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
}

// -p leaves the domain created and paused until runvm unpause.
func TestCreatePaused(t *testing.T) {
	kvmtest.Require(t)
	dir := t.TempDir()
	path := stubConfig(t, "cmdline = \"test=hello\"\n")
	out, errb := &syncBuf{}, &syncBuf{}
	done := make(chan int, 1)
	go func() { done <- run([]string{"create", "--runtime-dir", dir, "-p", path}, out, errb) }()
	mustCtl(t, dir, "wait", "stub", "created")
	if out.String() != "" {
		t.Errorf("the guest ran while paused: %q", out)
	}
	mustCtl(t, dir, "unpause", "stub")
	if code := waitExit(t, done, errb); code != exitPoweroff || !strings.Contains(out.String(), "Test result: SUCCESS") {
		t.Errorf("exit %d\n%s\n%s", code, out, errb)
	}
}

// create --help lists its own flags: xl's -p and -n, and run's that apply.
func TestCreateHelp(t *testing.T) {
	code, out, errs := runvm(t, "create", "--help")
	if code != 0 || !strings.HasPrefix(out, "usage: runvm create [flags] FILE.cfg [KEY=VALUE ...]") || errs != "" {
		t.Fatalf("exit %d\n%s%s", code, out, errs)
	}
	for _, f := range []string{"-p", "-paused", "-n", "-dry-run", "-name", "-trace", "-clobber-args", "-runtime-dir", "-xenstore-quota"} {
		if !regexp.MustCompile(`(?m)^  ` + f + `[ \t\n]`).MatchString(out) {
			t.Errorf("no %s:\n%s", f, out)
		}
	}
	if strings.Contains(out, "-mem") || strings.Contains(out, "-cmdline") {
		t.Errorf("lists run's --mem or --cmdline, which the file sets:\n%s", out)
	}
}
