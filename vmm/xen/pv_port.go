package xen

import (
	"encoding/binary"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/arch/x86/x86asm"

	"github.com/xenresume/xenresume/vmm/machine"
)

// Ports the VMM's TSS I/O bitmap opens to CPL 3: a 32-bit IN checks the
// bits of all four ports it spans, so the hypercall stub's `in $0xe2`
// opens 0xe2 to 0xe5. Only that instruction, from guest kernel mode, is a
// hypercall; anything else on these ports is what the guest's own I/O
// permissions make it on Xen (virtual IOPL or PHYSDEVOP_set_iobitmap):
// a read of all ones and a dropped write, or #GP(0). The guest cannot
// tell the ports are special.
const (
	firstOpenPort = HypercallPort
	openPorts     = 4
)

// stubIn is the hypercall stub's trapping instruction: in $0xe2, %eax.
var stubIn = [2]byte{0xe5, HypercallPort}

// nullIn is the bare-exit baseline's instruction: in $0xe3, %al, a byte
// read of NullPort.
var nullIn = [2]byte{0xe4, NullPort}

// portExit is an I/O exit on one of the open ports (machine.PIOFunc).
func (p *pvDomain) portExit(v *machine.VCPU, port uint16, write bool, data []byte) error {
	return p.portAccess(v, port, write, data)
}

// portAccess handles an access to an open port by the vCPU cpu, as of
// the exit (before KVM completes the instruction): the stub's IN from
// kernel mode is a hypercall; anything else has its RIP and %rax,
// snapshot here, restored exactly after the completion and is emulated
// with the guest's I/O permissions or made the #GP Xen would give, at the
// instruction. The hypercall path reads two bytes of guest code and
// allocates nothing.
func (p *pvDomain) portAccess(cpu CPU, port uint16, write bool, data []byte) error {
	c := p.cpus[cpu.Index()]
	r, err := cpu.Regs()
	if err != nil {
		return err
	}
	// The model's paging registers: only CR3 varies, with the mode.
	l4 := c.kL4
	if !c.kernel {
		l4 = c.uL4
	}
	pg := machine.Paging{CR0: 0x80050033, CR3: l4 << 12, CR4: 0x620, EFER: 0xd01}
	rip, rax := r.RIP, r.RAX
	if port == HypercallPort && !write && len(data) == 4 && c.kernel && p.isStubIn(pg, rip, stubIn) {
		ret, err := p.d.hypercall(cpu, uint64(uint32(rax)), [5]uint64{r.RDI, r.RSI, r.RDX, r.R10, r.R8})
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(data, uint32(int32(ret)))
		return nil
	}
	// The bare-exit baseline: in $0xe3,%al from guest kernel mode with a
	// virtual IOPL that allows it reads all ones, as the emulation below
	// would make it, and KVM completes it (RIP past the two bytes, AL);
	// like the hypercall, it costs a two-byte check and no decode.
	if port == NullPort && !write && len(data) == 1 && c.kernel && p.iopl(c) && p.isStubIn(pg, rip, nullIn) {
		data[0] = 0xff
		return nil
	}
	for i := range data {
		data[i] = 0xff
	}
	var code [15]byte
	n := 0
	for n < len(code) && p.d.mem.ReadVirt(pg, rip+uint64(n), code[n:n+1]) == nil {
		n++
	}
	inst, derr := x86asm.Decode(code[:n], 64)
	c.later(func(r *kvm.Regs, s *kvm.Sregs) error {
		r.RIP, r.RAX = rip, rax
		if derr == nil && (inst.Op == x86asm.IN || inst.Op == x86asm.OUT) && p.portIO(c, r, s, &inst) {
			r.RIP += uint64(inst.Len)
			return nil
		}
		ec := uint64(0)
		return p.bounceTrap(c, r, s, 13, &ec)
	})
	return nil
}

// isStubIn reports whether the instruction at rip starts with the two
// bytes want (stubIn or nullIn), read through the guest's page tables.
func (p *pvDomain) isStubIn(pg machine.Paging, rip uint64, want [2]byte) bool {
	if rip&(machine.PageSize-1) > machine.PageSize-2 {
		var b [2]byte
		return p.d.mem.ReadVirt(pg, rip, b[:]) == nil && b == want
	}
	gpa, err := p.d.mem.Translate(pg, rip)
	if err != nil {
		return false
	}
	b, err := p.d.mem.Slice(gpa, 2)
	return err == nil && [2]byte(b) == want
}
