/* layout.h: constants shared by the guest's assembly and C. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

/* Where the domain builder maps guest-physical memory (XEN_ELFNOTE_VIRT_BASE),
 * the start of the -2 GiB kernel code model, as 64-bit PV Linux uses. */
#define VIRT_BASE 0xffffffff80000000

/* The ports xenresume's hypercall page traps through (see asm/hypercall.go).
 * The guest never uses them directly, except the bare-exit benchmark loop. */
#define XENRESUME_NULL_PORT 0xe3

#endif
