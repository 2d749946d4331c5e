package xen

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"github.com/xenresume/xenresume/asm"
	"github.com/xenresume/xenresume/vmm/machine"
)

// CPU is the vCPU a hypercall trapped on, as the hypervisor's handlers use
// it. *machine.VCPU implements it; handler tests use a fake. Wake and
// Interrupt may be called from any goroutine; every other method only on
// the vCPU's own thread during the trap, and fails elsewhere.
type CPU interface {
	// Index is the vCPU's number in its domain.
	Index() int
	// Regs returns the registers as of the trap; changes reach the guest
	// only after SetRegsDirty.
	Regs() (*kvm.Regs, error)
	// SetRegsDirty makes the guest resume with the registers Regs returned.
	SetRegsDirty() error
	// Paging returns the paging registers, to follow guest pointers.
	Paging() (machine.Paging, error)
	// Block sleeps until Wake, Interrupt, a pause or a stop.
	Block() error
	// Wake ends a Block, or makes the next one return at once.
	Wake()
	// Interrupt ends a Block and makes the vCPU look for a pending upcall
	// before it next enters the guest.
	Interrupt()
}

var _ CPU = (*machine.VCPU)(nil)

// Handler handles one trapped hypercall, on the trapping vCPU's thread:
// number nr, arguments args (Xen's 64-bit ABI: rdi, rsi, rdx, r10, r8). It
// returns the result the trap delivers to the guest's %rax, or an error: a
// failure of the VMM (never of the guest), which ends the vCPU with a
// crash report.
type Handler func(v CPU, nr uint64, args [5]uint64) (int64, error)

// Trap is how a hypercall leaves the guest for the VMM: the instruction in
// each hypercall-page stub and the exit it causes. Guests only ever call
// into the page, so the mechanism is the VMM's choice. Ring3PortIOTrap
// works on every host. A vmcall backend would slot in here on hosts where
// vmcall exits: KVM's Xen intercept (KVM_CAP_XEN_HVM with
// KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, exits as KVM_EXIT_XEN) is built in
// vmm/machine (XenHypercallIntercept, EnableXenHypercallIntercept,
// VCPU.XenHypercall) and used by the HVM container (vmm/hvm,
// HypercallTrap) where the host offers it; tested there on synthetic
// exits and kvm.h's layouts only, since no host this project runs on
// offers it (PVM reports KVM_CAP_XEN_HVM = 0). This PV model does not use
// it.
type Trap interface {
	// Name names the mechanism, for logs.
	Name() string
	// HypercallPage returns the 4096 bytes to write at the guest's
	// hypercall page.
	HypercallPage() []byte
	// Install routes the trap's exits on m to handle.
	Install(m *machine.Machine, handle Handler) error
	// ReturnAddress returns where a vCPU sits once hypercall nr, called
	// through the hypercall page at guest-virtual address page, trapped
	// and the trap completed (as it is whenever the vCPU is parked): the
	// stub's return path, where xc_domain_resume expects a suspended PV
	// vCPU. It returns 0 for an nr with no stub.
	ReturnAddress(page uint64, nr int) uint64
	// ReturnPage is ReturnAddress's inverse: the page-aligned hypercall
	// page whose stub nr has its return path at rip, or false if there is
	// none.
	ReturnPage(rip uint64, nr int) (page uint64, ok bool)
}

// Ports xenresume claims.
const (
	// HypercallPort is the port the hypercall stubs read their result from.
	HypercallPort = 0xe2
	// NullPort does nothing: the bare-exit baseline of the benchmarks.
	NullPort = 0xe3
)

// Ring3PortIOTrap traps hypercalls with `in $Port, %eax` from the stubs of
// a ring-3 PV kernel's hypercall page (asm.Ring3HypercallPage, Xen's
// 64-bit PV shape), which the VMM's TSS I/O bitmap lets ring 3 reach: the
// number is in %rax (from the sync area), the result goes back as the
// IN's data, which KVM loads into %eax as it completes the instruction.
type Ring3PortIOTrap struct{ Port uint8 }

// Name implements Trap.
func (t Ring3PortIOTrap) Name() string { return fmt.Sprintf("ring-3 port-I/O %#x", t.Port) }

// HypercallPage implements Trap.
func (t Ring3PortIOTrap) HypercallPage() []byte { return asm.Ring3HypercallPage(t.Port) }

// Install implements Trap.
func (t Ring3PortIOTrap) Install(m *machine.Machine, handle Handler) error {
	m.Bus().Register(uint16(t.Port), 1, machine.PIOFunc(func(v *machine.VCPU, port uint16, write bool, data []byte) error {
		return t.pio(v, write, data, handle)
	}))
	return nil
}

func (t Ring3PortIOTrap) pio(v CPU, write bool, data []byte, handle Handler) error {
	if write || len(data) != 4 {
		// Not a stub's 32-bit IN: the guest poked the port itself.
		// Reads see all ones, as from an empty bus.
		for i := range data {
			data[i] = 0xff
		}
		return nil
	}
	r, err := v.Regs()
	if err != nil {
		return err
	}
	ret, err := handle(v, uint64(uint32(r.RAX)), [5]uint64{r.RDI, r.RSI, r.RDX, r.R10, r.R8})
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(data, uint32(int32(ret)))
	return nil
}

// ring3StubReturn is the offset in the hypercall page of stub nr's return
// path; false for an nr without a stub.
func ring3StubReturn(nr int) (uint64, bool) {
	if nr < 0 || nr >= asm.NumStubs || nr == asm.IretHypercall {
		return 0, false
	}
	return uint64(nr)*asm.StubSize + asm.Ring3ReturnPath, true
}

// ReturnAddress implements Trap.
func (t Ring3PortIOTrap) ReturnAddress(page uint64, nr int) uint64 {
	off, ok := ring3StubReturn(nr)
	if !ok {
		return 0
	}
	return page + off
}

// ReturnPage implements Trap.
func (t Ring3PortIOTrap) ReturnPage(rip uint64, nr int) (uint64, bool) {
	off, ok := ring3StubReturn(nr)
	if !ok || rip < off || (rip-off)%asm.PageSize != 0 {
		return 0, false
	}
	return rip - off, true
}
