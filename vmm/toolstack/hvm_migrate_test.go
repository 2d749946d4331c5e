package toolstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xenresume/xenresume/internal/hvmtest"
	"github.com/xenresume/xenresume/internal/kvmtest"
	"github.com/xenresume/xenresume/internal/xentools"
	"github.com/xenresume/xenresume/vmm/builder"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// runningSpin is the counting HVM guest (hvmtest.SpinGuest), running.
func runningSpin(t *testing.T, kind builder.ContainerKind) *HVMDomain {
	t.Helper()
	code, _ := hvmtest.SpinGuest()
	kvmtest.Require(t)
	d, err := CreateHVM(HVMConfig{Name: "m", ID: 3, Kind: kind, Image: pvhImage(code, true), MemSize: 4 << 20, Store: xenstore.New(nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy() })
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	return d
}

// ecx is the spinning guest's counter, the domain paused for the read
// and left as it was.
func ecx(t *testing.T, d *HVMDomain) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := d.m.VCPUs()[0].GetRegs()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Unpause(); err != nil {
		t.Fatal(err)
	}
	return uint32(r.RCX)
}

// The counting HVM guest migrated non-live over loopback TCP into a new
// domain (RestoreHVM on the stream, stopping at its END, as a receiver
// does before its handshake): the stream Xen's verifier takes, the target
// at the source's instruction with its counter and memory, counting on
// from there once started; the source destroyed as migrated.
func TestHVMMigrate(t *testing.T) {
	d := runningSpin(t, builder.KindHVM)
	_, loop := hvmtest.SpinGuest()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type received struct {
		d      *HVMDomain
		stream []byte
		err    error
	}
	got := make(chan received, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- received{err: err}
			return
		}
		defer c.Close()
		var capture bytes.Buffer
		n, err := RestoreHVM(io.TeeReader(c, &capture), HVMRestoreConfig{ID: 4, Store: xenstore.New(nil), Stream: true})
		got <- received{d: n, stream: capture.Bytes(), err: err}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var saved uint64
	var rcv received
	stats, err := d.Migrate(ctx, c, MigrateOptions{NonLive: true}, func(ctx context.Context) (Handoff, error) {
		r, _ := d.m.VCPUs()[0].GetRegs()
		saved = r.RCX
		// Nothing may take the domain the migration holds: the guest
		// would run twice.
		if err := d.Resume(false); !errors.Is(err, ErrWrongState) {
			t.Errorf("resume during the migration: %v", err)
		}
		if err := d.Save(ctx, filepath.Join(t.TempDir(), "s"), true); !errors.Is(err, ErrWrongState) {
			t.Errorf("save during the migration: %v", err)
		}
		if _, err := d.Migrate(ctx, io.Discard, MigrateOptions{NonLive: true}, nil); !errors.Is(err, ErrWrongState) {
			t.Errorf("a second migration: %v", err)
		}
		d.m.Memory().Write(hvmtest.Marker, []byte{0x5a}) // after the stream: must not reach the target
		rcv = <-got
		if rcv.err != nil {
			return NotHandedOver, rcv.err
		}
		return HandedOver, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n := rcv.d
	defer n.Destroy()
	if st := d.Status(); st.State != Destroyed || !st.Migrated || stats.Outcome != HandedOver ||
		len(stats.Rounds) != 1 || !stats.Rounds[0].Final || stats.Bytes != uint64(len(rcv.stream)) {
		t.Errorf("source %+v, stats %+v (stream %d bytes)", st, stats, len(rcv.stream))
	}
	path := filepath.Join(t.TempDir(), "m.stream")
	os.WriteFile(path, rcv.stream, 0o600)
	if out, err := xentools.Command(t, "usr/lib/xen-4.17/bin/verify-stream-v2", "-f", "xl", "-i", path).CombinedOutput(); err != nil {
		t.Fatalf("verify-stream-v2: %v\n%s", err, out)
	}
	r0, _ := n.m.VCPUs()[0].GetRegs()
	m := make([]byte, 1)
	n.m.Memory().Read(hvmtest.Marker, m)
	if r0.RCX != saved || (r0.RIP != loop && r0.RIP != loop+1) || m[0] == 0x5a {
		t.Fatalf("target at rip %#x ecx %#x marker %#x; source stopped with ecx %#x", r0.RIP, r0.RCX, m[0], saved)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.Unpause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if e := ecx(t, n); e == uint32(saved) {
		t.Fatalf("the target's counter stayed at %#x", e)
	}
}

// failingWriter takes n bytes, then fails.
type failingWriter struct{ n int }

func (w *failingWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		k := w.n
		w.n = 0
		return k, errors.New("connection reset")
	}
	w.n -= len(b)
	return len(b), nil
}

// An HVM migration that does not end in the target's hands: the domain
// resumes (counting on from where it was) for a failure before the
// handoff and a target that did not take it; stays suspended with
// ErrHandoffUnknown when the handoff broke after the permission; and a
// live migration, and a PVH guest that does not answer the suspend
// request, are refused with the guest running on, nothing written.
func TestHVMMigrateFailures(t *testing.T) {
	refused := errors.New("refused")
	for _, tc := range []struct {
		name     string
		kind     builder.ContainerKind
		o        MigrateOptions
		w        io.Writer
		handoff  Handoff
		herr     error
		want     State
		wantErr  error
		streamed bool // the stream was written
	}{
		{name: "stream breaks", kind: builder.KindHVM, o: MigrateOptions{NonLive: true}, w: &failingWriter{n: 64 << 10}, want: Running},
		{name: "not handed over", kind: builder.KindHVM, o: MigrateOptions{NonLive: true}, handoff: NotHandedOver, herr: refused, want: Running, wantErr: refused, streamed: true},
		{name: "handoff unknown", kind: builder.KindHVM, o: MigrateOptions{NonLive: true}, handoff: HandoffUnknown, herr: refused, want: Suspended, wantErr: ErrHandoffUnknown, streamed: true},
		{name: "live", kind: builder.KindHVM, want: Running, wantErr: ErrHVMLive},
		{name: "pvh without answer", kind: builder.KindPVH, o: MigrateOptions{NonLive: true}, want: Running},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := runningSpin(t, tc.kind)
			before := ecx(t, d)
			var buf bytes.Buffer
			w := tc.w
			if w == nil {
				w = &buf
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if tc.kind == builder.KindPVH {
				ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
			}
			defer cancel()
			called := false
			_, err := d.Migrate(ctx, w, tc.o, func(context.Context) (Handoff, error) {
				called = true
				return tc.handoff, tc.herr
			})
			if err == nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Migrate: %v, want %v", err, tc.wantErr)
			}
			if called != tc.streamed || (buf.Len() > 0) != tc.streamed {
				t.Errorf("handoff called %v, %d bytes written; want the stream written: %v", called, buf.Len(), tc.streamed)
			}
			if st := d.Status(); st.State != tc.want || st.Migrated {
				t.Fatalf("after %v: %+v, want %v", err, st, tc.want)
			}
			if tc.want == Suspended {
				if err := d.Resume(false); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(5 * time.Millisecond)
			if after := ecx(t, d); after == before {
				t.Errorf("the guest stopped counting at %#x", after)
			}
		})
	}
}

// Destroy cancels an HVM migration in flight: the handoff's wait ends,
// o.Abort is called, and the domain is Destroyed, not migrated.
func TestHVMMigrateDestroyed(t *testing.T) {
	d := runningSpin(t, builder.KindHVM)
	aborted := make(chan struct{})
	waiting := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		_, err := d.Migrate(context.Background(), io.Discard, MigrateOptions{NonLive: true, Abort: func() { close(aborted) }},
			func(ctx context.Context) (Handoff, error) {
				close(waiting)
				<-ctx.Done()
				return NotHandedOver, ctx.Err()
			})
		errc <- err
	}()
	<-waiting
	if err := d.Destroy(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("a destroyed migration succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Migrate did not end after Destroy")
	}
	select {
	case <-aborted:
	default:
		t.Error("Abort was not called")
	}
	if st := d.Status(); st.State != Destroyed || st.Migrated {
		t.Errorf("after destroy: %+v", st)
	}
}
