package machine_test

import (
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// The FPU state round-trips through KVM as an FXSAVE image: what
// SetFXSave loads, FXSave reads back (control and status words, the tag
// word, an x87 register, an XMM register, MXCSR).
func TestFXSave(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := m.VCPUs()[0]
	fx, err := v.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	if fx[0] != 0x7f || fx[1] != 0x03 || fx[24] != 0x80 || fx[25] != 0x1f {
		t.Errorf("a new vCPU's FCW %#x%02x, MXCSR %#x%02x; want 0x37f and 0x1f80", fx[1], fx[0], fx[25], fx[24])
	}
	fx[0], fx[1] = 0x7f, 0x02 // FCW 0x27f
	fx[4] = 0x01              // ST0 valid
	for i := range 10 {
		fx[32+i] = byte(0x10 + i)
	}
	for i := range 16 {
		fx[160+16*3+i] = byte(0xa0 + i) // XMM3
	}
	fx[24], fx[25] = 0xa0, 0x1f // MXCSR 0x1fa0
	if err := v.SetFXSave(&fx); err != nil {
		t.Fatal(err)
	}
	got, err := v.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 1, 4, 24, 25, 32, 41, 160 + 48, 160 + 63} {
		if got[off] != fx[off] {
			t.Errorf("byte %d read back %#x, want %#x", off, got[off], fx[off])
		}
	}
}
