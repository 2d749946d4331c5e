package gdbstub

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestFraming(t *testing.T) {
	for _, p := range []string{"", "OK", "g", "a$b#c}d*e", strings.Repeat("x", 1000)} {
		framed := framePacket([]byte(p))
		ev := readEvent(bufio.NewReader(bytes.NewReader(framed)))
		if ev.err != nil || ev.badSum || string(ev.packet) != p {
			t.Errorf("%q: framed %q read back %+v", p, framed, ev)
		}
	}
	for in, want := range map[string]event{
		"+$g#67":                         {packet: []byte("g")},
		"\x03":                           {interrupt: true},
		"$g#00":                          {badSum: true},
		"$g#zz":                          {badSum: true},
		"garbage$?#3f":                   {packet: []byte("?")},
		"$" + big() + "#" + sumOf(big()): {overlong: true},
	} {
		ev := readEvent(bufio.NewReader(strings.NewReader(in)))
		if ev.interrupt != want.interrupt || ev.badSum != want.badSum || ev.overlong != want.overlong || string(ev.packet) != string(want.packet) {
			t.Errorf("%.20q: %+v, want %+v", in, ev, want)
		}
	}
	if ev := readEvent(bufio.NewReader(strings.NewReader("$abc"))); ev.err == nil {
		t.Error("a packet cut short was not an error")
	}
}

func big() string { return strings.Repeat("m", MaxPacket+10) }

func sumOf(s string) string {
	var sum byte
	for i := 0; i < len(s); i++ {
		sum += s[i]
	}
	return fmt.Sprintf("%02x", sum)
}

// client is a scripted gdb over a pipe.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func startSession(t *testing.T, f *fakeTarget) (*client, chan error) {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Session(context.Background(), a, f) }()
	t.Cleanup(func() { b.Close() })
	return &client{t: t, conn: b, r: bufio.NewReader(b)}, done
}

// cmd sends a packet and returns the reply's payload (acks skipped).
func (c *client) cmd(p string) string {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.conn.Write(framePacket([]byte(p))); err != nil {
		c.t.Fatalf("send %q: %v", p, err)
	}
	return c.reply()
}

func (c *client) reply() string {
	c.t.Helper()
	ev := readEvent(c.r)
	if ev.err != nil {
		c.t.Fatalf("reply: %v", ev.err)
	}
	return string(ev.packet)
}

func TestSession(t *testing.T) {
	f := newFake()
	c, done := startSession(t, f)
	if r := c.cmd("qSupported:multiprocess+;swbreak+"); !strings.Contains(r, "qXfer:features:read+") || !strings.Contains(r, "PacketSize=4000") {
		t.Errorf("qSupported: %q", r)
	}
	if r := c.cmd("?"); r != "T02thread:1;" {
		t.Errorf("initial stop: %q", r)
	}
	if r := c.cmd("qfThreadInfo"); r != "m1,2" {
		t.Errorf("threads: %q", r)
	}
	if r := c.cmd("qXfer:features:read:target.xml:0,20"); r != "m"+targetXML[:0x20] {
		t.Errorf("target.xml head: %q", r)
	}
	if r := c.cmd("qXfer:features:read:target.xml:0,ffff"); r != "l"+targetXML {
		t.Errorf("whole target.xml: %q", r[:20])
	}
	g := c.cmd("g")
	if !strings.HasPrefix(g, "1111000000000000") || len(g) != 2*registerBytes() {
		t.Errorf("g: %d hex digits, %q...", len(g), g[:32])
	}
	if r := c.cmd("p10"); r != "0010000000000000" { // rip
		t.Errorf("p rip: %q", r)
	}
	if r := c.cmd("p12"); r != "33e00000" { // cs
		t.Errorf("p cs: %q", r)
	}
	if r := c.cmd("p2c"); r != "00c0ab0000000000" { // cr3
		t.Errorf("p cr3: %q", r)
	}
	if r := c.cmd("Hg2"); r != "OK" {
		t.Errorf("Hg2: %q", r)
	}
	if r := c.cmd("p0"); r != "2222000000000000" {
		t.Errorf("vCPU 1's rax: %q", r)
	}
	if r := c.cmd("P0=efbeadde00000000"); r != "OK" || f.regs[1].GPR[0] != 0xdeadbeef {
		t.Errorf("P rax: %q %#x", r, f.regs[1].GPR[0])
	}
	if r := c.cmd("G" + g); r != "OK" || f.regs[1].GPR[0] != 0x1111 {
		t.Errorf("G: %q %#x", r, f.regs[1].GPR[0])
	}
	c.cmd("Hg1")
	if r := c.cmd("m1000,4"); r != "00010203" {
		t.Errorf("m: %q", r)
	}
	if r := c.cmd("m2ffe,8"); r != "feff" { // partial: the rest is unmapped
		t.Errorf("m across the end of memory: %q", r)
	}
	if r := c.cmd("m0,4"); r != "E0e" {
		t.Errorf("m of unmapped memory: %q", r)
	}
	if r := c.cmd("M1004,2:abcd"); r != "OK" || f.mem[4] != 0xab {
		t.Errorf("M: %q", r)
	}
	if r := c.cmd("X1006,2:#$"); r != "OK" || f.mem[6] != '#' || f.mem[7] != '$' { // framePacket escapes them

		t.Errorf("X with escapes: %q %x", r, f.mem[6:8])
	}
	// A software breakpoint, continue, stop there.
	if r := c.cmd("Z0,1008,1"); r != "OK" {
		t.Errorf("Z0: %q", r)
	}
	if r := c.cmd("c"); r != "T05thread:1;swbreak:;" || f.regs[0].RIP != 0x1008 {
		t.Errorf("continue to the breakpoint: %q at %#x", r, f.regs[0].RIP)
	}
	if r := c.cmd("z0,1008,1"); r != "OK" {
		t.Errorf("z0: %q", r)
	}
	if r := c.cmd("vCont;s:1;c"); r != "T05thread:1;" || f.regs[0].RIP != 0x1009 {
		t.Errorf("vCont step: %q at %#x", r, f.regs[0].RIP)
	}
	// A write watchpoint fires with its address.
	if r := c.cmd("Z2,2000,4"); r != "OK" {
		t.Errorf("Z2: %q", r)
	}
	if r := c.cmd("Z3,2000,4"); r != "" {
		t.Errorf("Z3 the target refuses: %q", r)
	}
	if r := c.cmd("c"); r != "T05thread:1;watch:2000;" {
		t.Errorf("watchpoint: %q", r)
	}
	c.cmd("z2,2000,4")
	// Continue into the spin, then ^C.
	c.conn.Write(framePacket([]byte("c")))
	time.Sleep(20 * time.Millisecond)
	c.conn.Write([]byte{0x03})
	if r := c.reply(); r != "T02thread:1;" {
		t.Errorf("interrupt: %q", r)
	}
	if r := c.cmd("D"); r != "OK" {
		t.Errorf("detach: %q", r)
	}
	if err := <-done; err != nil {
		t.Errorf("session: %v", err)
	}
}

func registerBytes() int {
	n := 0
	for _, g := range regs {
		n += g.size
	}
	return n
}

// Malformed and hostile packets get error replies; the session goes on.
func TestMalformedPackets(t *testing.T) {
	f := newFake()
	c, _ := startSession(t, f)
	for p, want := range map[string]string{
		"m":                                 "E01",
		"mzz,4":                             "E01",
		"m1000":                             "E01",
		"m1000,ffffffff":                    "E01",
		"m1000," + big()[:20]:               "E01",
		"M1000,4:zz":                        "E01",
		"M1000,8:00":                        "E01",
		"X1000,ffff:ab":                     "E01",
		"pzz":                               "E01",
		"p999":                              "E01",
		"P0=12":                             "E01",
		"Gzz":                               "E01",
		"Z9,1000,1":                         "E01",
		"Z0,zz,1":                           "E01",
		"Hgzz":                              "E01",
		"Hx1":                               "E01",
		"T9":                                "E0e",
		"qXfer:features:read:x:0,1":         "E00",
		"qXfer:features:read:target.xml:zz": "E01",
		"vCont;s:77":                        "E01",
		"vCont;t":                           "",
		"bogus":                             "",
	} {
		if r := c.cmd(p); r != want {
			t.Errorf("%.30q: %q, want %q", p, r, want)
		}
	}
	// An overlong packet is refused whole.
	c.conn.Write([]byte("$" + big() + "#" + sumOf(big())))
	if r := c.reply(); r != "E01" {
		t.Errorf("overlong packet: %q", r)
	}
	// A bad checksum is nacked.
	c.conn.Write([]byte("$g#00"))
	if b, _ := c.r.ReadByte(); b != '-' {
		t.Errorf("bad checksum: %q", b)
	}
	if r := c.cmd("?"); !strings.HasPrefix(r, "T02") {
		t.Errorf("after the garbage: %q", r)
	}
}

// A gdb that goes away leaves the target detached (running free).
func TestDisconnectDetaches(t *testing.T) {
	f := newFake()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, l, f, nil)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cl := &client{t: t, conn: c, r: bufio.NewReader(c)}
	cl.cmd("Z0,1008,1")
	c.Close()
	for i := 0; ; i++ {
		f.mu.Lock()
		d := f.detached
		n := len(f.bps)
		f.mu.Unlock()
		if d && n == 0 {
			break
		}
		if i > 500 {
			t.Fatal("the target was not detached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Real gdb (Debian's) in batch mode: reads the target description and
// registers, memory, breaks, continues, steps, watches, detaches.
func TestRealGDB(t *testing.T) {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("XENRESUME_REQUIRE_TOOLS") == "1" {
			t.Fatal("gdb is missing")
		}
		t.Skip("gdb is not installed")
	}
	f := newFake()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, l, f, nil)
	cmd := exec.CommandContext(ctx, gdb, "-batch", "-nx",
		"-ex", "target remote "+l.Addr().String(),
		"-ex", "info registers rip cs cr3 fs_base",
		"-ex", "x/4xb 0x1000",
		"-ex", "info threads",
		"-ex", "break *0x1008",
		"-ex", "continue",
		"-ex", "print/x $rip",
		"-ex", "stepi",
		"-ex", "print/x $rip",
		"-ex", "delete",
		"-ex", "watch *(int *)0x2000",
		"-ex", "continue",
		"-ex", "print *(int *)0x2000",
		"-ex", "detach")
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil {
		t.Fatalf("gdb: %v\n%s", err, s)
	}
	for _, want := range []string{
		"rip            0x1000", "cs             0xe033", "cr3            0xabc000",
		"0x1000:\t0x00\t0x01\t0x02\t0x03",
		"Thread 2 (vCPU 1)", // one thread per vCPU
		"hit Breakpoint 1, 0x0000000000001008",
		"$1 = 0x1008", "$2 = 0x1009",
		"hit Hardware watchpoint 2: *(int *)0x2000", "New value = 1",
		"$3 = 1",
		"(Remote target) detached",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("gdb output lacks %q:\n%s", want, s)
		}
	}
}

// No packet panics the stub or makes it allocate beyond the packet limit.
func FuzzHandle(f *testing.F) {
	for _, p := range []string{"g", "G00", "p10", "P0=00", "m1000,4", "M1000,1:00", "X1000,1:a", "Z0,1000,1",
		"z2,2000,4", "Hg1", "T1", "qSupported", "qXfer:features:read:target.xml:0,ff", "qThreadExtraInfo,1",
		"vCont?", "QStartNoAckMode", "?"} {
		f.Add([]byte(p))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) > 0 && (p[0] == 'c' || p[0] == 's' || p[0] == 'v' || p[0] == 'Q') {
			return // they resume the target or change the session's mode
		}
		fk := newFake()
		s := &session{t: fk, conn: &bytes.Buffer{}, cThread: -1, stop: Stop{Signal: SIGINT}}
		reply, _, err := s.handle(p)
		if err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		if len(reply) > 2*MaxPacket {
			t.Fatalf("%q: a %d-byte reply", p, len(reply))
		}
	})
}
