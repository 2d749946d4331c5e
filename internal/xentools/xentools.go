// Package xentools finds Xen's own tools (readnotes, verify-stream-v2, the
// xenstore clients) in the Debian packages scripts/xen-deps.sh unpacks, so
// tests can check xenresume against them. Tests that need a tool skip
// without it, except under CI (CI=true) or XENRESUME_REQUIRE_TOOLS=1, where
// a missing tool fails the test.
package xentools

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Root returns the unpacked package root: $XENRESUME_XEN_ROOT, or
// .cache/xen/root at the top of the repository.
func Root() string {
	if r := os.Getenv("XENRESUME_XEN_ROOT"); r != "" {
		return r
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", ".cache", "xen", "root")
}

// Command returns an exec.Cmd for a tool under the root (path relative to
// it, e.g. "usr/lib/xen-4.17/bin/readnotes") with the packages' libraries
// on LD_LIBRARY_PATH, or skips/fails tb when the tool is missing.
func Command(tb testing.TB, rel string, args ...string) *exec.Cmd {
	tb.Helper()
	root := Root()
	path := filepath.Join(root, rel)
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			tb.Fatalf("%s is missing (run `make deps`): %v", rel, err)
		}
		tb.Skipf("%s is missing (run `make deps`)", rel)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(),
		"LD_LIBRARY_PATH="+filepath.Join(root, "usr/lib/x86_64-linux-gnu"),
		"PYTHONPATH="+filepath.Join(root, "usr/lib/xen-4.17/lib/python"))
	return cmd
}

// XTFDir is where XTF is built: $XENRESUME_XTF_DIR, or .cache/xtf at the
// top of the repository, which `make xtf` (and so `make test`) builds.
func XTFDir() string {
	if d := os.Getenv("XENRESUME_XTF_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", ".cache", "xtf")
}

// XTFImage reads XTF's pv64 image of test name, or skips tb when XTF is
// not built (fails instead under CI or XENRESUME_REQUIRE_TOOLS=1).
func XTFImage(tb testing.TB, name string) []byte {
	tb.Helper()
	path := filepath.Join(XTFDir(), "tests", name, "test-pv64-"+name)
	img, err := os.ReadFile(path)
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			tb.Fatalf("XTF's %s is missing (make xtf-build): %v", name, err)
		}
		tb.Skipf("XTF is not built (make xtf-build): %v", err)
	}
	return img
}
