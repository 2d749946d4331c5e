// Package benchpeers holds the pieces of `make bench-peers`, which measures
// xenresume's save and restore against QEMU's in one process tree: a QMP
// client (QEMU's JSON-over-socket control protocol), the trivial guest QEMU
// boots, and the QEMU process itself.
package benchpeers

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// maxQMPLine bounds one QMP message: a peer that never ends a line cannot
// make the client buffer without limit.
const maxQMPLine = 1 << 20

// QMPError is an {"error": ...} reply.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

// message is anything QEMU sends: a greeting, a reply or an event.
type message struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
}

// QMP is a client of one QMP socket. Commands run one at a time; events
// arrive on Events (buffered; a client that does not read them loses the
// oldest once the buffer is full, never blocks the reader).
type QMP struct {
	conn *net.UnixConn
	mu   sync.Mutex // one command in flight
	// replies carries each reply to the command in flight.
	replies chan message
	events  chan Event
	done    chan struct{}
	err     error // why the reader stopped, once done is closed
}

// DialQMP connects to a QMP socket, reads the greeting and leaves
// capabilities negotiation (qmp_capabilities) done.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	return NewQMP(ctx, c.(*net.UnixConn))
}

// NewQMP runs the QMP handshake on an open connection, which the client
// then owns.
func NewQMP(ctx context.Context, c *net.UnixConn) (*QMP, error) {
	q := &QMP{conn: c, replies: make(chan message, 1), events: make(chan Event, 64), done: make(chan struct{})}
	greeting := make(chan message, 1)
	go q.read(greeting)
	select {
	case m := <-greeting:
		if m.QMP == nil {
			c.Close()
			return nil, errors.New("qmp: the first message is not a QMP greeting")
		}
	case <-q.done:
		c.Close()
		return nil, fmt.Errorf("qmp: no greeting: %w", q.err)
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("qmp: no greeting: %w", ctx.Err())
	}
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// read decodes messages until the connection ends: the greeting goes to
// greeting, replies to q.replies, events to q.events.
func (q *QMP) read(greeting chan<- message) {
	defer close(q.done)
	br := bufio.NewReaderSize(q.conn, 64<<10)
	first := true
	for {
		line, err := readLine(br)
		if err != nil {
			q.err = err
			return
		}
		var m message
		if err := json.Unmarshal(line, &m); err != nil {
			q.err = fmt.Errorf("qmp: malformed message %.80q: %w", line, err)
			return
		}
		switch {
		case first:
			first = false
			greeting <- m
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			select {
			case q.events <- ev:
			default: // full: drop the oldest
				select {
				case <-q.events:
				default:
				}
				q.events <- ev
			}
		case m.Return != nil || m.Error != nil:
			select {
			case q.replies <- m:
			default:
				q.err = errors.New("qmp: a reply to no command")
				return
			}
		default:
			q.err = fmt.Errorf("qmp: a message that is neither reply nor event: %.80q", line)
			return
		}
	}
}

// readLine reads one newline-terminated message of at most maxQMPLine
// bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("qmp: a message longer than %d bytes", maxQMPLine)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, fmt.Errorf("qmp: %w", err)
		}
	}
}

// Execute runs one command and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.ExecuteFile(ctx, cmd, args, nil)
}

// ExecuteFile runs one command with f's descriptor attached (SCM_RIGHTS),
// as getfd and add-fd expect; f nil attaches nothing.
func (q *QMP) ExecuteFile(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	b = append(b, '\n')
	q.mu.Lock()
	defer q.mu.Unlock()
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	if _, _, err := q.conn.WriteMsgUnix(b, oob, nil); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			m.Error.Command = cmd
			return nil, m.Error
		}
		return m.Return, nil
	case <-q.done:
		return nil, fmt.Errorf("qmp %s: %w", cmd, q.err)
	case <-ctx.Done():
		// The reply may still come: the connection is no longer usable
		// in step, so close it.
		q.conn.Close()
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// WaitEvent waits for an event named name whose data match (nil: any),
// discarding the others.
func (q *QMP) WaitEvent(ctx context.Context, name string, match func(json.RawMessage) bool) (Event, error) {
	for {
		select {
		case ev := <-q.events:
			if ev.Name == name && (match == nil || match(ev.Data)) {
				return ev, nil
			}
		case <-q.done:
			// Events already queued still count.
			select {
			case ev := <-q.events:
				if ev.Name == name && (match == nil || match(ev.Data)) {
					return ev, nil
				}
				continue
			default:
			}
			return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, q.err)
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for %s: %w", name, ctx.Err())
		}
	}
}

// DrainEvents discards the events received so far.
func (q *QMP) DrainEvents() {
	for {
		select {
		case <-q.events:
		default:
			return
		}
	}
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
