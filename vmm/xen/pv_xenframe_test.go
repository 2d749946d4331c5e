package xen

import (
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// Only the Xen-window frames Xen shares with the guest can be mapped
// (review S8): shared_info, grant frames once set up, the v2 status frame
// read-only while v2; every other window frame is refused, and is no
// copy_page source either.
func TestPVXenFrameAllowlist(t *testing.T) {
	cases := []struct {
		name  string
		frame uint64 // index in the Xen window
		flags uint64
		want  int64
	}{
		{"shared_info read-write", 0, 0x63, 0},
		{"shared_info read-only", 0, 0x61, 0},
		{"grant frame not set up", gntFirstFrame, 0x63, errno(xenabi.EPERM)},
		{"status frame in v1", gntStatusFrame, 0x61, errno(xenabi.EPERM)},
		{"unlisted frame", 10, 0x61, errno(xenabi.EPERM)},
		{"last window frame", 15, 0x63, errno(xenabi.EPERM)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			mfn := e.frames.XenFrame(tc.frame)
			wantRet(t, "update_va_mapping", e.call(xenabi.HypervisorUpdateVaMapping, 0x30<<12, mfn<<12|tc.flags, 2), tc.want)
		})
	}
	e := newPVEnv(t)
	e.unmap(0x31)
	copy(e.ram[pvBuf:], le64(mmuextCopyPage, e.mfn(0x31), e.frames.XenFrame(10)))
	wantRet(t, "copy_page from an unlisted Xen frame", e.call(hcMMUExtOp, pvBuf, 1, 0, domidSelf), errno(xenabi.EINVAL))
	copy(e.ram[pvBuf:], le64(mmuextCopyPage, e.mfn(0x31), e.frames.XenFrame(0)))
	wantRet(t, "copy_page from shared_info", e.call(hcMMUExtOp, pvBuf, 1, 0, domidSelf), 0)
}
