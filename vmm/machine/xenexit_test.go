package machine

import (
	"errors"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/kvmext"
)

// A KVM_EXIT_XEN hypercall reaches XenHypercall with kvm_xen_exit's
// fields, and the handler's result lands in the exit's result field for
// KVM to load at the next KVM_RUN; an exit of another type, one with no
// handler, and a handler's failure end the vCPU with a crash report and
// leave the result alone. No KVM here: the exit is written into a kvm_run
// in plain memory, as KVM would write it.
func TestXenExitHandler(t *testing.T) {
	handler := func(v *VCPU, c XenCall) (uint64, error) {
		if !c.LongMode || c.CPL != 0 || c.Input != 17 || c.Params != [6]uint64{1, 2, 3, 4, 5, 6} {
			return 0, errors.New("fields mangled")
		}
		return 0xfffffffffffffff2, nil // -ENOSYS, 64-bit
	}
	for _, tc := range []struct {
		name    string
		typ     uint32
		handler func(*VCPU, XenCall) (uint64, error)
		result  uint64
		crash   string
	}{
		{"hypercall", kvmext.ExitXenHcall, handler, 0xfffffffffffffff2, ""},
		{"unknown type", 2, handler, 0xdead, "KVM_EXIT_XEN of unknown type 2"},
		{"no handler", kvmext.ExitXenHcall, nil, 0xdead, "with no handler"},
		{"handler fails", kvmext.ExitXenHcall, func(*VCPU, XenCall) (uint64, error) { return 1, errors.New("VMM broke") }, 0xdead, "VMM broke"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &VCPU{ID: 3, fd: ^uintptr(0), run: &kvmext.Run{}, XenHypercall: tc.handler}
			v.run.ExitReason = kvmext.ExitXen
			e := v.run.Xen()
			*e = kvmext.XenExit{Type: tc.typ, Longmode: 1, Input: 17, Result: 0xdead, Params: [6]uint64{1, 2, 3, 4, 5, 6}}
			err := v.handleExit()
			var ce *CrashError
			switch {
			case tc.crash == "" && err != nil:
				t.Fatalf("handleExit: %v", err)
			case tc.crash != "" && (!errors.As(err, &ce) || !strings.Contains(ce.Reason, tc.crash)):
				t.Fatalf("handleExit = %v, want a crash saying %q", err, tc.crash)
			}
			if e.Result != tc.result {
				t.Errorf("result %#x, want %#x", e.Result, tc.result)
			}
			if v.Exits(kvmext.ExitXen) != 1 {
				t.Errorf("%d XEN exits counted", v.Exits(kvmext.ExitXen))
			}
			if tc.crash == "" && !v.ioPending {
				t.Error("the hypercall is not marked for completion at the next KVM_RUN")
			}
		})
	}
}

// SetXenResult is for the vCPU's own thread during a Xen exit: elsewhere
// it is refused, and the result stays as it was.
func TestSetXenResultOffThread(t *testing.T) {
	v := &VCPU{ID: 0, fd: ^uintptr(0), run: &kvmext.Run{}}
	v.run.ExitReason = kvmext.ExitXen
	if err := v.SetXenResult(5); !errors.Is(err, ErrNotOwnThread) {
		t.Errorf("SetXenResult off the vCPU's thread: %v", err)
	}
	if r := v.run.Xen().Result; r != 0 {
		t.Errorf("result %#x", r)
	}
}
