package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xen"
	"github.com/xenresume/xenresume/vmm/xenabi"
)

// controlled is the domain `runvm run` serves over the control API.
type controlled struct {
	d      *toolstack.Domain
	memMiB uint64
	xsPath string

	mu        sync.Mutex
	resumed   chan struct{} // a resume happened
	saved     bool          // saved (and so destroyed)
	destroyed chan struct{} // closed by the destroy action
	once      sync.Once
}

func newControlled(d *toolstack.Domain, memMiB uint64, xsPath string) *controlled {
	return &controlled{d: d, memMiB: memMiB, xsPath: xsPath,
		resumed: make(chan struct{}, 1), destroyed: make(chan struct{})}
}

func (c *controlled) state() (string, string) {
	e := c.d.Xen.Exit()
	switch {
	case e.State == xen.Crashed:
		return "crashed", e.Crash.Reason
	case e.State == xen.Shutdown && e.Reason == xenabi.ShutdownSuspend:
		return "suspended", ""
	case e.State == xen.Shutdown:
		return "shutdown", xen.ShutdownName(e.Reason)
	case c.saved:
		return "saved", ""
	case c.d.Paused():
		return "paused", ""
	}
	return "running", ""
}

// Info implements api.Domain.
func (c *controlled) Info() api.Info {
	st, reason := c.state()
	return api.Info{Domid: c.d.ID, Name: c.d.Name, State: st, Reason: reason, MemMiB: c.memMiB, XenstoredPath: c.xsPath}
}

func conflict(action, state string) error {
	return fmt.Errorf("%w: cannot %s a %s domain", api.ErrConflict, action, state)
}

// Do implements api.Domain.
func (c *controlled) Do(ctx context.Context, a api.Action) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, _ := c.state()
	switch a.Action {
	case "suspend":
		if st != "running" {
			return conflict(a.Action, st)
		}
		to := toolstack.DefaultSuspendTimeouts
		if a.TimeoutMS > 0 {
			to.Ack = time.Duration(a.TimeoutMS) * time.Millisecond
			to.Shutdown = to.Ack
		}
		return c.d.Suspend(ctx, to)
	case "resume":
		if st != "suspended" {
			return conflict(a.Action, st)
		}
		if err := c.d.Resume(ctx, a.Fast); err != nil {
			return err
		}
		c.d.Unpause()
		select {
		case c.resumed <- struct{}{}:
		default:
		}
		return nil
	case "pause":
		if st != "running" {
			return conflict(a.Action, st)
		}
		return c.d.Pause(ctx)
	case "unpause":
		if st != "paused" {
			return conflict(a.Action, st)
		}
		c.d.Unpause()
		return nil
	case "shutdown", "reboot":
		if st != "running" {
			return conflict(a.Action, st)
		}
		cmd := "poweroff"
		if a.Action == "reboot" {
			cmd = "reboot"
		}
		return c.d.RequestShutdown(cmd)
	case "destroy":
		c.once.Do(func() { close(c.destroyed) })
		return nil
	case "save":
		if st != "running" && st != "suspended" {
			return conflict(a.Action, st)
		}
		if !filepath.IsAbs(a.Path) {
			return fmt.Errorf("save path %q is not absolute", a.Path)
		}
		if err := c.d.Save(ctx, a.Path, a.Checkpoint); err != nil {
			return err
		}
		if !a.Checkpoint {
			// As `xl save`: the saved domain is gone.
			c.saved = true
			c.once.Do(func() { close(c.destroyed) })
		}
		return nil
	}
	return fmt.Errorf("unknown action %q", a.Action)
}

// runtimeSlot claims <dir>/<name> for a new domain and returns it with the
// next free domid across the runtime directory.
func runtimeSlot(ctx context.Context, dir, name string) (string, uint16, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", 0, err
	}
	running, err := api.Running(ctx, dir)
	if err != nil {
		return "", 0, err
	}
	next := uint16(1)
	for _, d := range running {
		if name != "" && d.Name == name {
			return "", 0, fmt.Errorf("a domain named %q is already running (domid %d)", name, d.Domid)
		}
		if d.Domid >= next {
			next = d.Domid + 1
		}
	}
	if name == "" {
		name = "domain-" + strconv.Itoa(int(next))
	}
	slot := filepath.Join(dir, name)
	os.RemoveAll(slot) // a stale slot of a dead runvm
	if err := os.Mkdir(slot, 0o700); err != nil {
		return "", 0, err
	}
	return slot, next, nil
}
