// Package kvmtest decides whether a test that needs /dev/kvm runs: it is
// skipped where KVM is absent, and fails instead when XENRESUME_REQUIRE_KVM=1
// (set by .ci/run whenever /dev/kvm exists), so CI can never pass by
// skipping the tests that matter.
package kvmtest

import (
	"os"
	"testing"

	"github.com/xenresume/xenresume/vmm/machine"
)

// Require skips or fails tb when KVM cannot be used.
func Require(tb testing.TB) {
	tb.Helper()
	if err := machine.Available(); err != nil {
		if os.Getenv("XENRESUME_REQUIRE_KVM") == "1" {
			tb.Fatalf("XENRESUME_REQUIRE_KVM=1 but KVM is unusable: %v", err)
		}
		tb.Skipf("KVM unavailable: %v", err)
	}
}
