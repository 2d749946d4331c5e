// Package guest embeds the xenresume guest stub: a freestanding x86-64
// kernel that boots as a 64-bit Xen PV guest, runs one scenario chosen by
// "test=NAME" on its command line, and ends with an XTF-style result line.
//
// The image is built from the C and assembly sources beside this file by
// `make guest` against Xen's public headers (Debian's libxen-dev), and is
// committed so that `go build` and `go test` need no C toolchain. `make
// guest-check` (part of `make test`) fails when it is stale.
package guest

import _ "embed"

// Image is the guest stub's ELF image.
//
//go:embed xenresume-stub.elf
var Image []byte

// ResultPrefix starts the one line every scenario ends with.
const ResultPrefix = "Test result: "
