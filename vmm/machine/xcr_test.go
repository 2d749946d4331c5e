package machine_test

import (
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// XCR0 round-trips through KVM_SET_XCRS and KVM_GET_XCRS; KVM refuses an
// XCR0 without x87 (the negative control) and keeps the old value.
func TestXCR0(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := m.VCPUs()[0]
	if err := v.SetXCR0(1); err != nil {
		t.Fatal(err)
	}
	if x, err := v.XCR0(); err != nil || x != 1 {
		t.Fatalf("XCR0 = %#x, %v; want 1", x, err)
	}
	if err := v.SetXCR0(2); err == nil {
		t.Error("KVM took an XCR0 without x87")
	}
	if x, err := v.XCR0(); err != nil || x != 1 {
		t.Errorf("XCR0 after a refused write = %#x, %v; want 1", x, err)
	}
}
