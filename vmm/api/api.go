// Package api is the control plane of a running domain: JSON over HTTP on
// a Unix socket, as Firecracker and Cloud Hypervisor serve theirs, and the
// client the runvm commands use. Each `runvm run` serves one domain from a
// directory under the runtime directory:
//
//	<runtime>/<name>/api.sock        this API
//	<runtime>/<name>/xenstored.sock  its xenstored (for XENSTORED_PATH)
//
// Endpoints:
//
//	GET  /domain            -> Info
//	PUT  /domain/actions    <- Action   -> Info, or an Error with 409 when
//	                                       the domain is in the wrong state
//	                                       (vcpu-set takes Action.VCPUs)
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/xenresume/xenresume/vmm/rundir"
)

// Info describes a domain.
type Info struct {
	Domid uint16 `json:"domid"`
	Name  string `json:"name"`
	// State is the owner's lifecycle state (toolstack.State): created,
	// running, paused, suspending, suspended, saving, shutdown, crashed,
	// destroyed, debug-stopped (gdb holds it), migrating; or "unresponsive" when the
	// owner holds the name but its API does not answer (a stopped process).
	State string `json:"state"`
	// Xenstore is the domain's xenstored: its size and the limits its
	// clients hit (package xenstore's Stats, summed up).
	Xenstore      *XenstoreInfo `json:"xenstore,omitempty"`
	Reason        string        `json:"reason,omitempty"`
	MemMiB        uint64        `json:"mem_mib"`
	XenstoredPath string        `json:"xenstored_path"`
	// Migration is how the domain's last migration went, once it tried
	// one.
	Migration *MigrationInfo `json:"migration,omitempty"`
}

// MigrationInfo says how a migration went (toolstack.MigrateStats).
type MigrationInfo struct {
	Target string           `json:"target"`
	Rounds []MigrationRound `json:"rounds"`
	Bytes  uint64           `json:"bytes"`
	// DowntimeUS: from the suspend request to the target's report that
	// the guest runs (0 when it does not).
	DowntimeUS int64  `json:"downtime_us"`
	Outcome    string `json:"outcome"` // handed over, not handed over, unknown; remus: replicated
	// Checkpoints: Remus's complete checkpoints sent.
	Checkpoints int    `json:"checkpoints,omitempty"`
	Error       string `json:"error,omitempty"`
}

// MigrationRound is one round of memory sent.
type MigrationRound struct {
	Round     int    `json:"round"`
	Final     bool   `json:"final,omitempty"`
	Pages     uint64 `json:"pages"`
	Dirty     int    `json:"dirty"` // dirtied meanwhile, for the next round; -1: counted in the final one
	Bytes     uint64 `json:"bytes"` // stream bytes so far
	ElapsedUS int64  `json:"elapsed_us"`
}

// XenstoreInfo summarizes a domain's xenstored.
type XenstoreInfo struct {
	Nodes        int `json:"nodes"`
	Connections  int `json:"connections"`
	Watches      int `json:"watches"`
	Transactions int `json:"transactions"`
	// QuotaHits counts requests refused (events dropped, connections
	// refused) at each limit, by the limit's name (xenstore.QuotaKind).
	QuotaHits     map[string]uint64 `json:"quota_hits,omitempty"`
	EventsDropped uint64            `json:"events_dropped,omitempty"`
}

// Action asks for a state change.
type Action struct {
	Action     string `json:"action"` // suspend, resume, pause, unpause, shutdown, reboot, destroy, save, migrate, remus, vcpu-set, trigger
	Fast       bool   `json:"fast,omitempty"`
	TimeoutMS  int    `json:"timeout_ms,omitempty"`
	Path       string `json:"path,omitempty"`       // save: an absolute path on the host
	Checkpoint bool   `json:"checkpoint,omitempty"` // save: keep the domain running
	// migrate, remus: the receiver's HOST:PORT, and the precopy policy (0:
	// libxc's defaults).
	Target      string `json:"target,omitempty"`
	NonLive     bool   `json:"non_live,omitempty"`
	MaxRounds   int    `json:"max_rounds,omitempty"`
	TargetDirty int    `json:"target_dirty,omitempty"`
	// remus: the checkpoint interval (0: xl's 200 ms).
	IntervalMS int `json:"interval_ms,omitempty"`
	VCPUs      int `json:"vcpus,omitempty"` // vcpu-set: how many vCPUs the guest may have online
	// trigger: what to send the domain, as xl trigger (s3resume).
	Trigger string `json:"trigger,omitempty"`
}

// Error is the body of a failed request.
type Error struct {
	Error string `json:"error"`
}

// ErrConflict is what errors about a domain in the wrong state for an
// action match (errors.Is); the server answers them with 409.
var ErrConflict = errors.New("domain is in the wrong state")

// Conflict marks err as a wrong-state error for the API (409), keeping its
// message as it is.
func Conflict(err error) error {
	return &StatusError{Code: http.StatusConflict, Msg: err.Error(), err: err}
}

// StatusError is a failed request: its HTTP status and the server's
// message, which is the whole of Error().
type StatusError struct {
	Code int
	Msg  string
	err  error
}

func (e *StatusError) Error() string { return e.Msg }

// Is makes a 409 match ErrConflict.
func (e *StatusError) Is(target error) bool {
	return target == ErrConflict && e.Code == http.StatusConflict
}

// Unwrap returns the server-side error, when there is one.
func (e *StatusError) Unwrap() error { return e.err }

// Domain is what the server controls.
type Domain interface {
	Info() Info
	Do(ctx context.Context, a Action) error
}

// shutdownGrace bounds how long Serve waits, once cancelled, for the
// requests in flight.
const shutdownGrace = 5 * time.Second

// Serve serves d's API on a new Unix socket at path (mode 0600) until ctx
// ends (see ServeListener).
func Serve(ctx context.Context, path string, d Domain) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("api: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("api: chmod %s: %w", path, err)
	}
	return ServeListener(ctx, l, d)
}

// ServeListener serves d's API on l until ctx ends, then waits (up to
// shutdownGrace) for the requests in flight to finish.
func ServeListener(ctx context.Context, l net.Listener, d Domain) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /domain", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, d.Info())
	})
	mux.HandleFunc("PUT /domain/actions", func(w http.ResponseWriter, r *http.Request) {
		var a Action
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			reply(w, http.StatusBadRequest, Error{fmt.Sprintf("bad action: %v", err)})
			return
		}
		if err := d.Do(r.Context(), a); err != nil {
			code := http.StatusInternalServerError
			var se *StatusError
			switch {
			case errors.As(err, &se):
				code = se.Code
			case errors.Is(err, ErrConflict):
				code = http.StatusConflict
			}
			reply(w, code, Error{err.Error()})
			return
		}
		reply(w, http.StatusOK, d.Info())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// On cancellation, let requests in flight finish and their replies go
	// out (a destroy or save ends the domain, and so this server, from
	// inside its own request), then close what is left.
	shut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shut)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	})
	err := srv.Serve(l)
	if !stop() {
		<-shut // Serve returned because of the shutdown: let it finish
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to one domain's API socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string, body any) (Info, error) {
	var info Info
	var rd *jsonReader
	if body != nil {
		rd = newJSONReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://xenresume"+path, rd.reader())
	if err != nil {
		return info, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return info, fmt.Errorf("%s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e Error
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e); err != nil || e.Error == "" {
			e.Error = fmt.Sprintf("HTTP %d from %s", resp.StatusCode, c.Socket)
		}
		return info, &StatusError{Code: resp.StatusCode, Msg: e.Error}
	}
	return info, json.NewDecoder(resp.Body).Decode(&info)
}

// Info asks for the domain's state.
func (c *Client) Info(ctx context.Context) (Info, error) { return c.do(ctx, "GET", "/domain", nil) }

// Do asks for an action and returns the state after it.
func (c *Client) Do(ctx context.Context, a Action) (Info, error) {
	return c.do(ctx, "PUT", "/domain/actions", a)
}

// RuntimeDir is where running domains are found: $XENRESUME_RUNTIME_DIR,
// else $XDG_RUNTIME_DIR/xenresume, else /run/xenresume for root and
// $TMPDIR/xenresume-<uid> otherwise.
func RuntimeDir() string {
	if d := os.Getenv("XENRESUME_RUNTIME_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "xenresume")
	}
	if os.Getuid() == 0 {
		return "/run/xenresume"
	}
	return filepath.Join(os.TempDir(), "xenresume-"+strconv.Itoa(os.Getuid()))
}

// Running lists the domains whose owner holds their name under dir
// (package rundir), with the state each one's API reports. An owner that
// holds its name but does not answer within a second (a stopped process)
// is listed as "unresponsive".
func Running(ctx context.Context, dir string) ([]Info, error) {
	live, err := rundir.List(dir)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(live))
	for _, e := range live {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		info, err := NewClient(filepath.Join(e.Dir, rundir.APISocket)).Info(ctx)
		cancel()
		if err != nil {
			info = Info{Domid: e.Domid, Name: e.Name, State: "unresponsive",
				XenstoredPath: filepath.Join(e.Dir, rundir.XenstoreSock)}
		}
		out = append(out, info)
	}
	return out, nil
}

// Find returns the client of the domain named by domid or name under dir.
func Find(dir, dom string) (*Client, rundir.Entry, error) {
	live, err := rundir.List(dir)
	if err != nil {
		return nil, rundir.Entry{}, err
	}
	for _, e := range live {
		if e.Name == dom || strconv.Itoa(int(e.Domid)) == dom {
			return NewClient(filepath.Join(e.Dir, rundir.APISocket)), e, nil
		}
	}
	return nil, rundir.Entry{}, fmt.Errorf("no domain %q under %s (runvm list shows them)", dom, dir)
}
