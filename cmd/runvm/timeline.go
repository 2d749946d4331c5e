package main

import (
	"fmt"
	"io"
	"os"

	"github.com/xenresume/xenresume/vmm/timeline"
)

// cmdTimeline draws one cycle of a timeline written with --trace-file as a
// static SVG, for people who will not open a trace viewer.
func cmdTimeline(args []string, stdout, stderr io.Writer) int {
	c := newCommand("timeline", "FILE", 1, stdout, stderr)
	out := c.fs.String("o", "", "write the SVG to `FILE` (default: standard output)")
	op := c.fs.String("op", "suspend", "draw a top-level span whose name starts with `NAME` (a lifecycle operation: suspend, resume, save, ...)")
	n := c.fs.Int("n", 0, "draw the `N`th such span (from 0)")
	if code := c.parse(args); code >= 0 {
		return code
	}
	f, err := os.Open(c.fs.Arg(0))
	if err != nil {
		return c.fail(err)
	}
	defer f.Close()
	tr, err := timeline.Read(f)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", c.fs.Arg(0), err))
	}
	root, in, err := tr.Cycle(*op, *n)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", c.fs.Arg(0), err))
	}
	w := stdout
	if *out != "" {
		o, err := os.Create(*out)
		if err != nil {
			return c.fail(err)
		}
		defer o.Close()
		w = o
	}
	if err := timeline.SVG(w, root, in); err != nil {
		return c.fail(err)
	}
	return 0
}
