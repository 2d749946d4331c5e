package kvmext_test

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

func TestRunLayout(t *testing.T) {
	// struct kvm_run up to the sync area is 304 bytes; the area is 2048.
	if got := unsafe.Sizeof(kvmext.Run{}); got != 304+2048 {
		t.Errorf("sizeof(kvm_run) = %d", got)
	}
	var r kvmext.Run
	if off := unsafe.Offsetof(r.ValidRegs); off != 288 {
		t.Errorf("kvm_valid_regs at %d, want 288", off)
	}
	if got := unsafe.Sizeof(kvmext.SyncRegsArea{}); got != 144+312+64 {
		t.Errorf("sizeof(kvm_sync_regs) = %d", got)
	}
}

// realMode makes a one-vCPU machine that runs code at 0x1000 in real mode,
// and returns the vCPU fd and a view of its kvm_run.
func realMode(t *testing.T, code []byte) (*machine.Machine, uintptr, *kvmext.Run) {
	t.Helper()
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Memory().Write(0x1000, code); err != nil {
		t.Fatal(err)
	}
	v := m.VCPUs()[0]
	s, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector = 0, 0
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	r, err := v.GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	r.RIP, r.RFLAGS = 0x1000, 2
	if err := v.SetRegs(r); err != nil {
		t.Fatal(err)
	}
	run, mem, err := kvmext.MapRun(v.Fd(), 4096)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return m, v.Fd(), run
}

func runTo(t *testing.T, fd uintptr, run *kvmext.Run, reason uint32) {
	t.Helper()
	for {
		err := kvmext.RunVCPU(fd)
		if errors.Is(err, kvmext.ErrInterrupted) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if run.ExitReason != reason {
			t.Fatalf("exit %s, want %s", kvmext.ExitName(run.ExitReason), kvmext.ExitName(reason))
		}
		return
	}
}

// Registers arrive in the sync area at every exit and go back in when
// marked dirty: no GET_REGS or SET_REGS.
func TestSyncRegs(t *testing.T) {
	code := []byte{
		0xb8, 0x34, 0x12, // mov $0x1234, %ax
		0xe6, 0x10, //       out %al, $0x10
		0x89, 0xd8, //       mov %bx, %ax
		0xe6, 0x10, //       out %al, $0x10
		0xf4, //             hlt
	}
	_, fd, run := realMode(t, code)
	if run.ValidRegs&kvmext.SyncRegs == 0 {
		t.Fatal("machine did not enable synced registers")
	}
	runTo(t, fd, run, kvmext.ExitIO)
	if io := run.IO(); io.Port != 0x10 || io.Direction != kvmext.IODirOut || io.Size != 1 {
		t.Fatalf("io exit %+v", *io)
	}
	if got := run.Sync.Regs.RAX & 0xffff; got != 0x1234 {
		t.Fatalf("synced rax %#x", got)
	}
	run.Sync.Regs.RBX = 0x5678
	run.DirtyRegs = kvmext.SyncRegs
	runTo(t, fd, run, kvmext.ExitIO)
	if got := run.Sync.Regs.RAX & 0xffff; got != 0x5678 {
		t.Fatalf("guest saw rbx %#x, want the dirty value 0x5678", got)
	}
	runTo(t, fd, run, kvmext.ExitHLT)
}

// MSRs the filter denies exit to user space, which supplies the value or
// accepts the write.
func TestUserSpaceMSRFilter(t *testing.T) {
	code := []byte{
		0x66, 0xb9, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %ecx
		0x66, 0xb8, 0xcd, 0xab, 0x00, 0x00, // mov $0xabcd, %eax
		0x66, 0x31, 0xd2, //                   xor %edx, %edx
		0x0f, 0x30, //                         wrmsr
		0x0f, 0x32, //                         rdmsr
		0xe6, 0x10, //                         out %al, $0x10
		0xf4,
	}
	m, fd, run := realMode(t, code)
	if n, err := kvmext.CheckExtension(m.Fd(), kvmext.CapX86MSRFilter); err != nil || n == 0 {
		t.Skipf("no KVM_CAP_X86_MSR_FILTER: %v", err)
	}
	if err := kvmext.EnableUserSpaceMSR(m.Fd(), kvmext.MSRExitReasonFilter); err != nil {
		t.Fatal(err)
	}
	deny := []kvmext.MSRFilterRange{{Flags: kvmext.MSRFilterRead | kvmext.MSRFilterWrite, Base: 0x40000000, Bitmap: []byte{0}}}
	if err := kvmext.SetMSRFilter(m.Fd(), false, deny); err != nil {
		t.Fatal(err)
	}
	runTo(t, fd, run, kvmext.ExitX86WRMSR)
	if e := run.MSR(); e.Index != 0x40000000 || e.Data != 0xabcd || e.Reason != kvmext.MSRExitReasonFilter {
		t.Fatalf("wrmsr exit %+v", *e)
	}
	runTo(t, fd, run, kvmext.ExitX86RDMSR)
	run.MSR().Data = 0x1122
	runTo(t, fd, run, kvmext.ExitIO)
	if got := run.Sync.Regs.RAX & 0xffffffff; got != 0x1122 {
		t.Fatalf("rdmsr gave %#x, want 0x1122", got)
	}
	if err := kvmext.SetMSRFilter(m.Fd(), false, []kvmext.MSRFilterRange{{Base: 1}}); err == nil {
		t.Error("an empty bitmap was accepted")
	}
}

func TestSingleStep(t *testing.T) {
	_, fd, run := realMode(t, []byte{0x90, 0x90, 0x90, 0xf4})
	if err := kvmext.SetGuestDebug(fd, kvmext.GuestDbgEnable|kvmext.GuestDbgSingleStep, [8]uint64{}); err != nil {
		t.Fatal(err)
	}
	for want := uint64(0x1001); want <= 0x1003; want++ {
		runTo(t, fd, run, kvmext.ExitDebug)
		if pc := run.Debug().PC; pc != want {
			t.Fatalf("step stopped at %#x, want %#x", pc, want)
		}
	}
	if err := kvmext.SetGuestDebug(fd, 0, [8]uint64{}); err != nil {
		t.Fatal(err)
	}
	runTo(t, fd, run, kvmext.ExitHLT)
}

// Kick makes a vCPU spinning in the guest leave KVM_RUN.
func TestKick(t *testing.T) {
	_, fd, run := realMode(t, []byte{0xeb, 0xfe}) // jmp .
	tid := make(chan int)
	res := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		res <- kvmext.RunVCPU(fd)
	}()
	id := <-tid
	time.Sleep(20 * time.Millisecond) // let it enter the guest
	if err := kvmext.Kick(run, id); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, kvmext.ErrInterrupted) {
			t.Fatalf("KVM_RUN returned %v, want ErrInterrupted", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("kick did not interrupt KVM_RUN")
	}
	// immediate_exit stays set: the next KVM_RUN returns at once.
	if err := kvmext.RunVCPU(fd); !errors.Is(err, kvmext.ErrInterrupted) {
		t.Fatalf("second KVM_RUN: %v", err)
	}
	run.ImmediateExit = 0
}

func TestEnableCapErrors(t *testing.T) {
	m, _, _ := realMode(t, []byte{0xf4})
	if err := kvmext.EnableCap(m.Fd(), 0xfffff); !errors.Is(err, unix.EINVAL) {
		t.Errorf("bogus capability: %v", err)
	}
	if err := kvmext.EnableCap(m.Fd(), 1, 1, 2, 3, 4, 5); err == nil {
		t.Error("five args accepted")
	}
	if n, err := kvmext.CheckExtension(m.Fd(), kvmext.CapSyncRegs); err != nil || n == 0 {
		t.Errorf("KVM_CAP_SYNC_REGS: %d %v", n, err)
	}
	if kvmext.ExitName(kvmext.ExitShutdown) != "SHUTDOWN" || kvmext.ExitName(999) != "exit(999)" {
		t.Error("ExitName")
	}
}

// KVM_INTERRUPT delivers through the real-mode IVT: the handler for vector
// 0x20 reports which vector it is.
func TestInterrupt(t *testing.T) {
	code := []byte{0xfb, 0xeb, 0xfe} // sti; jmp .
	m, fd, run := realMode(t, code)
	handler := []byte{0xb0, 0x20, 0xe6, 0x11, 0xf4} // mov $0x20,%al; out %al,$0x11; hlt
	m.Memory().Write(0x2000, handler)
	m.Memory().Write(0x20*4, []byte{0x00, 0x20, 0x00, 0x00}) // IVT[0x20] = 0000:2000
	run.RequestInterruptWindow = 1
	runTo(t, fd, run, kvmext.ExitIRQWindowOpen)
	if run.ReadyForInterruptInjection == 0 || run.IFFlag == 0 {
		t.Fatalf("window open but not ready: ready=%d if=%d", run.ReadyForInterruptInjection, run.IFFlag)
	}
	run.RequestInterruptWindow = 0
	if err := kvmext.Interrupt(fd, 0x20); err != nil {
		t.Fatal(err)
	}
	runTo(t, fd, run, kvmext.ExitIO)
	if io := run.IO(); io.Port != 0x11 || run.Sync.Regs.RAX&0xff != 0x20 {
		t.Fatalf("handler reported port %#x al %#x", io.Port, run.Sync.Regs.RAX&0xff)
	}
}

// GetMSR and SetMSR move one MSR and report an MSR KVM refuses, which
// gokvm's GetMSRs would read as 0.
func TestMSR(t *testing.T) {
	_, fd, _ := realMode(t, []byte{0xf4})
	const kernelGSBase, value = 0xc0000102, uint64(0xffffffff81234560)
	if err := kvmext.SetMSR(fd, kernelGSBase, value); err != nil {
		t.Fatal(err)
	}
	if got, err := kvmext.GetMSR(fd, kernelGSBase); err != nil || got != value {
		t.Fatalf("MSR_KERNEL_GS_BASE read back %#x, %v after writing %#x", got, err, value)
	}
	// The TSC counts; a write is accepted, though some hosts (PVM)
	// ignore it.
	const tsc = 0x10
	t0, err := kvmext.GetMSR(fd, tsc)
	if err != nil {
		t.Fatal(err)
	}
	if err := kvmext.SetMSR(fd, tsc, t0+1<<44); err != nil {
		t.Fatal(err)
	}
	if t1, err := kvmext.GetMSR(fd, tsc); err != nil || t1 < t0 {
		t.Fatalf("TSC %#x, then %#x (%v)", t0, t1, err)
	} else if t1 < t0+1<<44 {
		t.Logf("this host ignores writes to the guest TSC")
	}
	if b, _ := os.ReadFile("/sys/module/kvm/parameters/ignore_msrs"); strings.TrimSpace(string(b)) == "Y" {
		t.Skip("kvm.ignore_msrs=Y: KVM accepts unknown MSRs")
	}
	const bogus = 0x2badf00d // no CPU or hypervisor defines it
	if v, err := kvmext.GetMSR(fd, bogus); err == nil {
		t.Errorf("unknown MSR %#x read as %#x", bogus, v)
	}
	if err := kvmext.SetMSR(fd, bogus, 1); err == nil {
		t.Errorf("unknown MSR %#x written", bogus)
	}
}
