package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// readSave reads a save file with our reader and returns its records.
func readSave(t *testing.T, path string) (string, []stream.Record) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := stream.ReadXLHeader(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.ReadLibxlHeader(f); err != nil {
		t.Fatal(err)
	}
	r := stream.NewReader(f)
	if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlLibxcContext {
		t.Fatalf("LIBXC_CONTEXT: %v %v", rec, err)
	}
	if _, err := r.ReadImageHeader(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadDomainHeader(); err != nil {
		t.Fatal(err)
	}
	var recs []stream.Record
	for {
		rec, err := r.Next()
		if err != nil {
			t.Fatalf("after %d records: %v", len(recs), err)
		}
		recs = append(recs, rec)
		if rec.Type == stream.RecEnd {
			break
		}
	}
	if rec, err := r.ReadLibxlRecord(); err != nil || rec.Type != stream.LibxlEnd {
		t.Fatalf("libxl END: %v %v", rec, err)
	}
	return cfg, recs
}

func verify(t *testing.T, path string) {
	t.Helper()
	verifyFormat(t, path, "xl")
}

// verifyFormat runs Xen's verify-stream-v2 -f format on path.
func verifyFormat(t *testing.T, path, format string) {
	t.Helper()
	cmd := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-f", format, "-i", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("verify-stream-v2 -f %s: %v\n%s", format, err, out)
	}
}

// Save writes a real xl save file of a suspended guest: Xen's verifier and
// our reader accept it, %rdx is the start_info PFN, the guest's pages are
// there, and the guest stays suspended.
func TestSave(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend", "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Save(ctx, path, false); err != nil {
		t.Fatalf("save: %v\n%s", err, con)
	}
	verify(t, path)
	cfg, recs := readSave(t, path)
	if !strings.Contains(cfg, `type = "pv"`) || !strings.Contains(cfg, "memory = 16") {
		t.Errorf("config:\n%s", cfg)
	}
	var pages int
	var basic []byte
	for _, r := range recs {
		switch r.Type {
		case stream.RecPageData:
			pb, _ := stream.DecodePageData(r.Body)
			for i, pfn := range pb.PFNs {
				pages++
				if pfn == d.Layout.PFN(d.Layout.StartInfo) && !bytes.HasPrefix(pb.Data[i], []byte("xen-3.0-x86_64")) {
					t.Error("the start_info page is not in the stream")
				}
			}
		case stream.RecX86PVVCPUBasic:
			basic = r.Body
		}
	}
	if pages == 0 || pages > 300 {
		t.Errorf("%d pages saved from a 16 MiB guest that touched a few hundred KiB", pages)
	}
	rdx := binary.LittleEndian.Uint64(basic[8+520+96:])
	if rdx != d.Layout.PFN(d.Layout.StartInfo) {
		t.Errorf("saved rdx %#x, want the start_info PFN %#x", rdx, d.Layout.PFN(d.Layout.StartInfo))
	}
	if e := d.Xen.Exit(); e.Reason != xenabi.ShutdownSuspend {
		t.Errorf("after save the domain is %v, want suspended", e)
	}
}

// A checkpoint saves and resumes the guest in the same domain: it sees 1,
// keeps going, and the file is valid.
func TestCheckpoint(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend", "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Save(ctx, path, true); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	verify(t, path)
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	if !strings.Contains(r.console, "resume: rc=1 same-domain") {
		t.Errorf("console:\n%s", r.console)
	}
}

// A save that fails mid-stream (a full disk) leaves the previous file as
// it was, no temporary file behind, and the guest resumed and running.
func TestFailedSaveKeepsFileAndGuest(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend", "suspend: ready cycle=0")
	dir := t.TempDir()
	path := filepath.Join(dir, "g.save")
	os.WriteFile(path, []byte("the previous save"), 0o644)
	wrapSaveWriter = func(w io.Writer) io.Writer { return &limitWriter{w: w, n: 10000} }
	defer func() { wrapSaveWriter = func(w io.Writer) io.Writer { return w } }()
	err := d.Save(ctx, path, false)
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("got %v, want the disk-full error", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "the previous save" {
		t.Errorf("the previous file changed: %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left behind: %v", entries)
	}
	if e := d.Xen.Exit(); e.State != xen.Running {
		t.Errorf("after a failed save the domain is %v", e)
	}
	r := waitPoweroff(t, ctx, d, con)
	requireSuccess(t, r)
	if !strings.Contains(r.console, "resume: rc=1 same-domain") {
		t.Errorf("the guest was not resumed cooperatively:\n%s", r.console)
	}
}

// Writer failures mid-stream (a full disk, say) resume the guest and
// leave no file.
func TestWriterFailureMidSave(t *testing.T) {
	d, con, ctx := startGuest(t, "test=suspend", "suspend: ready cycle=0")
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Suspend(ctx, quick); err != nil {
		t.Fatal(err)
	}
	err := writeAtomically(path, func(w io.Writer) error {
		lw := &limitWriter{w: w, n: 10000}
		return d.writeStream(ctx, lw, nil)
	}, nil)
	if err == nil || !errors.Is(err, errDiskFull) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a partial file was left at the destination: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 0 {
		t.Errorf("temporary files left: %v", entries)
	}
	if err := d.Resume(ctx, true); err != nil {
		t.Fatal(err)
	}
	d.Unpause()
	requireSuccess(t, waitPoweroff(t, ctx, d, con))
}

var errDiskFull = errors.New("no space left on device")

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, errDiskFull
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// The file grows with what the guest touched, not with its configured
// memory: a 1 GiB guest saves to about what a 64 MiB one does, the
// difference being the guest's own P2M list (8 bytes per page) and, in the
// ring-3 model, the L1 tables mapping its RAM.
func TestSaveSizeFollowsTouchedMemory(t *testing.T) {
	size := func(mem uint64) int64 {
		d, _ := create(t, New(nil), "test=suspend", func(c *DomainConfig) { c.MemSize = mem })
		d.Unpause()
		ctx := context.Background()
		path := filepath.Join(t.TempDir(), "g.save")
		if err := d.Save(ctx, path, false); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	small, large := size(64<<20), size(1<<30)
	p2mGrowth := int64((1<<30-64<<20)/4096) * 8
	// In the ring-3 model the stub maps all its RAM with 4 KiB pages: one
	// L1 table (a page in the stream, with its record header) per 2 MiB.
	l1Growth := int64((1<<30-64<<20)>>21) * (4096 + 8)
	if large > small+p2mGrowth+l1Growth+64<<10 {
		t.Errorf("64 MiB guest: %d bytes; 1 GiB guest: %d bytes (P2M growth %d, L1 tables %d)", small, large, p2mGrowth, l1Growth)
	}
	t.Logf("64 MiB: %d bytes, 1 GiB: %d bytes", small, large)
}

// Saves and restores report progress, ending at done == total.
func TestSaveRestoreProgress(t *testing.T) {
	ts := New(nil)
	d, _ := create(t, ts, "test=suspend")
	d.Unpause()
	var saves, restores [][2]uint64
	d.SetProgress(func(what string, done, total uint64) { saves = append(saves, [2]uint64{done, total}) })
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Save(t.Context(), path, false); err != nil {
		t.Fatal(err)
	}
	d.Destroy()
	nd, err := ts.Restore(t.Context(), path, DomainConfig{Progress: func(what string, done, total uint64) {
		restores = append(restores, [2]uint64{done, total})
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Destroy()
	for name, p := range map[string][][2]uint64{"save": saves, "restore": restores} {
		if len(p) == 0 || p[len(p)-1][0] != p[len(p)-1][1] {
			t.Errorf("%s progress %v does not end at its total", name, p)
		}
		for i := 1; i < len(p); i++ {
			if p[i][0] < p[i-1][0] {
				t.Errorf("%s progress went backwards: %v", name, p)
			}
		}
	}
}
