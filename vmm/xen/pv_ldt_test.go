package xen

import (
	"testing"

	"github.com/xenresume/xenresume/vmm/xenabi"
)

// MMUEXT_SET_LDT: Xen's argument checks, then -ENOSYS for an LDT with
// entries, which this host cannot load (docs/XTF.md); no LDT is
// accepted.
func TestPVSetLDT(t *testing.T) {
	for _, tc := range []struct {
		name       string
		base, ents uint64
		want       int64
	}{
		{"none", 0, 0, 0},
		{"none, any base", 0x123, 0, 0},
		{"entries", 0x40000, 16, errno(xenabi.ENOSYS)},
		{"the most entries", 0x40000, 8192, errno(xenabi.ENOSYS)},
		{"too many entries", 0x40000, 8193, errno(xenabi.EINVAL)},
		{"unaligned", 0x40008, 16, errno(xenabi.EINVAL)},
		{"in Xen's range", 0xffff800000000000, 16, errno(xenabi.EINVAL)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPVEnv(t)
			const req = pvBuf + 0x800
			copy(e.ram[req:], le64(mmuextSetLDT, tc.base, tc.ents))
			wantRet(t, "set_ldt", e.call(hcMMUExtOp, req, 1, 0, domidSelf), tc.want)
			if c := e.d.pv.cpus[0]; c.ldtEnts != 0 {
				t.Errorf("LDT of %d entries recorded", c.ldtEnts)
			}
		})
	}
}
