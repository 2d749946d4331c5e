// Package xenabi holds Xen's public guest ABI as Go types and constants,
// generated with `cgo -godefs` from the headers of Debian's libxen-dev (the
// golang.org/x/sys way): defs.go is the input, ztypes_amd64.go the committed
// output, and `make godefs` regenerates it (`make godefs-check` in CI fails
// when it is stale).
//
// The structs have Go's natural alignment, which on amd64 equals the C
// layout, so they are meant to be overlaid on guest memory with
// unsafe.Pointer after a bounds check. They are NOT safe for
// encoding/binary, which ignores alignment padding.
package xenabi
