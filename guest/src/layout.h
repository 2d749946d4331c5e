/* layout.h: constants shared by the guest's assembly and C. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

/* Where the domain builder maps guest-physical memory (XEN_ELFNOTE_VIRT_BASE),
 * the start of the -2 GiB kernel code model, as 64-bit PV Linux uses. */
#define VIRT_BASE 0xffffffff80000000

/* The port xenresume's null device claims (vmm/xen NullPort): an OUT to it
 * exits to the VMM, which does nothing. Only the bare-exit benchmark loop
 * uses it; the port the hypercall page traps through (0xe2, asm/asm.go) is
 * the VMM's business, and the guest only ever calls into the page. */
#define XENRESUME_NULL_PORT 0xe3

#endif
