package gdbstub

import (
	"encoding/binary"
	"sync"
)

// fakeTarget is a toy machine for the tests: two vCPUs, 8 KiB of memory
// mapped at [memBase, memBase+8K), and a program in which vCPU 0 executes
// one "instruction" per byte of address from its RIP: at writeRIP it
// stores a 32-bit value at watchAddr, and at haltRIP it spins until
// interrupted. Breakpoints and watchpoints stop it as a real vCPU would.
type fakeTarget struct {
	mu       sync.Mutex
	regs     [2]Registers
	mem      [8192]byte
	bps      map[Breakpoint]bool
	stops    chan Stop
	running  bool
	halt     chan struct{} // closed by Interrupt while spinning
	detached bool
	writes   int
}

const (
	memBase   = 0x1000
	writeRIP  = 0x1010
	watchAddr = 0x2000
	haltRIP   = 0x1100
)

func newFake() *fakeTarget {
	f := &fakeTarget{bps: map[Breakpoint]bool{}, stops: make(chan Stop, 4)}
	for i := range f.regs {
		f.regs[i].RIP = memBase
		f.regs[i].GPR[0] = uint64(0x1111 * (i + 1))
		f.regs[i].Seg = [6]uint16{0xe033, 0xe02b, 0, 0, 0, 0}
		f.regs[i].CR3 = 0xabc000
		f.regs[i].RFLAGS = 0x202
	}
	for i := range f.mem {
		f.mem[i] = byte(i)
	}
	return f
}

func (f *fakeTarget) VCPUs() []int { return []int{0, 1} }

func (f *fakeTarget) Registers(v int) (*Registers, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.regs[v]
	return &r, nil
}

func (f *fakeTarget) SetRegisters(v int, r *Registers) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.regs[v] = *r
	return nil
}

func (f *fakeTarget) span(addr uint64, n int) int {
	if addr < memBase || addr >= memBase+uint64(len(f.mem)) {
		return 0
	}
	return min(n, int(memBase+uint64(len(f.mem))-addr))
}

func (f *fakeTarget) ReadMemory(_ int, addr uint64, b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.span(addr, len(b))
	if n > 0 {
		copy(b, f.mem[addr-memBase:][:n])
	}
	return n, nil
}

func (f *fakeTarget) WriteMemory(_ int, addr uint64, b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.span(addr, len(b))
	if n > 0 {
		copy(f.mem[addr-memBase:][:n], b[:n])
	}
	return n, nil
}

func (f *fakeTarget) SetBreakpoint(bp Breakpoint) error {
	if bp.Kind == ReadWatch {
		return ErrUnsupported
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bps[bp] = true
	return nil
}

func (f *fakeTarget) ClearBreakpoint(bp Breakpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.bps, bp)
	return nil
}

// step executes vCPU 0's instruction at RIP; it reports a watchpoint hit.
func (f *fakeTarget) step() (Stop, bool) {
	r := &f.regs[0]
	if r.RIP == writeRIP {
		f.writes++
		binary.LittleEndian.PutUint32(f.mem[watchAddr-memBase:], uint32(f.writes))
		for bp := range f.bps {
			if (bp.Kind == WriteWatch || bp.Kind == AccessWatch) && bp.Addr <= watchAddr && watchAddr < bp.Addr+uint64(bp.Len) {
				r.RIP++
				return Stop{VCPU: 0, Signal: SIGTRAP, Reason: "watch", Addr: watchAddr}, true
			}
		}
	}
	r.RIP++
	return Stop{}, false
}

func (f *fakeTarget) breakAt(rip uint64) bool {
	return f.bps[Breakpoint{Kind: SoftwareBreak, Addr: rip, Len: 1}] || f.bps[Breakpoint{Kind: HardwareBreak, Addr: rip, Len: 1}]
}

func (f *fakeTarget) Resume(step int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = true
	if step >= 0 {
		st, hit := f.step()
		if !hit {
			st = Stop{VCPU: step, Signal: SIGTRAP}
		}
		f.running = false
		f.stops <- st
		return nil
	}
	halt := make(chan struct{})
	f.halt = halt
	go func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		first := true
		for f.regs[0].RIP < haltRIP {
			if !first && f.breakAt(f.regs[0].RIP) {
				f.running = false
				f.stops <- Stop{VCPU: 0, Signal: SIGTRAP, Reason: "swbreak"}
				return
			}
			first = false
			if st, hit := f.step(); hit {
				f.running = false
				f.stops <- st
				return
			}
		}
		f.mu.Unlock()
		<-halt // spin until interrupted
		f.mu.Lock()
	}()
	return nil
}

func (f *fakeTarget) Interrupt() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running && f.halt != nil {
		close(f.halt)
		f.halt = nil
		f.running = false
	}
	f.stops <- Stop{VCPU: 0, Signal: SIGINT}
	return nil
}

func (f *fakeTarget) Stops() <-chan Stop { return f.stops }

func (f *fakeTarget) Detach() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bps = map[Breakpoint]bool{}
	f.detached = true
	return nil
}
