/* hvm.h: constants of the HVM/PVH build (head_hvm.S and hvm.c). */
#ifndef GUEST_HVM_H
#define GUEST_HVM_H

/* The selectors of head_hvm.S's GDT. */
#define HVM_CS64 0x08
#define HVM_DS 0x10
#define HVM_CS32 0x18

/* Where the S3 scenario copies its real-mode waking vector: below 1 MiB,
 * page-aligned (so CS = HVM_WAKE_ADDR >> 4, IP = 0), and clear of the
 * image at 1 MiB and of the RSDP at 0xE0000. Its first page is also the
 * waking path's stack. */
#define HVM_WAKE_ADDR 0x8000

/* The event callback vector (Linux's HYPERVISOR_CALLBACK_VECTOR). */
#define HVM_CALLBACK_VECTOR 0xf3

#endif
