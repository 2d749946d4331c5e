package console

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestConsoleRing(t *testing.T) {
	page := make([]byte, 4096)
	var out bytes.Buffer
	notes := 0
	b, err := New(page, &out, func() { notes++ })
	if err != nil {
		t.Fatal(err)
	}
	// The guest writes across the wrap of its free-running index.
	msg := []byte("hello, console\n")
	start := uint32(0xfffffffa)
	binary.LittleEndian.PutUint32(page[outCons:], start)
	for i, c := range msg {
		page[outOff+int((start+uint32(i))%outSize)] = c
	}
	binary.LittleEndian.PutUint32(page[outProd:], start+uint32(len(msg)))
	b.Kick()
	if out.String() != string(msg) || notes != 1 {
		t.Fatalf("out %q after %d notifications", out.String(), notes)
	}
	if got := binary.LittleEndian.Uint32(page[outCons:]); got != start+uint32(len(msg)) {
		t.Errorf("out_cons %#x", got)
	}
	if n := b.Input([]byte("ls\n")); n != 3 || string(page[inOff:inOff+3]) != "ls\n" {
		t.Errorf("input %d %q", n, page[:3])
	}
	// Bogus indices stop this console and nothing else.
	binary.LittleEndian.PutUint32(page[outProd:], start+5000)
	b.Kick()
	if b.Err() == nil {
		t.Fatal("bogus indices accepted")
	}
	if b.Input([]byte("x")) != 0 {
		t.Error("a dead console took input")
	}
	if _, err := New(page[:100], &out, func() {}); err == nil {
		t.Error("short page accepted")
	}
}
