package gdbstub

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// MaxPacket bounds a packet's payload, as advertised in qSupported
// (PacketSize). A longer packet is discarded and answered with an error.
const MaxPacket = 16 << 10

// event is what the reader hands the session: a packet, gdb's interrupt
// (the 0x03 byte), or the end of the connection.
type event struct {
	packet    []byte
	interrupt bool
	overlong  bool  // a packet longer than MaxPacket was discarded
	badSum    bool  // a packet whose checksum did not match (acked '-')
	err       error // the connection ended
}

// readEvent reads the next event from r: acknowledgements ('+', '-') are
// skipped, bytes outside packets ignored, and binary escapes ('}') undone.
func readEvent(r *bufio.Reader) event {
	for {
		c, err := r.ReadByte()
		if err != nil {
			return event{err: err}
		}
		switch c {
		case 0x03:
			return event{interrupt: true}
		case '$':
			return readPacket(r)
		}
	}
}

// readPacket reads a packet's payload after its '$', its '#' and checksum.
func readPacket(r *bufio.Reader) event {
	var buf []byte
	var sum byte
	overlong := false
	for {
		c, err := r.ReadByte()
		if err != nil {
			return event{err: err}
		}
		if c == '#' {
			break
		}
		sum += c
		if c == '}' { // the next byte is escaped: XOR 0x20
			n, err := r.ReadByte()
			if err != nil {
				return event{err: err}
			}
			sum += n
			c = n ^ 0x20
		}
		if len(buf) >= MaxPacket {
			overlong = true
			continue
		}
		buf = append(buf, c)
	}
	var hex [2]byte
	if _, err := io.ReadFull(r, hex[:]); err != nil {
		return event{err: err}
	}
	want, ok := unhexByte(hex[0], hex[1])
	switch {
	case !ok || want != sum:
		return event{badSum: true}
	case overlong:
		return event{overlong: true}
	}
	return event{packet: buf}
}

// framePacket frames payload as $payload#cs, escaping what must be.
func framePacket(payload []byte) []byte {
	out := make([]byte, 0, len(payload)+4)
	out = append(out, '$')
	var sum byte
	for _, c := range payload {
		if c == '$' || c == '#' || c == '}' || c == '*' {
			out = append(out, '}')
			sum += '}'
			c ^= 0x20
		}
		out = append(out, c)
		sum += c
	}
	return append(out, '#', hexDigits[sum>>4], hexDigits[sum&15])
}

const hexDigits = "0123456789abcdef"

func unhexNibble(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unhexByte(hi, lo byte) (byte, bool) {
	h, ok1 := unhexNibble(hi)
	l, ok2 := unhexNibble(lo)
	return h<<4 | l, ok1 && ok2
}

// appendHex appends b as hex.
func appendHex(dst, b []byte) []byte {
	for _, c := range b {
		dst = append(dst, hexDigits[c>>4], hexDigits[c&15])
	}
	return dst
}

// decodeHex decodes a string of hex digit pairs.
func decodeHex(s []byte) ([]byte, error) {
	if len(s)%2 != 0 {
		return nil, errors.New("odd number of hex digits")
	}
	out := make([]byte, len(s)/2)
	for i := range out {
		b, ok := unhexByte(s[2*i], s[2*i+1])
		if !ok {
			return nil, fmt.Errorf("bad hex digit in %q", s[2*i:2*i+2])
		}
		out[i] = b
	}
	return out, nil
}

// parseHex parses a hex number of at most 16 digits.
func parseHex(s []byte) (uint64, error) {
	if len(s) == 0 || len(s) > 16 {
		return 0, fmt.Errorf("bad hex number %q", s)
	}
	var v uint64
	for _, c := range s {
		n, ok := unhexNibble(c)
		if !ok {
			return 0, fmt.Errorf("bad hex number %q", s)
		}
		v = v<<4 | uint64(n)
	}
	return v, nil
}
