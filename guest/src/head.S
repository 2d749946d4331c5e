/*
 * head.S: entry point, Xen ELF notes, hypercall page, trap-table entries
 * and the event and failsafe callbacks.
 *
 * A 64-bit Xen PV guest enters in long mode, in ring 3 on Xen's flat
 * selectors, with %rsi = start_info (virtual), %rsp = top of the builder's
 * one-page boot stack, and its hypercall page already written by the domain
 * builder at the address XEN_ELFNOTE_HYPERCALL_PAGE names. It has no IDT of
 * its own: Xen bounces exceptions and events to the handlers it registered
 * (set_trap_table, callback_op) with Xen's frame, %rcx and %r11 on top, and
 * the handlers return with the iret hypercall.
 */
#include <xen/elfnote.h>
#include "layout.h"
#include "asm.h"

/* A note whose descriptor is a string or a quad (asm.h's xen_note_begin
 * and xen_note_end around it). */
.macro xen_note_str type, str
	xen_note_begin \type
	.asciz "\str"
	xen_note_end
.endm
.macro xen_note_quad type, value
	xen_note_begin \type
	.quad \value
	xen_note_end
.endm

	xen_note_str XEN_ELFNOTE_GUEST_OS, "xenresume-stub"
	xen_note_str XEN_ELFNOTE_GUEST_VERSION, "1"
	xen_note_str XEN_ELFNOTE_XEN_VERSION, "xen-3.0"
	xen_note_str XEN_ELFNOTE_LOADER, "generic"
	xen_note_quad XEN_ELFNOTE_VIRT_BASE, VIRT_BASE
	xen_note_quad XEN_ELFNOTE_PADDR_OFFSET, VIRT_BASE
	xen_note_quad XEN_ELFNOTE_ENTRY, _start
	xen_note_quad XEN_ELFNOTE_HYPERCALL_PAGE, hypercall_page
	xen_note_str XEN_ELFNOTE_FEATURES, "writable_descriptor_tables"
	xen_note_begin XEN_ELFNOTE_SUSPEND_CANCEL
	.long 1
	xen_note_end

	.section .text.head, "ax", @progbits
	.code64
	.globl _start
_start:
	cld
	/* xen_main(start_info, entry_rsi, entry_rsp): the raw registers are
	 * passed too so scenarios can echo exactly what the builder set. The
	 * builder's stack is one page; ours is in .bss. */
	mov	%rsi, %rdi
	mov	%rsp, %rdx
	lea	boot_stack_top(%rip), %rsp
	call	xen_main
	ud2

	.bss
	.balign 4096
boot_stack:
	.skip	BOOT_STACK_SIZE
boot_stack_top:

	.section .text.hypercall, "ax", @progbits
	.balign 4096
	.globl hypercall_page
hypercall_page:
	/* Filled by the domain builder; int3 until then, as Xen does. */
	.fill 4096, 1, 0xcc

	/* bare_exit_loop(n): n raw port-I/O exits, the baseline the hypercall
	 * benchmark is measured against: a byte read of the VMM's null port,
	 * which the VMM's I/O bitmap lets exit and which the caller's virtual
	 * IOPL (bare_exit_setup) allows; it reads all ones. */
	.text
	.globl bare_exit_loop
bare_exit_loop:
	test	%rdi, %rdi
	jz	2f
1:	in	$XENRESUME_NULL_PORT, %al
	dec	%rdi
	jnz	1b
2:	ret


	/* The iret hypercall: with Xen's frame (rip, cs, rflags, rsp, ss) on
	 * the stack, push the flags word (0: not VGCF_in_syscall) and jump to
	 * stub 23, which pushes %rcx, %r11 and %rax and enters Xen for good. */
.macro xen_iret
	pushq	$0
	jmp	hypercall_page + 23 * 32
.endm

	/* Trap-table entries: drop Xen's %rcx/%r11 slots into the registers,
	 * push a dummy error code where Xen does not, then the vector, and
	 * join trap_common, which calls trap(). */
.macro exc vec, has_err
	.balign 16
	pop	%rcx
	pop	%r11
	.if \has_err == 0
	pushq	$0
	.endif
	pushq	$\vec
	jmp	trap_common
.endm

	.balign 32
	.globl exception_stubs
exception_stubs:
	exception_table

	/* trap(frame) may return (a scenario that expects the trap moves
	 * frame->rip past it): restore, drop the vector and error code, and
	 * return with the iret hypercall. */
trap_common:
	save_caller_saved
	push	%rbx
	mov	%rsp, %rbx
	lea	8(%rsp), %rdi
	and	$-16, %rsp
	call	trap
	mov	%rbx, %rsp
	pop	%rbx
	restore_caller_saved
	add	$16, %rsp
	xen_iret

	/* The event callback: Xen's frame without an error code, events
	 * masked (the iret unmasks them again from the frame's IF). */
	.globl upcall_entry
upcall_entry:
	pop	%rcx
	pop	%r11
	save_caller_saved
	push	%rbx
	mov	%rsp, %rbx
	and	$-16, %rsp
	call	evtchn_upcall
	mov	%rbx, %rsp
	pop	%rbx
	restore_caller_saved
	xen_iret

	/* The failsafe callback: Xen could not load the segments of the
	 * context it was returning to. Nothing the stub does can cause that;
	 * say so and crash. */
	.globl failsafe_entry
failsafe_entry:
	pop	%rcx
	pop	%r11
	and	$-16, %rsp
	call	failsafe
	ud2
