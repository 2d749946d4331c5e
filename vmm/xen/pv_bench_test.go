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

// benchCode is a tiny 64-bit PV kernel for the ring-3 model, loaded at
// 1 MiB like XTF's (code page, hypercall page at 0x101000, data page at
// 0x102000). It starts at benchIOPL, which raises its virtual IOPL to 1
// and jumps to 0x100010; from there it sets its trap table (0x102000: #UD
// to the handler at 0x100100), reads an iteration count and a phase from
// 0x102100, runs the phase's loop and powers off:
//
//	phase 0: in $0xe3, %al                       (a bare exit: the null port,
//	         which the virtual IOPL allows)
//	phase 1: ud2                                 (#UD bounced to the handler,
//	         which steps over it and returns with the iret hypercall)
//	phase 2: mov $17, %eax; syscall              (xen_version(0) by syscall)
//	phase 3: call hypercall_page + 17*32         (xen_version(0), port-I/O stub)
//
// Assembled with GNU as from the listing in the commit that added it.
var benchCode = []byte{
	0x48, 0x8d, 0x3d, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x48, 0xbf, 0x00, 0x20, 0x10, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x48, 0xbb, 0x00, 0x10, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xff, 0xd3, 0x48, 0xb8, 0x00, 0x21, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x4c, 0x8b, 0x20, 0x4c, 0x8b, 0x68, 0x08, 0x49, 0x83, 0xfd, 0x01, 0x74,
	0x15, 0x49, 0x83, 0xfd, 0x02, 0x74, 0x18, 0x49, 0x83, 0xfd, 0x03, 0x74,
	0x24, 0xe4, 0xe3, 0x49, 0xff, 0xcc, 0x75, 0xf9, 0xeb, 0x2d, 0x0f, 0x0b,
	0x49, 0xff, 0xcc, 0x75, 0xf9, 0xeb, 0x24, 0xb8, 0x11, 0x00, 0x00, 0x00,
	0x31, 0xff, 0x31, 0xf6, 0x0f, 0x05, 0x49, 0xff, 0xcc, 0x75, 0xf0, 0xeb,
	0x12, 0x31, 0xff, 0x31, 0xf6, 0x48, 0x8d, 0x83, 0x20, 0x02, 0x00, 0x00,
	0xff, 0xd0, 0x49, 0xff, 0xcc, 0x75, 0xee, 0xbf, 0x02, 0x00, 0x00, 0x00,
	0x48, 0xbe, 0x00, 0x22, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x48, 0x8d,
	0x83, 0xa0, 0x03, 0x00, 0x00, 0xff, 0xd0, 0xeb, 0xfe,
}

// benchHandler is the #UD handler at 0x100100: addq $2, 16(%rsp) (the
// frame's RIP, past %rcx and %r11); pop %rcx; pop %r11; push $0 (the
// iret flags); jmp to the iret stub.
var benchHandler = []byte{
	0x48, 0x83, 0x44, 0x24, 0x10, 0x02, 0x59, 0x41, 0x5b, 0x6a, 0x00,
	0x48, 0xb8, 0xe0, 0x12, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xe0,
}

// benchIOPL, at 0x100200, is the kernel's entry: PHYSDEVOP_set_iopl with
// {iopl: 1} at 0x102110, as a PV kernel that does port I/O must (without
// it phase 0's IN is a #GP, and the kernel has no handler for it), then
// on to 0x100010.
//
//	mov $6, %edi              (PHYSDEVOP_set_iopl)
//	mov $0x102110, %esi
//	mov $0x101420, %eax       (hypercall_page + 33*32: physdev_op)
//	call *%rax
//	jmp 0x100010
var benchIOPL = []byte{
	0xbf, 0x06, 0x00, 0x00, 0x00,
	0xbe, 0x10, 0x21, 0x10, 0x00,
	0xb8, 0x20, 0x14, 0x10, 0x00,
	0xff, 0xd0,
	0xe9, 0xfa, 0xfd, 0xff, 0xff,
}

const (
	benchBase  = 0x100000
	benchEntry = benchBase + 0x200 // benchIOPL
)

// benchImage builds the ELF kernel for one phase and count.
func benchImage(phase, n uint64) []byte {
	return tinyKernel(benchEntry, func(load []byte) {
		le := binary.LittleEndian
		copy(load, benchCode)
		copy(load[0x100:], benchHandler)
		copy(load[0x200:], benchIOPL)
		tt := load[0x2000:]
		tt[0] = 6 // #UD
		le.PutUint16(tt[2:], xen.FlatKernelCS)
		le.PutUint64(tt[8:], benchBase+0x100)
		le.PutUint64(load[0x2100:], n)
		le.PutUint64(load[0x2108:], phase)
		le.PutUint32(load[0x2110:], 1) // struct physdev_set_iopl
	})
}

// tinyKernel builds a 64-bit PV ELF kernel of 12 KiB loaded at benchBase
// (code, the hypercall page at +0x1000, which the builder writes, data
// at +0x2000; a shutdown reason of 0, poweroff, at +0x2200), entered at
// entry, with what fill writes into the loaded bytes.
func tinyKernel(entry uint64, fill func(load []byte)) []byte {
	const loadOff, loadSize = 0x1000, 0x3000
	img := make([]byte, loadOff+loadSize)
	le := binary.LittleEndian
	// Notes: GUEST_OS, XEN_VERSION, LOADER, HYPERCALL_PAGE, PAE_MODE.
	var notes []byte
	note := func(typ uint32, desc []byte) {
		h := make([]byte, 16)
		le.PutUint32(h, 4)
		le.PutUint32(h[4:], uint32(len(desc)))
		le.PutUint32(h[8:], typ)
		copy(h[12:], "Xen\x00")
		notes = append(notes, h...)
		notes = append(notes, desc...)
		for len(notes)%4 != 0 {
			notes = append(notes, 0)
		}
	}
	note(6, []byte("bench\x00"))
	note(5, []byte("xen-3.0\x00"))
	note(8, []byte("generic\x00"))
	hp := make([]byte, 8)
	le.PutUint64(hp, benchBase+0x1000)
	note(2, hp)
	note(9, []byte("yes\x00"))
	const notesOff = 0x200
	copy(img[notesOff:], notes)
	// ELF header and two program headers.
	copy(img, "\x7fELF\x02\x01\x01")
	le.PutUint16(img[16:], 2)    // ET_EXEC
	le.PutUint16(img[18:], 0x3e) // EM_X86_64
	le.PutUint32(img[20:], 1)
	le.PutUint64(img[24:], entry)
	le.PutUint64(img[32:], 64) // e_phoff
	le.PutUint16(img[52:], 64)
	le.PutUint16(img[54:], 56)
	le.PutUint16(img[56:], 2)
	ph := img[64:]
	le.PutUint32(ph, 1) // PT_LOAD
	le.PutUint32(ph[4:], 7)
	le.PutUint64(ph[8:], loadOff)
	le.PutUint64(ph[16:], benchBase)
	le.PutUint64(ph[24:], benchBase)
	le.PutUint64(ph[32:], loadSize)
	le.PutUint64(ph[40:], loadSize)
	le.PutUint64(ph[48:], 0x1000)
	ph = img[64+56:]
	le.PutUint32(ph, 4) // PT_NOTE
	le.PutUint32(ph[4:], 4)
	le.PutUint64(ph[8:], notesOff)
	le.PutUint64(ph[32:], uint64(len(notes)))
	le.PutUint64(ph[40:], uint64(len(notes)))
	le.PutUint64(ph[48:], 4)
	fill(img[loadOff:])
	return img
}

// runBench boots the kernel for phase with n iterations and returns how
// long it ran (unpause to poweroff) and its vCPU's exits.
func runBench(b *testing.B, phase, n uint64) (time.Duration, uint64) {
	b.Helper()
	ts := toolstack.New(nil)
	d, err := ts.Create(toolstack.DomainConfig{Image: benchImage(phase, n), MemSize: 32 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Destroy()
	if !d.Xen.Ring3() {
		b.Fatal("the benchmark kernel did not get the ring-3 model")
	}
	v := d.Machine().VCPUs()[0]
	start := time.Now()
	if err := d.Unpause(); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e, err := d.Wait(ctx)
	took := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if e.State != xen.Shutdown || e.Reason != xenabi.ShutdownPoweroff {
		report := ""
		if e.Crash != nil {
			report = e.Crash.Report()
		}
		b.Fatalf("phase %d ended %v\n%s", phase, e, report)
	}
	return took, v.TotalExits()
}

// benchPair runs two phases of b.N iterations each and reports each one's
// time and exits per operation (a run of one iteration subtracted, so the
// boot is not counted) and their ratio; exits/op is the other phase's, the
// operation the benchmark is named for.
func benchPair(b *testing.B, base, other uint64, baseName, otherName string) {
	kvmtest.Require(b)
	per := func(phase uint64) (float64, float64) {
		t1, x1 := runBench(b, phase, 1)
		if b.N == 1 {
			return float64(t1.Nanoseconds()), float64(x1)
		}
		tn, xn := runBench(b, phase, uint64(b.N)+1)
		return float64((tn - t1).Nanoseconds()) / float64(b.N), float64(xn-x1) / float64(b.N)
	}
	b.ResetTimer()
	baseNS, baseExits := per(base)
	otherNS, otherExits := per(other)
	b.ReportMetric(baseNS, baseName+"-ns/op")
	b.ReportMetric(otherNS, otherName+"-ns/op")
	b.ReportMetric(otherNS/baseNS, otherName+"/"+baseName)
	b.ReportMetric(baseExits, "exits/"+baseName)
	b.ReportMetric(otherExits, "exits/"+otherName)
	b.ReportMetric(otherExits, "exits/op")
}

// BenchmarkRing3Bounce: an exception bounced through the trap table and
// returned from with the iret hypercall, against a bare exit (an IN from
// the null port).
func BenchmarkRing3Bounce(b *testing.B) { benchPair(b, 0, 1, "bare", "bounce") }

// BenchmarkRing3SyscallHypercall: xen_version(0) by a raw syscall (the
// 64-bit PV hypercall instruction, which enters the VMM through LSTAR),
// against the same call through the port-I/O hypercall page.
func BenchmarkRing3SyscallHypercall(b *testing.B) { benchPair(b, 3, 2, "page", "syscall") }
