package xen

import (
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// A huge mmu_update or mmuext_op count (Xen takes up to 2^31-1) is made a
// batch at a time: each call returns to the vCPU loop (where the vCPU can
// be paused) with a continuation at the next request, the count flagged
// MMU_UPDATE_PREEMPTED and the done count cumulative; the queue of
// page-table writes and of register changes stays bounded.
func TestPVMMUPreemption(t *testing.T) {
	const (
		pdone = 0x8000
		huge  = 0x7fffffff
	)
	cases := []struct {
		name  string
		nr    uint64
		size  uint64
		setup func(e *pvEnv, i int) []byte
	}{
		{"mmu_update", xenabi.HypervisorMmuUpdate, 16, func(e *pvEnv, i int) []byte {
			// The same L1 entry, to alternating frames.
			return le64(e.mfn(pvL1)<<12+0x30*8, e.mfn(0x40+uint64(i%2))<<12|0x63)
		}},
		{"mmuext_op new_baseptr", hcMMUExtOp, 24, func(e *pvEnv, i int) []byte {
			// Alternating kernel L4s: each switch revalidates one.
			l4 := e.mfn(pvL4)
			if i%2 == 0 {
				l4 = e.mfn(0x60)
			}
			return le64(mmuextNewBaseptr, l4, 0)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			copy(e.ram[0x60*4096:0x61*4096], e.ram[pvL4*4096:])
			wantRet(t, "second L4 read-only", e.call(xenabi.HypervisorUpdateVaMapping, 0x60<<12, e.mfn(0x60)<<12|0x61, 2), 0)
			cpu := e.d.pv.cpus[0]
			cpu.ptq = nil
			const batches = 4
			for i := 0; i < batches*mmuBatch; i++ {
				copy(e.ram[pvBuf+uint64(i)*tc.size:], tc.setup(e, i))
			}
			e.cpu.regs.RIP = 0x5000
			rc := e.call(tc.nr, pvBuf, huge, pdone, domidSelf)
			for b := 1; ; b++ {
				wantRet(t, "batch", rc, 0)
				if got := e.u32(pdone); got != uint32(b*mmuBatch) {
					t.Fatalf("batch %d: done %d, want %d (cumulative)", b, got, b*mmuBatch)
				}
				if len(cpu.pending) != 1 {
					t.Fatalf("batch %d: %d register changes queued, want the continuation alone", b, len(cpu.pending))
				}
				if n := len(cpu.ptq); n > 16 {
					t.Fatalf("batch %d: %d page-table writes queued for one entry's changes", b, n)
				}
				e.runLater()
				r := e.cpu.regs
				wantArgs := [4]uint64{pvBuf + uint64(b*mmuBatch)*tc.size, (huge - uint64(b*mmuBatch)) | mmuUpdatePreempted, pdone, domidSelf}
				if r.RIP != 0x5000-2 || r.RAX != tc.nr || [4]uint64{r.RDI, r.RSI, r.RDX, r.R10} != wantArgs {
					t.Fatalf("batch %d: continuation rip %#x rax %d args %#x %#x %#x %#x, want %#x", b, r.RIP, r.RAX, r.RDI, r.RSI, r.RDX, r.R10, wantArgs)
				}
				if b == batches {
					break
				}
				cpu.ptq = nil // the guest made them
				rc = e.call(r.RAX, r.RDI, r.RSI, r.RDX, r.R10)
				e.cpu.regs.RIP = 0x5000
			}
		})
	}
}

// A multicall entry that preempts itself is rewritten with its
// continuation and the multicall continues from it.
func TestPVMulticallSubPreemption(t *testing.T) {
	e := newPVEnv(t)
	const list, reqs, pdone = 0x20000, pvBuf, 0x8000
	for i := 0; i < mmuBatch+1; i++ {
		copy(e.ram[reqs+uint64(i)*16:], le64(e.mfn(0x50)<<12+uint64(8*(i%512)), uint64(i)))
	}
	e.mcEntry(list, 0, xenabi.HypervisorXenVersion, xenabi.XenverVersion)
	e.mcEntry(list, 1, xenabi.HypervisorMmuUpdate, reqs, mmuBatch+1, pdone, domidSelf)
	e.cpu.regs.RIP = 0x5000
	wantRet(t, "multicall", e.call(hcMulticall, list, 2), 0)
	e.runLater()
	r := e.cpu.regs
	if r.RAX != hcMulticall || r.RDI != list+mcEntrySize || r.RSI != 1 {
		t.Fatalf("multicall continuation rax %d rdi %#x rsi %d", r.RAX, r.RDI, r.RSI)
	}
	ent := uint64(list + mcEntrySize)
	if got := [4]uint64{e.get64(ent + 16), e.get64(ent + 24), e.get64(ent + 32), e.get64(ent + 40)}; got != [4]uint64{reqs + mmuBatch*16, 1 | mmuUpdatePreempted, pdone, domidSelf} {
		t.Fatalf("preempted entry rewritten as %#x", got)
	}
	wantRet(t, "continued multicall", e.call(r.RAX, r.RDI, r.RSI), 0)
	if got := e.u32(pdone); got != mmuBatch+1 {
		t.Errorf("done %d, want %d", got, mmuBatch+1)
	}
	if got := e.get64(ent + 8); got != 0 {
		t.Errorf("entry result %#x, want 0", got)
	}
}

func (e *pvEnv) u32(va uint64) uint32 { return uint32(e.get64(va)) }
