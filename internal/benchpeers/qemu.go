package benchpeers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// QEMUConfig says how to run QEMU.
type QEMUConfig struct {
	Binary string   // qemu-system-x86_64
	Env    []string // added to the environment (LD_LIBRARY_PATH, QEMU_MODULE_DIR)
	// Firmware are -L directories (SeaBIOS, multiboot.bin).
	Firmware []string
	Accel    string // "kvm" or "tcg"
	MemMiB   uint64
	Kernel   string // the Multiboot guest
	// Incoming starts QEMU waiting for an incoming migration
	// (-incoming defer) instead of booting Kernel.
	Incoming bool
	Dir      string // for the QMP socket and the debug console file
}

// QEMU is one running QEMU, a child of this process (it dies with it).
type QEMU struct {
	cfg    QEMUConfig
	cmd    *exec.Cmd
	QMP    *QMP
	stderr bytes.Buffer
	exited chan struct{}
	mu     sync.Mutex
	werr   error
}

// StartQEMU starts QEMU and connects to its QMP socket, with migration
// events on and no bandwidth limit (QEMU's default is 128 MiB/s).
func StartQEMU(ctx context.Context, cfg QEMUConfig) (*QEMU, error) {
	sock := filepath.Join(cfg.Dir, "qmp.sock")
	os.Remove(sock)
	args := []string{
		"-machine", "pc,accel=" + cfg.Accel, "-m", strconv.FormatUint(cfg.MemMiB, 10),
		"-nodefaults", "-display", "none", "-no-user-config", "-smp", "1",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
		"-debugcon", "file:" + filepath.Join(cfg.Dir, "debugcon"),
	}
	for _, d := range cfg.Firmware {
		args = append(args, "-L", d)
	}
	if cfg.Incoming {
		args = append(args, "-incoming", "defer")
	} else {
		args = append(args, "-kernel", cfg.Kernel)
	}
	q := &QEMU{cfg: cfg, exited: make(chan struct{})}
	q.cmd = exec.Command(cfg.Binary, args...)
	q.cmd.Env = append(os.Environ(), cfg.Env...)
	q.cmd.Stdout, q.cmd.Stderr = &q.stderr, &q.stderr
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := q.cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	go func() {
		err := q.cmd.Wait()
		q.mu.Lock()
		q.werr = err
		q.mu.Unlock()
		close(q.exited)
	}()
	for {
		qmp, err := DialQMP(ctx, sock)
		if err == nil {
			q.QMP = qmp
			break
		}
		select {
		case <-q.exited:
			return nil, fmt.Errorf("qemu exited (%v): %s", q.waitErr(), bytes.TrimSpace(q.stderr.Bytes()))
		case <-ctx.Done():
			q.Kill()
			return nil, fmt.Errorf("qemu: no QMP socket: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := q.QMP.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "events", "state": true}}}); err != nil {
		q.Kill()
		return nil, err
	}
	if !cfg.Incoming {
		if _, err := q.QMP.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
			q.Kill()
			return nil, err
		}
	}
	return q, nil
}

func (q *QEMU) waitErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.werr
}

// WaitDone waits until the guest has written DoneByte to its debug
// console: its memory is touched.
func (q *QEMU) WaitDone(ctx context.Context) error {
	path := filepath.Join(q.cfg.Dir, "debugcon")
	for {
		if b, _ := os.ReadFile(path); bytes.IndexByte(b, DoneByte) >= 0 {
			return nil
		}
		select {
		case <-q.exited:
			return fmt.Errorf("qemu exited (%v): %s", q.waitErr(), bytes.TrimSpace(q.stderr.Bytes()))
		case <-ctx.Done():
			return fmt.Errorf("qemu guest never touched its memory: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// migrationStatus matches a MIGRATION event that ends a migration.
func migrationStatus(data json.RawMessage) (string, bool) {
	var d struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(data, &d) != nil {
		return "", false
	}
	switch d.Status {
	case "completed", "failed", "cancelled":
		return d.Status, true
	}
	return "", false
}

// waitMigration waits for the migration in flight to end.
func (q *QEMU) waitMigration(ctx context.Context) error {
	ev, err := q.QMP.WaitEvent(ctx, "MIGRATION", func(d json.RawMessage) bool {
		_, end := migrationStatus(d)
		return end
	})
	if err != nil {
		return err
	}
	if st, _ := migrationStatus(ev.Data); st != "completed" {
		return fmt.Errorf("qemu migration %s", st)
	}
	return nil
}

// Stop pauses the guest (QMP stop), as a suspended domain is before its
// save.
func (q *QEMU) Stop(ctx context.Context) error {
	_, err := q.QMP.Execute(ctx, "stop", nil)
	return err
}

// Rearm readies a source QEMU for another Save: QEMU refuses to migrate a
// guest paused by a previous migration (runstate postmigrate), so it is run
// (cont) and stopped again.
func (q *QEMU) Rearm(ctx context.Context) error {
	raw, err := q.QMP.Execute(ctx, "query-status", nil)
	if err != nil {
		return err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("qmp query-status: %w", err)
	}
	if st.Status != "postmigrate" {
		return nil
	}
	q.QMP.DrainEvents()
	if _, err := q.QMP.Execute(ctx, "cont", nil); err != nil {
		return err
	}
	if _, err := q.QMP.WaitEvent(ctx, "RESUME", nil); err != nil {
		return err
	}
	return q.Stop(ctx)
}

// migrateFD hands f to QEMU (getfd) and runs the migration command cmd
// ("migrate" or "migrate-incoming") on it until QEMU says it completed.
func (q *QEMU) migrateFD(ctx context.Context, cmd string, f *os.File) error {
	q.QMP.DrainEvents()
	if _, err := q.QMP.ExecuteFile(ctx, "getfd", map[string]any{"fdname": "mig"}, f); err != nil {
		return err
	}
	if _, err := q.QMP.Execute(ctx, cmd, map[string]any{"uri": "fd:mig"}); err != nil {
		return err
	}
	return q.waitMigration(ctx)
}

// Save migrates the guest into a new file at path (passed to QEMU as a
// descriptor, "fd:" URI) and fsyncs it: the counterpart of a save.
func (q *QEMU) Save(ctx context.Context, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := q.migrateFD(ctx, "migrate", f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qemu save: fsync: %w", err)
	}
	return f.Close()
}

// Restore, on a QEMU started with Incoming, loads the file at path
// (migrate-incoming from its descriptor) and runs the guest (cont), until
// QEMU reports it running (the RESUME event).
func (q *QEMU) Restore(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := q.migrateFD(ctx, "migrate-incoming", f); err != nil {
		return err
	}
	if _, err := q.QMP.Execute(ctx, "cont", nil); err != nil {
		return err
	}
	_, err = q.QMP.WaitEvent(ctx, "RESUME", nil)
	return err
}

// Kill ends QEMU and waits for it.
func (q *QEMU) Kill() {
	if q.QMP != nil {
		q.QMP.Close()
	}
	if q.cmd.Process != nil {
		q.cmd.Process.Kill()
	}
	<-q.exited
}
