package physmap

import "testing"

func TestFrameMap(t *testing.T) {
	m, err := ForDomain(2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, pfn := range []uint64{0, 1, 4095} {
		mfn, ok := m.MFN(pfn)
		if !ok || mfn == pfn {
			t.Fatalf("MFN(%#x) = %#x %v", pfn, mfn, ok)
		}
		if back, ok := m.PFN(mfn); !ok || back != pfn {
			t.Errorf("PFN(MFN(%#x)) = %#x %v", pfn, back, ok)
		}
		if gpa, ok := m.MachineToGPA(mfn); !ok || gpa != pfn<<12 {
			t.Errorf("MachineToGPA(%#x) = %#x", mfn, gpa)
		}
	}
	if _, ok := m.MFN(4096); ok {
		t.Error("MFN past the end of RAM")
	}
	// A PFN used as an MFN is never a frame of the domain: that is what
	// makes MFN/PFN confusion visible.
	for _, pfn := range []uint64{0, 17, 4095, MaxPFN - 1} {
		if _, ok := m.PFN(pfn); ok {
			t.Errorf("PFN %#x is accepted as an MFN", pfn)
		}
	}
	// Xen's pages are machine frames with a GPA, but not in the P2M.
	x := m.XenFrame(0)
	if _, ok := m.PFN(x); ok {
		t.Error("shared_info frame is in the P2M")
	}
	if gpa, ok := m.MachineToGPA(x); !ok || gpa != XenWindow {
		t.Errorf("MachineToGPA(shared_info) = %#x %v", gpa, ok)
	}
	if _, ok := m.MachineToGPA(m.XenFrame(XenWindowPages)); ok {
		t.Error("frame past the Xen window translates")
	}
}

func TestDomainsAreDisjoint(t *testing.T) {
	a, _ := ForDomain(1, MaxPFN)
	b, _ := ForDomain(2, MaxPFN)
	last, _ := a.MFN(MaxPFN - 1)
	if _, ok := b.PFN(last); ok || a.XenFrame(XenWindowPages) > b.Base {
		t.Error("domain 1's frames overlap domain 2's")
	}
	if _, err := ForDomain(1, MaxPFN+1); err == nil {
		t.Error("RAM reaching the Xen window accepted")
	}
	if _, err := ForDomain(1, 0); err == nil {
		t.Error("no RAM accepted")
	}
}
