package toolstack

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

func pvhImage(code []byte, entryNote bool) []byte { return hvmtest.PVHImage(code, entryNote) }

type code32 = hvmtest.Code32

const (
	testPage   = 0x102000 // the hypercall page
	testReason = 0x103000 // sched_shutdown
	testStack  = 0x104000
)

// hvmGuest checks the entry contract (%ebx points at hvm_start_info's
// magic), writes msrValue to the hypercall MSR, calls xen_version through
// the page, and shuts down: poweroff if all was as Xen's, crash if not.
func hvmGuest(msrValue uint32) []byte {
	var c code32
	c.Imm(0xbc, testStack)                     // mov $stack, %esp
	c.Emit(0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33) // cmpl $magic, (%ebx)
	c.Emit(0x75, 0)                            // jne fail (patched)
	jne1 := len(c.B)
	c.Imm(0xb9, hvm.HypercallMSR)                 // mov $msr, %ecx
	c.Imm(0xb8, msrValue)                         // mov $value, %eax
	c.Emit(0x31, 0xd2, 0x0f, 0x30)                // xor %edx, %edx; wrmsr
	c.Imm(0xbb, xenabi.XenverVersion)             // mov $XENVER_version, %ebx
	c.Call(testPage, xenabi.HypervisorXenVersion) //
	c.Imm(0x3d, 4<<16|17)                         // cmp $version, %eax
	c.Emit(0x75, 0)                               // jne fail (patched)
	jne2 := len(c.B)
	c.Emit(0xc7, 0x05, 0x00, 0x30, 0x10, 0x00, 0, 0, 0, 0) // movl $poweroff, reason
	c.Emit(0xeb, 10)                                       // jmp shutdown
	fail := len(c.B)
	c.Emit(0xc7, 0x05, 0x00, 0x30, 0x10, 0x00, 3, 0, 0, 0) // movl $crash, reason
	c.Imm(0xbb, xenabi.SchedopShutdown)                    // shutdown: mov $SCHEDOP_shutdown, %ebx
	c.Imm(0xb9, testReason)                                // mov $reason, %ecx
	c.Call(testPage, xenabi.HypervisorSchedOp)             //
	c.Emit(0xf4)                                           // hlt
	c.B[jne1-1] = byte(fail - jne1)
	c.B[jne2-1] = byte(fail - jne2)
	return c.B
}

func runHVM(t *testing.T, kind builder.ContainerKind, image []byte) (hvm.Exit, string) {
	t.Helper()
	kvmtest.Require(t)
	var con syncBuffer
	d, err := CreateHVM(HVMConfig{Name: "t", Kind: kind, Image: image, MemSize: 4 << 20, Console: &con})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Destroy()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := d.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Run(ctx); err == nil {
		t.Error("a second Run succeeded")
	}
	return e, con.String()
}

func TestHVMBoot(t *testing.T) {
	for _, kind := range []builder.ContainerKind{builder.KindHVM, builder.KindPVH} {
		t.Run(kind.String(), func(t *testing.T) {
			e, _ := runHVM(t, kind, pvhImage(hvmGuest(testPage), true))
			if e.Crash != nil || e.Reason != xenabi.ShutdownPoweroff {
				t.Fatalf("exit %v, want poweroff (the guest checks start_info, the page and xen_version)", e)
			}
		})
	}
}

// TestHVMBadHypercallMSR is the negative control: the MSR written with a
// nonzero page index gets #GP, as on Xen; with no IDT the guest triple
// faults and the VMM reports the crash.
func TestHVMBadHypercallMSR(t *testing.T) {
	e, _ := runHVM(t, builder.KindHVM, pvhImage(hvmGuest(testPage|1), true))
	if e.Crash == nil || !strings.Contains(e.Crash.Reason, "triple fault") {
		t.Fatalf("exit %v, want a triple fault from the #GP", e)
	}
}

// TestHVMNoNotes boots the same code as note-less firmware (the
// HVM-generic loader, entered at e_entry): %ebx still points at
// hvm_start_info.
func TestHVMNoNotes(t *testing.T) {
	e, _ := runHVM(t, builder.KindHVM, pvhImage(hvmGuest(testPage), false))
	if e.Crash != nil || e.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("exit %v, want poweroff", e)
	}
}

func TestCreateHVMErrors(t *testing.T) {
	kvmtest.Require(t)
	for _, tc := range []struct {
		name string
		cfg  HVMConfig
		want string
	}{
		{"not ELF", HVMConfig{Kind: builder.KindHVM, Image: []byte("junk")}, "not an ELF file"},
		{"no kind", HVMConfig{Image: pvhImage(hvmGuest(testPage), true)}, "container kind"},
		{"too little memory", HVMConfig{Kind: builder.KindPVH, Image: pvhImage(hvmGuest(testPage), true), MemSize: 1 << 20}, "past the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := CreateHVM(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CreateHVM: %v, want %q", err, tc.want)
			}
		})
	}
}

// slpGuest sets up the hypercall page, writes pm1aCnt to PM1a_CNT (0xB004)
// and, if the domain is still running, shuts down with SHUTDOWN_crash.
func slpGuest(pm1aCnt uint16) []byte {
	var c code32
	c.Imm(0xbc, testStack)                                 // mov $stack, %esp
	c.Imm(0xb9, hvm.HypercallMSR)                          // mov $msr, %ecx
	c.Imm(0xb8, testPage)                                  // mov $page, %eax
	c.Emit(0x31, 0xd2, 0x0f, 0x30)                         // xor %edx, %edx; wrmsr
	c.Emit(0x66, 0xb8, byte(pm1aCnt), byte(pm1aCnt>>8))    // mov $value, %ax
	c.Emit(0x66, 0xba, 0x04, 0xb0)                         // mov $0xb004, %dx
	c.Emit(0x66, 0xef)                                     // out %ax, %dx
	c.Emit(0xc7, 0x05, 0x00, 0x30, 0x10, 0x00, 3, 0, 0, 0) // movl $crash, reason
	c.Imm(0xbb, xenabi.SchedopShutdown)                    // mov $SCHEDOP_shutdown, %ebx
	c.Imm(0xb9, testReason)                                // mov $reason, %ecx
	c.Call(testPage, xenabi.HypervisorSchedOp)             //
	c.Emit(0xf4)                                           // hlt
	return c.B
}

// TestHVMSleepStates: SLP_TYP 0 with SLP_EN (\_S4 and \_S5) powers an HVM
// guest off, as QEMU's PIIX4 does (S3: TestHVMS3); a PVH guest has no
// PM1a_CNT (its negative control: the write does nothing and the guest
// runs on).
func TestHVMSleepStates(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kind  builder.ContainerKind
		value uint16
		check func(e hvm.Exit) bool
	}{
		{"hvm S5", builder.KindHVM, 0x2000, func(e hvm.Exit) bool { return e.Crash == nil && e.Reason == xenabi.ShutdownPoweroff }},
		{"hvm no SLP_EN", builder.KindHVM, 0x0400, func(e hvm.Exit) bool { return e.Crash == nil && e.Reason == xenabi.ShutdownCrash }},
		{"pvh S5", builder.KindPVH, 0x2000, func(e hvm.Exit) bool { return e.Crash == nil && e.Reason == xenabi.ShutdownCrash }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := runHVM(t, tc.kind, pvhImage(slpGuest(tc.value), true))
			if !tc.check(e) {
				t.Fatalf("exit %v", e)
			}
		})
	}
}

// TestHVMACPITables: an HVM guest finds the RSDP in the BIOS area, and
// through it the XSDT and the FADT naming PM1a_CNT at 0xB004; a PVH guest
// gets none of these (libxl's PVH tables are not built yet).
func TestHVMACPITables(t *testing.T) {
	kvmtest.Require(t)
	le := binary.LittleEndian
	for _, kind := range []builder.ContainerKind{builder.KindHVM, builder.KindPVH} {
		d, err := CreateHVM(HVMConfig{Kind: kind, Image: pvhImage(hvmGuest(testPage), true), MemSize: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		mem := d.m.Memory()
		rsdp := make([]byte, 36)
		if err := mem.Read(0xe0000, rsdp); err != nil {
			t.Fatal(err)
		}
		if kind == builder.KindPVH {
			if d.ACPI != nil || string(rsdp[:8]) == "RSD PTR " {
				t.Error("PVH got the HVM tables")
			}
			d.Destroy()
			continue
		}
		if string(rsdp[:8]) != "RSD PTR " {
			t.Fatalf("no RSDP at 0xE0000: % x", rsdp)
		}
		xsdt := make([]byte, 44)
		if err := mem.Read(le.Uint64(rsdp[24:]), xsdt); err != nil || string(xsdt[:4]) != "XSDT" {
			t.Fatalf("XSDT at %#x: %v % x", le.Uint64(rsdp[24:]), err, xsdt[:4])
		}
		fadt := make([]byte, 244)
		if err := mem.Read(le.Uint64(xsdt[36:]), fadt); err != nil || string(fadt[:4]) != "FACP" || le.Uint32(fadt[64:]) != 0xb004 {
			t.Fatalf("FADT: %v % x", err, fadt[:8])
		}
		d.Destroy()
	}
}

const (
	testFACS   = hvmtest.FACS
	testWake   = hvmtest.Wake
	testMarker = hvmtest.Marker
)

func s3Guest(vector uint32) []byte { return hvmtest.S3Guest(vector, false) }

var wakeCode = hvmtest.WakeCode

// TestHVMS3 is claim 11's path on this container: the guest writes S3 to
// PM1a_CNT, Xen's hvm_s3_suspend parks vCPU 0 in real mode at F000:FFF0
// with the domain held and ACPI_S_STATE 3; S3Resume (xl trigger s3resume)
// runs the firmware stub at the reset vector, which enters the FACS waking
// vector in real mode, where the guest finds its memory intact. Negative
// controls: no waking vector (the firmware reports it), memory changed
// while asleep (the guest's check fails), and a resume when not in S3.
func TestHVMS3(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vector  uint32
		clobber bool
		check   func(e hvm.Exit) bool
	}{
		{"wakes at the vector", testWake, false, func(e hvm.Exit) bool { return e.Crash == nil && e.Reason == xenabi.ShutdownPoweroff }},
		{"no waking vector", 0, false, func(e hvm.Exit) bool { return e.Crash != nil && strings.Contains(e.Crash.Reason, "no waking vector") }},
		{"memory changed while asleep", testWake, true, func(e hvm.Exit) bool {
			return e.Crash != nil && strings.Contains(e.Crash.Reason, "HLT with interrupts disabled")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvmtest.Require(t)
			d, err := CreateHVM(HVMConfig{Name: "t", Kind: builder.KindHVM, Image: pvhImage(s3Guest(tc.vector), true), MemSize: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Destroy()
			if d.ACPI.FACS != testFACS {
				t.Fatalf("FACS at %#x, the guest writes %#x", d.ACPI.FACS, testFACS)
			}
			if err := d.m.Memory().Write(testWake, wakeCode); err != nil {
				t.Fatal(err)
			}
			if err := d.Xen.S3Resume(context.Background()); err == nil {
				t.Fatal("S3Resume before S3 succeeded")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			type result struct {
				e   hvm.Exit
				err error
			}
			done := make(chan result, 1)
			go func() {
				e, err := d.Run(ctx)
				done <- result{e, err}
			}()
			for !d.Xen.InS3() {
				select {
				case r := <-done:
					t.Fatalf("the domain ended before S3: %v %v", r.e, r.err)
				case <-ctx.Done():
					t.Fatal("no S3")
				case <-time.After(time.Millisecond):
				}
			}
			if err := d.m.WaitPaused(ctx); err != nil {
				t.Fatal(err)
			}
			v0 := d.m.VCPUs()[0]
			r, err := v0.GetRegs()
			if err != nil {
				t.Fatal(err)
			}
			s, err := v0.GetSregs()
			if err != nil {
				t.Fatal(err)
			}
			if r.RIP != 0xfff0 || s.CS.Selector != 0xf000 || s.CS.Base != 0xf0000 || s.CR0&1 != 0 {
				t.Fatalf("held at %04x:%#x (base %#x, cr0 %#x), want F000:FFF0 in real mode", s.CS.Selector, r.RIP, s.CS.Base, s.CR0)
			}
			if p, _ := d.Xen.Param(hvm.ParamACPISState); p != 3 {
				t.Fatalf("ACPI_S_STATE %d", p)
			}
			if tc.clobber {
				d.m.Memory().Write(testMarker, []byte{0})
			}
			if err := d.Xen.S3Resume(ctx); err != nil {
				t.Fatal(err)
			}
			res := <-done
			if res.err != nil || !tc.check(res.e) {
				t.Fatalf("exit %v, %v", res.e, res.err)
			}
		})
	}
}
