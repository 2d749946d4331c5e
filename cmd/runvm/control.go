package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/xenresume/xenresume/vmm/api"
	"github.com/xenresume/xenresume/vmm/toolstack"
	"github.com/xenresume/xenresume/vmm/xenstore"
)

// controlled serves a domain over the control API. It keeps no state of
// its own: the toolstack's Domain owns the lifecycle and answers every
// request, and its refusals become 409s.
type controlled struct {
	d      *toolstack.Domain
	store  *xenstore.Store
	xsPath string
	migrations
}

// Info implements api.Domain.
func (c *controlled) Info() api.Info {
	st := c.d.Status()
	info := api.Info{Domid: c.d.ID, Name: c.d.Name, State: st.State.String(), Reason: st.Reason(),
		MemMiB: c.d.MemSize() >> 20, XenstoredPath: c.xsPath}
	info.Migration = c.last()
	if c.store != nil {
		info.Xenstore = xenstoreInfo(c.store)
	}
	return info
}

// xenstoreInfo is api.Info's account of an owner's xenstored.
func xenstoreInfo(store *xenstore.Store) *api.XenstoreInfo {
	xs := store.Stats()
	info := &api.XenstoreInfo{Nodes: xs.Nodes, Connections: xs.Connections, Watches: xs.Watches,
		Transactions: xs.Transactions, EventsDropped: xs.EventsDropped}
	for k, n := range xs.QuotaHits {
		if n != 0 {
			if info.QuotaHits == nil {
				info.QuotaHits = map[string]uint64{}
			}
			info.QuotaHits[k.String()] = n
		}
	}
	return info
}

// Do implements api.Domain.
func (c *controlled) Do(ctx context.Context, a api.Action) error {
	return wrongState(c.do(ctx, a))
}

func (c *controlled) do(ctx context.Context, a api.Action) error {
	d := c.d
	switch a.Action {
	case "suspend":
		to := toolstack.DefaultSuspendTimeouts
		if a.TimeoutMS > 0 {
			to.Ack = time.Duration(a.TimeoutMS) * time.Millisecond
			to.Shutdown = to.Ack
		}
		return d.Suspend(ctx, to)
	case "resume":
		if err := d.Resume(ctx, a.Fast); err != nil {
			return err
		}
		return d.Unpause()
	case "pause":
		return d.Pause(ctx)
	case "unpause":
		return d.Unpause()
	case "shutdown":
		return d.RequestShutdown("poweroff")
	case "reboot":
		return d.RequestShutdown("reboot")
	case "destroy":
		return d.Destroy()
	case "save":
		if !filepath.IsAbs(a.Path) {
			return fmt.Errorf("save path %q is not absolute", a.Path)
		}
		return d.Save(ctx, a.Path, a.Checkpoint)
	case "migrate":
		return c.migrate(ctx, c.d, a)
	case "remus":
		return c.remus(ctx, a)
	case "vcpu-set":
		return d.SetVCPUs(a.VCPUs)
	case "trigger":
		return fmt.Errorf("trigger %s: domain %d is a PV domain (xl's triggers are for HVM domains)", a.Trigger, d.ID)
	}
	return fmt.Errorf("unknown action %q", a.Action)
}

// cmdControl runs the commands that talk to a domain's owner.
func cmdControl(name string, args []string, stdout, stderr io.Writer) int {
	argsUsage, nargs := "DOM", 1
	switch name {
	case "list":
		argsUsage, nargs = "", 0
	case "save":
		argsUsage, nargs = "DOM FILE", 2
	case "wait":
		argsUsage, nargs = "DOM STATE", 2
	case "migrate", "remus":
		argsUsage, nargs = "DOM HOST:PORT", 2
	case "vcpu-set":
		argsUsage, nargs = "DOM N", 2
	case "trigger":
		argsUsage, nargs = "DOM s3resume|power|sleep", 2
	}
	c := newCommand(name, argsUsage, nargs, stdout, stderr)
	runtime := c.runtimeFlag()
	var (
		fast, checkpoint, long bool
		timeout                time.Duration
		live                   = true
		maxRounds, targetDirty int
		interval               time.Duration
	)
	switch name {
	case "list":
		c.fs.BoolVar(&long, "l", false, "long listing: also the reason for the state, xenstored's quota hits and its socket")
	case "resume":
		c.fs.BoolVar(&fast, "fast", false, "cooperative resume: the guest's suspend returns 1 (otherwise 0: a new domain)")
	case "save":
		c.fs.BoolVar(&checkpoint, "checkpoint", false, "keep the domain as it was (a running guest sees its suspend return 1)")
	case "suspend":
		c.fs.DurationVar(&timeout, "timeout", 60*time.Second, "how long the guest has to acknowledge, then to suspend")
	case "wait":
		c.fs.DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait")
	case "migrate":
		c.fs.BoolVar(&live, "live", true, "copy memory while the guest runs (false: suspend first, copy once)")
		c.fs.IntVar(&maxRounds, "max-rounds", toolstack.DefaultPrecopyRounds, "at most this many live rounds, the first full one included")
		c.fs.IntVar(&targetDirty, "target-dirty", toolstack.DefaultPrecopyDirty, "stop the live rounds once a round leaves fewer dirty pages than this")
	case "remus":
		c.fs.DurationVar(&interval, "interval", toolstack.DefaultRemusInterval, "time between checkpoints (xl remus -i)")
	}
	if code := c.parse(args); code >= 0 {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if name == "list" {
		return list(ctx, c, *runtime, long)
	}
	if (name == "suspend" || name == "wait") && timeout <= 0 {
		return c.usageError(fmt.Errorf("--timeout %v: want a positive duration", timeout))
	}
	if name == "remus" && interval <= 0 {
		return c.usageError(fmt.Errorf("--interval %v: want a positive duration", interval))
	}
	if name == "migrate" && (maxRounds < 1 || targetDirty < 0) {
		return c.usageError(fmt.Errorf("--max-rounds %d, --target-dirty %d: want at least 1 and 0", maxRounds, targetDirty))
	}
	if name == "wait" {
		return wait(ctx, c, *runtime, c.fs.Arg(0), c.fs.Arg(1), timeout)
	}
	client, entry, err := api.Find(*runtime, c.fs.Arg(0))
	if err != nil {
		return c.fail(err)
	}
	if name == "xenstore-path" {
		fmt.Fprintf(stdout, "export XENSTORED_PATH=%s\n", filepath.Join(entry.Dir, "xenstored.sock"))
		return 0
	}
	action := api.Action{Action: name, Fast: fast}
	if name == "suspend" {
		action.TimeoutMS = int(timeout.Milliseconds())
	}
	if name == "save" {
		path, err := filepath.Abs(c.fs.Arg(1))
		if err != nil {
			return c.fail(err)
		}
		action.Path, action.Checkpoint = path, checkpoint
	}
	if name == "remus" {
		action.Target, action.IntervalMS = c.fs.Arg(1), int(interval.Milliseconds())
	}
	if name == "migrate" {
		action.Target, action.NonLive, action.MaxRounds, action.TargetDirty = c.fs.Arg(1), !live, maxRounds, targetDirty
		if targetDirty == 0 {
			action.TargetDirty = -1 // never stop early
		}
	}
	if name == "trigger" {
		if t := c.fs.Arg(1); t != "s3resume" && t != "power" && t != "sleep" {
			return c.usageError(fmt.Errorf("trigger %q: runvm offers s3resume, power and sleep (xl's nmi, reset and init are not done)", t))
		}
		action.Trigger = c.fs.Arg(1)
	}
	if name == "vcpu-set" {
		n, err := strconv.Atoi(c.fs.Arg(1))
		if err != nil || n < 1 {
			return c.usageError(fmt.Errorf("vcpu-set %q: want a number of vCPUs, 1 or more", c.fs.Arg(1)))
		}
		action.VCPUs = n
	}
	info, err := client.Do(ctx, action)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", c.fs.Arg(0), err))
	}
	line := fmt.Sprintf("domain %d (%s): %s", info.Domid, info.Name, info.State)
	if info.Reason != "" {
		line += " (" + info.Reason + ")"
	}
	switch name {
	case "save":
		line = fmt.Sprintf("domain %d (%s): saved to %s; %s", info.Domid, info.Name, c.fs.Arg(1), info.State)
		if info.State == "destroyed" {
			line += ", as after xl save"
		}
	case "migrate":
		if m := info.Migration; m != nil {
			for _, r := range m.Rounds {
				fmt.Fprintln(stdout, apiRoundLine(r))
			}
			line = fmt.Sprintf("domain %d (%s): migrated to %s; %d bytes, downtime %v; %s here",
				info.Domid, info.Name, m.Target, m.Bytes, time.Duration(m.DowntimeUS)*time.Microsecond, info.State)
		}
	case "remus":
		line = fmt.Sprintf("domain %d (%s): remus to %s stopped; %s here", info.Domid, info.Name, c.fs.Arg(1), info.State)
	case "vcpu-set":
		line = fmt.Sprintf("domain %d (%s): %s; %s vCPUs available", info.Domid, info.Name, info.State, c.fs.Arg(1))
	case "trigger":
		line = fmt.Sprintf("domain %d (%s): %s; sent %s", info.Domid, info.Name, info.State, c.fs.Arg(1))
	case "shutdown", "reboot":
		what := map[string]string{"shutdown": "power off", "reboot": "reboot"}[name]
		line = fmt.Sprintf("domain %d (%s): %s; asked to %s", info.Domid, info.Name, info.State, what)
	}
	fmt.Fprintln(stdout, line)
	return 0
}

func list(ctx context.Context, c *command, runtime string, long bool) int {
	doms, err := api.Running(ctx, runtime)
	if err != nil {
		return c.fail(err)
	}
	if long {
		fmt.Fprintf(c.stdout, "%-6s %-20s %-12s %-9s %-12s %-24s %s\n", "DOMID", "NAME", "STATE", "MEM(MiB)", "REASON", "XS-QUOTA-HITS", "XENSTORED")
	} else {
		fmt.Fprintf(c.stdout, "%-6s %-20s %-12s %s\n", "DOMID", "NAME", "STATE", "MEM(MiB)")
	}
	for _, d := range doms {
		if long {
			reason := d.Reason
			if reason == "" {
				reason = "-"
			}
			fmt.Fprintf(c.stdout, "%-6d %-20s %-12s %-9d %-12s %-24s %s\n", d.Domid, d.Name, d.State, d.MemMiB, reason, quotaHits(d.Xenstore), d.XenstoredPath)
		} else {
			fmt.Fprintf(c.stdout, "%-6d %-20s %-12s %d\n", d.Domid, d.Name, d.State, d.MemMiB)
		}
	}
	return 0
}

// states are the states `runvm wait` knows (toolstack.State's names).
var states = map[string]bool{"created": true, "running": true, "paused": true, "suspending": true,
	"suspended": true, "saving": true, "shutdown": true, "crashed": true, "destroyed": true, "debug-stopped": true, "migrating": true, "replicating": true}

// wait polls a domain's owner until the domain is in state, for scripts
// that must not race a change the guest makes by itself. It waits for the
// domain to appear too; "destroyed" also matches an owner that is gone.
func wait(ctx context.Context, c *command, runtime, dom, state string, timeout time.Duration) int {
	if !states[state] {
		return c.usageError(fmt.Errorf("unknown state %q", state))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := false
	last := "absent"
	for {
		client, _, err := api.Find(runtime, dom)
		if err == nil {
			seen = true
			if info, err := client.Info(ctx); err == nil {
				last = info.State
				if info.State == state {
					fmt.Fprintf(c.stdout, "domain %d (%s): %s\n", info.Domid, info.Name, info.State)
					return 0
				}
			}
		} else if seen && state == "destroyed" {
			fmt.Fprintf(c.stdout, "%s: gone\n", dom)
			return 0
		}
		select {
		case <-ctx.Done():
			return c.fail(fmt.Errorf("%s is %s, not %s, after %v", dom, last, state, timeout))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// quotaHits lists xenstored's quota hits as kind=count, or "-".
func quotaHits(x *api.XenstoreInfo) string {
	if x == nil || len(x.QuotaHits) == 0 {
		return "-"
	}
	kinds := make([]string, 0, len(x.QuotaHits))
	for k := range x.QuotaHits {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var b strings.Builder
	for i, k := range kinds {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", k, x.QuotaHits[k])
	}
	return b.String()
}
