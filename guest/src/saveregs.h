/* saveregs.h: assembler macros both heads of the stub use (an .S file
 * includes it): the registers a C call may clobber, saved around the
 * handlers that call C. */
#ifndef SAVEREGS_H
#define SAVEREGS_H
#ifdef __ASSEMBLER__
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
