package hvm

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/machine"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// offline is a Domain over plain memory (no KVM): 2 MiB of RAM and the
// special pages, for the handlers' table tests. Guest pointers are
// physical (paging off), as in XTF's hvm32.
func offline(t *testing.T) (*Domain, *call, *bytes.Buffer) {
	t.Helper()
	mem := machine.NewMemory(
		machine.Region{Name: "ram", GPA: 0, Mem: make([]byte, 2<<20)},
		machine.Region{Name: "special", GPA: builder.SpecialPFNBase << 12, Mem: make([]byte, builder.NrSpecialPages<<12)},
	)
	var console bytes.Buffer
	d := &Domain{kind: builder.KindHVM, id: 7, mem: mem, console: &console, log: slog.New(slog.DiscardHandler),
		ended: make(chan struct{}), grantFrames: map[uint64]uint64{}, gntVersion: 1, enosysSeen: map[uint64]bool{}, warned: map[string]bool{}}
	d.params[ParamStorePFN] = builder.StorePFN
	d.params[ParamConsolePFN] = builder.ConsolePFN
	d.params[ParamConsoleEvtchn] = ConsolePort
	d.params[ParamIdentPT] = builder.IdentPTPFN << 12
	d.bindBackendLocked(ConsolePort, d.drainConsole)
	d.ensureVCPUsLocked()
	return d, &call{d: d, long: true}, &console
}

const argVA = 0x1000 // where the tests put a hypercall's argument

func param(t *testing.T, c *call, op uint64, dom uint16, idx uint32, val uint64) (int64, uint64) {
	t.Helper()
	b := make([]byte, 16)
	binary.LittleEndian.PutUint16(b, dom)
	binary.LittleEndian.PutUint32(b[4:], idx)
	binary.LittleEndian.PutUint64(b[8:], val)
	if err := c.d.mem.Write(argVA, b); err != nil {
		t.Fatal(err)
	}
	ret := c.dispatch(xenabi.HypervisorHVMOp, [5]uint64{op, argVA})
	c.d.mem.Read(argVA, b)
	return ret, binary.LittleEndian.Uint64(b[8:])
}

// TestParams is hvm_allow_get_param and hvm_allow_set_param for a guest on
// itself, and do_hvm_op's checks on the domain and the index.
func TestParams(t *testing.T) {
	const self = DomIDSelf
	for _, tc := range []struct {
		name     string
		op       uint64
		dom      uint16
		idx      uint32
		val      uint64
		want     int64
		wantRead uint64 // for a successful get
	}{
		{"get STORE_PFN", hvmopGetParam, self, ParamStorePFN, 0, 0, builder.StorePFN},
		{"get CONSOLE_PFN by own id", hvmopGetParam, 7, ParamConsolePFN, 0, 0, builder.ConsolePFN},
		{"get CONSOLE_EVTCHN", hvmopGetParam, self, ParamConsoleEvtchn, 0, 0, ConsolePort},
		{"get STORE_EVTCHN (no xenstore)", hvmopGetParam, self, ParamStoreEvtchn, 0, 0, 0},
		{"get IDENT_PT: EPERM", hvmopGetParam, self, ParamIdentPT, 0, -xenabi.EPERM, 0},
		{"get ACPI_S_STATE: EPERM", hvmopGetParam, self, ParamACPISState, 0, -xenabi.EPERM, 0},
		{"get IOREQ_PFN: EPERM", hvmopGetParam, self, ParamIOReqPFN, 0, -xenabi.EPERM, 0},
		{"get deprecated 4: EINVAL", hvmopGetParam, self, 4, 0, -xenabi.EINVAL, 0},
		{"get past HVM_NR_PARAMS: EINVAL", hvmopGetParam, self, NrParams, 0, -xenabi.EINVAL, 0},
		{"get another domain: ESRCH", hvmopGetParam, 8, ParamStorePFN, 0, -xenabi.ESRCH, 0},
		{"set STORE_PFN: EPERM", hvmopSetParam, self, ParamStorePFN, 0x1234, -xenabi.EPERM, 0},
		{"set CONSOLE_PFN: EPERM", hvmopSetParam, self, ParamConsolePFN, 0x1234, -xenabi.EPERM, 0},
		{"set ACPI_S_STATE: EPERM", hvmopSetParam, self, ParamACPISState, 3, -xenabi.EPERM, 0},
		{"set ALTP2M: EEXIST", hvmopSetParam, self, ParamAltp2m, 1, -xenabi.EEXIST, 0},
		{"set X87_FIP_WIDTH 3: EINVAL", hvmopSetParam, self, ParamX87FIPWidth, 3, -xenabi.EINVAL, 0},
		{"set ACPI_IOPORTS_LOCATION 2: EINVAL", hvmopSetParam, self, ParamACPIIOPortsLoc, 2, -xenabi.EINVAL, 0},
		{"set CALLBACK_IRQ", hvmopSetParam, self, ParamCallbackIRQ, 2<<56 | 0xf3, 0, 0},
		{"set X87_FIP_WIDTH 4", hvmopSetParam, self, ParamX87FIPWidth, 4, 0, 0},
		{"set another domain: ESRCH", hvmopSetParam, 8, ParamCallbackIRQ, 1, -xenabi.ESRCH, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c, _ := offline(t)
			ret, got := param(t, c, tc.op, tc.dom, tc.idx, tc.val)
			if ret != tc.want {
				t.Fatalf("returned %d, want %d", ret, tc.want)
			}
			if tc.op == hvmopGetParam && ret == 0 && got != tc.wantRead {
				t.Fatalf("read %#x, want %#x", got, tc.wantRead)
			}
			if tc.op == hvmopSetParam && ret == 0 {
				if _, back := param(t, c, hvmopGetParam, DomIDSelf, tc.idx, 0); back != tc.val {
					t.Fatalf("set %#x, read back %#x", tc.val, back)
				}
			}
		})
	}
	// VM86_TSS is kept as VM86_TSS_SIZED with size 128.
	_, c, _ := offline(t)
	if ret, _ := param(t, c, hvmopSetParam, DomIDSelf, ParamVM86TSS, 0x5000); ret != 0 {
		t.Fatal(ret)
	}
	if _, v := param(t, c, hvmopGetParam, DomIDSelf, ParamVM86TSSSized, 0); v != 128<<32|0x5000 {
		t.Fatalf("VM86_TSS_SIZED = %#x", v)
	}
	// A bad pointer is -EFAULT, never a host fault.
	if ret := c.dispatch(xenabi.HypervisorHVMOp, [5]uint64{hvmopGetParam, 1 << 40}); ret != -xenabi.EFAULT {
		t.Fatalf("get_param at an unmapped address: %d", ret)
	}
}

func TestHypercallPage(t *testing.T) {
	d, _, _ := offline(t)
	for _, long := range []bool{false, true} {
		if err := d.writeHypercallPage(0x3000, long); err != nil {
			t.Fatal(err)
		}
		page := make([]byte, 4096)
		d.mem.Read(0x3000, page)
		want := []byte{0xb8, 29, 0, 0, 0, 0xe5, HypercallPort, 0xc3}
		if long {
			want = []byte{0xb8, 29, 0, 0, 0, 0xe5, HypercallPort, 0x48, 0x98, 0xc3}
		}
		if st := page[29*32:]; !bytes.Equal(st[:len(want)], want) || st[len(want)] != 0xcc {
			t.Errorf("long %v: sched_op stub % x, want % x then int3", long, st[:12], want)
		}
		if !bytes.Equal(page[23*32:23*32+3], []byte{0x0f, 0x0b, 0xcc}) {
			t.Errorf("iret stub % x, want ud2", page[23*32:23*32+3])
		}
		if page[0] == 0xc3 {
			t.Error("page 0 still starts with ret") // XTF's check
		}
	}
	for _, gpa := range []uint64{0xfee00000, 4 << 20} {
		if err := d.writeHypercallPage(gpa, true); err == nil {
			t.Errorf("hypercall page at %#x (not RAM) accepted", gpa)
		}
	}
}

func physmap(t *testing.T, c *call, dom uint16, space uint32, idx, gfn uint64) int64 {
	t.Helper()
	b := make([]byte, 24)
	binary.LittleEndian.PutUint16(b, dom)
	binary.LittleEndian.PutUint32(b[4:], space)
	binary.LittleEndian.PutUint64(b[8:], idx)
	binary.LittleEndian.PutUint64(b[16:], gfn)
	if !c.long {
		binary.LittleEndian.PutUint32(b[8:], uint32(idx))
		binary.LittleEndian.PutUint32(b[12:], uint32(gfn))
	}
	c.d.mem.Write(argVA, b)
	return c.dispatch(xenabi.HypervisorMemoryOp, [5]uint64{xenmemAddToPhysmap, argVA})
}

func TestAddToPhysmap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		long  bool
		dom   uint16
		space uint32
		idx   uint64
		gfn   uint64
		want  int64
	}{
		{"shared_info", true, DomIDSelf, mapspaceSharedInfo, 0, 0x120, 0},
		{"shared_info, 32-bit layout", false, DomIDSelf, mapspaceSharedInfo, 0, 0x120, 0},
		{"shared_info idx 1", true, DomIDSelf, mapspaceSharedInfo, 1, 0x120, -xenabi.EINVAL},
		{"shared_info outside RAM", true, DomIDSelf, mapspaceSharedInfo, 0, 0xfee00, -xenabi.EINVAL},
		{"shared_info at a huge gfn", true, DomIDSelf, mapspaceSharedInfo, 0, 1 << 52, -xenabi.EINVAL},
		{"grant frame 0", true, DomIDSelf, mapspaceGrantTable, 0, 0x121, 0},
		{"grant frame past the limit", true, DomIDSelf, mapspaceGrantTable, maxGrantFrames, 0x121, -xenabi.EINVAL},
		{"v2 status frame under v1", true, DomIDSelf, mapspaceGrantTable, grantTableStatusFlag, 0x121, -xenabi.EINVAL},
		{"another domain", true, 3, mapspaceSharedInfo, 0, 0x120, -xenabi.ESRCH},
		{"gmfn: not yet", true, DomIDSelf, 2, 0x10, 0x120, -xenabi.ENOSYS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, c, _ := offline(t)
			c.long = tc.long
			d.mem.Write(tc.gfn<<12, []byte{0xaa})
			if got := physmap(t, c, tc.dom, tc.space, tc.idx, tc.gfn); got != tc.want {
				t.Fatalf("returned %d, want %d", got, tc.want)
			}
			if tc.want == 0 {
				b := []byte{1}
				d.mem.Read(tc.gfn<<12, b)
				if b[0] != 0 {
					t.Error("the page kept the RAM's contents")
				}
				if tc.space == mapspaceSharedInfo && d.sharedInfo != tc.gfn {
					t.Errorf("shared_info at %#x", d.sharedInfo)
				}
			}
		})
	}
}

func TestGrantTableVersion(t *testing.T) {
	_, c, _ := offline(t)
	set := func(v uint32, count uint64) int64 {
		c.d.mem.Write(argVA, binary.LittleEndian.AppendUint32(nil, v))
		return c.dispatch(xenabi.HypervisorGrantTableOp, [5]uint64{gnttabopSetVersion, argVA, count})
	}
	if set(2, 1) != 0 || set(1, 1) != 0 {
		t.Fatal("set_version 2 or 1 refused")
	}
	if got := set(3, 1); got != -xenabi.EINVAL {
		t.Errorf("set_version 3: %d", got)
	}
	if got := set(1, 2); got != -xenabi.EINVAL {
		t.Errorf("set_version with count 2: %d", got)
	}
	if got := c.dispatch(xenabi.HypervisorGrantTableOp, [5]uint64{7 /* transfer */, argVA, 1}); got != -xenabi.ENOSYS {
		t.Errorf("transfer: %d", got)
	}
}

func TestXenVersion(t *testing.T) {
	_, c, _ := offline(t)
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverVersion}); got != 4<<16|17 {
		t.Errorf("version %#x", got)
	}
	c.d.mem.Write(argVA, bytes.Repeat([]byte{0xee}, 32))
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverExtraversion, argVA}); got != 0 {
		t.Fatalf("extraversion: %d", got)
	}
	b := make([]byte, 17)
	c.d.mem.Read(argVA, b)
	if string(b[:10]) != "-xenresume" || !bytes.Equal(b[10:16], make([]byte, 6)) || b[16] != 0xee {
		t.Errorf("extraversion % x: want the string NUL-padded to 16 bytes and nothing after", b)
	}
	c.d.mem.Write(argVA, make([]byte, 8))
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverGetFeatures, argVA}); got != 0 {
		t.Fatal(got)
	}
	c.d.mem.Read(argVA, b[:8])
	if f := binary.LittleEndian.Uint32(b[4:]); f != hvmFeatures || f&(1<<2) == 0 {
		t.Errorf("features %#x", f)
	}
	for _, cmd := range []uint64{xenabi.XenverExtraversion, xenabi.XenverCapabilities, xenabi.XenverGetFeatures} {
		if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{cmd, 1 << 40}); got != -xenabi.EFAULT {
			t.Errorf("cmd %d at a bad pointer: %d", cmd, got)
		}
	}
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverPagesize}); got != 4096 {
		t.Errorf("pagesize: %d", got)
	}
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverPagesize, argVA}); got != -xenabi.EINVAL {
		t.Errorf("pagesize with a handle: %d, want -EINVAL", got)
	}
	c.d.mem.Write(argVA, bytes.Repeat([]byte{0xee}, 8))
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverPlatformParameters, argVA}); got != 0 {
		t.Fatal(got)
	}
	c.d.mem.Read(argVA, b[:8])
	if !bytes.Equal(b[:8], make([]byte, 8)) {
		t.Errorf("platform_parameters % x: virt_start is 0 for HVM", b[:8])
	}
	if got := c.dispatch(xenabi.HypervisorXenVersion, [5]uint64{xenabi.XenverCommandline, argVA}); got != -xenabi.EPERM {
		t.Errorf("commandline: %d", got)
	}
	if got := c.dispatch(xenabi.HypervisorConsoleIO, [5]uint64{xenabi.ConsoleioWrite, 5, argVA}); got != -xenabi.EPERM {
		t.Errorf("console_io write from a domU: %d", got)
	}
	for _, nr := range []uint64{xenabi.HypervisorSetTrapTable, xenabi.HypervisorMmuUpdate, xenabi.HypervisorIret, 200} {
		if got := c.dispatch(nr, [5]uint64{}); got != -xenabi.ENOSYS {
			t.Errorf("hypercall %d: %d, want -ENOSYS", nr, got)
		}
	}
}

// ring puts s in the console ring's out[] from index cons.
func ring(t *testing.T, d *Domain, cons uint32, s string, prod uint32) {
	t.Helper()
	page, err := d.mem.Page(builder.ConsolePFN << 12)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(s) {
		page[consOutOff+int((cons+uint32(i))%consOutSize)] = s[i]
	}
	binary.LittleEndian.PutUint32(page[consOutConsOff:], cons)
	binary.LittleEndian.PutUint32(page[consOutProdOff:], prod)
}

func TestConsoleRing(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cons, prod uint32
		text       string
		want       string
	}{
		{"simple", 0, 6, "hello\n", "hello\n"},
		{"wraps", consOutSize - 2, consOutSize + 3, "abcde", "abcde"},
		{"index wraps at 2^32", 0xfffffffe, 2, "wxyz", "wxyz"},
		{"empty", 5, 5, "", ""},
		{"producer past the ring (hostile)", 0, consOutSize + 1, "", ""},
		{"producer behind the consumer (hostile)", 10, 9, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, c, out := offline(t)
			ring(t, d, tc.cons, tc.text, tc.prod)
			c.d.mem.Write(argVA, binary.LittleEndian.AppendUint32(nil, ConsolePort))
			if got := c.dispatch(xenabi.HypervisorEventChannelOp, [5]uint64{evtchnopSend, argVA}); got != 0 {
				t.Fatalf("send: %d", got)
			}
			if out.String() != tc.want {
				t.Fatalf("console %q, want %q", out.String(), tc.want)
			}
			page, _ := d.mem.Page(builder.ConsolePFN << 12)
			if cons := binary.LittleEndian.Uint32(page[consOutConsOff:]); cons != tc.prod {
				t.Fatalf("out_cons %d, want %d (caught up)", cons, tc.prod)
			}
		})
	}
	_, c, _ := offline(t)
	c.d.mem.Write(argVA, binary.LittleEndian.AppendUint32(nil, 9))
	if got := c.dispatch(xenabi.HypervisorEventChannelOp, [5]uint64{evtchnopSend, argVA}); got != -xenabi.EINVAL {
		t.Errorf("send on an unbound port: %d", got)
	}
}

func TestShutdown(t *testing.T) {
	d, c, out := offline(t)
	ring(t, d, 0, "bye\n", 4)
	c.d.mem.Write(argVA, binary.LittleEndian.AppendUint32(nil, xenabi.ShutdownCrash))
	if got := c.dispatch(xenabi.HypervisorSchedOp, [5]uint64{xenabi.SchedopShutdown, argVA}); got != 0 {
		t.Fatal(got)
	}
	select {
	case <-d.ended:
	default:
		t.Fatal("the domain did not end")
	}
	if d.exit.Reason != xenabi.ShutdownCrash || d.exit.Crash != nil || out.String() != "bye\n" {
		t.Fatalf("exit %v, console %q", d.exit, out.String())
	}
	if got := c.dispatch(xenabi.HypervisorSchedOp, [5]uint64{xenabi.SchedopShutdown, 1 << 40}); got != -xenabi.EFAULT {
		t.Errorf("shutdown with a bad pointer: %d", got)
	}
}

func TestDebugPort(t *testing.T) {
	var logged strings.Builder
	d, _, _ := offline(t)
	d.log = slog.New(slog.NewTextHandler(&logged, nil))
	d.debugPIO(nil, DebugPort, true, []byte("hi\x01 there\n"))
	if !strings.Contains(logged.String(), `line="hi there"`) {
		t.Errorf("logged %q", logged.String())
	}
	b := []byte{0}
	d.debugPIO(nil, DebugPort, false, b)
	if b[0] != 0xe9 {
		t.Errorf("read %#x, want 0xe9", b[0])
	}
	b = []byte{0, 0, 0, 0}
	d.mmio(nil, 0xfec00010, false, b)
	if !bytes.Equal(b, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("unclaimed MMIO read % x", b)
	}
}

var _ io.Writer = (*bytes.Buffer)(nil)

// FuzzHypercall: whatever a guest passes, a hypercall returns a result and
// never panics.
func FuzzHypercall(f *testing.F) {
	f.Add(uint64(xenabi.HypervisorHVMOp), uint64(hvmopGetParam), uint64(argVA), uint64(0), true, []byte{0xf0, 0x7f, 0, 0, 1})
	f.Add(uint64(xenabi.HypervisorMemoryOp), uint64(xenmemAddToPhysmap), uint64(argVA), uint64(0), false, []byte{0xf0, 0x7f})
	f.Add(uint64(xenabi.HypervisorEventChannelOp), uint64(evtchnopSend), uint64(argVA), uint64(1), true, []byte{2})
	f.Add(uint64(xenabi.HypervisorSchedOp), uint64(xenabi.SchedopShutdown), uint64(argVA), uint64(0), true, []byte{3})
	f.Fuzz(func(t *testing.T, nr, a0, a1, a2 uint64, long bool, arg []byte) {
		d, c, _ := offline(t)
		c.long = long
		if len(arg) > 64 {
			arg = arg[:64]
		}
		d.mem.Write(argVA, arg)
		ring(t, d, uint32(a2), "x", uint32(a2>>32))
		c.dispatch(nr%64, [5]uint64{a0 % 32, a1, a2})
	})
}

func TestPM1aCnt(t *testing.T) {
	d, _, _ := offline(t)
	d.pm1aCnt = pm1aSCIEn
	b := []byte{0, 0}
	d.pm1aCntPIO(nil, 0xb004, false, b)
	if b[0] != 1 || b[1] != 0 {
		t.Fatalf("PM1a_CNT reads % x, want SCI_EN", b)
	}
	// A sleep type no package names, with SLP_EN: ignored, SLP_EN reads 0.
	if err := d.pm1aCntPIO(nil, 0xb004, true, []byte{0x01, 0x3c}); err != nil {
		t.Fatal(err)
	}
	d.pm1aCntPIO(nil, 0xb005, false, b[:1])
	if b[0] != 0x1c {
		t.Errorf("high byte reads %#x, want SLP_TYP 7 without SLP_EN", b[0])
	}
	select {
	case <-d.ended:
		t.Fatal("SLP_TYP 7 ended the domain")
	default:
	}
	// S3 (SLP_TYP 1) needs a vCPU: the KVM tests in vmm/toolstack.
	// A byte write to the high half: SLP_TYP 0 | SLP_EN is S5.
	if err := d.pm1aCntPIO(nil, 0xb005, true, []byte{0x20}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.ended:
		if d.exit.Reason != xenabi.ShutdownPoweroff {
			t.Errorf("exit %v", d.exit)
		}
	default:
		t.Fatal("S5 did not end the domain")
	}
}

func TestFIFOEventChannels(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  uint64
		gfn  uint64
		off  uint32
		vcpu uint32
		want int64
	}{
		{"init_control on RAM: no FIFO here", evtchnopInitControl, 0x100, 0, 0, -xenabi.EOPNOTSUPP},
		{"init_control at GFN -2 (xsa-188)", evtchnopInitControl, ^uint64(1), 0, 0, -xenabi.EINVAL},
		{"misaligned offset", evtchnopInitControl, 0x100, 4, 0, -xenabi.EINVAL},
		{"offset past the page", evtchnopInitControl, 0x100, 4096 - 56, 0, -xenabi.EINVAL},
		{"no such vCPU", evtchnopInitControl, 0x100, 0, 1, -xenabi.ENOENT},
		{"expand_array", evtchnopExpandArray, 0, 0, 0, -xenabi.EOPNOTSUPP},
		{"set_priority", evtchnopSetPriority, 0, 0, 0, -xenabi.EOPNOTSUPP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c, _ := offline(t)
			b := binary.LittleEndian.AppendUint64(nil, tc.gfn)
			b = binary.LittleEndian.AppendUint32(b, tc.off)
			b = binary.LittleEndian.AppendUint32(b, tc.vcpu)
			c.d.mem.Write(argVA, b)
			if got := c.dispatch(xenabi.HypervisorEventChannelOp, [5]uint64{tc.cmd, argVA}); got != tc.want {
				t.Fatalf("returned %d, want %d", got, tc.want)
			}
		})
	}
}

// RestoreParam takes the params a save stream carries, as libxc's restore
// sets them, and refuses what this container cannot honour.
func TestRestoreParam(t *testing.T) {
	for _, tc := range []struct {
		name string
		idx  uint64
		val  uint64
		want string // "" for accepted
	}{
		{"store pfn as placed", ParamStorePFN, builder.StorePFN, ""},
		{"console pfn elsewhere", ParamConsolePFN, 0x1234, "this container has"},
		{"ident pt as placed", ParamIdentPT, builder.IdentPTPFN << 12, ""},
		{"vm86 tss sized", ParamVM86TSSSized, 128 << 32, ""},
		{"fip width 8", ParamX87FIPWidth, 8, ""},
		{"fip width 3", ParamX87FIPWidth, 3, "X87_FIP_WIDTH"},
		{"ioports location 2", ParamACPIIOPortsLoc, 2, "ACPI_IOPORTS_LOCATION"},
		{"viridian", ParamViridian, 1, "no Viridian"},
		{"callback irq (not in a stream)", ParamCallbackIRQ, 1, "not one a save stream carries"},
		{"store evtchn (the new domain's)", ParamStoreEvtchn, 5, "not one a save stream carries"},
		{"beyond", NrParams, 1, "not one a save stream carries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, _ := offline(t)
			err := d.RestoreParam(tc.idx, tc.val)
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want == "":
				if v, _ := d.Param(int(tc.idx)); v != tc.val {
					t.Fatalf("param %d = %#x after restoring %#x", tc.idx, v, tc.val)
				}
			case err == nil || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("%v, want %q", err, tc.want)
			}
		})
	}
}

// The xenstore port: a send on it reaches xenstored once SetStore
// connected one, and is -EINVAL (no such port) before, as the param
// STORE_EVTCHN 0 says.
func TestStorePort(t *testing.T) {
	d, c, _ := offline(t)
	send := func() int64 {
		c.d.mem.Write(argVA, []byte{StorePort, 0, 0, 0})
		return c.dispatch(xenabi.HypervisorEventChannelOp, [5]uint64{evtchnopSend, argVA})
	}
	if r := send(); r != -xenabi.EINVAL {
		t.Fatalf("send with no xenstored: %d", r)
	}
	kicks := 0
	d.SetStore(func() { kicks++ })
	if p, _ := d.Param(ParamStoreEvtchn); p != StorePort {
		t.Fatalf("STORE_EVTCHN %d", p)
	}
	if r := send(); r != 0 || kicks != 1 {
		t.Fatalf("send: %d, %d kicks", r, kicks)
	}
}
