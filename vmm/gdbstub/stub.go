package gdbstub

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// Serve serves gdb sessions on l, one at a time, until ctx ends. A session
// that ends (gdb detached, disconnected or sent garbage) leaves the guest
// running free (Target.Detach).
func Serve(ctx context.Context, l net.Listener, t Target, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("gdbstub: accept: %w", err)
		}
		err = Session(ctx, c, t)
		c.Close()
		if err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
			log.Warn("gdb session ended", "err", err)
		}
		if derr := t.Detach(); derr != nil {
			log.Warn("gdbstub: detach", "err", derr)
		}
	}
}

// farewellWait bounds how long a session that ends with its server (the
// domain ended and runvm exits) waits for the target's exit to tell gdb.
const farewellWait = time.Second

// farewell tells a gdb that waits for the guest how it ended, when the
// session ends because its server does (runvm exits after a save or a
// shutdown): gdb then says the program exited rather than that the
// connection closed.
func (s *session) farewell(t Target) {
	if !s.running {
		return
	}
	select {
	case st := <-t.Stops():
		if st.Exited {
			s.stop = st
			s.send(s.stopReply())
		}
	case <-time.After(farewellWait):
	}
}

// session is one gdb connection.
type session struct {
	t     Target
	conn  io.Writer
	wmu   sync.Mutex
	noAck bool
	last  []byte // the last packet sent, for a '-'

	gThread int // vCPU for g/G/p/P/m/M (Hg)
	cThread int // vCPU to step for s (Hc); -1 any
	stop    Stop
	running bool
}

// Session runs one gdb session on rw until gdb detaches or kills, the
// connection ends, or ctx ends. The target is stopped when gdb connects
// (gdb expects it so) and its first vCPU is current.
func Session(ctx context.Context, rw io.ReadWriter, t Target) error {
	vcpus := t.VCPUs()
	if len(vcpus) == 0 {
		return errors.New("gdbstub: the target has no vCPUs")
	}
	s := &session{t: t, conn: rw, gThread: vcpus[0], cThread: -1}
	events := make(chan event)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		br := bufio.NewReader(rw)
		for {
			ev := readEvent(br)
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
			if ev.err != nil {
				return
			}
		}
	}()
	// gdb connects to a stopped target.
	if err := t.Interrupt(); err != nil {
		return fmt.Errorf("gdbstub: stop the guest: %w", err)
	}
	select {
	case s.stop = <-t.Stops():
	case <-ctx.Done():
		return ctx.Err()
	}
	for {
		select {
		case <-ctx.Done():
			s.farewell(t)
			return ctx.Err()
		case st := <-t.Stops():
			s.stop = st
			if s.running {
				s.running = false
				if err := s.send(s.stopReply()); err != nil {
					return err
				}
			}
			if st.Exited {
				return nil
			}
		case ev := <-events:
			switch {
			case ev.err != nil:
				return ev.err
			case ev.interrupt:
				if s.running {
					if err := t.Interrupt(); err != nil {
						return err
					}
				}
			case ev.badSum:
				if !s.noAck {
					s.write([]byte{'-'})
				}
			case ev.overlong:
				s.ack()
				if err := s.send([]byte("E01")); err != nil {
					return err
				}
			default:
				s.ack()
				if s.running {
					continue // all-stop: gdb sends nothing but ^C while the guest runs
				}
				reply, done, err := s.handle(ev.packet)
				if err != nil {
					return err
				}
				if reply != nil {
					if err := s.send(reply); err != nil {
						return err
					}
				}
				if done {
					return nil
				}
			}
		}
	}
}

func (s *session) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.conn.Write(b)
	return err
}

func (s *session) ack() {
	if !s.noAck {
		s.write([]byte{'+'})
	}
}

func (s *session) send(payload []byte) error {
	s.last = framePacket(payload)
	return s.write(s.last)
}

// stopReply describes the last stop: T<sig>thread:<tid>;<reason>;
func (s *session) stopReply() []byte {
	st := s.stop
	if st.Exited {
		return []byte(fmt.Sprintf("W%02x", st.Status&0xff))
	}
	r := fmt.Sprintf("T%02xthread:%x;", st.Signal&0xff, st.VCPU+1)
	switch st.Reason {
	case "":
	case "watch", "rwatch", "awatch":
		r += fmt.Sprintf("%s:%x;", st.Reason, st.Addr)
	case "swbreak", "hwbreak":
		r += st.Reason + ":;"
	default:
		r += st.Reason + ":1;"
	}
	return []byte(r)
}

var errMalformed = errors.New("malformed packet")

// handle answers one packet. It returns the reply (nil when the reply is a
// stop reply still to come), and whether the session ends.
func (s *session) handle(p []byte) (reply []byte, done bool, err error) {
	if len(p) == 0 {
		return []byte{}, false, nil
	}
	ok := []byte("OK")
	fail := func(e error) []byte {
		if errors.Is(e, ErrUnsupported) {
			return []byte{}
		}
		if errors.Is(e, errMalformed) {
			return []byte("E01")
		}
		return []byte("E0e") // EFAULT-ish: gdb prints "Cannot access memory"
	}
	arg := p[1:]
	switch p[0] {
	case '?':
		return s.stopReply(), false, nil
	case 'q':
		return s.query(arg), false, nil
	case 'Q':
		if string(arg) == "StartNoAckMode" {
			if err := s.send(ok); err != nil { // acked the old way, then none
				return nil, false, err
			}
			s.noAck = true
			return nil, false, nil
		}
		return []byte{}, false, nil
	case 'H':
		if len(arg) < 2 {
			return fail(errMalformed), false, nil
		}
		v, err := s.thread(arg[1:])
		if err != nil {
			return fail(err), false, nil
		}
		switch arg[0] {
		case 'g':
			if v >= 0 {
				s.gThread = v
			}
		case 'c':
			s.cThread = v
		default:
			return fail(errMalformed), false, nil
		}
		return ok, false, nil
	case 'T':
		if _, err := s.thread(arg); err != nil {
			return fail(err), false, nil
		}
		return ok, false, nil
	case 'g':
		r, err := s.t.Registers(s.gThread)
		if err != nil {
			return fail(err), false, nil
		}
		return encodeRegisters(r), false, nil
	case 'G':
		r, err := s.t.Registers(s.gThread)
		if err == nil {
			err = decodeRegisters(r, arg)
			if err != nil {
				err = fmt.Errorf("%w: %v", errMalformed, err)
			}
		}
		if err == nil {
			err = s.t.SetRegisters(s.gThread, r)
		}
		if err != nil {
			return fail(err), false, nil
		}
		return ok, false, nil
	case 'p', 'P':
		return s.register(p[0] == 'P', arg), false, nil
	case 'm':
		return s.readMemory(arg), false, nil
	case 'M', 'X':
		return s.writeMemory(p[0] == 'X', arg), false, nil
	case 'Z', 'z':
		return s.breakpoint(p[0] == 'Z', arg), false, nil
	case 'c':
		return s.resume(-1)
	case 's':
		v := s.cThread
		if v < 0 {
			v = s.gThread
		}
		return s.resume(v)
	case 'v':
		return s.vPacket(arg)
	case 'D':
		return ok, true, nil
	case 'k':
		// gdb's kill: the guest is left running, detached (runvm destroy
		// ends a domain).
		return nil, true, nil
	}
	return []byte{}, false, nil
}

// thread parses a thread id (hex; -1 all, 0 any) into a vCPU, -1 for
// all/any.
func (s *session) thread(b []byte) (int, error) {
	if string(b) == "-1" || string(b) == "0" {
		return -1, nil
	}
	v, err := parseHex(b)
	if err != nil {
		return 0, fmt.Errorf("%w: thread %q", errMalformed, b)
	}
	for _, id := range s.t.VCPUs() {
		if uint64(id)+1 == v {
			return id, nil
		}
	}
	return 0, fmt.Errorf("no thread %x", v)
}

func (s *session) query(q []byte) []byte {
	switch {
	case bytes.HasPrefix(q, []byte("Supported")):
		return []byte(fmt.Sprintf("PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+", MaxPacket))
	case string(q) == "Attached":
		return []byte("1")
	case string(q) == "C":
		return []byte(fmt.Sprintf("QC%x", s.stop.VCPU+1))
	case string(q) == "fThreadInfo":
		b := []byte("m")
		for i, id := range s.t.VCPUs() {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(id)+1, 16)
		}
		return b
	case string(q) == "sThreadInfo":
		return []byte("l")
	case bytes.HasPrefix(q, []byte("ThreadExtraInfo,")):
		v, err := s.thread(q[len("ThreadExtraInfo,"):])
		if err != nil {
			return []byte("E01")
		}
		return appendHex(nil, []byte(fmt.Sprintf("vCPU %d", v)))
	case bytes.HasPrefix(q, []byte("Xfer:features:read:target.xml:")):
		return xfer(targetXML, q[len("Xfer:features:read:target.xml:"):])
	case bytes.HasPrefix(q, []byte("Xfer:features:read:")):
		return []byte("E00") // no other annex
	}
	return []byte{}
}

// xfer answers a qXfer read of doc at "offset,length".
func xfer(doc string, arg []byte) []byte {
	o, l, found := bytes.Cut(arg, []byte(","))
	off, err1 := parseHex(o)
	n, err2 := parseHex(l)
	if !found || err1 != nil || err2 != nil {
		return []byte("E01")
	}
	if off >= uint64(len(doc)) {
		return []byte("l")
	}
	n = min(n, MaxPacket-1, uint64(len(doc))-off)
	chunk := doc[off : off+n]
	if off+n >= uint64(len(doc)) {
		return append([]byte("l"), chunk...)
	}
	return append([]byte("m"), chunk...)
}

// register answers p<n> and P<n>=<value>.
func (s *session) register(write bool, arg []byte) []byte {
	num, val, _ := bytes.Cut(arg, []byte("="))
	n, err := parseHex(num)
	if err != nil || n >= uint64(len(regs)) {
		return []byte("E01")
	}
	r, err := s.t.Registers(s.gThread)
	if err != nil {
		return []byte("E0e")
	}
	if !write {
		return appendReg(nil, regs[n], r)
	}
	if err := decodeRegister(r, regs[n], val); err != nil {
		return []byte("E01")
	}
	if err := s.t.SetRegisters(s.gThread, r); err != nil {
		return []byte("E0e")
	}
	return []byte("OK")
}

// addrLen parses "addr,length".
func addrLen(b []byte) (uint64, uint64, error) {
	a, l, found := bytes.Cut(b, []byte(","))
	addr, err1 := parseHex(a)
	n, err2 := parseHex(l)
	if !found || err1 != nil || err2 != nil {
		return 0, 0, errMalformed
	}
	return addr, n, nil
}

// readMemory answers m<addr>,<len>: as many bytes as are mapped from addr,
// an error if none are.
func (s *session) readMemory(arg []byte) []byte {
	addr, n, err := addrLen(arg)
	if err != nil || n > MaxPacket/2 {
		return []byte("E01")
	}
	buf := make([]byte, n)
	got, err := s.t.ReadMemory(s.gThread, addr, buf)
	if got == 0 && n > 0 {
		return []byte("E0e")
	}
	_ = err // a partial read is a short reply
	return appendHex(nil, buf[:got])
}

// writeMemory answers M<addr>,<len>:<hex> and X<addr>,<len>:<binary>.
func (s *session) writeMemory(binary bool, arg []byte) []byte {
	head, data, found := bytes.Cut(arg, []byte(":"))
	addr, n, err := addrLen(head)
	if !found || err != nil || n > MaxPacket {
		return []byte("E01")
	}
	if !binary {
		if data, err = decodeHex(data); err != nil {
			return []byte("E01")
		}
	}
	if uint64(len(data)) != n {
		return []byte("E01")
	}
	if n == 0 {
		return []byte("OK") // gdb probes X support this way
	}
	if got, err := s.t.WriteMemory(s.gThread, addr, data); err != nil || got != len(data) {
		return []byte("E0e")
	}
	return []byte("OK")
}

// breakpoint answers Z/z<type>,<addr>,<kind>.
func (s *session) breakpoint(set bool, arg []byte) []byte {
	parts := bytes.Split(arg, []byte(","))
	if len(parts) < 3 || len(parts[0]) != 1 || parts[0][0] < '0' || parts[0][0] > '4' {
		return []byte("E01")
	}
	addr, err1 := parseHex(parts[1])
	kind, err2 := parseHex(parts[2])
	if err1 != nil || err2 != nil || kind > 8 {
		return []byte("E01")
	}
	bp := Breakpoint{Kind: BreakKind(parts[0][0] - '0'), Addr: addr, Len: int(kind)}
	var err error
	if set {
		err = s.t.SetBreakpoint(bp)
	} else {
		err = s.t.ClearBreakpoint(bp)
	}
	switch {
	case errors.Is(err, ErrUnsupported):
		return []byte{}
	case err != nil:
		return []byte("E0e")
	}
	return []byte("OK")
}

// resume lets the guest run (step >= 0: single-step that vCPU); the reply
// is the stop reply, sent when the target stops.
func (s *session) resume(step int) ([]byte, bool, error) {
	if err := s.t.Resume(step); err != nil {
		return []byte("E0e"), false, nil
	}
	s.running = true
	return nil, false, nil
}

// vPacket answers the v packets: vCont? and vCont;action[:thread]...
func (s *session) vPacket(arg []byte) ([]byte, bool, error) {
	switch {
	case string(arg) == "Cont?":
		return []byte("vCont;c;C;s;S"), false, nil
	case bytes.HasPrefix(arg, []byte("Cont;")):
		step := -1
		for _, a := range bytes.Split(arg[len("Cont;"):], []byte(";")) {
			action, tid, hasThread := bytes.Cut(a, []byte(":"))
			if len(action) == 0 {
				return []byte("E01"), false, nil
			}
			switch action[0] {
			case 's', 'S':
				v := s.gThread
				if hasThread {
					var err error
					if v, err = s.thread(tid); err != nil || v < 0 {
						return []byte("E01"), false, nil
					}
				}
				if step < 0 {
					step = v
				}
			case 'c', 'C':
			default:
				return []byte{}, false, nil // vCont;t and the like: all-stop only
			}
		}
		return s.resume(step)
	case bytes.HasPrefix(arg, []byte("MustReplyEmpty")):
		return []byte{}, false, nil
	}
	return []byte{}, false, nil
}
