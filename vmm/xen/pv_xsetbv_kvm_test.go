package xen_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// xsetbvCode, at benchBase, sets CR4.OSXSAVE (an emulated mov to %cr4),
// loads XCR[index] with the value at 0x102100 (index at 0x102108) by
// xsetbv, reads XCR0 back with xgetbv and shuts down: poweroff if it
// reads what was set, crash otherwise. It has no trap table: a fault
// crashes the domain.
//
//	mov %cr4,%rax; bts $18,%rax; mov %rax,%cr4
//	movabs $0x102100,%rbx; mov (%rbx),%eax; mov 4(%rbx),%edx; mov 8(%rbx),%ecx
//	xsetbv
//	xor %ecx,%ecx; xgetbv
//	movabs $0x102200,%rsi; cmp (%rbx),%eax; je 1f; movabs $0x102204,%rsi
//	1: mov $2,%edi; movabs $0x1013a0,%rax; call *%rax   (SCHEDOP_shutdown)
//	2: jmp 2b
//
// Assembled with GNU as.
var xsetbvCode = []byte{
	0x0f, 0x20, 0xe0, 0x48, 0x0f, 0xba, 0xe8, 0x12, 0x0f, 0x22, 0xe0, 0x48,
	0xbb, 0x00, 0x21, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x03, 0x8b,
	0x53, 0x04, 0x8b, 0x4b, 0x08, 0x0f, 0x01, 0xd1, 0x31, 0xc9, 0x0f, 0x01,
	0xd0, 0x48, 0xbe, 0x00, 0x22, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3b,
	0x03, 0x74, 0x0a, 0x48, 0xbe, 0x04, 0x22, 0x10, 0x00, 0x00, 0x00, 0x00,
	0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0xb8, 0xa0, 0x13, 0x10, 0x00,
	0x00, 0x00, 0x00, 0x00, 0xff, 0xd0, 0xeb, 0xfe,
}

// xsetbv in the guest kernel reaches Xen's emulation (this PVM host
// raises #UD for it at CPL 3, others #GP) and, where the guest's CPUID
// offers XSAVE, really loads XCR0: the guest's own xgetbv reads it back;
// an invalid XCR0 (no x87) and XCR1 are #GP(0), which with no trap table
// crashes the domain. Where CPUID does not offer XSAVE (this host: KVM's
// supported CPUID lacks it), the guest cannot set CR4.OSXSAVE and every
// xsetbv is #UD, as on Xen with such a CPU policy.
func TestXSETBVKVM(t *testing.T) {
	kvmtest.Require(t)
	probe, err := toolstack.New(nil).Create(toolstack.DomainConfig{Image: tinyKernel(benchBase, func([]byte) {}), MemSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, _, ecx, _ := probe.Machine().VCPUs()[0].CPUID(1, 0)
	probe.Destroy()
	xsave := ecx&(1<<26) != 0
	t.Logf("guest CPUID offers XSAVE: %v", xsave)
	for _, tc := range []struct {
		name  string
		val   uint64
		index uint32
		crash string // "" for a poweroff
	}{
		{"x87 alone", 0x1, 0, ""},
		{"x87 and SSE", 0x3, 0, ""},
		{"no x87", 0x2, 0, "exception 13"},
		{"XCR1", 0x3, 1, "exception 13"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := tinyKernel(benchBase, func(load []byte) {
				copy(load, xsetbvCode)
				binary.LittleEndian.PutUint64(load[0x2100:], tc.val)
				binary.LittleEndian.PutUint32(load[0x2108:], tc.index)
				binary.LittleEndian.PutUint32(load[0x2204:], xenabi.ShutdownCrash)
			})
			d, err := toolstack.New(nil).Create(toolstack.DomainConfig{Image: img, MemSize: 32 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Destroy()
			if err := d.Unpause(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			e, err := d.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			report := ""
			if e.Crash != nil {
				report = e.Crash.Report()
			}
			if !xsave {
				tc.crash = "exception 6"
			}
			if tc.crash == "" {
				if e.State != xen.Shutdown || e.Reason != xenabi.ShutdownPoweroff {
					t.Fatalf("ended %v (reason %d): xgetbv did not read the XCR0 xsetbv loaded\n%s", e, e.Reason, report)
				}
				return
			}
			if e.Crash == nil || !strings.Contains(report, tc.crash) {
				t.Fatalf("ended %v, want a crash with %q\n%s", e, tc.crash, report)
			}
		})
	}
}
