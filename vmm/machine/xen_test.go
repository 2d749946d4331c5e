package machine_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/xenresume/xenresume/vmm/machine"
)

// TrapMSRReads traps RDMSR only: the guest's read of 0x40000000 exits to
// the handler, its write does not (it reaches KVM, which on a host
// without Hyper-V or Xen MSRs raises #GP: with no IDT, a triple fault).
func TestTrapMSRReads(t *testing.T) {
	code := []byte{
		0xb9, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %ecx
		0x0f, 0x32, // rdmsr: trapped
		0xe7, 0x10, // out %eax, $0x10: what the handler read (0)
		0xb8, 0x00, 0x30, 0x10, 0x00, // mov $0x103000, %eax
		0x31, 0xd2, // xor %edx, %edx
		0x0f, 0x30, // wrmsr: KVM's
		0xe7, 0x11, // out %eax, $0x11: end
	}
	p, _ := runHVMProbeWith(t, code, func(m *machine.Machine, _ *machine.VCPU) error { return m.TrapMSRReads(0x40000000) })
	if len(p.msrs) != 1 || p.msrs[0] != "0x40000000=0x0" {
		t.Errorf("MSR exits %v, want the read alone", p.msrs)
	}
	if len(p.outs) != 1 || p.outs[0] != 0 {
		t.Errorf("outs %#x, want the read's 0", p.outs)
	}
}

// XenHypercallIntercept answers for the host, and EnableXenHypercallIntercept
// follows it: where KVM lacks the intercept (PVM, this project's CI host)
// enabling it fails with a clear error; where KVM has it, the guest's write
// of the hypercall MSR makes KVM fill the page with vmcall stubs, and a call
// through the page as well as a direct vmcall reach XenHypercall with the
// 32-bit ABI's arguments, and the result comes back in %eax.
func TestXenHypercallIntercept(t *testing.T) {
	code := []byte{
		0xb9, 0x00, 0x00, 0x00, 0x40, // mov $0x40000000, %ecx
		0xb8, 0x00, 0x30, 0x10, 0x00, // mov $0x103000, %eax
		0x31, 0xd2, // xor %edx, %edx
		0x0f, 0x30, // wrmsr: KVM writes its page at 0x103000
		0xbc, 0x00, 0x80, 0x10, 0x00, // mov $0x108000, %esp
		0xbb, 0x0a, 0x00, 0x00, 0x00, // mov $10, %ebx
		0xb9, 0x0b, 0x00, 0x00, 0x00, // mov $11, %ecx
		0xbe, 0x20, 0x32, 0x10, 0x00, // mov $0x103000+17*32, %esi
		0xff, 0xd6, // call *%esi: hypercall 17 through the page
		0xe7, 0x10, // out %eax, $0x10
		0xb8, 0x22, 0x00, 0x00, 0x00, // mov $34, %eax
		0x0f, 0x01, 0xc1, // vmcall: direct (KVM takes vmmcall alike)
		0xe7, 0x10, // out %eax, $0x10
		0xe7, 0x11, // out %eax, $0x11: end
	}
	var calls []machine.XenCall
	var offered bool
	p, err := runHVMProbeWith(t, code, func(m *machine.Machine, v *machine.VCPU) error {
		ok, features, err := m.XenHypercallIntercept()
		if err != nil {
			return err
		}
		offered = ok
		t.Logf("KVM_CAP_XEN_HVM = %#x: intercept offered %v", features, ok)
		enableErr := m.EnableXenHypercallIntercept(0x40000000)
		if !ok {
			if enableErr == nil {
				t.Fatal("EnableXenHypercallIntercept succeeded on a host without the intercept")
			}
			t.Logf("as it must here: %v", enableErr)
			return nil
		}
		if enableErr != nil {
			return enableErr
		}
		v.XenHypercall = func(v *machine.VCPU, c machine.XenCall) (uint64, error) {
			calls = append(calls, c)
			return 0x5a000000 + c.Input, nil
		}
		return nil
	})
	if !offered {
		return // the guest's wrmsr raised #GP: nothing of the intercept ran
	}
	if err != nil {
		t.Fatalf("the guest ended with %v", err)
	}
	page := make([]byte, 64)
	if err := p.m.Memory().Read(0x103000, page); err != nil {
		t.Fatal(err)
	}
	if page[0] != 0xb8 || !bytes.Equal(page[5:7], []byte{0x0f, 0x01}) || page[8] != 0xc3 || binary.LittleEndian.Uint32(page[33:]) != 1 {
		t.Errorf("KVM's hypercall page starts % x", page)
	}
	if len(p.outs) != 2 || p.outs[0] != 0x5a000011 || p.outs[1] != 0x5a000022 {
		t.Errorf("results %#x, want 0x5a000011 and 0x5a000022", p.outs)
	}
	if len(calls) != 2 || calls[0].LongMode || calls[0].CPL != 0 || calls[0].Input != 17 ||
		calls[0].Params[0] != 10 || calls[0].Params[1] != 11 || calls[1].Input != 34 {
		t.Errorf("calls %+v", calls)
	}
}
