package benchpeers

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeQEMU serves one QMP connection on a socket in dir: it sends
// greeting, then for each command line received calls reply, which
// returns the lines to send back (replies and events).
func fakeQEMU(t *testing.T, greeting string, reply func(cmd map[string]any, fds int) []string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(greeting))
		buf, oob := make([]byte, 4096), make([]byte, 256)
		var pending []byte
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			fds := 0
			if msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn]); len(msgs) > 0 {
				got, _ := syscall.ParseUnixRights(&msgs[0])
				fds = len(got)
				for _, fd := range got {
					syscall.Close(fd)
				}
			}
			pending = append(pending, buf[:n]...)
			for {
				i := strings.IndexByte(string(pending), '\n')
				if i < 0 {
					break
				}
				var cmd map[string]any
				if err := json.Unmarshal(pending[:i], &cmd); err != nil {
					return
				}
				pending = pending[i+1:]
				for _, line := range reply(cmd, fds) {
					c.Write([]byte(line + "\n"))
				}
			}
		}
	}()
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}` + "\n"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestQMP runs commands against a fake QEMU: replies, errors, an event
// between a command and its reply, a descriptor passed with getfd.
func TestQMP(t *testing.T) {
	sock := fakeQEMU(t, greeting, func(cmd map[string]any, fds int) []string {
		switch cmd["execute"] {
		case "qmp_capabilities":
			return []string{`{"return": {}}`}
		case "query-status":
			return []string{`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
				`{"return": {"status": "paused", "running": false}}`}
		case "getfd":
			if fds != 1 {
				return []string{`{"error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}}`}
			}
			return []string{`{"return": {}}`}
		case "migrate":
			return []string{`{"return": {}}`,
				`{"event": "MIGRATION", "data": {"status": "active"}}`,
				`{"event": "MIGRATION", "data": {"status": "completed"}}`}
		default:
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}`}
		}
	})
	ctx := ctxT(t)
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if err := json.Unmarshal(raw, &st); err != nil || st.Status != "paused" {
		t.Fatalf("query-status: %s (%v)", raw, err)
	}
	if _, err := q.WaitEvent(ctx, "STOP", nil); err != nil {
		t.Fatalf("the STOP event: %v", err)
	}
	// Negative: an unknown command is a *QMPError naming it.
	_, err = q.Execute(ctx, "nope", nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "nope" {
		t.Fatalf("unknown command: %v", err)
	}
	// getfd with and without a descriptor.
	f, err := os.CreateTemp(t.TempDir(), "fd")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := q.ExecuteFile(ctx, "getfd", map[string]any{"fdname": "mig"}, f); err != nil {
		t.Fatalf("getfd with a descriptor: %v", err)
	}
	if _, err := q.Execute(ctx, "getfd", map[string]any{"fdname": "mig"}); !errors.As(err, &qe) {
		t.Fatalf("getfd without a descriptor: %v, want a QMP error", err)
	}
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:mig"}); err != nil {
		t.Fatal(err)
	}
	qm := &QEMU{QMP: q}
	if err := qm.waitMigration(ctx); err != nil {
		t.Fatalf("waitMigration: %v", err)
	}
}

// TestQMPBadPeers: what a broken or hostile peer sends ends in an error,
// never a hang or unbounded buffering.
func TestQMPBadPeers(t *testing.T) {
	ok := func(cmd map[string]any, _ int) []string { return []string{`{"return": {}}`} }
	tests := []struct {
		name     string
		greeting string
		reply    func(map[string]any, int) []string
		want     string
	}{
		{"no greeting, a reply", `{"return": {}}` + "\n", ok, "not a QMP greeting"},
		{"malformed greeting", "{QMP\n", ok, "malformed"},
		{"closed before greeting", "", nil, "no greeting"},
		{"endless line", strings.Repeat("x", 2*maxQMPLine), ok, "longer than"},
		{"neither reply nor event", greeting, func(map[string]any, int) []string { return []string{`{"hello": 1}`} }, "neither reply nor event"},
		{"closed mid-command", greeting, func(map[string]any, int) []string { return nil }, "qmp_capabilities"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply := tt.reply
			if reply == nil {
				reply = func(map[string]any, int) []string { return nil }
			}
			sock := fakeQEMU(t, tt.greeting, reply)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if tt.name == "closed before greeting" {
				// The fake writes nothing and waits; a context bounds it.
				ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
			}
			if tt.name == "closed mid-command" {
				ctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
			}
			q, err := DialQMP(ctx, sock)
			if err == nil {
				q.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestWaitMigrationFailed: a failed migration is an error.
func TestWaitMigrationFailed(t *testing.T) {
	sock := fakeQEMU(t, greeting, func(cmd map[string]any, _ int) []string {
		if cmd["execute"] == "migrate" {
			return []string{`{"return": {}}`, `{"event": "MIGRATION", "data": {"status": "failed"}}`}
		}
		return []string{`{"return": {}}`}
	})
	ctx := ctxT(t)
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:mig"}); err != nil {
		t.Fatal(err)
	}
	qm := &QEMU{QMP: q}
	if err := qm.waitMigration(ctx); err == nil || !strings.Contains(err.Error(), "failed") {
		t.Fatalf("waitMigration: %v, want a failed migration", err)
	}
}

// TestMultibootGuest checks the Multiboot header QEMU's loader reads.
func TestMultibootGuest(t *testing.T) {
	g, err := MultibootGuest(4)
	if err != nil {
		t.Fatal(err)
	}
	le := func(o int) uint32 { return uint32(g[o]) | uint32(g[o+1])<<8 | uint32(g[o+2])<<16 | uint32(g[o+3])<<24 }
	if le(0) != multibootMagic || le(0)+le(4)+le(8) != 0 {
		t.Fatalf("header magic %#x, flags %#x, checksum %#x: the three must sum to 0", le(0), le(4), le(8))
	}
	if le(4)&multibootAOutKlud == 0 || le(12) != multibootLoadAddr || le(28) != multibootLoadAddr+multibootHdrSize {
		t.Fatal("the a.out kludge addresses are wrong")
	}
	if le(0x20+6) != 4<<18 {
		t.Fatalf("dword count %#x, want %#x", le(0x20+6), 4<<18)
	}
	for _, n := range []uint32{0, 4096} {
		if _, err := MultibootGuest(n); err == nil {
			t.Errorf("MultibootGuest(%d) succeeded", n)
		}
	}
}

// TestFillTouched: the pattern, the skipped page-table frames, the bound.
func TestFillTouched(t *testing.T) {
	ram := make([]byte, 16<<20)
	n, err := FillTouched(ram, 4)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(4<<20 - 4*4096); n != want {
		t.Fatalf("%d bytes filled, want %d", n, want)
	}
	pat := func(a uint64) byte { return byte(a>>12) | 1 }
	for _, c := range []struct {
		addr uint64
		want byte
	}{{TouchStart - 1, 0}, {TouchStart, 0}, {TouchStart + 4096, 0}, {TouchStart + 8192, pat(TouchStart + 8192)},
		{TouchStart + 4<<20 - 1, pat(TouchStart + 4<<20 - 1)}, {TouchStart + 4<<20, 0}} {
		if ram[c.addr] != c.want {
			t.Errorf("ram[%#x] = %#x, want %#x", c.addr, ram[c.addr], c.want)
		}
	}
	if _, err := FillTouched(ram, 9); err == nil {
		t.Fatal("filling past the end succeeded")
	}
}
