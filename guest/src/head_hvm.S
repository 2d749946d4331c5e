/*
 * head_hvm.S: the HVM/PVH build's entry, page tables, GDT, interrupt
 * stubs and the ACPI S3 waking path.
 *
 * The domain builder enters XEN_ELFNOTE_PHYS32_ENTRY in 32-bit flat
 * protected mode, paging off, interrupts off, with %ebx = the physical
 * address of hvm_start_info and no GDT or IDT of its own (xen-hvm-pvh.md
 * §1.5, §2.3). The stub identity-maps the first 4 GiB with 2 MiB pages
 * (so the special pages at 0xFEFF8000 and the ACPI tables are reachable),
 * enters long mode and calls hvm_main(start_info) on its own stack. The
 * image is linked and loaded at 1 MiB, virtual = physical (VIRT_BASE 0).
 *
 * The S3 waking vector (hvm_wake_start..hvm_wake_end) is copied below
 * 1 MiB, to HVM_WAKE_ADDR, by the S3 scenario: the firmware enters it in
 * real mode at CS = HVM_WAKE_ADDR >> 4, IP = 0 with every other register
 * reset. It goes back to protected mode, then long mode on the same page
 * tables, and returns from hvm_s3_sleep with 1.
 */
#include <xen/elfnote.h>
#include "layout.h"
#include "hvm.h"
#include "asm.h"

/* The Xen ELF notes (asm.h's xen_note_begin and xen_note_end). */
	xen_note_begin XEN_ELFNOTE_GUEST_OS
	.asciz "xenresume-stub"
	xen_note_end
	xen_note_begin XEN_ELFNOTE_PHYS32_ENTRY
	.long _start_hvm
	xen_note_end

#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR0_PE 0x1
#define CR0_PG 0x80000000
#define CR4_PAE 0x20

	.section .text.head, "ax", @progbits
	.code32
	.globl _start_hvm
_start_hvm:
	cld
	mov	%ebx, hvm_start_info_pa
	mov	$boot_stack_top, %esp

	/* PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 2 MiB
	 * pages (P, RW, PS): 0-4 GiB identity. */
	mov	$pdpt + 3, %eax
	mov	%eax, pml4
	mov	$pd + 3, %eax
	xor	%ecx, %ecx
1:	mov	%eax, pdpt(, %ecx, 8)
	add	$4096, %eax
	inc	%ecx
	cmp	$4, %ecx
	jne	1b
	xor	%ecx, %ecx
2:	mov	%ecx, %eax
	shl	$21, %eax
	or	$0x83, %eax
	mov	%eax, pd(, %ecx, 8)
	inc	%ecx
	cmp	$2048, %ecx
	jne	2b

	lgdt	gdt_desc
	call	enter_long32
	ljmp	$HVM_CS64, $long_entry

	/* enter_long32: PAE, CR3, EFER.LME, then PE|PG; from 32-bit
	 * protected mode (the boot) and from the waking path. */
enter_long32:
	mov	%cr4, %eax
	or	$CR4_PAE, %eax
	mov	%eax, %cr4
	mov	$pml4, %eax
	mov	%eax, %cr3
	mov	$MSR_EFER, %ecx
	rdmsr
	or	$EFER_LME, %eax
	wrmsr
	mov	%cr0, %eax
	or	$(CR0_PE | CR0_PG), %eax
	mov	%eax, %cr0
	ret

	.code64
long_entry:
	mov	$HVM_DS, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	xor	%eax, %eax
	mov	%ax, %fs
	mov	%ax, %gs
	mov	$boot_stack_top, %rsp
	mov	hvm_start_info_pa(%rip), %edi
	call	hvm_main
	ud2


	/* Exception stubs, 16 bytes each: a dummy error code where the CPU
	 * pushes none, the vector, then hvm_trap(frame), which reports and
	 * shuts down. */
.macro exc vec, has_err
	.balign 16
	.if \has_err == 0
	pushq	$0
	.endif
	pushq	$\vec
	jmp	trap_common
.endm

	.text
	.balign 16
	.globl hvm_exception_stubs
hvm_exception_stubs:
	exception_table

trap_common:
	save_caller_saved
	mov	%rsp, %rdi
	and	$-16, %rsp
	call	hvm_trap
	ud2

	/* The event callback vector's handler: an interrupt gate (IF off),
	 * no error code. Xen injects the global callback vector without the
	 * LAPIC, so no EOI is owed. */
	.globl hvm_upcall_entry
hvm_upcall_entry:
	save_caller_saved
	push	%rbx
	mov	%rsp, %rbx
	and	$-16, %rsp
	call	evtchn_upcall
	mov	%rbx, %rsp
	pop	%rbx
	restore_caller_saved
	iretq

	/* hvm_s3_sleep(pm1a_cnt, value): save the callee-saved registers and
	 * the stack, write value to PM1a_CNT (which puts the domain in S3)
	 * and return 1 when the waking vector brings it back. If the write
	 * does not suspend the domain it returns 0. */
	.globl hvm_s3_sleep
hvm_s3_sleep:
	push	%rbx
	push	%rbp
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	mov	%rsp, hvm_s3_rsp(%rip)
	mov	%edi, %edx
	mov	%esi, %eax
	out	%ax, %dx
	/* Not suspended after all: a few instructions may run before the
	 * VMM stops the vCPU, so wait a moment before saying so. */
	mov	$1000000, %ecx
3:	dec	%ecx
	jnz	3b
	xor	%eax, %eax
	jmp	4f
hvm_s3_resume64:
	mov	$HVM_DS, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	xor	%eax, %eax
	mov	%ax, %fs
	mov	%ax, %gs
	mov	hvm_s3_rsp(%rip), %rsp
	lgdt	gdt_desc(%rip)
	lidt	hvm_idt_desc(%rip)
	mov	$1, %eax
4:	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%rbp
	pop	%rbx
	ret

	/* The waking vector, copied to HVM_WAKE_ADDR. Real mode, CS =
	 * HVM_WAKE_ADDR >> 4: data is addressed relative to its start. */
	.code16
	.globl hvm_wake_start, hvm_wake_end
hvm_wake_start:
	cli
	mov	%cs, %ax
	mov	%ax, %ds
	lgdtl	wake_gdt_desc - hvm_wake_start
	mov	%cr0, %eax
	or	$CR0_PE, %eax
	mov	%eax, %cr0
	ljmpl	$HVM_CS32, $(HVM_WAKE_ADDR + wake32 - hvm_wake_start)
	.code32
wake32:
	mov	$HVM_DS, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	/* The first page of the trampoline holds its own stack. */
	mov	$(HVM_WAKE_ADDR + 4096), %esp
	/* The image is identity-mapped; its GDT has the 64-bit CS. */
	lgdt	gdt_desc
	/* Copied code: reach the image by absolute addresses only. */
	mov	$enter_long32, %eax
	call	*%eax
	ljmp	$HVM_CS64, $hvm_s3_resume64
	.balign 8
wake_gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
hvm_wake_end:

	.data
	.balign 16
	/* null; 0x08 64-bit code; 0x10 data; 0x18 32-bit code. */
gdt:
	.quad	0
	.quad	0x00af9a000000ffff
	.quad	0x00cf92000000ffff
	.quad	0x00cf9a000000ffff
gdt_end:
	.balign 8
	.word	0, 0, 0
gdt_desc:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.globl hvm_start_info_pa, hvm_s3_rsp
hvm_start_info_pa:
	.quad	0
hvm_s3_rsp:
	.quad	0

	.bss
	.balign 4096
pml4:
	.skip	4096
pdpt:
	.skip	4096
pd:
	.skip	4 * 4096
boot_stack:
	.skip	BOOT_STACK_SIZE
boot_stack_top:

	.section .text.hypercall, "ax", @progbits
	.balign 4096
	.globl hypercall_page
hypercall_page:
	/* Written by the hypervisor when hvm_main writes the MSR. */
	.fill 4096, 1, 0xcc
