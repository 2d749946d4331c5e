package xen

import (
	"encoding/binary"
	"fmt"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
)

// Trap is how a hypercall leaves the guest for the VMM: the instruction in
// each hypercall-page stub and the exit it causes. Guests only ever call
// into the page, so the mechanism is the VMM's choice. PortIOTrap works on
// every host; a vmcall backend (KVM_CAP_XEN_HVM with
// KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, exits as KVM_EXIT_XEN) would slot in
// here on hosts where vmcall exits.
type Trap interface {
	// Name names the mechanism, for logs.
	Name() string
	// HypercallPage returns the 4096 bytes to write at the guest's
	// hypercall page.
	HypercallPage() []byte
	// Install routes the trap's exits on m to handle, which runs on the
	// trapping vCPU's thread with the hypercall number and returns the
	// result, which the trap delivers to the guest's %rax.
	Install(m *machine.Machine, handle func(v *machine.VCPU, nr uint64) int64) error
}

// Ports xenresume claims.
const (
	// HypercallPort is the port the hypercall stubs read their result from.
	HypercallPort = 0xe2
	// NullPort does nothing: the bare-exit baseline of the benchmarks.
	NullPort = 0xe3
)

// PortIOTrap traps hypercalls with `in $Port, %eax` (asm.PortIOHypercallPage):
// the number is in %rax (from the sync area), the result goes back as the
// IN's data, which KVM loads into %eax as it completes the instruction.
type PortIOTrap struct{ Port uint8 }

// Name implements Trap.
func (t PortIOTrap) Name() string { return fmt.Sprintf("port-I/O %#x", t.Port) }

// HypercallPage implements Trap.
func (t PortIOTrap) HypercallPage() []byte { return asm.PortIOHypercallPage(t.Port) }

// Install implements Trap.
func (t PortIOTrap) Install(m *machine.Machine, handle func(v *machine.VCPU, nr uint64) int64) error {
	m.Bus().Register(uint16(t.Port), 1, machine.PIOFunc(func(v *machine.VCPU, port uint16, write bool, data []byte) error {
		if write || len(data) != 4 {
			// Not a stub's 32-bit IN: the guest poked the port
			// itself. Reads see all ones, as from an empty bus.
			for i := range data {
				data[i] = 0xff
			}
			return nil
		}
		ret := handle(v, uint64(uint32(v.Regs().RAX)))
		binary.LittleEndian.PutUint32(data, uint32(int32(ret)))
		return nil
	}))
	return nil
}
