package toolstack

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// saveHVM writes d's save file and checks Xen's verifier takes it.
func saveHVM(t *testing.T, d *HVMDomain) []byte {
	t.Helper()
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := d.SaveStream(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "h.save")
	os.WriteFile(path, buf.Bytes(), 0o600)
	if out, err := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-f", "xl", "-i", path).CombinedOutput(); err != nil {
		t.Fatalf("verify-stream-v2: %v\n%s", err, out)
	}
	return buf.Bytes()
}

// An HVM guest suspended remotely (a PVH one by libxc's
// xc_domain_shutdown: libxl would ask it), saved in Xen's HVM stream and restored
// into a new domain goes on where it stopped: same instruction, its
// counter from the saved value on, its memory (the hypercall-free guest's
// code and a marker) as saved, its params and xenstore as a new domain's.
func TestHVMSaveRestore(t *testing.T) {
	for _, kind := range []builder.ContainerKind{builder.KindHVM, builder.KindPVH} {
		t.Run(kind.String(), func(t *testing.T) {
			code, loop := hvmtest.SpinGuest()
			kvmtest.Require(t)
			d, err := CreateHVM(HVMConfig{Name: "h", ID: 3, Kind: kind, Image: pvhImage(code, true), ImageName: "/img/guest.elf",
				MemSize: 4 << 20, Store: xenstore.New(nil)})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Destroy()
			if err := d.Start(); err != nil {
				t.Fatal(err)
			}
			if err := d.Unpause(); err != nil {
				t.Fatal(err)
			}
			if _, err := d.SaveStream(context.Background(), &bytes.Buffer{}); err == nil {
				t.Fatal("a save of a running domain succeeded")
			}
			time.Sleep(10 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			suspend := d.Suspend
			if kind == builder.KindPVH {
				// libxl asks a PVH guest, which this one does not
				// answer; libxc's xc_domain_shutdown suspends any.
				short, stop := context.WithTimeout(ctx, 100*time.Millisecond)
				if err := d.Suspend(short); err == nil {
					t.Fatal("a PVH guest that watches nothing was suspended")
				}
				stop()
				suspend = d.suspendRemotely
			}
			if err := suspend(ctx); err != nil {
				t.Fatal(err)
			}
			d.m.Memory().Write(hvmtest.Marker, []byte{0x5a})
			r1, _ := d.m.VCPUs()[0].GetRegs()
			file := saveHVM(t, d)
			// HVM_CONTEXT holds the platform's RTC, HPET and PMTIMER records
			// for HVM, none for PVH (Xen's handlers write nothing for a
			// device the domain lacks).
			hs, err := stream.ReadHVMSave(bytes.NewReader(file), nil)
			if err != nil {
				t.Fatal(err)
			}
			hc := hs.Context
			if kind == builder.KindHVM && (hc.RTC == nil || hc.HPET == nil || hc.PMTimer == nil || hc.PMTimer.Tmr_val == 0) ||
				kind == builder.KindPVH && (hc.RTC != nil || hc.HPET != nil || hc.PMTimer != nil) {
				t.Errorf("%v save: RTC %v HPET %v PMTIMER %+v", kind, hc.RTC != nil, hc.HPET != nil, hc.PMTimer)
			}
			if st := d.Status().State; st != Suspended {
				t.Errorf("after the save: %v, want it as it was", st)
			}
			d.Destroy()

			store := xenstore.New(nil)
			n, err := RestoreHVM(bytes.NewReader(file), HVMRestoreConfig{ID: 4, Store: store})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Destroy()
			if n.Name != "h" || n.Xen.Kind() != kind || n.MemSize() != 4<<20 || !strings.Contains(n.XLConfig(), "/img/guest.elf") {
				t.Errorf("restored %q kind %v mem %d config %q", n.Name, n.Xen.Kind(), n.MemSize(), n.XLConfig())
			}
			if p, _ := n.Xen.Param(hvm.ParamStoreEvtchn); p != hvm.StorePort {
				t.Errorf("STORE_EVTCHN %d", p)
			}
			if v, err := store.Read("/local/domain/4/name"); err != nil || v != "h" {
				t.Errorf("xenstore name %q %v", v, err)
			}
			m := make([]byte, 1)
			n.m.Memory().Read(hvmtest.Marker, m)
			r0, _ := n.m.VCPUs()[0].GetRegs()
			if m[0] != 0x5a || r0.RIP != r1.RIP || r0.RCX != r1.RCX || r0.RSP != r1.RSP {
				t.Fatalf("restored marker %#x, rip %#x rcx %#x; saved rip %#x rcx %#x", m[0], r0.RIP, r0.RCX, r1.RIP, r1.RCX)
			}
			if rtc, _, pm := n.Xen.PlatformRecords(); kind == builder.KindHVM &&
				(rtc.Rtc_offset != hc.RTC.Rtc_offset || pm.Tmr_val < hc.PMTimer.Tmr_val || pm.Tmr_val-hc.PMTimer.Tmr_val > 1<<30) {
				t.Errorf("restored RTC offset %d PM timer %d; saved %d, %d", rtc.Rtc_offset, pm.Tmr_val, hc.RTC.Rtc_offset, hc.PMTimer.Tmr_val)
			}
			if err := n.Start(); err != nil {
				t.Fatal(err)
			}
			if err := n.Unpause(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
			if err := n.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			r2, _ := n.m.VCPUs()[0].GetRegs()
			if (r2.RIP != loop && r2.RIP != loop+1) || uint32(r2.RCX) == uint32(r1.RCX) {
				t.Fatalf("the restored guest at %#x with ecx %#x (saved %#x): it did not go on", r2.RIP, r2.RCX, r1.RCX)
			}
		})
	}
}

// A guest saved while in ACPI S3 is restored running: ACPI_S_STATE is not
// in Xen's stream, so its vCPU, saved at F000:FFF0, runs the firmware's
// S3 path at once (xen-hvm-pvh.md §7.5) into its waking vector, which
// finds memory intact and powers off.
func TestHVMSaveInS3(t *testing.T) {
	d, _ := startHVM(t, hvmtest.PVHImage(hvmtest.S3Guest(hvmtest.Wake, true), true))
	waitHVM(t, d, "S3", func(Status) bool { return d.InS3() })
	file := saveHVM(t, d)
	d.Destroy()
	n, err := RestoreHVM(bytes.NewReader(file), HVMRestoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Destroy()
	if n.InS3() {
		t.Error("restored in S3")
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.Unpause(); err != nil {
		t.Fatal(err)
	}
	st := waitHVM(t, n, "the end", func(st Status) bool { return st.State.Ended() })
	if st.State != Shutdown || st.Exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("ended %v %v", st.State, st.Exit)
	}
}

// Negative controls: files a restore must refuse, each with a clear error
// and no domain left behind.
func TestRestoreHVMRefuses(t *testing.T) {
	kvmtest.Require(t)
	code, _ := hvmtest.SpinGuest()
	d, err := CreateHVM(HVMConfig{Name: "h", Kind: builder.KindHVM, Image: pvhImage(code, true), MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Destroy()
	if err := d.Start(); err != nil { // Created: held
		t.Fatal(err)
	}
	good := saveHVM(t, d)
	// A frame past the domain's memory: the configuration says less RAM.
	small := bytes.Replace(append([]byte{}, good...), []byte("memory = 4\n"), []byte("memory = 2\n"), 1)
	pvType := bytes.Replace(append([]byte{}, good...), []byte(`type = "hvm"`), []byte(`type = "pv" `), 1)
	// An HPET record from another HPET (its capabilities differ: 4 timers).
	hpetID := []byte{0x01, 0xa2, 0x86, 0x80, 0x00, 0x24, 0xf4, 0x00}
	if bytes.Count(good, hpetID) != 1 {
		t.Fatalf("%d HPET records in the save", bytes.Count(good, hpetID))
	}
	foreignHPET := bytes.Replace(append([]byte{}, good...), hpetID, []byte{0x01, 0xa3, 0x86, 0x80, 0x00, 0x24, 0xf4, 0x00}, 1)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"frame outside", small, "is not one of the domain's"},
		{"not hvm", pvType, "not an HVM or PVH domain"},
		{"foreign HPET", foreignHPET, "HPET record: hpet: saved capabilities"},
		{"truncated", good[:len(good)/2], "truncated"},
		{"not a save", []byte("hello"), "xl header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := RestoreHVM(bytes.NewReader(tc.b), HVMRestoreConfig{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
	// A CPU record the guest could not have had: CR0.PG without PE.
	hs, err := stream.ReadHVMSave(bytes.NewReader(good), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := *hs.Context.CPU(0)
	c.Cr0 = 1 << 31
	if err := loadHVMCPU(d.m.VCPUs()[0], &c); err == nil || !strings.Contains(err.Error(), "PG without PE") {
		t.Fatalf("CR0 PG without PE: %v", err)
	}
}

// IsHVMSave picks the restore path from the saved configuration: HVM and
// PVH files go to RestoreHVM; a PV one, or a configuration not in xl's
// syntax (libxl's JSON), to the PV restore; a file that is not a save is
// an error.
func TestIsHVMSave(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, config string
		want         bool
	}{
		{"hvm", "name = \"h\"\ntype = \"hvm\"\nmemory = 4\n", true},
		{"pvh", "name = \"h\"\ntype = \"pvh\"\nmemory = 4\n", true},
		{"pv", "name = \"g\"\ntype = \"pv\"\nmemory = 32\nkernel = \"/k\"\n", false},
		{"json", `{"c_info": {"type": "hvm", "name": "h"}}`, false},
	} {
		path := filepath.Join(dir, tc.name)
		os.WriteFile(path, stream.AppendXLHeader(nil, tc.config), 0o600)
		if got, err := IsHVMSave(path); err != nil || got != tc.want {
			t.Errorf("%s: %v %v, want %v", tc.name, got, err, tc.want)
		}
	}
	path := filepath.Join(dir, "junk")
	os.WriteFile(path, []byte("not a save file at all, not at all, not one bit of it"), 0o600)
	if _, err := IsHVMSave(path); err == nil || !strings.Contains(err.Error(), "not an xl save file") {
		t.Errorf("junk: %v", err)
	}
}
