package console

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unsafe"
)

// The offsets of struct xencons_interface in io/console.h (x86_64), which
// the tests below use to play the guest: the generated layout must match.
const (
	inOff   = 0
	outOff  = 1024
	inCons  = 3072
	inProd  = 3076
	outCons = 3080
	outProd = 3084
)

func TestRingLayout(t *testing.T) {
	var r ring
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"in", unsafe.Offsetof(r.In), inOff},
		{"out", unsafe.Offsetof(r.Out), outOff},
		{"in_cons", unsafe.Offsetof(r.In_cons), inCons},
		{"in_prod", unsafe.Offsetof(r.In_prod), inProd},
		{"out_cons", unsafe.Offsetof(r.Out_cons), outCons},
		{"out_prod", unsafe.Offsetof(r.Out_prod), outProd},
		{"sizeof", unsafe.Sizeof(r), 3088},
		{"sizeof in", uintptr(inSize), 1024},
		{"sizeof out", uintptr(outSize), 2048},
	} {
		if c.got != c.want {
			t.Errorf("xencons_interface %s at %d, want %d", c.name, c.got, c.want)
		}
	}
}

func put32(page []byte, off int, v uint32) { binary.LittleEndian.PutUint32(page[off:], v) }
func get32(page []byte, off int) uint32    { return binary.LittleEndian.Uint32(page[off:]) }

// guestWrite plays the guest writing msg into the out ring from index start.
func guestWrite(page []byte, start uint32, msg []byte) {
	put32(page, outCons, start)
	for i, c := range msg {
		page[outOff+int((start+uint32(i))%outSize)] = c
	}
	put32(page, outProd, start+uint32(len(msg)))
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("terminal gone") }

func TestOutput(t *testing.T) {
	for _, c := range []struct {
		name   string
		start  uint32
		msg    []byte
		prod   uint32 // overrides out_prod when non-zero
		want   string
		notes  int
		broken bool
	}{
		{"simple", 0, []byte("hello\n"), 0, "hello\n", 1, false},
		{"across the wrap of the index", 0xfffffffa, []byte("hello, console\n"), 0, "hello, console\n", 1, false},
		{"across the end of the ring", outSize - 3, []byte("abcdef"), 0, "abcdef", 1, false},
		{"a full ring", 7, bytes.Repeat([]byte("x"), int(outSize)), 0, string(bytes.Repeat([]byte("x"), int(outSize))), 1, false},
		{"nothing new", 5, nil, 0, "", 0, false},
		{"indices more than a ring apart", 0, nil, outSize + 1, "", 0, true},
		{"producer behind consumer", 100, nil, 99, "", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			page := make([]byte, 4096)
			var out bytes.Buffer
			notes := 0
			b, err := New(page, &out, func() { notes++ })
			if err != nil {
				t.Fatal(err)
			}
			guestWrite(page, c.start, c.msg)
			if c.prod != 0 {
				put32(page, outProd, c.prod)
			}
			b.Kick()
			if out.String() != c.want || notes != c.notes || (b.Err() != nil) != c.broken {
				t.Fatalf("out %q after %d notifications, err %v", out.String(), notes, b.Err())
			}
			if !c.broken && get32(page, outCons) != get32(page, outProd) {
				t.Errorf("out_cons %#x, out_prod %#x", get32(page, outCons), get32(page, outProd))
			}
			if c.broken && b.Input([]byte("x")) != 0 {
				t.Error("a broken console took input")
			}
		})
	}
	page := make([]byte, 4096)
	b, _ := New(page, failingWriter{}, func() {})
	guestWrite(page, 0, []byte("lost"))
	b.Kick()
	if b.Err() == nil {
		t.Error("an output error left the console running")
	}
}

func TestInput(t *testing.T) {
	page := make([]byte, 4096)
	notes := 0
	b, err := New(page, &bytes.Buffer{}, func() { notes++ })
	if err != nil {
		t.Fatal(err)
	}
	if n := b.Input([]byte("ls\n")); n != 3 || string(page[inOff:inOff+3]) != "ls\n" || get32(page, inProd) != 3 || notes != 1 {
		t.Fatalf("input %d %q, in_prod %d, %d notifications", n, page[inOff:inOff+3], get32(page, inProd), notes)
	}
	// The ring holds inSize bytes: the rest does not fit until the guest
	// consumes.
	if n := b.Input(bytes.Repeat([]byte("y"), 2000)); n != int(inSize)-3 {
		t.Errorf("%d bytes fitted in a ring with %d free", n, inSize-3)
	}
	if n := b.Input([]byte("z")); n != 0 || notes != 2 {
		t.Errorf("a full ring took %d bytes (%d notifications)", n, notes)
	}
	put32(page, inCons, 10)
	if n := b.Input([]byte("0123456789ab")); n != 10 || page[inOff] != '0' || page[inOff+9] != '9' {
		t.Errorf("after the guest consumed 10: %d bytes, ring starts %q", n, page[inOff:inOff+10])
	}
	put32(page, inCons, get32(page, inProd)+1) // consumer ahead of producer
	if b.Input([]byte("x")) != 0 || b.Err() == nil {
		t.Error("bogus input indices accepted")
	}
}

func TestNewRefusesShortPage(t *testing.T) {
	if _, err := New(make([]byte, 100), &bytes.Buffer{}, func() {}); err == nil {
		t.Error("short page accepted")
	}
	if _, err := New(make([]byte, 4096)[1:], &bytes.Buffer{}, func() {}); err == nil {
		t.Error("misaligned page accepted")
	}
}

// The stall check: output left in the ring across two checks with no
// event in between is a stall; output that the guest notified (even if
// more came), an empty ring, or a check after Reset is not.
func TestStall(t *testing.T) {
	st := func(prod, cons uint32, kicks uint64) Status {
		return Status{OutProd: prod, OutCons: cons, Kicks: kicks}
	}
	for _, c := range []struct {
		name   string
		checks []Status
		reset  bool // Reset before the last check
		want   bool
	}{
		{"first check", []Status{st(10, 0, 1)}, false, false},
		{"pending, no event in between", []Status{st(10, 0, 1), st(10, 0, 1)}, false, true},
		{"pending and growing, no event", []Status{st(10, 0, 1), st(2048, 0, 1)}, false, true},
		{"pending, but the guest signalled", []Status{st(10, 0, 1), st(20, 10, 2)}, false, false},
		{"drained", []Status{st(10, 0, 1), st(10, 10, 1)}, false, false},
		{"empty then pending", []Status{st(0, 0, 1), st(10, 0, 1)}, false, false},
		{"pending across a pause", []Status{st(10, 0, 1), st(10, 0, 1)}, true, false},
		{"pending, three checks", []Status{st(10, 0, 1), st(10, 0, 1), st(10, 0, 1)}, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s Stall
			got := false
			for i, now := range c.checks {
				if c.reset && i == len(c.checks)-1 {
					s.Reset()
				}
				got = s.Check(now)
			}
			if got != c.want {
				t.Errorf("stalled %v, want %v", got, c.want)
			}
		})
	}
}

// Status counts the guest's events and reads the indices.
func TestStatus(t *testing.T) {
	page := make([]byte, 4096)
	b, err := New(page, &bytes.Buffer{}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	guestWrite(page, 0, []byte("abc"))
	if s := b.Status(); s.Pending() != 3 || s.Kicks != 0 {
		t.Fatalf("before the event: %+v", s)
	}
	b.Kick()
	if s := b.Status(); s.Pending() != 0 || s.Kicks != 1 || s.OutProd != 3 {
		t.Fatalf("after the event: %+v", s)
	}
}
