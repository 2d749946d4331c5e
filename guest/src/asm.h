/* asm.h: assembler macros both heads of the stub use (an .S file
 * includes it): a Xen ELF note's header and end (the note's body goes
 * between them), and the registers a C call may clobber, saved around the
 * handlers that call C. */
#ifndef ASM_H
#define ASM_H
#ifdef __ASSEMBLER__
.macro xen_note_begin type
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f
	.long 4f - 3f
	.long \type
1:	.asciz "Xen"
2:	.balign 4
3:
.endm
.macro xen_note_end
4:	.balign 4
	.popsection
.endm
.macro save_caller_saved
	push	%rax
	push	%rcx
	push	%rdx
	push	%rsi
	push	%rdi
	push	%r8
	push	%r9
	push	%r10
	push	%r11
.endm
.macro restore_caller_saved
	pop	%r11
	pop	%r10
	pop	%r9
	pop	%r8
	pop	%rdi
	pop	%rsi
	pop	%rdx
	pop	%rcx
	pop	%rax
.endm
#endif
#endif
