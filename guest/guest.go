// Package guest embeds the xenresume guest stub: a freestanding x86-64
// kernel that runs one scenario chosen by "test=NAME" on its command line
// and ends with an XTF-style result line. It comes in two builds:
//
//   - Image boots as a 64-bit Xen PV guest (ring 3 under the PV model),
//     with the scenarios of guest/src/tests.c;
//   - ImageHVM is the same console, event-channel and xenstore code under
//     an HVM/PVH head (guest/src/head_hvm.S, hvm.c): an ELF entered at its
//     XEN_ELFNOTE_PHYS32_ENTRY in 32-bit flat protected mode with %ebx =
//     hvm_start_info, which identity-maps 4 GiB, enters long mode, writes
//     the hypercall MSR, places shared_info with XENMEM_add_to_physmap,
//     takes events through the callback vector (HVM_PARAM_CALLBACK_IRQ
//     type 2) and finds its rings through the HVM params. Its scenarios
//     are hello, pvhvm-suspend (the control/shutdown handshake and
//     SHUTDOWN_suspend with no start_info; skip-callback=1 is the negative
//     control) and s3 (ACPI S3 and back through its FACS waking vector;
//     no-vector=1 is the negative control). Run it as `type = "pvh"` with
//     `kernel` (its command line in hvm_start_info) or `type = "hvm"` with
//     `firmware_override`: an HVM domain gets no command line from the
//     builder, as on Xen, and the stub reads data/cmdline from its
//     xenstore home instead (`xenstore-write` it while the domain is
//     created paused).
//
// The images are built from the C and assembly sources beside this file by
// `make guest` against Xen's public headers (Debian's libxen-dev), and are
// committed so that `go build` and `go test` need no C toolchain. `make
// guest-check` (part of `make test`) fails when either is stale.
package guest

import _ "embed"

// Image is the guest stub's PV ELF image.
//
//go:embed xenresume-stub.elf
var Image []byte

// ImageHVM is the guest stub's HVM/PVH ELF image (PHYS32_ENTRY at 1 MiB).
//
//go:embed xenresume-stub-hvm.elf
var ImageHVM []byte

// ResultPrefix starts the one line every scenario ends with.
const ResultPrefix = "Test result: "
