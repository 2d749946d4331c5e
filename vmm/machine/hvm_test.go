package machine_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/kvmext"
	"github.com/xenresume/xenresume/vmm/machine"
)

// hvmProbe runs code in 32-bit flat protected mode at 1 MiB, with Xen's
// leaf at 0x40000000 and MSR 0x40000000 trapped; every `out %eax, $0x10`
// is recorded, and `out %eax, $0x11` ends the run.
type hvmProbe struct {
	m    *machine.Machine
	mu   sync.Mutex
	outs []uint32
	msrs []string
	mmio []uint64
}

func runHVMProbe(t *testing.T, code []byte, trap bool) (*hvmProbe, error) {
	t.Helper()
	return runHVMProbeWith(t, code, func(m *machine.Machine, v *machine.VCPU) error {
		if trap {
			return m.TrapMSRs(0x40000000)
		}
		return nil
	})
}

// runHVMProbeWith is runHVMProbe with setup, instead of the MSR trap, run
// on the machine and its vCPU before it starts.
func runHVMProbeWith(t *testing.T, code []byte, setup func(*machine.Machine, *machine.VCPU) error) (*hvmProbe, error) {
	t.Helper()
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1, SyncSregs: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Memory().Write(0x100000, code); err != nil {
		t.Fatal(err)
	}
	v := m.VCPUs()[0]
	if err := setup(m, v); err != nil {
		t.Fatal(err)
	}
	if err := v.SetHypervisorLeaves(0x40000000, 0x4fffffff, []machine.CPUIDLeaf{
		{Leaf: 0x40000000, EAX: 0x40000005, EBX: 0x566e6558, ECX: 0x65584d4d, EDX: 0x4d4d566e},
	}); err != nil {
		t.Fatal(err)
	}
	s, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	machine.FlatProtectedMode32(s)
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x100000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	p := &hvmProbe{m: m}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	m.Bus().Register(0x10, 2, machine.PIOFunc(func(v *machine.VCPU, port uint16, write bool, data []byte) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if port == 0x11 {
			cancel()
			return nil
		}
		if len(data) == 4 {
			p.outs = append(p.outs, binary.LittleEndian.Uint32(data))
		}
		return nil
	}))
	v.MSR = func(v *machine.VCPU, e *kvmext.MSRExit) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.msrs = append(p.msrs, fmt.Sprintf("%#x=%#x", e.Index, e.Data))
		if e.Index != 0x40000000 {
			e.Error = 1
		}
		return nil
	}
	v.MMIO = func(v *machine.VCPU, gpa uint64, write bool, data []byte) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.mmio = append(p.mmio, gpa)
		if !write {
			for i := range data {
				data[i] = 0xff
			}
		}
		return nil
	}
	ended := make(chan error, 1)
	m.Start(ctx, func(_ *machine.VCPU, err error) { ended <- err })
	err = <-ended
	return p, err
}

func TestHVMFlatProtectedMode(t *testing.T) {
	code := []byte{
		0xb8, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %eax
		0x0f, 0xa2, // cpuid
		0x89, 0xd8, // mov %ebx, %eax
		0xe7, 0x10, // out %eax, $0x10: "XenV"
		0xb9, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %ecx
		0xb8, 0x00, 0x30, 0x10, 0x00, // mov $0x103000, %eax
		0x31, 0xd2, // xor %edx, %edx
		0x0f, 0x30, // wrmsr
		0xa1, 0x10, 0x00, 0xc0, 0xfe, // mov 0xfec00010, %eax
		0xe7, 0x10, // out %eax, $0x10: all-ones
		0x8c, 0xc8, // mov %cs, %eax
		0xe7, 0x10, // out %eax, $0x10: 0
		0xe7, 0x11, // out %eax, $0x11: end
	}
	p, err := runHVMProbe(t, code, true)
	if err != nil {
		t.Fatalf("the guest ended with %v", err)
	}
	want := []uint32{0x566e6558, 0xffffffff, 0}
	if len(p.outs) != len(want) {
		t.Fatalf("outs %#x, want %#x", p.outs, want)
	}
	for i := range want {
		if p.outs[i] != want[i] {
			t.Errorf("out %d = %#x, want %#x", i, p.outs[i], want[i])
		}
	}
	if len(p.msrs) != 1 || p.msrs[0] != "0x40000000=0x103000" || len(p.mmio) != 1 || p.mmio[0] != 0xfec00010 {
		t.Errorf("msr exits %v, mmio %#x: want one each, at 0xfec00010", p.msrs, p.mmio)
	}
}

// TestHVMUntrappedMSR is TrapMSRs's negative control: without the filter
// the write never reaches the VMM's handler.
func TestHVMUntrappedMSR(t *testing.T) {
	code := []byte{
		0xb9, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %ecx
		0xb8, 0x00, 0x30, 0x10, 0x00, // mov $0x103000, %eax
		0x31, 0xd2, // xor %edx, %edx
		0x0f, 0x30, // wrmsr
		0xe7, 0x11, // out %eax, $0x11: end
	}
	p, _ := runHVMProbe(t, code, false) // KVM takes it, or #GP with no IDT: a triple fault
	if len(p.msrs) != 0 {
		t.Fatalf("MSR exits %v without TrapMSRs", p.msrs)
	}
}

func TestTrapMSRsBadRange(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 1 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, msrs := range [][]uint32{nil, {0x40000000, 0x40001000}} {
		if err := m.TrapMSRs(msrs...); err == nil {
			t.Errorf("TrapMSRs(%#x) succeeded", msrs)
		}
	}
}

// FXSave and SetFXSave carry the x87/SSE state an HVM save record holds:
// what is set reads back (MXCSR, an XMM register, the control word), and
// an MXCSR with reserved bits (FXRSTOR would fault) is refused with the
// state left as it was. MSRValue reads what SetMSR wrote, and an MSR KVM
// does not have is an error.
func TestFXSaveAndMSRValue(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 1 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := m.VCPUs()[0]
	fx, err := v.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	fx[0], fx[1] = 0x7f, 0x02                      // FCW 0x027f
	binary.LittleEndian.PutUint32(fx[24:], 0x1fa0) // MXCSR
	for i := range 16 {
		fx[160+i] = byte(0xa0 + i) // XMM0
	}
	if err := v.SetFXSave(fx); err != nil {
		t.Fatal(err)
	}
	got, err := v.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != 0x7f || got[1] != 0x02 || binary.LittleEndian.Uint32(got[24:]) != 0x1fa0 || got[160] != 0xa0 || got[175] != 0xaf {
		t.Fatalf("read back FCW %#x MXCSR %#x XMM0 % x", binary.LittleEndian.Uint16(got[:]), binary.LittleEndian.Uint32(got[24:]), got[160:176])
	}
	bad := got
	binary.LittleEndian.PutUint32(bad[24:], 0x10000)
	if err := v.SetFXSave(bad); err == nil {
		t.Fatal("an MXCSR with reserved bits was taken")
	}
	if again, _ := v.FXSave(); binary.LittleEndian.Uint32(again[24:]) != 0x1fa0 {
		t.Fatalf("the refused load changed MXCSR to %#x", binary.LittleEndian.Uint32(again[24:]))
	}
	const lstar = 0xc0000082
	if err := v.SetMSR(lstar, 0xffffffff81000000); err != nil {
		t.Fatal(err)
	}
	if val, err := v.MSRValue(lstar); err != nil || val != 0xffffffff81000000 {
		t.Fatalf("LSTAR %#x %v", val, err)
	}
	if _, err := v.MSRValue(0x12345678); err == nil {
		t.Fatal("MSRValue of an MSR KVM does not have succeeded")
	}
}
