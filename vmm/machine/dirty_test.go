package machine_test

import (
	"context"
	"slices"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/machine"
)

// dirtyWriter, in real mode at 0x1000: writes a byte to 0x3000 and 0x5000,
// then through the alias at 0x80000 (to 0x82000, RAM page 0x12), reports on
// port 0x10 and spins without writing anything.
var dirtyWriter = []byte{
	0xc6, 0x06, 0x00, 0x30, 0x55, // movb $0x55, 0x3000
	0xc6, 0x06, 0x00, 0x50, 0xaa, // movb $0xaa, 0x5000
	0xb8, 0x00, 0x80, // mov $0x8000, %ax
	0x8e, 0xd8, // mov %ax, %ds
	0xc6, 0x06, 0x00, 0x20, 0x77, // movb $0x77, 0x2000 (ds:0x2000 = 0x82000)
	0xe6, 0x10, // out %al, $0x10
	0xeb, 0xfe, // jmp .
}

func dirtyPages(b machine.DirtyBitmap) []uint64 {
	var p []uint64
	b.Pages(func(i uint64) bool { p = append(p, i); return true })
	return p
}

func TestDirtyLog(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 0x80000, NumVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// 64 KiB at 0x80000 are RAM's 0x10000-0x1ffff again.
	if err := m.AddAlias("alias", 0x80000, "ram", 0x10000, 0x10000); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CollectDirty("ram"); err == nil {
		t.Fatal("CollectDirty with logging off succeeded")
	}
	if err := m.Memory().Write(0x1000, dirtyWriter); err != nil {
		t.Fatal(err)
	}
	v := m.VCPUs()[0]
	s, err := v.GetSregs()
	if err != nil {
		t.Fatal(err)
	}
	s.CS.Base, s.CS.Selector, s.DS.Base, s.DS.Selector = 0, 0, 0, 0
	if err := v.SetSregs(s); err != nil {
		t.Fatal(err)
	}
	if err := v.SetRegs(&kvm.Regs{RIP: 0x1000, RFLAGS: 2}); err != nil {
		t.Fatal(err)
	}
	reported := make(chan struct{}, 1)
	m.Bus().Register(0x10, 1, machine.PIOFunc(func(*machine.VCPU, uint16, bool, []byte) error {
		select {
		case reported <- struct{}{}:
		default:
		}
		return nil
	}))
	if err := m.SetDirtyLog(true); err != nil {
		t.Fatal(err)
	}
	// Before the guest runs, nothing is dirty, and the VMM's own writes
	// are not logged.
	if err := m.Memory().Write(0x7000, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if b, err := m.CollectDirty("ram"); err != nil || b.Count() != 0 {
		t.Fatalf("before the guest ran: %v dirty, %v", dirtyPages(b), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	m.Start(ctx, nil)
	select {
	case <-reported:
	case <-ctx.Done():
		t.Fatal("the guest never reported")
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := m.CollectDirty("ram")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := dirtyPages(b), []uint64{3, 5, 0x12}; !slices.Equal(got, want) {
		t.Fatalf("dirty pages %#x, want %#x", got, want)
	}
	// Collecting cleared them; the spinning guest writes nothing more.
	m.Unpause()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := m.CollectDirty("ram"); err != nil || b.Count() != 0 {
		t.Fatalf("after a collect: %#x dirty, %v", dirtyPages(b), err)
	}
	if _, err := m.CollectDirty("alias"); err == nil {
		t.Fatal("CollectDirty of an alias succeeded; it has no pages of its own")
	}
	if _, err := m.CollectDirty("nosuch"); err == nil {
		t.Fatal("CollectDirty of no region succeeded")
	}
	if err := m.SetDirtyLog(false); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CollectDirty("ram"); err == nil {
		t.Fatal("CollectDirty after logging was turned off succeeded")
	}
}

func TestDirtyBitmap(t *testing.T) {
	b := machine.NewDirtyBitmap(130)
	for _, i := range []uint64{0, 63, 64, 129} {
		b.Set(i)
	}
	if got := dirtyPages(b); !slices.Equal(got, []uint64{0, 63, 64, 129}) || b.Count() != 4 {
		t.Fatalf("pages %v count %d", got, b.Count())
	}
	if b.Test(1) || !b.Test(63) || b.Test(1000) {
		t.Fatal("Test is wrong")
	}
}
