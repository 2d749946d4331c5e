package xen

import (
	"encoding/binary"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// multicall (hypercall 13), as do_multicall (xen/common/multicall.c) and
// pv_do_multicall_call (xen/arch/x86/pv/hypercall.c) make it for a 64-bit
// PV guest: the entries run in order, each one's result is written into
// its entry before the next is read (so a later entry sees every change an
// earlier one made: XSA-286), an iret ends the multicall with the iret's
// result (XSA-213: nothing after it runs in the context it returned to),
// and a nested multicall is -EINVAL. Xen preempts a long list with a
// continuation; so does the model, every mcBatch entries, so that no
// guest-chosen count holds the vCPU's thread.

const (
	mcEntrySize = 64 // struct multicall_entry: op, result, args[6]
	mcBatch     = 128
	hcMulticall = 13
	hcIret      = 23
)

func pvMulticall(c *call) int64 {
	cpu := c.pvCPU()
	if cpu.inMulticall {
		return errno(xenabi.EINVAL) // "Multicall reentry is disallowed"
	}
	cpu.inMulticall = true
	defer func() { cpu.inMulticall = false }()
	list, nr := c.args[0], uint64(uint32(c.args[1]))
	for i := uint64(0); i < nr; i++ {
		if i == mcBatch {
			c.continuation(hcMulticall, list+i*mcEntrySize, nr-i)
			return 0
		}
		va := list + i*mcEntrySize
		b, ok := c.arg(va, mcEntrySize)
		if !ok {
			return errno(xenabi.EFAULT)
		}
		op := u64(b)
		sub := &call{d: c.d, v: c.v, id: c.id, nr: op}
		for j := range sub.args {
			sub.args[j] = u64(b[16+8*j:])
		}
		sub.inMC = true
		res := c.d.subcall(sub)
		if sub.err != nil {
			c.fail(sub.err)
			return 0
		}
		if sub.cont != nil {
			// The entry preempted itself: its continuation goes into
			// the entry, and the multicall continues from it
			// (do_multicall's "Copy the sub-call continuation").
			var e [mcEntrySize]byte
			copy(e[:], b)
			binary.LittleEndian.PutUint64(e[:], sub.cont.nr)
			for j, a := range sub.cont.args {
				binary.LittleEndian.PutUint64(e[16+8*j:], a)
			}
			if !c.write(va, e[:]) {
				return errno(xenabi.EFAULT)
			}
			c.continuation(hcMulticall, va, nr-i)
			return 0
		}
		var wrote bool
		if c.d.clobber {
			// A debug Xen's do_multicall overwrites the whole entry
			// with 0xaa before the result: the caller may depend on
			// the result field alone.
			var e [mcEntrySize]byte
			for j := range e {
				e[j] = 0xaa
			}
			binary.LittleEndian.PutUint64(e[8:], uint64(res))
			wrote = c.write(va, e[:])
		} else {
			var out [8]byte
			binary.LittleEndian.PutUint64(out[:], uint64(res))
			wrote = c.write(va+8, out[:])
		}
		if op == hcIret {
			// mc_exit: the iret has set the guest's registers; its
			// result (the restored %rax) is the multicall's.
			return res
		}
		if !wrote {
			return errno(xenabi.EFAULT)
		}
	}
	return 0
}

// subcall runs one entry of a multicall through the domain's table,
// traced as a hypercall of its own.
func (d *Domain) subcall(c *call) int64 {
	var def *hypercallDef
	if c.nr < uint64(len(hypercalls)) {
		def = hypercalls[c.nr]
		if pvHypercalls[c.nr] != nil {
			def = pvHypercalls[c.nr]
		}
	}
	ret := errno(xenabi.ENOSYS)
	if def != nil {
		ret = def.fn(c)
	}
	if d.trace != nil {
		d.trace.Info("multicall entry", "dom", d.id, "vcpu", c.id, "call", c.format(def), "ret", formatRet(ret))
	}
	return ret
}

// contArgs is a continuation a multicall entry made: the hypercall and
// the arguments it replaced, in order from the first.
type contArgs struct {
	nr   uint64
	args []uint64
}

// continuation makes the guest issue hypercall nr again with its first
// arguments replaced (hypercall_create_continuation): the trapping
// instruction (the stub's 2-byte in, or a 2-byte syscall) runs again with
// %rax = nr. Within a multicall the entry itself is rewritten instead
// (MCSF_in_multicall), and the multicall continues from it.
func (c *call) continuation(nr uint64, args ...uint64) {
	if c.inMC {
		c.cont = &contArgs{nr: nr, args: args}
		return
	}
	c.preempted = true
	c.pvCPU().later(func(r *kvmRegs, _ *kvmSregs) error {
		r.RIP -= 2
		r.RAX = nr
		for i, reg := range []*uint64{&r.RDI, &r.RSI, &r.RDX, &r.R10, &r.R8}[:len(args)] {
			*reg = args[i]
		}
		return nil
	})
}
