package toolstack

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/stream"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// A vCPU's x87 and SSE state goes into X86_PV_VCPU_BASIC's fpu_ctxt with
// VGCF_i387_valid (arch_get_info_guest) and comes back in the new domain
// (arch_set_info_guest): control word, MXCSR, an x87 register and an XMM
// register, set while the guest was suspended.
func TestSaveRestoreFPU(t *testing.T) {
	ts := New(nil)
	d, con := create(t, ts, "test=suspend")
	ctx := t.Context()
	d.Unpause()
	waitFor(t, con, "suspend: ready cycle=0")
	if err := d.Suspend(ctx, DefaultSuspendTimeouts); err != nil {
		t.Fatal(err)
	}
	v0 := d.Machine().VCPUs()[0]
	fx, err := v0.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	fx[0], fx[1] = 0x7f, 0x02 // FCW 0x27f
	fx[24], fx[25] = 0xa0, 0x1f
	for i := range 10 {
		fx[32+i] = byte(0x30 + i) // ST0
	}
	for i := range 16 {
		fx[160+16*5+i] = byte(0xc0 + i) // XMM5
	}
	if err := v0.SetFXSave(fx); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fpu.save")
	if err := d.Save(ctx, path, false); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := stream.ReadSave(f, nil)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	saved := s.VCPU(0).Context
	if saved.Flags&xenabi.VGCFI387Valid == 0 {
		t.Errorf("flags %#x: no VGCF_i387_valid", saved.Flags)
	}
	want := func(b []byte) {
		t.Helper()
		for _, off := range []int{0, 1, 24, 25, 32, 41, 160 + 80, 160 + 95} {
			if b[off] != fx[off] {
				t.Errorf("byte %d of the FXSAVE image: %#x, want %#x", off, b[off], fx[off])
			}
		}
	}
	want(xenabi.Bytes(&saved.Fpu_ctxt))
	nd, err := ts.Restore(ctx, path, DomainConfig{Console: con})
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Destroy()
	got, err := nd.Machine().VCPUs()[0].FXSave()
	if err != nil {
		t.Fatal(err)
	}
	want(got[:])
}

// Negative control: a context without VGCF_i387_valid leaves a new vCPU's
// FPU in its initial state, whatever fpu_ctxt holds (as Xen's
// arch_set_info_guest ignores it).
func TestLoadFPUNotValid(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 2 << 20, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	v := m.VCPUs()[0]
	before, err := v.FXSave()
	if err != nil {
		t.Fatal(err)
	}
	var ctx xenabi.VCPUGuestContext
	copy(xenabi.Bytes(&ctx.Fpu_ctxt), bytes.Repeat([]byte{0x5a}, 512))
	if err := loadFPU(v, &ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := v.FXSave()
	if after != before {
		t.Errorf("a context without VGCF_i387_valid changed the FPU state")
	}
	ctx.Flags = xenabi.VGCFI387Valid
	copy(xenabi.Bytes(&ctx.Fpu_ctxt), before[:])
	xenabi.Bytes(&ctx.Fpu_ctxt)[0] = 0x7e
	if err := loadFPU(v, &ctx); err != nil {
		t.Fatal(err)
	}
	if after, _ := v.FXSave(); after[0] != 0x7e {
		t.Errorf("with VGCF_i387_valid: FCW low byte %#x, want 0x7e", after[0])
	}
}
