package xen

import (
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

func TestHypercallNames(t *testing.T) {
	for nr, want := range map[uint64]string{
		xenabi.HypervisorSchedOp: "sched_op", xenabi.HypervisorConsoleIO: "console_io",
		xenabi.HypervisorEventChannelOp: "event_channel_op", 11: "hypercall11", 500: "hypercall500",
	} {
		if got := HypercallName(nr); got != want {
			t.Errorf("HypercallName(%d) = %q, want %q", nr, got, want)
		}
	}
}

func TestTraceFormatting(t *testing.T) {
	c := call{nr: xenabi.HypervisorConsoleIO, args: [5]uint64{xenabi.ConsoleioWrite, 12, 0xffffffff80001000}}
	if got := c.format(hypercalls[xenabi.HypervisorConsoleIO]); got != "console_io(write, 0xc, 0xffffffff80001000)" {
		t.Errorf("format = %q", got)
	}
	c = call{nr: 99, args: [5]uint64{1, 2, 3, 4, 5}}
	if got := c.format(nil); got != "hypercall99(0x1, 0x2, 0x3, 0x4, 0x5)" {
		t.Errorf("format = %q", got)
	}
	for ret, want := range map[int64]string{0: "0", 7: "7", -14: "-EFAULT", -38: "-ENOSYS", -1000: "-1000"} {
		if got := formatRet(ret); got != want {
			t.Errorf("formatRet(%d) = %q, want %q", ret, got, want)
		}
	}
}

func TestExitString(t *testing.T) {
	for _, c := range []struct {
		e    Exit
		want string
	}{
		{Exit{State: Shutdown, Reason: xenabi.ShutdownReboot}, "shutdown (reboot)"},
		{Exit{State: Shutdown, Reason: xenabi.ShutdownSuspend, SuspendRDX: 0x200016}, "rdx 0x200016"},
		{Exit{State: Crashed, Crash: &machine.CrashError{Reason: "triple fault"}}, "crashed: triple fault"},
		{Exit{State: Shutdown, Reason: 42}, "reason(42)"},
	} {
		if got := c.e.String(); !strings.Contains(got, c.want) {
			t.Errorf("%+v: %q lacks %q", c.e, got, c.want)
		}
	}
}

// TSCScale turns a second of ticks into a second of nanoseconds, for TSC
// frequencies slower and faster than 1 GHz.
func TestTSCScale(t *testing.T) {
	for _, hz := range []uint64{100_000_000, 999_999_000, 1_000_000_000, 1_500_000_000, 2_300_000_000, 2_000_000_001, 5_000_000_000} {
		mul, shift := TSCScale(hz)
		ticks := hz
		if shift >= 0 {
			ticks <<= uint(shift)
		} else {
			ticks >>= uint(-shift)
		}
		ns := (uint64(ticks) * uint64(mul)) >> 32
		if ns < 999_999_000 || ns > 1_000_000_001 {
			t.Errorf("%d Hz: mul %d shift %d gives %d ns per second", hz, mul, shift, ns)
		}
	}
}
