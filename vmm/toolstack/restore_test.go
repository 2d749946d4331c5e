package toolstack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/timeline"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"

	"golang.org/x/sys/unix"
)

// Save, destroy and restore into a new domain, three times on one guest:
// each time the guest's suspend returns 0 with %rdx holding the new
// start_info MFN, start_info carries the new frames and ports, the guest
// rebinds and reconnects, and its hash chain continues exactly.
func TestSaveRestoreCycles(t *testing.T) {
	ts := New(nil)
	d, con := create(t, ts, "test=suspend cycles=3")
	ctx := t.Context()
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	dir := t.TempDir()
	for i := 0; i < 3; i++ {
		path := filepath.Join(dir, "save"+strconv.Itoa(i))
		oldID := d.ID
		oldPorts := startInfoPorts(t, d)
		if err := d.Save(ctx, path, false); err != nil {
			t.Fatalf("cycle %d: save: %v\n%s", i, err, con)
		}
		verify(t, path)
		if st := d.Status(); st.State != Destroyed || !st.Saved {
			t.Fatalf("cycle %d: after save: %+v", i, st)
		}
		nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
		if err != nil {
			t.Fatalf("cycle %d: restore: %v", i, err)
		}
		t.Cleanup(func() {
			if _, err := ts.Lookup(nd.ID); err == nil {
				nd.Destroy()
			}
		})
		if nd.ID == oldID {
			t.Errorf("restored into the same domid %d", nd.ID)
		}
		frames := nd.Xen.Frames()
		siMFN, _ := frames.MFN(nd.Layout.PFN(nd.Layout.StartInfo))
		v0 := nd.Machine().VCPUs()[0]
		regs, _ := v0.GetRegs()
		if in, rax, _ := nd.InReturnPath(); !in || rax != 0 || regs.RDX != siMFN {
			t.Fatalf("cycle %d: in return path %v, rax %d, rdx %#x (want new start_info MFN %#x)", i, in, rax, regs.RDX, siMFN)
		}
		ports := startInfoPorts(t, nd)
		if ports[0] == oldPorts[0] || ports[1] == oldPorts[1] {
			t.Errorf("cycle %d: ports %v reuse the old numbers %v", i, ports, oldPorts)
		}
		page, _ := nd.Machine().Memory().Page(nd.Layout.PFN(nd.Layout.StartInfo) << 12)
		si := xenabi.View[xenabi.StartInfo](page)
		storeMFN, _ := frames.MFN(nd.Layout.PFN(nd.Layout.Store))
		if si.Store_mfn != storeMFN || si.Shared_info != nd.Xen.SharedInfoMFN()<<12 || si.Flags != 0 {
			t.Errorf("cycle %d: start_info store %#x shared %#x", i, si.Store_mfn, si.Shared_info)
		}
		d = nd
		d.Unpause()
		if i < 2 {
			waitFor(t, con, "suspend: ready cycle="+strconv.Itoa(i+1))
		}
	}
	_ = waitPoweroffAfter(t, d, con)
	r := result{console: con.String()}
	requireSuccess(t, r)
	if n := strings.Count(r.console, "resume: rc=0 new-domain"); n != 3 {
		t.Errorf("%d resumes in a new domain:\n%s", n, r.console)
	}
	checkWork(t, r.console, 1+2*3)
}

func waitPoweroffAfter(t *testing.T, d *Domain, con *syncBuffer) xen.Exit {
	t.Helper()
	exit, err := d.Wait(t.Context())
	if err != nil || exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v %v\n%s", exit, err, con)
	}
	return exit
}

func startInfoPorts(t *testing.T, d *Domain) [2]uint32 {
	t.Helper()
	page, err := d.Machine().Memory().Page(d.Layout.PFN(d.Layout.StartInfo) << 12)
	if err != nil {
		t.Fatal(err)
	}
	si := xenabi.View[xenabi.StartInfo](page)
	return [2]uint32{si.Store_evtchn, binary.LittleEndian.Uint32(si.Console[8:])}
}

// Restoring over a running domain's name is refused; bad files are clear
// errors and are never written to.
func TestRestoreRefusals(t *testing.T) {
	ts := New(nil)
	d, _ := create(t, ts, "test=suspend", func(c *DomainConfig) { c.Name = "twin" })
	d.Unpause()
	path := filepath.Join(t.TempDir(), "twin.save")
	if err := d.Save(t.Context(), path, true); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Restore(t.Context(), path, DomainConfig{}); err == nil || !strings.Contains(err.Error(), `a domain named "twin" already exists`) {
		t.Errorf("restore over a running domain: %v", err)
	}
	good, _ := os.ReadFile(path)
	for name, mutate := range map[string]func([]byte) []byte{
		"truncated":      func(b []byte) []byte { return b[:len(b)/2] },
		"not a save":     func([]byte) []byte { return []byte("hello") },
		"flipped marker": func(b []byte) []byte { b[bytes.Index(b, bytes.Repeat([]byte{0xff}, 8))] ^= 1; return b },
	} {
		bad := filepath.Join(t.TempDir(), "bad")
		data := mutate(append([]byte(nil), good...))
		os.WriteFile(bad, data, 0o444)
		_, err := ts.Restore(t.Context(), bad, DomainConfig{Name: "other"})
		if !errors.Is(err, stream.ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
		if after, _ := os.ReadFile(bad); string(after) != string(data) {
			t.Errorf("%s: restore wrote to its source file", name)
		}
	}
}

// A restore on a timeline is a span whose phases tile it: reading the file
// (a child per record type, in stream order), building the domain,
// introducing it; the restored domain goes on recording.
func TestRestoreTimeline(t *testing.T) {
	path := savedIdleGuest(t)
	ts := New(nil)
	tl := timeline.New(1, "restore")
	ts.SetTimeline(tl)
	d, err := ts.Restore(t.Context(), path, DomainConfig{Name: "r"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Destroy()
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	tr := tl.Snapshot()
	if err := tr.CheckNesting(); err != nil {
		t.Fatal(err)
	}
	var root *timeline.Event
	for _, s := range tr.Spans() {
		if s.Name == "restore" {
			root = &s
			break
		}
	}
	if root == nil || root.Args["to"] != "created" {
		t.Fatalf("no restore span: %+v", root)
	}
	phases := tr.Children(*root)
	var names []string
	sum := 0.0
	for _, p := range phases {
		names = append(names, p.Name)
		sum += p.Dur
	}
	if strings.Join(names, " ") != "read build introduce" || math.Abs(sum-root.Dur) > timeline.Epsilon*float64(len(phases)) {
		t.Errorf("phases %v, %v of %v", names, sum, root.Dur)
	}
	var recs []string
	for _, p := range tr.Children(phases[0]) {
		recs = append(recs, p.Name)
	}
	want := "libxl LIBXC_CONTEXT X86_PV_INFO STATIC_DATA_END X86_PV_P2M_FRAMES PAGE_DATA X86_TSC_INFO SHARED_INFO X86_PV_VCPU_BASIC END libxl END"
	if got := strings.Join(recs, " "); got != want {
		t.Errorf("record phases\n got %s\nwant %s", got, want)
	}
	found := false
	for _, s := range tr.Spans() {
		if s.Name == "unpause" {
			found = true
		}
	}
	if !found {
		t.Error("the restored domain does not record its operations")
	}
}

// A save file that shrinks while Restore has it mapped: the read that
// reaches past the new end faults, and the restore fails with a clear
// error (ErrFormat, truncated) instead of crashing the VMM, leaving no
// domain behind; its name is free for the restore of the file made whole
// again, which succeeds (the positive control).
func TestRestoreFileShrinks(t *testing.T) {
	ts := New(nil)
	d, _ := create(t, ts, "test=suspend", func(c *DomainConfig) { c.Name = "shrinks" })
	d.Unpause()
	path := filepath.Join(t.TempDir(), "g.save")
	if err := d.Save(t.Context(), path, false); err != nil {
		t.Fatal(err)
	}
	d.Destroy()
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := mapFile(f, uint64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	const keep = 3 * 4096 // the headers and the start of the pages
	if err := os.Truncate(path, keep); err != nil {
		t.Fatal(err)
	}
	_, err = ts.restoreMapped(t.Context(), m, path, DomainConfig{})
	var fe *stream.FormatError
	t.Logf("restore of a file that shrank: %v", err)
	if !errors.As(err, &fe) || !fe.Truncated || !strings.Contains(err.Error(), "shrank") || fe.Offset < keep {
		t.Fatalf("restore of a file that shrank: %v", err)
	}
	for id := uint16(1); id < 16; id++ {
		if _, err := ts.Lookup(id); err == nil {
			t.Errorf("domain %d exists after the failed restore", id)
		}
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := ts.Restore(t.Context(), path, DomainConfig{})
	if err != nil {
		t.Fatalf("restore of the whole file: %v", err)
	}
	r.Destroy()
}
