package toolstack

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/platform"
)

// Where platformGuest stores what it read.
const (
	platPM1, platPM2 = 0x9100, 0x9104 // two PM timer reads
	platHPETLo       = 0x9108         // the HPET ID's halves
	platHPETHi       = 0x910c
	platRTCA         = 0x9110 // CMOS register A
	platDone         = 0x9114 // 1 once all are stored
)

// platformGuest reads the PM timer at 0xB008 twice with a busy wait
// between, the HPET's ID at 0xFED00000 (two 32-bit MMIO reads) and RTC
// register A through ports 0x70-0x71, stores each, and spins.
func platformGuest() []byte {
	var c code32
	c.Imm(0xbc, hvmtest.Stack) // mov $stack, %esp
	pm := func(to uint32) {
		c.Imm(0xba, 0xb008) // mov $0xb008, %edx
		c.Emit(0xed)        // in (%dx), %eax
		c.Imm(0xa3, to)     // mov %eax, to
	}
	pm(platPM1)
	c.Imm(0xb9, 1<<20)       // mov $N, %ecx
	c.Emit(0x49, 0x75, 0xfd) // 1: dec %ecx; jnz 1b
	pm(platPM2)
	c.Imm(0xa1, 0xfed00000) // mov 0xfed00000, %eax
	c.Imm(0xa3, platHPETLo)
	c.Imm(0xa1, 0xfed00004)
	c.Imm(0xa3, platHPETHi)
	c.Emit(0xb0, 0x0a, 0xe6, 0x70) // mov $0x0a, %al; out %al, $0x70
	c.Emit(0xe4, 0x71)             // in $0x71, %al
	c.Imm(0xa2, platRTCA)          // mov %al, platRTCA
	c.StoreWord(platDone, 1)
	c.Emit(0xeb, 0xfe) // jmp .
	return c.B
}

// An HVM guest finds the PM timer counting, the HPET's ID and the RTC
// where Xen puts them, through real port I/O and MMIO exits; a PVH guest
// (Xen gives it none of them: the negative control) reads all-ones.
func TestHVMPlatformDevices(t *testing.T) {
	for _, kind := range []builder.ContainerKind{builder.KindHVM, builder.KindPVH} {
		t.Run(kind.String(), func(t *testing.T) {
			d := ownHVM(t, HVMConfig{Name: "p", ID: 5, Kind: kind, Image: pvhImage(platformGuest(), true), MemSize: 4 << 20})
			b := make([]byte, 24)
			deadline := time.Now().Add(time.Minute)
			for {
				if err := d.m.Memory().Read(platPM1, b); err != nil {
					t.Fatal(err)
				}
				if binary.LittleEndian.Uint32(b[platDone-platPM1:]) == 1 {
					break
				}
				if time.Now().After(deadline) || d.Status().State.Ended() {
					t.Fatalf("the guest did not finish: %v", d.Status())
				}
				time.Sleep(time.Millisecond)
			}
			le := binary.LittleEndian
			pm1, pm2 := le.Uint32(b[0:]), le.Uint32(b[4:])
			hpet := uint64(le.Uint32(b[12:]))<<32 | uint64(le.Uint32(b[8:]))
			rtcA := b[16]
			if kind == builder.KindPVH {
				if pm1 != ^uint32(0) || pm2 != ^uint32(0) || hpet != ^uint64(0) || rtcA != 0xff {
					t.Fatalf("PVH reads PM %#x %#x, HPET %#x, RTC A %#x: want all-ones", pm1, pm2, hpet, rtcA)
				}
				return
			}
			if pm2 <= pm1 || pm1 == ^uint32(0) {
				t.Errorf("PM timer %#x then %#x: not counting", pm1, pm2)
			}
			if hpet != 0x00f42400_8086a201 {
				t.Errorf("HPET ID %#x", hpet)
			}
			if rtcA&0x7f != 0x26 {
				t.Errorf("RTC register A %#x", rtcA)
			}
			// hvmloader's CMOS memory sizes: 3 MiB above 1 MiB.
			if lo, _ := d.Xen.CMOS(0x17); lo != 0x00 {
				t.Errorf("CMOS 0x17 %#x", lo)
			}
			if hi, _ := d.Xen.CMOS(0x18); hi != 0x0c {
				t.Errorf("CMOS 0x18 %#x, want 0x0c (3072 KiB)", hi)
			}
		})
	}
}

// platformLoop is a guest that does n accesses with insn (its bytes: an
// `in` from the port in %edx, or a load from the address in %esi), then
// stores 1 at platDone and spins.
func platformLoop(n uint32, port uint32, insn ...byte) []byte {
	var c code32
	c.Imm(0xbc, hvmtest.Stack) // mov $stack, %esp
	c.Imm(0xb9, n)             // mov $n, %ecx
	c.Imm(0xba, port)          // mov $port, %edx
	c.Imm(0xbe, port)          // mov $port, %esi
	loop := len(c.B)
	c.Emit(insn...)
	c.Emit(0x49, 0x75, byte(loop-len(c.B)-3)) // dec %ecx; jnz loop
	c.StoreWord(platDone, 1)
	c.Emit(0xeb, 0xfe) // jmp .
	return c.B
}

// runPlatformLoop boots platformLoop in an HVM domain and returns the time
// until it is done and the vCPU's exits.
func runPlatformLoop(b *testing.B, n uint32, port uint32, insn ...byte) (time.Duration, uint64) {
	d, err := CreateHVM(HVMConfig{Name: "b", ID: 6, Kind: builder.KindHVM, Image: pvhImage(platformLoop(n, port, insn...), true), MemSize: 4 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Destroy()
	if err := d.Start(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := d.Unpause(); err != nil {
		b.Fatal(err)
	}
	done := make([]byte, 4)
	for {
		d.m.Memory().Read(platDone, done)
		if done[0] == 1 {
			break
		}
		if d.Status().State.Ended() {
			b.Fatalf("the loop ended: %v", d.Status())
		}
		time.Sleep(50 * time.Microsecond)
	}
	return time.Since(start), d.m.VCPUs()[0].TotalExits()
}

// BenchmarkHVMPlatformAccess: a read of the PM timer (port 0xB008), of
// the HPET's counter (MMIO 0xFED000F0) and of RTC register C, each
// against the same kind of exit to a handler that does nothing (port
// 0xE9's read, unbacked MMIO), in the same run: ns and exits per access
// and the ratio.
func BenchmarkHVMPlatformAccess(b *testing.B) {
	kvmtest.Require(b)
	for _, c := range []struct {
		name         string
		port, bport  uint32
		insn, binsn  []byte
		what, versus string
	}{
		{"pmtimer", 0xb008, 0xe9, []byte{0xed}, []byte{0xec}, "pmtimer", "port"},
		{"hpet", 0xfed000f0, 0xfeb00000, []byte{0x8b, 0x06}, []byte{0x8b, 0x06}, "hpet", "mmio"},
		{"rtc", 0x71, 0xe9, []byte{0xec}, []byte{0xec}, "rtc", "port"},
	} {
		b.Run(c.name, func(b *testing.B) {
			per := func(port uint32, insn []byte) (float64, float64) {
				t1, x1 := runPlatformLoop(b, 1, port, insn...)
				tn, xn := runPlatformLoop(b, uint32(b.N)+1, port, insn...)
				return float64((tn - t1).Nanoseconds()) / float64(b.N), float64(xn-x1) / float64(b.N)
			}
			b.ResetTimer()
			baseNS, baseExits := per(c.bport, c.binsn)
			ns, exits := per(c.port, c.insn)
			b.ReportMetric(baseNS, c.versus+"-ns/op")
			b.ReportMetric(ns, c.what+"-ns/op")
			b.ReportMetric(ns/baseNS, c.what+"/"+c.versus)
			b.ReportMetric(exits, "exits/op")
			b.ReportMetric(baseExits, "exits/"+c.versus)
		})
	}
}

// buttonGuest polls PM1a_STS (V1, 16 bits) until PWRBTN_STS or
// SLPBTN_STS shows, stores what it read at platDone and spins.
func buttonGuest() []byte {
	var c code32
	c.Imm(0xbc, hvmtest.Stack) // mov $stack, %esp
	loop := len(c.B)
	c.Imm(0xba, platform.PM1aEvtV1)             // mov $PM1a_STS, %edx
	c.Emit(0x66, 0xed)                          // in (%dx), %ax
	c.Emit(0x66, 0xa9, 0x00, 0x03)              // test $(PWRBTN|SLPBTN), %ax
	c.Emit(0x74, byte(int8(loop-(len(c.B)+2)))) // jz loop
	c.Emit(0x25, 0xff, 0xff, 0x00, 0x00)        // and $0xffff, %eax
	c.Imm(0xa3, platDone)                       // mov %eax, done
	c.Emit(0xeb, 0xfe)                          // jmp .
	return c.B
}

// `xl trigger DOM power` and `sleep`: the guest finds PWRBTN_STS or
// SLPBTN_STS in PM1a_STS, and only the button pressed. A PVH domain has no
// ACPI PM block: the trigger is refused (the negative control), as is
// one for a domain that ended.
func TestHVMTriggerButtons(t *testing.T) {
	for _, tc := range []struct {
		power bool
		want  uint32
	}{{true, platform.PMPwrBtnSts}, {false, platform.PMSlpBtnSts}} {
		d := ownHVM(t, HVMConfig{Name: "b", ID: 6, Kind: builder.KindHVM, Image: pvhImage(buttonGuest(), true), MemSize: 4 << 20})
		if err := d.PressButton(tc.power); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		for deadline := time.Now().Add(time.Minute); binary.LittleEndian.Uint32(b) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("power=%v: the guest never saw a button in PM1a_STS", tc.power)
			}
			d.m.Memory().Read(platDone, b)
		}
		if got := binary.LittleEndian.Uint32(b); got&(platform.PMPwrBtnSts|platform.PMSlpBtnSts) != tc.want {
			t.Errorf("power=%v: PM1a_STS %#x, want only %#x of the buttons", tc.power, got, tc.want)
		}
		d.Destroy()
		if err := d.PressButton(tc.power); err == nil {
			t.Error("a destroyed domain took a trigger")
		}
	}
	kvmtest.Require(t)
	d, err := CreateHVM(HVMConfig{Name: "b", ID: 6, Kind: builder.KindPVH, Image: pvhImage(buttonGuest(), true), MemSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Destroy()
	if err := d.PressButton(true); err == nil || !strings.Contains(err.Error(), "no ACPI PM block") {
		t.Errorf("trigger power on PVH: %v", err)
	}
}

// The platform devices' interrupts reach the guest through KVM's IO-APIC:
// `trigger power` raises the SCI (IRQ 9, level) that the guest's handler
// takes, clears and EOIs. Negative control: with the pin masked the
// guest's poll finds PWRBTN_STS set and no SCI was taken.
func TestHVMSCIReachesGuest(t *testing.T) {
	for _, masked := range []bool{false, true} {
		d := ownHVM(t, HVMConfig{Name: "s", ID: 7, Kind: builder.KindHVM, Image: pvhImage(hvmtest.SCIGuest(platform.PM1aEvtV1, masked), true), MemSize: 4 << 20})
		waitWord(t, d, hvmtest.SCIReady, 1)
		if err := d.PressButton(true); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if !masked {
			waitWord(t, d, hvmtest.EvtCounter, 1)
		} else {
			waitWord(t, d, hvmtest.SCISeen, 1)
			time.Sleep(20 * time.Millisecond)
			if d.m.Memory().Read(hvmtest.EvtCounter, b); binary.LittleEndian.Uint32(b) != 0 {
				t.Errorf("masked pin: %d SCIs taken", binary.LittleEndian.Uint32(b))
			}
		}
		d.Destroy()
	}
}
