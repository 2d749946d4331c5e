package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/xenresume/xenresume/vmm/blkback"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenstore"
	"github.com/xenresume/xenresume/vmm/xlcfg"
)

// rawImage makes a zeroed raw image of n bytes.
func rawImage(t testing.TB, n int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, n); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitNode waits until path reads want.
func waitNode(t *testing.T, st *xenstore.Store, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := st.Read(path)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q (%v), want %q", path, got, err, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// A disk in the configuration is attached at launch: libxl's nodes on
// both sides, the backend in InitWait. A Go frontend then connects
// through the domain's real grant table and event channel (the guest's
// writes made by the test in its memory) and writes a sector, which
// lands in the image; on destroy the nodes vanish.
func TestDiskAttach(t *testing.T) {
	ts := New(nil)
	img := rawImage(t, 1<<20)
	disk, err := xlcfg.ParseDisk("vdev=xvda, target=" + img)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := create(t, ts, "test=idle", func(c *DomainConfig) { c.Disks = []xlcfg.Disk{disk} })
	st := ts.Store()
	be := fmt.Sprintf("/local/domain/0/backend/vbd/%d/51712", d.ID)
	fe := fmt.Sprintf("/local/domain/%d/device/vbd/51712", d.ID)
	for path, want := range map[string]string{
		be + "/params": img, be + "/mode": "w", be + "/frontend": fe, be + "/frontend-id": strconv.Itoa(int(d.ID)),
		be + "/dev": "xvda", be + "/type": "phy", be + "/device-type": "disk", be + "/online": "1",
		be + "/state": "2", be + "/feature-max-indirect-segments": "256", be + "/max-ring-page-order": "4",
		fe + "/backend": be, fe + "/backend-id": "0", fe + "/state": "1", fe + "/virtual-device": "51712",
		fe + "/protocol": "x86_64-abi", fe + "/device-type": "disk",
	} {
		if got, err := st.Read(path); err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", path, got, err, want)
		}
	}
	if len(d.Disks()) != 1 || d.Disks()[0].State() != blkback.StateInitWait {
		t.Fatalf("backends %v", d.Disks())
	}
	frontendWrite(t, d, st, fe, be, img)
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{be, fe} {
		if _, err := st.Read(p); err == nil {
			t.Errorf("%s left after destroy", p)
		}
	}
}

// frontendWrite is blkfront's part, done by the test in the (paused)
// guest's memory: a ring page and a data page granted to dom0 in its v1
// grant table, an unbound port for dom0, the frontend's nodes, then one
// write request.
func frontendWrite(t *testing.T, d *Domain, st *xenstore.Store, fe, be, img string) {
	mem := d.Machine().Memory()
	frames := d.Xen.Frames()
	page := func(pfn uint64) (uint64, []byte) {
		mfn, ok := frames.MFN(pfn)
		if !ok {
			t.Fatalf("pfn %#x has no frame", pfn)
		}
		b, err := mem.Slice(mfn<<12, machine.PageSize)
		if err != nil {
			t.Fatal(err)
		}
		return mfn, b
	}
	ringMFN, ring := page(frames.NrPages - 2) // the stub, paused, never touches these
	dataMFN, data := page(frames.NrPages - 3)
	gtab, err := mem.Slice(frames.XenFrame(1)<<12, machine.PageSize)
	if err != nil {
		t.Fatal(err)
	}
	grant := func(ref int, mfn uint64, flags uint16) {
		binary.LittleEndian.PutUint16(gtab[8*ref+2:], 0)
		binary.LittleEndian.PutUint32(gtab[8*ref+4:], uint32(mfn))
		binary.LittleEndian.PutUint16(gtab[8*ref:], flags)
	}
	grant(8, ringMFN, 1)
	grant(9, dataMFN, 1|4) // read-only: the backend reads it for a write
	clear(ring)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	port, err := d.Xen.AllocUnbound(0)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"ring-ref": "8", "event-channel": strconv.Itoa(int(port)), "protocol": "x86_64-abi"} {
		if err := st.Write(fe+"/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Write(fe+"/state", "3"); err != nil {
		t.Fatal(err)
	}
	waitNode(t, st, be+"/state", "4")
	if f := binary.LittleEndian.Uint16(gtab[8*8:]); f != 1|8|16 {
		t.Errorf("ring grant flags while mapped: %#x, want permit|reading|writing", f)
	}
	// One WRITE (x86_64 blkif_request): sector 8, one segment, gref 9,
	// sectors 0-7.
	req := ring[64 : 64+112]
	req[0], req[1] = 1, 1
	binary.LittleEndian.PutUint64(req[8:], 0x1234)
	binary.LittleEndian.PutUint64(req[16:], 8)
	binary.LittleEndian.PutUint32(req[24:], 9)
	req[28], req[29] = 0, 7
	word := func(off int) *uint32 { return (*uint32)(unsafe.Pointer(&ring[off])) }
	atomic.StoreUint32(word(0), 1) // req_prod
	if err := d.Xen.Send(port); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for atomic.LoadUint32(word(8)) != 1 { // rsp_prod
		if time.Now().After(deadline) {
			t.Fatal("no response on the ring")
		}
		time.Sleep(time.Millisecond)
	}
	if id, op, status := binary.LittleEndian.Uint64(ring[64:]), ring[72], int16(binary.LittleEndian.Uint16(ring[74:])); id != 0x1234 || op != 1 || status != 0 {
		t.Errorf("response id %#x op %d status %d", id, op, status)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4096:8192], data) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Error("the image does not hold the written sector")
	}
	if f := binary.LittleEndian.Uint16(gtab[8*9:]); f != 1|4 {
		t.Errorf("data grant flags after the request: %#x", f)
	}
	if s := d.Disks()[0].Stats(); s.Writes != 1 || s.Errors != 0 {
		t.Errorf("stats %+v", s)
	}
}

// A disk that cannot be attached fails the launch, which leaves nothing:
// a missing image, a fault injected after the disks attached.
func TestDiskAttachFailure(t *testing.T) {
	img := rawImage(t, 1<<20)
	for _, tc := range []struct {
		name, target, fault string
	}{
		{"missing image", filepath.Join(t.TempDir(), "missing.raw"), ""},
		{"fault after the disks", img, "disks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := New(nil)
			if tc.fault != "" {
				launchFault = func(s string) error {
					if s == tc.fault {
						return fmt.Errorf("%s: %w", s, errInjected)
					}
					return nil
				}
				defer func() { launchFault = nil }()
			}
			disk, err := xlcfg.ParseDisk(tc.target + ",raw,xvdb")
			if err != nil {
				t.Fatal(err)
			}
			_, err = ts.Create(DomainConfig{Name: "g", MemSize: 16 << 20, Cmdline: "test=idle", Disks: []xlcfg.Disk{disk}})
			if err == nil {
				t.Fatal("the launch succeeded")
			}
			if tc.fault != "" && !errors.Is(err, errInjected) {
				t.Fatalf("got %v, want the injected failure", err)
			}
			for _, p := range []string{"/local/domain/0/backend/vbd/1", "/local/domain/0/error/backend/vbd/1", xenstore.DomainPath(1)} {
				if _, err := ts.store.Read(p); err == nil {
					t.Errorf("%s left", p)
				}
			}
			ts.mu.Lock()
			n := len(ts.domains)
			ts.mu.Unlock()
			if n != 0 {
				t.Errorf("%d domains left", n)
			}
		})
	}
}

// A checkpoint pauses the disk's backend for the copy and lets it go
// again; the connection and nodes stay.
func TestDiskCheckpoint(t *testing.T) {
	ts := New(nil)
	img := rawImage(t, 1<<20)
	disk, _ := xlcfg.ParseDisk(img + ",raw,xvda")
	d, con := create(t, ts, "test=idle", func(c *DomainConfig) { c.Disks = []xlcfg.Disk{disk} })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	if err := d.Save(ctx, filepath.Join(t.TempDir(), "g.save"), true); err != nil {
		t.Fatal(err)
	}
	if len(d.Disks()) != 1 || d.Disks()[0].State() != blkback.StateInitWait {
		t.Fatalf("after a checkpoint: %v", d.Disks())
	}
	be := fmt.Sprintf("/local/domain/0/backend/vbd/%d/51712", d.ID)
	waitNode(t, ts.Store(), be+"/state", "2")
	if err := d.Save(ctx, filepath.Join(t.TempDir(), "g2.save"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Store().Read(be); err == nil {
		t.Error("the disk's nodes are left after save")
	}
}
