package toolstack

import (
	"bytes"
	"fmt"

	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// StartInfoPFN finds a suspended guest's start_info the way
// xc_domain_resume_any and the saver do: a 64-bit PV guest passes the
// machine frame of its start_info in %rdx, the third argument of
// SCHEDOP_shutdown(SHUTDOWN_suspend), and the toolstack reads it from vCPU
// 0. It returns the page's PFN, and fails when the domain did not suspend,
// when rdx is not one of the domain's machine frames (a guest that passed a
// PFN, say), or when the page there is not a start_info.
func (d *Domain) StartInfoPFN(e xen.Exit) (uint64, error) {
	if e.State != xen.Shutdown || e.Reason != xenabi.ShutdownSuspend {
		return 0, fmt.Errorf("domain %d is not suspended (%v)", d.ID, e)
	}
	frames := d.Xen.Frames()
	pfn, ok := frames.PFN(e.SuspendRDX)
	if !ok {
		return 0, fmt.Errorf("domain %d suspended with rdx %#x, which is not one of its machine frames [%#x, %#x): "+
			"a 64-bit PV guest must pass its start_info MFN", d.ID, e.SuspendRDX, frames.Base, frames.Base+frames.NrPages)
	}
	page, err := d.machine.Memory().Page(pfn << 12)
	if err != nil {
		return 0, err
	}
	if !bytes.HasPrefix(page, []byte("xen-3.0-x86_64\x00")) {
		return 0, fmt.Errorf("domain %d suspended with rdx %#x (PFN %#x), which does not hold a start_info", d.ID, e.SuspendRDX, pfn)
	}
	return pfn, nil
}
