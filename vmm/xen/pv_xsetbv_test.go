package xen

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// Xen's valid_xcr0 rules, one table row per rule, each with a value that
// passes next to it.
func TestValidXCR0(t *testing.T) {
	for _, tc := range []struct {
		val  uint64
		want bool
	}{
		{0x1, true},   // x87 alone
		{0x3, true},   // x87, SSE
		{0x7, true},   // and AVX
		{0x0, false},  // no x87
		{0x2, false},  // SSE without x87
		{0x5, false},  // YMM without SSE
		{0xe7, true},  // AVX-512, all three with YMM
		{0xe3, false}, // AVX-512 without YMM
		{0x67, false}, // AVX-512 without HI_ZMM
		{0x27, false}, // OPMASK alone
		{0x1b, true},  // both MPX components
		{0x0b, false}, // BNDREGS alone
		{0x13, false}, // BNDCSR alone
		{0x60007, true},
		{0x20007, false}, // TILECFG alone
		{0x40007, false}, // TILEDATA alone
	} {
		if got := validXCR0(tc.val); got != tc.want {
			t.Errorf("validXCR0(%#x) = %v, want %v", tc.val, got, tc.want)
		}
	}
}

// xsetbv as Xen emulates it for a PV guest: the guest kernel with
// CR4.OSXSAVE may load a valid XCR0 within its CPUID's components; every
// other case is the fault Xen raises.
func TestXSETBVFault(t *testing.T) {
	const max = 0x7 // x87, SSE, AVX
	xsetbv := []byte{0x0f, 0x01, 0xd1}
	for _, tc := range []struct {
		name string
		code []byte
		user bool
		osxs bool
		ecx  uint32
		val  uint64
		want uint64
	}{
		{"x87, SSE, AVX", xsetbv, false, true, 0, 0x7, 0},
		{"x87 alone", xsetbv, false, true, 0, 0x1, 0},
		{"without CR4.OSXSAVE", xsetbv, false, false, 0, 0x7, 6},
		{"66 prefix", append([]byte{0x66}, xsetbv...), false, true, 0, 0x7, 6},
		{"f3 prefix", append([]byte{0xf3}, xsetbv...), false, true, 0, 0x7, 6},
		{"f2 prefix", append([]byte{0xf2}, xsetbv...), false, true, 0, 0x7, 6},
		{"guest user mode", xsetbv, true, true, 0, 0x7, 13},
		{"XCR1", xsetbv, false, true, 1, 0x7, 13},
		{"no x87", xsetbv, false, true, 0, 0x6, 13},
		{"YMM without SSE", xsetbv, false, true, 0, 0x5, 13},
		{"beyond CPUID", xsetbv, false, true, 0, 0xe7, 13},
		{"high half beyond CPUID", xsetbv, false, true, 0, 1<<32 | 0x7, 13},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := x86asm.Decode(tc.code, 64)
			if err != nil || in.Op != x86asm.XSETBV {
				t.Fatalf("decode % x: %v %v", tc.code, in.Op, err)
			}
			c := &pvCPU{kernel: !tc.user}
			if tc.osxs {
				c.cr4 = cr4OSXSAVE
			}
			if got := xsetbvFault(c, &in, tc.ecx, tc.val, max); got != tc.want {
				t.Errorf("fault %d, want %d", got, tc.want)
			}
		})
	}
}
