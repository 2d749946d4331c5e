package toolstack

import (
	"regexp"
	"strings"
	"testing"
)

// smpFPULine is the stub's report of a secondary's x87 control word and
// MXCSR at its first instruction (test=smp fpu=1).
var smpFPULine = regexp.MustCompile(`smp: fpu vcpu=(\d+) fcw=(0x[0-9a-f]+|0) mxcsr=(0x[0-9a-f]+|0)`)

// VCPUOP_initialise with VGCF_i387_valid loads the context's fpu_ctxt
// into the new vCPU (arch_set_info_guest): every secondary starts with
// the x87 control word and MXCSR the guest put there (round toward zero,
// values no vCPU starts with). The negative control fills fpu_ctxt the
// same but leaves VGCF_i387_valid clear: the secondaries start from the
// reset state (FCW 0x37f, MXCSR 0x1f80, Xen's vcpu_setup_fpu), and the
// guest, expecting its values, fails.
func TestSMPInitialiseFPU(t *testing.T) {
	for _, c := range []struct {
		name, cmdline, fcw, mxcsr string
		ok                        bool
	}{
		{"i387-valid", "fpu=1", "0xf7f", "0x7f80", true},
		{"no-flag", "fpu-no-flag=1", "0x37f", "0x1f80", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, con := smpGuest(t, nil, "test=smp "+c.cmdline)
			r := run(t, d, con)
			ms := smpFPULine.FindAllStringSubmatch(r.console, -1)
			if len(ms) != smpVCPUs-1 {
				t.Fatalf("%d secondary FPU reports, want %d:\n%s", len(ms), smpVCPUs-1, r.console)
			}
			for _, m := range ms {
				if m[2] != c.fcw || m[3] != c.mxcsr {
					t.Errorf("vcpu %s started with FCW %s MXCSR %s, want %s %s", m[1], m[2], m[3], c.fcw, c.mxcsr)
				}
			}
			if c.ok {
				checkSMP(t, r, 0, 1)
				return
			}
			if l := resultLine(t, r.console); !strings.HasPrefix(l, "Test result: FAILURE") || !strings.Contains(l, "want fpu_ctxt's") {
				t.Errorf("%s: want the guest's FAILURE", l)
			}
		})
	}
}

// VCPUOP_register_vcpu_info on a secondary (from itself, before it
// unmasks): its events arrive through the vcpu_info it registered, the
// only one its upcall reads, so its IPI being taken once, on it, is the
// proof. The negative control registers but keeps unmasking the old slot
// in shared_info: Xen looks at the registered vcpu_info, still masked,
// and the IPIs never come. The stub refuses the option with suspends
// (re-registration in a new domain is not modelled): an ERROR.
func TestSMPRegisterVCPUInfo(t *testing.T) {
	for _, c := range []struct {
		name, cmdline, result, want string
	}{
		{"registered", "vcpu-info=1", "Test result: SUCCESS", "smp: ipi at boot: ports"},
		{"stale", "vcpu-info-stale=1", "Test result: FAILURE", "IPI port"},
		{"with-suspends", "vcpu-info=1 cycles=1", "Test result: ERROR", "without suspends"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, con := smpGuest(t, nil, "test=smp "+c.cmdline)
			r := run(t, d, con)
			l := resultLine(t, r.console)
			if !strings.HasPrefix(l, c.result) || !strings.Contains(r.console, c.want) {
				t.Fatalf("%s: want %s and %q\n%s", l, c.result, c.want, r.console)
			}
			if c.name == "registered" {
				checkSMP(t, r, 0, 1)
			}
		})
	}
}
