// Package acpi builds the ACPI tables an HVM guest finds, as Xen's libacpi
// describes them (tools/libacpi: static_tables.c, acpi2_0.h, build.c,
// dsdt.asl, ssdt_s3.asl, ssdt_s4.asl): RSDP, RSDT, XSDT, FADT, FACS and a
// DSDT carrying the sleep packages \_S3 {1, 1, 0, 0}, \_S4 and \_S5
// {0, 0, 0, 0}. The FADT names Xen's fixed ACPI hardware: PM1a_EVT at
// 0xB000, PM1a_CNT at 0xB004, the PM timer at 0xB008 and GPE0 at 0xAFE0
// (the "V1" locations hvmloader selects), SCI on IRQ 9, the reset register
// at port 0xCF9 (value 6).
//
// Only the tables are built here; placing them in a guest and emulating
// the hardware they describe (PM1a_CNT's SLP_EN, the FACS waking vector on
// resume) are issue #11's next slice.
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Xen's fixed ACPI hardware (public/hvm/ioreq.h, the V1 block).
const (
	PM1aEvtBlk = 0xb000
	PM1aCntBlk = 0xb004
	PMTmrBlk   = 0xb008
	GPE0Blk    = 0xafe0
	GPE0BlkLen = 4
	SCIInt     = 9
	ResetPort  = 0xcf9
	ResetValue = 6
)

// PM1 control register bits (ACPI; aclocal.h).
const (
	SLPTypShift = 10
	SLPTypMask  = 7 << SLPTypShift
	SLPEn       = 1 << 13
	// SLPTypS3 is \_S3's PM1a value; S4 and S5 write SLPTypS5.
	SLPTypS3 = 1
	SLPTypS5 = 0
)

// Table layout constants (acpi2_0.h).
const (
	headerSize = 36
	rsdpSize   = 36
	facsSize   = 64
	// fadtSize is the FADT up to x_gpe1_blk: revision 4 has no
	// sleep_control and sleep_status (build.c trims them below 5).
	fadtSize     = 244
	fadtRevision = 4
	facsVersion  = 1
	// FACSWakingVector and FACSXWakingVector are the offsets of
	// firmware_waking_vector (u32) and x_firmware_waking_vector (u64).
	FACSWakingVector  = 12
	FACSXWakingVector = 24
)

// FADT flags (acpi2_0.h) as static_tables.c sets them.
const (
	flagWBINVD           = 1 << 0
	flagProcC1           = 1 << 2
	flagFixRTC           = 1 << 6
	flagTmrValExt        = 1 << 8
	flagUsePlatformClock = 1 << 15
)

// Tables is a built set of tables: Blob is to be loaded at Base, and the
// RSDP (whose address a guest learns from start_info or the BIOS area
// scan) at RSDPAddr.
type Tables struct {
	Base uint64
	Blob []byte
	// The tables' guest-physical addresses.
	RSDT, XSDT, FADT, FACS, DSDT uint64
	RSDP                         []byte
	RSDPAddr                     uint64
}

// Build lays the tables out from base (page-aligned, below 4 GiB; Xen's
// ACPI area starts at 0xFC001000) and the RSDP for address rsdpAddr.
func Build(base, rsdpAddr uint64) (*Tables, error) {
	if base%4096 != 0 || base >= 1<<32 || rsdpAddr >= 1<<32 || rsdpAddr%16 != 0 {
		return nil, fmt.Errorf("acpi: tables at %#x, RSDP at %#x: want a page-aligned base and a 16-byte-aligned RSDP below 4 GiB", base, rsdpAddr)
	}
	t := &Tables{Base: base, RSDPAddr: rsdpAddr}
	var blob []byte
	place := func(b []byte, align int) uint64 {
		for len(blob)%align != 0 {
			blob = append(blob, 0)
		}
		at := base + uint64(len(blob))
		blob = append(blob, b...)
		return at
	}
	t.FACS = place(facs(), 64)
	t.DSDT = place(dsdt(), 16)
	t.FADT = place(fadt(t.FACS, t.DSDT), 16)
	t.RSDT = place(rsdt(t.FADT), 16)
	t.XSDT = place(xsdt(t.FADT), 16)
	if base+uint64(len(blob)) > 1<<32 {
		return nil, errors.New("acpi: the tables run past 4 GiB")
	}
	t.Blob = blob
	t.RSDP = rsdp(t.RSDT, t.XSDT)
	return t, nil
}

var le = binary.LittleEndian

// header returns a table of size bytes with Xen's common header
// (ACPI_OEM_ID "Xen", ACPI_OEM_TABLE_ID "HVM", creator "HVML"); finish
// fills in the checksum.
func header(sig string, size int, rev byte) []byte {
	b := make([]byte, size)
	copy(b[0:4], sig)
	le.PutUint32(b[4:], uint32(size))
	b[8] = rev
	copy(b[10:16], "Xen\x00\x00\x00")
	copy(b[16:24], "HVM\x00\x00\x00\x00\x00")
	copy(b[28:32], "HVML")
	return b
}

// checksum sets b[at] so that the bytes of b sum to 0 (mod 256).
func checksum(b []byte, at int) {
	b[at] = 0
	var sum byte
	for _, c := range b {
		sum += c
	}
	b[at] = -sum
}

func finish(b []byte) []byte {
	checksum(b, 9)
	return b
}

func facs() []byte {
	b := make([]byte, facsSize)
	copy(b[0:4], "FACS")
	le.PutUint32(b[4:], facsSize)
	b[32] = facsVersion
	return b
}

// gas is a Generic Address Structure in system I/O space.
func gas(b []byte, bits uint8, addr uint64) {
	b[0] = 1 // ACPI_SYSTEM_IO
	b[1] = bits
	le.PutUint64(b[4:], addr)
}

func fadt(facsAt, dsdtAt uint64) []byte {
	b := header("FACP", fadtSize, fadtRevision)
	le.PutUint32(b[36:], uint32(facsAt)) // firmware_ctrl
	le.PutUint32(b[40:], uint32(dsdtAt))
	le.PutUint16(b[46:], SCIInt)
	le.PutUint32(b[56:], PM1aEvtBlk)
	le.PutUint32(b[64:], PM1aCntBlk)
	le.PutUint32(b[76:], PMTmrBlk)
	le.PutUint32(b[80:], GPE0Blk)
	b[88] = 4 // pm1_evt_len
	b[89] = 2 // pm1_cnt_len
	b[91] = 4 // pm_tmr_len
	b[92] = GPE0BlkLen
	le.PutUint16(b[96:], 0x0fff) // p_lvl2_lat: no C2
	le.PutUint16(b[98:], 0x0fff) // p_lvl3_lat: no C3
	le.PutUint32(b[112:], flagProcC1|flagWBINVD|flagFixRTC|flagTmrValExt|flagUsePlatformClock)
	gas(b[116:], 8, ResetPort)
	b[128] = ResetValue
	le.PutUint64(b[132:], facsAt) // x_firmware_ctrl
	le.PutUint64(b[140:], dsdtAt) // x_dsdt
	gas(b[148:], 32, PM1aEvtBlk)
	gas(b[172:], 16, PM1aCntBlk)
	gas(b[208:], 32, PMTmrBlk)
	gas(b[220:], 8*GPE0BlkLen, GPE0Blk)
	return finish(b)
}

func rsdt(fadtAt uint64) []byte {
	b := header("RSDT", headerSize+4, 1)
	le.PutUint32(b[36:], uint32(fadtAt))
	return finish(b)
}

func xsdt(fadtAt uint64) []byte {
	b := header("XSDT", headerSize+8, 1)
	le.PutUint64(b[36:], fadtAt)
	return finish(b)
}

// sleepPackage is the AML of Name (\_Sx_, Package (0x04) {a, a, 0, 0}).
func sleepPackage(state byte, typ byte) []byte {
	elem := byte(0x00) // ZeroOp
	if typ == 1 {
		elem = 0x01 // OneOp
	}
	return []byte{
		0x08,                       // NameOp
		'\\', '_', 'S', state, '_', // \_Sx_
		0x12, 0x06, 0x04, // PackageOp, PkgLength 6, NumElements 4
		elem, elem, 0x00, 0x00,
	}
}

func dsdt() []byte {
	aml := append(append(sleepPackage('3', SLPTypS3), sleepPackage('4', SLPTypS5)...), sleepPackage('5', SLPTypS5)...)
	b := header("DSDT", headerSize+len(aml), 2)
	copy(b[headerSize:], aml)
	return finish(b)
}

func rsdp(rsdtAt, xsdtAt uint64) []byte {
	b := make([]byte, rsdpSize)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], "Xen\x00\x00\x00")
	b[15] = 2 // ACPI_2_0_RSDP_REVISION
	le.PutUint32(b[16:], uint32(rsdtAt))
	le.PutUint32(b[20:], rsdpSize)
	le.PutUint64(b[24:], xsdtAt)
	var sum byte
	for _, c := range b[:20] {
		sum += c
	}
	b[8] = -sum // the ACPI 1.0 checksum covers the first 20 bytes
	checksum(b, 32)
	return b
}
