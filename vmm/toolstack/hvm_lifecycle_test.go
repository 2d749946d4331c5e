package toolstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/hvm"
	"github.com/xenresume/xenresume/vmm/xenabi"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// spinGuest counts in %ecx for ever (`inc %ecx; jmp` at spinLoop). With
// pvDrivers it first sets HVM_PARAM_CALLBACK_IRQ through hvm_op, as a
// guest with PV drivers does.
func spinGuest(pvDrivers bool) (image []byte, spinLoop uint64) {
	var c code32
	c.Imm(0xbc, testStack) // mov $stack, %esp
	if pvDrivers {
		const param = 0x103100                     // struct xen_hvm_param
		c.Imm(0xb9, hvm.HypercallMSR)              // mov $msr, %ecx
		c.Imm(0xb8, testPage)                      // mov $page, %eax
		c.Emit(0x31, 0xd2, 0x0f, 0x30)             // xor %edx, %edx; wrmsr
		c.StoreWord(param, hvm.DomIDSelf)          // domid
		c.StoreWord(param+4, hvm.ParamCallbackIRQ) // index
		c.StoreWord(param+8, 9)                    // value: GSI 9
		c.StoreWord(param+12, 0)
		c.Imm(0xbb, 0)                           // mov $HVMOP_set_param, %ebx
		c.Imm(0xb9, param)                       // mov $param, %ecx
		c.Call(testPage, xenabi.HypervisorHVMOp) //
	}
	c.Emit(0x31, 0xc9) // xor %ecx, %ecx
	loop := hvmtest.Load + uint64(len(c.B))
	c.Emit(0x41, 0xeb, 0xfd) // loop: inc %ecx; jmp loop
	return pvhImage(c.B, true), loop
}

// startHVM creates an HVM domain introduced to a new xenstored, starts
// it and unpauses it.
func startHVM(t *testing.T, image []byte) (*HVMDomain, *xenstore.Store) {
	t.Helper()
	store := xenstore.New(nil)
	return ownHVM(t, HVMConfig{Name: "h", ID: 3, Kind: builder.KindHVM, Image: image, MemSize: 4 << 20, Store: store}), store
}

// ownHVM creates the domain cfg describes (destroyed at the test's end),
// starts it and unpauses it.
func ownHVM(t *testing.T, cfg HVMConfig) *HVMDomain {
	t.Helper()
	kvmtest.Require(t)
	d, err := CreateHVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if st := d.Status().State; st != Created {
		t.Fatalf("started: %v, want created", st)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitHVM waits until cond holds of the domain's status.
func waitHVM(t *testing.T, d *HVMDomain, what string, cond func(Status) bool) Status {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		ch := d.Changed()
		if st := d.Status(); cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no %s: %v", what, d.Status())
		}
	}
}

// An HVM domain under the toolstack is introduced to xenstored as libxl
// introduces it, with STORE_EVTCHN set; without a store it stays 0 (the
// negative control: how a guest learns there is no xenstore).
func TestHVMXenstoreIntroduced(t *testing.T) {
	img, _ := spinGuest(false)
	d, store := startHVM(t, img)
	if p, _ := d.Xen.Param(hvm.ParamStoreEvtchn); p != hvm.StorePort {
		t.Errorf("STORE_EVTCHN %d, want %d", p, hvm.StorePort)
	}
	for path, want := range map[string]string{
		"/local/domain/3/name":             "h",
		"/local/domain/3/store/port":       strconv.Itoa(hvm.StorePort),
		"/local/domain/3/store/ring-ref":   strconv.Itoa(builder.StorePFN),
		"/local/domain/3/platform/acpi_s3": "1",
	} {
		if v, err := store.Read(path); err != nil || v != want {
			t.Errorf("%s = %q, %v; want %q", path, v, err, want)
		}
	}
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Read("/local/domain/3"); err == nil {
		t.Error("the domain's nodes outlived it")
	}
	if st := d.Status(); st.State != Destroyed || st.DestroyedFrom != Running {
		t.Errorf("after destroy: %+v", st)
	}

	kvmtest.Require(t)
	bare, err := CreateHVM(HVMConfig{Kind: builder.KindHVM, Image: img, MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Destroy()
	if p, _ := bare.Xen.Param(hvm.ParamStoreEvtchn); p != 0 {
		t.Errorf("STORE_EVTCHN %d without a xenstored", p)
	}
}

// Claim 11 through the lifecycle: the guest enters S3 and the domain is
// held ("paused", InS3); unpause does not wake it (only the trigger
// does), a toolstack pause taken meanwhile still holds it after the
// trigger, and once unpaused the waking vector runs and powers off.
func TestHVMLifecycleS3(t *testing.T) {
	d, _ := startHVM(t, hvmtest.PVHImage(hvmtest.S3Guest(hvmtest.Wake, true), true))
	if err := d.S3Resume(context.Background()); !errors.Is(err, ErrWrongState) {
		t.Errorf("s3resume while running: %v", err)
	}
	waitHVM(t, d, "S3", func(Status) bool { return d.InS3() })
	if st := d.Status().State; st != Paused {
		t.Fatalf("in S3: %v, want paused", st)
	}
	if st, ok := d.Xen.CMOS(0x0f); !ok || st != 0xfe {
		t.Errorf("CMOS shutdown status %#x in S3, want 0xfe (S3)", st)
	}
	if err := d.Unpause(); !errors.Is(err, ErrWrongState) {
		t.Fatalf("unpause in S3: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.S3Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if d.InS3() || d.Status().State != Paused {
		t.Fatalf("after the trigger of a paused domain: %v, s3 %v", d.Status(), d.InS3())
	}
	v0 := d.m.VCPUs()[0]
	if r, err := v0.GetRegs(); err != nil || r.RIP != 0xfff0 {
		t.Fatalf("the paused domain ran: rip %#x %v", r.RIP, err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	st := waitHVM(t, d, "the end", func(st Status) bool { return st.State.Ended() })
	if st.State != Shutdown || st.Exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("ended %v %v, want a poweroff from the waking vector", st.State, st.Exit)
	}
	if st, _ := d.Xen.CMOS(0x0f); st != 0 {
		t.Errorf("CMOS shutdown status %#x after the firmware's S3 path, want it cleared", st)
	}
}

// Toolstack suspend of an HVM guest without PV drivers is libxl's remote
// suspend: the vCPU stops where it is, and resume continues it at that
// very instruction with its registers as they were.
func TestHVMRemoteSuspend(t *testing.T) {
	img, loop := spinGuest(false)
	d, _ := startHVM(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Resume(false); !errors.Is(err, ErrWrongState) {
		t.Errorf("resume while running: %v", err)
	}
	time.Sleep(10 * time.Millisecond) // let it count
	if err := d.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	st := d.Status()
	if st.State != Suspended || st.Exit.Reason != xenabi.ShutdownSuspend {
		t.Fatalf("after suspend: %v %v", st.State, st.Exit)
	}
	v0 := d.m.VCPUs()[0]
	r1, err := v0.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if r1.RIP != loop && r1.RIP != loop+1 {
		t.Fatalf("stopped at %#x, outside the loop at %#x", r1.RIP, loop)
	}
	time.Sleep(10 * time.Millisecond)
	if r, _ := v0.GetRegs(); *r != *r1 {
		t.Fatalf("the suspended guest ran: %+v then %+v", r1, r)
	}
	if err := d.Resume(true); err == nil {
		t.Error("resume --fast of a remote suspend succeeded")
	}
	if err := d.Suspend(ctx); !errors.Is(err, ErrWrongState) {
		t.Errorf("suspend while suspended: %v", err)
	}
	if err := d.Resume(false); err != nil {
		t.Fatal(err)
	}
	if st := d.Status().State; st != Running {
		t.Fatalf("resumed: %v", st)
	}
	time.Sleep(10 * time.Millisecond)
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	r2, err := v0.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if (r2.RIP != loop && r2.RIP != loop+1) || uint32(r2.RCX) == uint32(r1.RCX) {
		t.Fatalf("after resume: rip %#x ecx %#x (suspended at %#x with %#x): it did not go on where it stopped",
			r2.RIP, r2.RCX, r1.RIP, r1.RCX)
	}
}

// Negative control: a guest with PV drivers (CALLBACK_IRQ set) is not
// suspended behind its back; it is asked through control/shutdown, and
// one that never answers fails the suspend when the caller's context
// ends: the request is taken back and the guest runs on.
func TestHVMSuspendWithPVDriversUnanswered(t *testing.T) {
	img, loop := spinGuest(true)
	d, store := startHVM(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		if p, _ := d.Xen.Param(hvm.ParamCallbackIRQ); p != 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the guest did not set CALLBACK_IRQ")
		case <-time.After(time.Millisecond):
		}
	}
	short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	defer stop()
	if err := d.Suspend(short); err == nil || errors.Is(err, ErrWrongState) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("suspend of a guest with PV drivers that does not answer: %v", err)
	}
	if v, err := store.Read("/local/domain/3/control/shutdown"); err != nil || v != "" {
		t.Fatalf("control/shutdown after the unanswered suspend: %q %v", v, err)
	}
	if st := d.Status().State; st != Running {
		t.Fatalf("after the refused suspend: %v", st)
	}
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := d.m.VCPUs()[0].GetRegs(); r.RIP != loop && r.RIP != loop+1 {
		t.Fatalf("the guest is at %#x, not in its loop", r.RIP)
	}
}

// A guest in S3 that the toolstack suspends remotely (libxl does, since
// ACPI_S_STATE is not 0) stays held after the resume: the S3 reference
// is Xen's own, and only the trigger drops it.
func TestHVMSuspendInS3(t *testing.T) {
	d, _ := startHVM(t, hvmtest.PVHImage(hvmtest.S3Guest(hvmtest.Wake, true), true))
	waitHVM(t, d, "S3", func(Status) bool { return d.InS3() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(false); err != nil {
		t.Fatal(err)
	}
	if st := d.Status().State; st != Paused || !d.InS3() {
		t.Fatalf("resumed in S3: %v, s3 %v; want still held in S3", st, d.InS3())
	}
	if err := d.S3Resume(ctx); err != nil {
		t.Fatal(err)
	}
	st := waitHVM(t, d, "the end", func(st Status) bool { return st.State.Ended() })
	if st.State != Shutdown || st.Exit.Reason != xenabi.ShutdownPoweroff {
		t.Fatalf("ended %v %v", st.State, st.Exit)
	}
}

// xsGuest puts an XS_READ of "name" (relative: the guest's home) in its
// xenstore ring, sends on HVM_PARAM_STORE_EVTCHN's port as a guest reads
// it, stores the send's result at xsResult and spins.
func xsGuest() []byte {
	const (
		ring    = builder.StorePFN << 12
		reqProd = ring + 2052
		portArg = 0x103200
	)
	var c code32
	c.Imm(0xbc, testStack)         // mov $stack, %esp
	c.Imm(0xb9, hvm.HypercallMSR)  // mov $msr, %ecx
	c.Imm(0xb8, testPage)          // mov $page, %eax
	c.Emit(0x31, 0xd2, 0x0f, 0x30) // xor %edx, %edx; wrmsr
	msg := xenstore.Msg{Type: xenstore.XSRead, ReqID: 7, Payload: []byte("name\x00")}.Marshal()
	for i, b := range msg {
		c.StoreByte(uint32(ring+i), b)
	}
	c.StoreWord(reqProd, uint32(len(msg)))
	c.StoreWord(portArg, hvm.StorePort)
	c.Imm(0xbb, 4)                                    // mov $EVTCHNOP_send, %ebx
	c.Imm(0xb9, portArg)                              // mov $port, %ecx
	c.Call(testPage, xenabi.HypervisorEventChannelOp) //
	c.Imm(0xa3, xsResult)                             // mov %eax, result
	c.Emit(0xeb, 0xfe)                                // jmp .
	return c.B
}

const xsResult = 0x103204

// An HVM guest reaches xenstored through the ring and port its params
// name: its XS_READ of its own name is answered in the ring. Negative
// control: with no xenstored the send on that port is -EINVAL (no such
// port) and nothing answers.
func TestHVMXenstoreRing(t *testing.T) {
	d, _ := startHVM(t, pvhImage(xsGuest(), true))
	mem := d.m.Memory()
	page, err := mem.Page(builder.StorePFN << 12)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for binary.LittleEndian.Uint32(page[2060:]) == 0 { // rsp_prod
		if time.Now().After(deadline) {
			t.Fatal("no reply in the ring")
		}
		time.Sleep(time.Millisecond)
	}
	m, err := xenstore.ReadMsg(bytes.NewReader(page[1024:2048]))
	if err != nil || m.Type != xenstore.XSRead || m.ReqID != 7 || string(m.Payload) != "h" {
		t.Fatalf("reply %+v %v", m, err)
	}
	// xenstored signalled its reply: the xenstore port is pending, and
	// so is vCPU 0's upcall (no callback registered: none injected).
	for !d.Xen.UpcallPending(0) {
		if time.Now().After(deadline) {
			t.Fatal("xenstored's reply raised no event in the guest")
		}
		time.Sleep(time.Millisecond)
	}

	bare := ownHVM(t, HVMConfig{Kind: builder.KindHVM, Image: pvhImage(xsGuest(), true), MemSize: 4 << 20})
	res := make([]byte, 4)
	for deadline := time.Now().Add(time.Minute); ; {
		bare.m.Memory().Read(xsResult, res)
		if binary.LittleEndian.Uint32(res) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest never sent")
		}
		time.Sleep(time.Millisecond)
	}
	if got := int32(binary.LittleEndian.Uint32(res)); got != -xenabi.EINVAL {
		t.Fatalf("send with no xenstored: %d, want -EINVAL", got)
	}
}

// Bad input: a waking vector whose real-mode code triple faults (it loads
// an IDT of limit 0, sets CR0.PE and executes int3: #GP, #DF, shutdown;
// this host's real mode ignores the IVT's limit) ends the domain crashed
// with the fault reported; the VMM goes on.
func TestHVMRealModeTripleFault(t *testing.T) {
	d, _ := startHVM(t, hvmtest.PVHImage(hvmtest.S3Guest(hvmtest.Wake, false), true))
	waitHVM(t, d, "S3", func(Status) bool { return d.InS3() })
	const idtr = hvmtest.Wake + 0x100 // six zero bytes: limit 0, base 0
	code := []byte{
		0x2e, 0x0f, 0x01, 0x1e, 0x00, 0x01, // lidt %cs:0x100 (CS is Wake >> 4)
		0x0f, 0x20, 0xc0, // mov %cr0, %eax
		0x66, 0x83, 0xc8, 0x01, // or $1, %eax (PE)
		0x0f, 0x22, 0xc0, // mov %eax, %cr0
		0xcc, // int3: #GP past the limit, #DF, shutdown
		0xf4, // hlt (not reached)
	}
	if err := d.m.Memory().Write(hvmtest.Wake, code); err != nil {
		t.Fatal(err)
	}
	if err := d.m.Memory().Write(idtr, make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	if err := d.S3Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := waitHVM(t, d, "the crash", func(st Status) bool { return st.State.Ended() })
	// KVM cannot emulate the int3 here; the VMM's emulator (VCPU.Emulate)
	// finds the #GP it would raise cannot be delivered either, as Xen's
	// triple fault would, and says so.
	if st.State != Crashed || st.Exit.Crash == nil || !strings.Contains(st.Exit.Crash.Error(), "past the IDT limit") {
		t.Fatalf("ended %v %+v, want crashed on the IDT's limit", st.State, st.Exit)
	}
}
