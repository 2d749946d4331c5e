/* layout.h: constants shared by the guest's assembly and C. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

/* Where the domain builder maps guest-physical memory (XEN_ELFNOTE_VIRT_BASE):
 * 1 GiB, in the lower half of the address space, as XTF links its pv64
 * kernels low. Xen allows any base; a host that runs a ring-3 kernel's code
 * natively in its own user mode (PVM) can only run it there. Below 2 GiB,
 * so the kernel code model's sign-extended 32-bit addresses still reach
 * every symbol; nothing is mapped at 0, so NULL faults. */
#ifndef VIRT_BASE
#define VIRT_BASE 0x40000000UL
#endif /* the HVM build (hvm.c) is identity-mapped: -DVIRT_BASE=0UL */

/* The port xenresume's null device claims (vmm/xen NullPort): an OUT to it
 * exits to the VMM, which does nothing. Only the bare-exit benchmark loop
 * uses it; the port the hypercall page traps through (0xe2, asm/asm.go) is
 * the VMM's business, and the guest only ever calls into the page. */
#define XENRESUME_NULL_PORT 0xe3

/* The stub's own stack, in .bss: the ring-3 builder gives one page, as
 * Xen's does, which formatted output and the trap path outgrow. */
#define BOOT_STACK_SIZE 0x4000

#endif
