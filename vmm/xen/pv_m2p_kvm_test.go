package xen_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// m2pCode, at benchBase, reads the M2P entry of a machine frame with its
// own load from the read-only M2P at 0xffff800000000000 (slot 256), as a
// PV Linux's mfn_to_pfn does, and shuts down: poweroff if the entry is
// the expected value, crash otherwise. Its data at 0x102100: the MFN, the
// expected entry, and, when the third word is not 0, a value it first
// writes there with mmu_update(MMU_MACHPHYS_UPDATE) (a failed call
// crashes). It has no trap table: a fault crashes the domain.
//
//	movabs $0x102100,%rbx; cmpq $0,16(%rbx); je 1f
//	mov (%rbx),%rax; shl $12,%rax; or $1,%rax      (MMU_MACHPHYS_UPDATE)
//	movabs $0x102300,%rdi; mov %rax,(%rdi); mov 24(%rbx),%rax; mov %rax,8(%rdi)
//	mov $1,%esi; xor %edx,%edx; mov $0x7ff0,%r10d  (DOMID_SELF)
//	movabs $0x101020,%rax; call *%rax; test %rax,%rax; jne 3f   (mmu_update)
//	1: mov (%rbx),%rax; movabs $0xffff800000000000,%rcx; mov (%rcx,%rax,8),%rdx
//	cmp 8(%rbx),%rdx; jne 3f; movabs $0x102200,%rsi; jmp 4f
//	3: movabs $0x102204,%rsi
//	4: mov $2,%edi; movabs $0x1013a0,%rax; call *%rax   (SCHEDOP_shutdown)
//	5: jmp 5b
//
// Assembled with GNU as.
var m2pCode = []byte{
	0x48, 0xbb, 0x00, 0x21, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x48, 0x83,
	0x7b, 0x10, 0x00, 0x74, 0x3e, 0x48, 0x8b, 0x03, 0x48, 0xc1, 0xe0, 0x0c,
	0x48, 0x83, 0xc8, 0x01, 0x48, 0xbf, 0x00, 0x23, 0x10, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x48, 0x89, 0x07, 0x48, 0x8b, 0x43, 0x18, 0x48, 0x89, 0x47,
	0x08, 0xbe, 0x01, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x41, 0xba, 0xf0, 0x7f,
	0x00, 0x00, 0x48, 0xb8, 0x20, 0x10, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xff, 0xd0, 0x48, 0x85, 0xc0, 0x75, 0x23, 0x48, 0x8b, 0x03, 0x48, 0xb9,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0xff, 0xff, 0x48, 0x8b, 0x14, 0xc1,
	0x48, 0x3b, 0x53, 0x08, 0x75, 0x0c, 0x48, 0xbe, 0x00, 0x22, 0x10, 0x00,
	0x00, 0x00, 0x00, 0x00, 0xeb, 0x0a, 0x48, 0xbe, 0x04, 0x22, 0x10, 0x00,
	0x00, 0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0xb8, 0xa0,
	0x13, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xd0, 0xeb, 0xfe,
}

// m2pMagic marks the data word the test overwrites once the domain (and
// so its machine frames) exists.
const m2pMagic = 0x6d32702d74657374

// m2pDomain creates (paused) a domain of memSize bytes running m2pCode.
func m2pDomain(t *testing.T, memSize uint64) *toolstack.Domain {
	t.Helper()
	img := tinyKernel(benchBase, func(load []byte) {
		copy(load, m2pCode)
		binary.LittleEndian.PutUint64(load[0x2100:], m2pMagic)
		binary.LittleEndian.PutUint32(load[0x2204:], xenabi.ShutdownCrash)
	})
	d, err := toolstack.New(nil).Create(toolstack.DomainConfig{Image: img, MemSize: memSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	return d
}

// m2pRun has domain d (from m2pDomain) look up mfn, first writing update
// there when it is not nil, and reports whether it read want.
func m2pRun(t *testing.T, d *toolstack.Domain, mfn, want uint64, update *uint64) bool {
	t.Helper()
	mem := d.Machine().Memory()
	const data = benchBase + 0x2100 // the kernel's PFNs are its addresses
	got := make([]byte, 8)
	if err := mem.Read(data, got); err != nil || binary.LittleEndian.Uint64(got) != m2pMagic {
		t.Fatalf("the kernel's data is not at guest-physical %#x (%x, %v)", data, got, err)
	}
	var words [32]byte
	binary.LittleEndian.PutUint64(words[0:], mfn)
	binary.LittleEndian.PutUint64(words[8:], want)
	if update != nil {
		binary.LittleEndian.PutUint64(words[16:], 1)
		binary.LittleEndian.PutUint64(words[24:], *update)
	}
	if err := mem.Write(data, words[:]); err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := d.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.State != xen.Shutdown || (e.Reason != xenabi.ShutdownPoweroff && e.Reason != xenabi.ShutdownCrash) {
		report := ""
		if e.Crash != nil {
			report = e.Crash.Report()
		}
		t.Fatalf("ended %v (reason %d)\n%s", e, e.Reason, report)
	}
	return e.Reason == xenabi.ShutdownPoweroff
}

// The guest reads the M2P natively, so what NewDomain gives every domain
// (a copy-on-write mapping of one shared copy, not entries written per
// domain) must read as Xen's M2P: each RAM frame's PFN, all ones past
// the domain's last frame and outside it (TestM2PSharedTail has a
// domain whose last page of entries is half used). A guest's MMU_MACHPHYS_UPDATE
// changes its own M2P only: a domain alive beside it still reads the
// original entry. Negative control: a wrong expected value is caught.
func TestM2PGuestReads(t *testing.T) {
	kvmtest.Require(t)
	const memSize = 32 << 20
	const nr = memSize >> 12
	const invalid = ^uint64(0)
	for _, tc := range []struct {
		name string
		pfn  int64 // the frame looked up, as an offset from the domain's first MFN
		want uint64
		ok   bool
	}{
		{"first frame", 0, 0, true},
		{"a frame on a later page", 5000, 5000, true},
		{"last frame", nr - 1, nr - 1, true},
		{"past the last frame", nr, invalid, true},
		{"past the last frame, further", nr + 600, invalid, true},
		{"below the domain", -1, invalid, true},
		{"negative control: a wrong value expected", 7, 8, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := m2pDomain(t, memSize)
			mfn := uint64(int64(d.Xen.Frames().Base) + tc.pfn)
			if got := m2pRun(t, d, mfn, tc.want, nil); got != tc.ok {
				t.Errorf("M2P[%#x] == %#x: the guest says %v, want %v", mfn, tc.want, got, tc.ok)
			}
		})
	}
	t.Run("update is private", func(t *testing.T) {
		a, b := m2pDomain(t, memSize), m2pDomain(t, memSize)
		const pfn, val = 100, 0x12345
		v := uint64(val)
		if !m2pRun(t, a, a.Xen.Frames().Base+pfn, val, &v) {
			t.Fatal("the guest did not read back its MMU_MACHPHYS_UPDATE")
		}
		if !m2pRun(t, b, b.Xen.Frames().Base+pfn, pfn, nil) {
			t.Fatal("another domain's MMU_MACHPHYS_UPDATE changed this domain's M2P")
		}
		c := m2pDomain(t, memSize) // created after the update
		if !m2pRun(t, c, c.Xen.Frames().Base+pfn, pfn, nil) {
			t.Fatal("a domain created after another's MMU_MACHPHYS_UPDATE reads its value")
		}
	})
}
