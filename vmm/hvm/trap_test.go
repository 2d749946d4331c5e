package hvm

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// The vCPU modes of the trap tests' guests.
type guestMode int

const (
	mode64   guestMode = iota // long mode, 64-bit code segment
	mode32                    // 32-bit protected mode
	modeVM86                  // 32-bit protected mode, EFLAGS.VM
	modeReal                  // real mode
)

func sregsFor(m guestMode, dpl uint8) *kvm.Sregs {
	s := &kvm.Sregs{}
	switch m {
	case mode64:
		s.CR0, s.EFER, s.CS.L = 0x80000011, 1<<10|1<<8, 1
	case mode32, modeVM86:
		s.CR0, s.CS.DB = 0x11, 1
	case modeReal:
		s.CR0 = 0x10
	}
	s.SS.DPL = dpl
	return s
}

// TestHypercallTraps feeds one guest hypercall through both traps: the
// port-I/O stub's registers at the IN (pioTrapped, and the result as the
// IN's data the stub leaves in %eax, sign-extended by the 64-bit stub's
// cltq), and a synthetic KVM_EXIT_XEN as KVM's Xen intercept fills it
// (xenTrapped, the result into %rax). Both must reach the same dispatch
// with the same ABI and give the guest the same %rax: the number from
// %eax, the arguments from rdi, rsi, rdx, r10, r8 in 64-bit mode and
// ebx, ecx, edx, esi, edi (truncated to 32 bits) otherwise, -EPERM from
// CPL > 0 or virtual-8086 mode, and -ENOSYS for a number Xen has no
// handler for.
func TestHypercallTraps(t *testing.T) {
	const (
		version = xen.VersionMajor<<16 | xen.VersionMinor
		hi      = 1 << 32 // bits a 32-bit guest's registers may hold, and Xen ignores
	)
	neg := func(e int64) uint64 { return uint64(-e) }
	neg32 := func(e int64) uint64 { return uint64(uint32(-e)) }
	for _, tc := range []struct {
		name string
		mode guestMode
		dpl  uint8
		cpl  uint32 // what KVM reports, and pioTrapped must derive
		nr   uint64 // %rax
		a0   uint64 // rdi and rbx
		a1   uint64 // rsi and rcx
		want uint64 // the guest's %rax (the low half outside 64-bit mode)
	}{
		{"xen_version 64-bit", mode64, 0, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, version},
		{"xen_version 32-bit", mode32, 0, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, version},
		{"xen_version real mode (no CPL check)", modeReal, 3, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, version},
		{"number from %eax alone", mode64, 0, 0, hi | xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, version},
		{"console_io is dom0's", mode64, 0, 0, xenabi.HypervisorConsoleIO, 0, 0, neg(xenabi.EPERM)},
		// Negative controls.
		{"unknown hypercall 64-bit", mode64, 0, 0, 63, 0, 0, neg(xenabi.ENOSYS)},
		{"unknown hypercall 32-bit", mode32, 0, 0, 63, 0, 0, neg32(xenabi.ENOSYS)},
		{"CPL 3 64-bit", mode64, 3, 3, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, neg(xenabi.EPERM)},
		{"CPL 3 32-bit", mode32, 3, 3, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, neg32(xenabi.EPERM)},
		{"CPL 1", mode32, 1, 1, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, neg32(xenabi.EPERM)},
		{"virtual-8086 mode", modeVM86, 0, 3, xenabi.HypervisorXenVersion, xenabi.XenverVersion, 0, neg32(xenabi.EPERM)},
		// XENVER_pagesize wants a NULL handle: the high half of a 32-bit
		// guest's %ecx is not part of it, of a 64-bit guest's %rsi it is.
		{"32-bit argument truncated", mode32, 0, 0, xenabi.HypervisorXenVersion, xenabi.XenverPagesize, hi, machine.PageSize},
		{"64-bit argument whole", mode64, 0, 0, xenabi.HypervisorXenVersion, xenabi.XenverPagesize, hi, neg(xenabi.EINVAL)},
		{"32-bit command truncated", mode32, 0, 0, xenabi.HypervisorXenVersion, hi | xenabi.XenverVersion, 0, version},
		{"64-bit command whole", mode64, 0, 0, xenabi.HypervisorXenVersion, hi | xenabi.XenverVersion, 0, neg(xenabi.ENOSYS)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			long := tc.mode == mode64
			s := sregsFor(tc.mode, tc.dpl)
			r := &kvm.Regs{RAX: tc.nr, RDI: tc.a0, RBX: tc.a0, RSI: tc.a1, RCX: tc.a1, RFLAGS: 2}
			if tc.mode == modeVM86 {
				r.RFLAGS |= 1 << 17
			}

			// The port-I/O trap.
			pt := pioTrapped(r, s)
			if pt.long != long || pt.cpl != tc.cpl {
				t.Fatalf("pioTrapped: long %v cpl %d, want %v %d", pt.long, pt.cpl, long, tc.cpl)
			}
			d, _, _ := offline(t)
			rax, suspend := d.hypercall(nil, pagingOf(s), pt)
			eax := uint32(rax) // the IN's data
			pio := uint64(eax)
			if long {
				pio = uint64(int64(int32(eax))) // the stub's cltq
			}

			// KVM's Xen intercept: KVM reads %eax and the 32-bit ABI's
			// registers truncated outside 64-bit mode; the fake passes
			// them whole, so that the dispatch's own truncation is seen.
			c := machine.XenCall{LongMode: long, CPL: tc.cpl, Input: tc.nr, Params: [6]uint64{tc.a0, tc.a1}}
			d2, _, _ := offline(t)
			kvmRAX, kvmSuspend := d2.hypercall(nil, pagingOf(s), xenTrapped(c))

			mask := ^uint64(0)
			if !long {
				mask = 0xffffffff
			}
			if pio&mask != tc.want {
				t.Errorf("port I/O: %%rax %#x, want %#x", pio&mask, tc.want)
			}
			if kvmRAX&mask != tc.want {
				t.Errorf("KVM_EXIT_XEN: %%rax %#x, want %#x", kvmRAX&mask, tc.want)
			}
			if !long && kvmRAX>>32 != 0 {
				t.Errorf("KVM_EXIT_XEN result %#x for a 32-bit guest has a high half", kvmRAX)
			}
			if suspend || kvmSuspend {
				t.Error("suspended")
			}
		})
	}
}

// TestHypercallTrapsSuspend: SCHEDOP_shutdown(SHUTDOWN_suspend) is seen
// as a suspend by both traps alike (with a vCPU; without one, the domain
// ends suspended), and a 32-bit guest's pointer is truncated first.
func TestHypercallTrapsSuspend(t *testing.T) {
	for _, long := range []bool{true, false} {
		d, _, _ := offline(t)
		d.mem.Write(argVA, []byte{byte(xenabi.ShutdownSuspend), 0, 0, 0})
		arg := uint64(argVA)
		if !long {
			arg |= 1 << 32
		}
		rax, _ := d.hypercall(nil, machine.Paging{}, xenTrapped(machine.XenCall{LongMode: long,
			Input: xenabi.HypervisorSchedOp, Params: [6]uint64{xenabi.SchedopShutdown, arg}}))
		if rax != 0 {
			t.Errorf("long %v: %#x", long, rax)
		}
		select {
		case <-d.ended:
			if d.exit.Reason != xenabi.ShutdownSuspend {
				t.Errorf("long %v: ended %v", long, d.exit)
			}
		default:
			t.Errorf("long %v: the domain did not end suspended", long)
		}
	}
}

// A new HVM container picks KVM's Xen intercept exactly where the host's
// KVM offers it, and port I/O elsewhere (this project's hosts: PVM has
// KVM_CAP_XEN_HVM = 0), and logs which and why.
func TestHypercallTrapPicked(t *testing.T) {
	kvmtest.Require(t)
	m, err := machine.New(machine.Config{MemSize: 16 << 20, NumVCPUs: 1, SyncSregs: true, IRQChip: machine.IRQChipSplit})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var logs bytes.Buffer
	d, err := New(Config{Kind: builder.KindPVH, ID: 3, Machine: m, Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	offered, features, err := m.XenHypercallIntercept()
	if err != nil {
		t.Fatal(err)
	}
	want, wantReason := TrapPortIO, "no KVM_XEN_HVM_CONFIG_HYPERCALL_MSR with _INTERCEPT_HCALL"
	if offered {
		want, wantReason = TrapKVMXen, "offers KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL"
	}
	t.Logf("KVM_CAP_XEN_HVM = %#x; %s", features, strings.TrimSpace(logs.String()))
	if got := d.HypercallTrap(); got != want {
		t.Errorf("trap %v, want %v", got, want)
	}
	if l := logs.String(); !strings.Contains(l, "HVM hypercall trap") || !strings.Contains(l, `"trap":"`+want.String()+`"`) || !strings.Contains(l, wantReason) {
		t.Errorf("log %q does not say the trap and why", l)
	}
	for _, v := range m.VCPUs() {
		if (v.XenHypercall != nil) != offered {
			t.Errorf("vCPU %d: KVM_EXIT_XEN handler set %v with the intercept offered %v", v.ID, v.XenHypercall != nil, offered)
		}
	}
}

// FuzzHypercallTraps: whatever a guest puts in its registers, both traps
// return without panicking and give the guest the same %eax.
func FuzzHypercallTraps(f *testing.F) {
	f.Add(true, uint8(0), uint64(xenabi.HypervisorHVMOp), uint64(hvmopGetParam), uint64(argVA), uint64(0), []byte{0xf0, 0x7f, 0, 0, 1})
	f.Add(false, uint8(0), uint64(1<<32|xenabi.HypervisorXenVersion), uint64(1<<32|xenabi.XenverGetFeatures), uint64(1<<32|argVA), uint64(0), []byte{0})
	f.Add(true, uint8(3), uint64(xenabi.HypervisorSchedOp), uint64(xenabi.SchedopShutdown), uint64(argVA), uint64(0), []byte{3})
	f.Fuzz(func(t *testing.T, long bool, dpl uint8, nr, a0, a1, a2 uint64, arg []byte) {
		dpl &= 3
		nr, a0 = nr%64|nr&^0xffffffff, a0%32|a0&^0xffffffff // numbers that exist, with any high half
		if len(arg) > 64 {
			arg = arg[:64]
		}
		mode := mode32
		if long {
			mode = mode64
		}
		s := sregsFor(mode, dpl)
		r := &kvm.Regs{RAX: nr, RDI: a0, RBX: a0, RSI: a1, RCX: a1, RDX: a2, RFLAGS: 2}
		d1, _, _ := offline(t)
		d1.mem.Write(argVA, arg)
		pio, _ := d1.hypercall(nil, pagingOf(s), pioTrapped(r, s))
		d2, _, _ := offline(t)
		d2.mem.Write(argVA, arg)
		viaKVM, _ := d2.hypercall(nil, pagingOf(s), xenTrapped(machine.XenCall{LongMode: long, CPL: uint32(dpl), Input: nr, Params: [6]uint64{a0, a1, a2}}))
		if uint32(pio) != uint32(viaKVM) {
			t.Errorf("port I/O %#x, KVM_EXIT_XEN %#x", pio, viaKVM)
		}
		if !long && viaKVM>>32 != 0 {
			t.Errorf("32-bit result %#x", viaKVM)
		}
	})
}
