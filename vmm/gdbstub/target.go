// Package gdbstub serves the GDB remote serial protocol for a guest, so
// that `gdb -ex 'target remote ...'` can stop, inspect, step and resume it:
// one thread per vCPU, registers as gdb's x86-64 target description names
// them (general, segment and control registers), memory by guest-virtual
// address through the guest's own page tables, software breakpoints (Z0)
// and hardware breakpoints and watchpoints (Z1-Z4), single-step, continue,
// vCont, Ctrl-C, detach.
//
// The stub knows nothing of KVM or Xen: it drives a Target. A stop reply
// may carry a reason of xenresume's own beside gdb's (swbreak, hwbreak,
// watch), for example "suspend:1;" when the guest stopped because it
// suspended; gdb ignores reasons it does not know, and `maint packet ?`
// shows them.
package gdbstub

import "errors"

// Registers is one vCPU's register state as the stub exchanges it.
type Registers struct {
	// GPR in gdb's order: rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8-r15.
	GPR    [16]uint64
	RIP    uint64
	RFLAGS uint64
	// Segment selectors: cs, ss, ds, es, fs, gs.
	Seg            [6]uint16
	FSBase, GSBase uint64
	CR0, CR2, CR3  uint64
	CR4, CR8, EFER uint64
}

// BreakKind is what a Z packet sets.
type BreakKind int

// Breakpoint and watchpoint kinds, as Z0 to Z4 number them.
const (
	SoftwareBreak BreakKind = iota // Z0: an int3 in guest memory
	HardwareBreak                  // Z1: a debug register
	WriteWatch                     // Z2
	ReadWatch                      // Z3
	AccessWatch                    // Z4
)

// Breakpoint is a breakpoint or watchpoint at a guest-virtual address.
type Breakpoint struct {
	Kind BreakKind
	Addr uint64
	Len  int // watchpoints: 1, 2, 4 or 8; breakpoints: gdb's kind (1)
}

// Signals in stop replies.
const (
	SIGINT  = 2
	SIGTRAP = 5
)

// Stop says why the guest stopped. Every vCPU is stopped when one is
// reported.
type Stop struct {
	VCPU   int
	Signal int // SIGTRAP for breakpoints, steps and xenresume's reasons; SIGINT for an interrupt
	// Reason is gdb's "swbreak", "hwbreak" or "watch" (with Addr), or one
	// of xenresume's ("suspend", "resume", "restore"), or empty.
	Reason string
	Addr   uint64
	// Exited, when set, ends the session: the guest is gone (W00/X).
	Exited bool
	Status int // exit status for an exited guest
}

// Target is what the stub debugs. Methods other than Resume, Interrupt and
// Stops are called only while the target is stopped.
type Target interface {
	// VCPUs lists the vCPU ids (gdb threads are id+1).
	VCPUs() []int
	// Registers and SetRegisters read and write a stopped vCPU.
	Registers(vcpu int) (*Registers, error)
	SetRegisters(vcpu int, r *Registers) error
	// ReadMemory and WriteMemory access guest-virtual memory through vcpu's
	// page tables; they return how many bytes they could access before the
	// first unmapped one.
	ReadMemory(vcpu int, addr uint64, b []byte) (int, error)
	WriteMemory(vcpu int, addr uint64, b []byte) (int, error)
	// SetBreakpoint and ClearBreakpoint manage breakpoints and watchpoints.
	SetBreakpoint(bp Breakpoint) error
	ClearBreakpoint(bp Breakpoint) error
	// Resume lets the guest run: all vCPUs, with step >= 0 single-stepping
	// that one (and the others kept stopped). It returns at once; the stop
	// comes on Stops.
	Resume(step int) error
	// Interrupt asks a running guest to stop (gdb's Ctrl-C); the stop comes
	// on Stops with SIGINT.
	Interrupt() error
	// Stops delivers the guest's stops, one per Resume or Interrupt, and
	// stops the guest made by itself while gdb was not waiting.
	Stops() <-chan Stop
	// Detach removes every breakpoint and lets the guest run free.
	Detach() error
}

// ErrUnsupported is what a Target returns for a breakpoint kind or length
// it cannot set; gdb is told with an empty reply.
var ErrUnsupported = errors.New("gdbstub: not supported by the target")
