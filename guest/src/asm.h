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
/* The 32 exception vectors, each through the including file's own
 * `exc vec, has_err` macro; has_err is 1 where the CPU pushes an error
 * code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX). */
.macro exception_table
	exc 0,0;  exc 1,0;  exc 2,0;  exc 3,0;  exc 4,0;  exc 5,0;  exc 6,0;  exc 7,0
	exc 8,1;  exc 9,0;  exc 10,1; exc 11,1; exc 12,1; exc 13,1; exc 14,1; exc 15,0
	exc 16,0; exc 17,1; exc 18,0; exc 19,0; exc 20,0; exc 21,1; exc 22,0; exc 23,0
	exc 24,0; exc 25,0; exc 26,0; exc 27,0; exc 28,0; exc 29,1; exc 30,1; exc 31,0
.endm
#endif
#endif
