package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	if sw, ok := w.(*syncWriter); ok {
		w = sw.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressLine draws "save: 42% (1234/2938)" on one terminal line,
// redrawing in place, and ends the line when done reaches total.
type progressLine struct {
	mu   sync.Mutex
	w    io.Writer
	last int
}

func (p *progressLine) update(what string, done, total uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pct := 100
	if total > 0 {
		pct = int(done * 100 / total)
	}
	if pct == p.last && done != total {
		return
	}
	p.last = pct
	fmt.Fprintf(p.w, "\r%s: %3d%% (%d/%d)", what, pct, done, total)
	if done >= total {
		fmt.Fprintln(p.w)
		p.last = -1
	}
}
