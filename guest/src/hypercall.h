/*
 * hypercall.h: calls into the hypercall page, Xen's 64-bit PV ABI.
 *
 * Number in %rax (loaded by the stub), arguments in %rdi, %rsi, %rdx, %r10,
 * %r8, result in %rax. Argument registers are treated as clobbered, as a
 * debug Xen (and xenresume with --clobber-args) overwrites the ones a call
 * declares.
 */
#ifndef GUEST_HYPERCALL_H
#define GUEST_HYPERCALL_H

#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/version.h>
#include <xen/vcpu.h>
#include <xen/physdev.h>

extern char hypercall_page[4096];

/* The argument registers of a hypercall: set before the call, and as the
 * call left them after it. */
struct hypercall_regs {
	long rdi, rsi, rdx, r10, r8;
};

/* hypercall_regs: the one way into the hypercall page. */
static inline long hypercall_regs(unsigned int nr, struct hypercall_regs *r)
{
	register long rdi asm("rdi") = r->rdi;
	register long rsi asm("rsi") = r->rsi;
	register long rdx asm("rdx") = r->rdx;
	register long r10 asm("r10") = r->r10;
	register long r8 asm("r8") = r->r8;
	long ret;

	asm volatile("call *%[stub]"
		     : "=a"(ret), "+r"(rdi), "+r"(rsi), "+r"(rdx), "+r"(r10), "+r"(r8)
		     : [stub] "r"(hypercall_page + nr * 32)
		     : "memory", "rcx", "r9", "r11");
	*r = (struct hypercall_regs){ rdi, rsi, rdx, r10, r8 };
	return ret;
}

static inline long hypercall3(unsigned int nr, long a1, long a2, long a3)
{
	struct hypercall_regs r = { a1, a2, a3, 0, 0 };
	return hypercall_regs(nr, &r);
}

#define hypercall2(nr, a1, a2) hypercall3(nr, a1, a2, 0)

static inline long HYPERVISOR_console_io(int cmd, int count, const char *buf)
{
	return hypercall3(__HYPERVISOR_console_io, cmd, count, (long)buf);
}

static inline long HYPERVISOR_sched_op(int cmd, void *arg)
{
	return hypercall2(__HYPERVISOR_sched_op, cmd, (long)arg);
}

/* HYPERVISOR_suspend: SCHEDOP_shutdown(SHUTDOWN_suspend) with the start_info
 * MFN as the third argument (%rdx), which the toolstack reads from vCPU 0. */
static inline long HYPERVISOR_suspend(unsigned long start_info_mfn)
{
	struct sched_shutdown sd = { .reason = SHUTDOWN_suspend };
	return hypercall3(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (long)&sd,
			  (long)start_info_mfn);
}

/* HYPERVISOR_suspend_rdx also returns %rdx as it is when the call
 * returns: on resume in a new domain the toolstack has put the rewritten
 * start_info's MFN there. sched_op declares two arguments, so even a debug
 * Xen leaves %rdx alone. */
static inline long HYPERVISOR_suspend_rdx(unsigned long start_info_mfn, unsigned long *rdx_out)
{
	struct sched_shutdown sd = { .reason = SHUTDOWN_suspend };
	struct hypercall_regs r = { SCHEDOP_shutdown, (long)&sd, (long)start_info_mfn, 0, 0 };
	long ret = hypercall_regs(__HYPERVISOR_sched_op, &r);

	*rdx_out = r.rdx;
	return ret;
}

static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{
	return hypercall2(__HYPERVISOR_xen_version, cmd, (long)arg);
}

static inline long HYPERVISOR_vcpu_op(int cmd, int vcpu, void *arg)
{
	return hypercall3(__HYPERVISOR_vcpu_op, cmd, vcpu, (long)arg);
}

static inline long HYPERVISOR_vm_assist(unsigned int cmd, unsigned int type)
{
	return hypercall2(__HYPERVISOR_vm_assist, cmd, type);
}

static inline long HYPERVISOR_event_channel_op(int cmd, void *arg)
{
	return hypercall2(__HYPERVISOR_event_channel_op, cmd, (long)arg);
}

static inline long HYPERVISOR_physdev_op(int cmd, void *arg)
{
	return hypercall2(__HYPERVISOR_physdev_op, cmd, (long)arg);
}

static inline long HYPERVISOR_hvm_op(int op, void *arg)
{
	return hypercall2(__HYPERVISOR_hvm_op, op, (long)arg);
}

static inline long HYPERVISOR_set_trap_table(const struct trap_info *table)
{
	return hypercall2(__HYPERVISOR_set_trap_table, (long)table, 0);
}

static inline long HYPERVISOR_callback_op(int cmd, const void *arg)
{
	return hypercall2(__HYPERVISOR_callback_op, cmd, (long)arg);
}

static inline long HYPERVISOR_mmu_update(const mmu_update_t *req, unsigned int count,
					 unsigned int *done, domid_t dom)
{
	struct hypercall_regs r = { (long)req, count, (long)done, dom, 0 };
	return hypercall_regs(__HYPERVISOR_mmu_update, &r);
}

static inline long HYPERVISOR_update_va_mapping(unsigned long va, unsigned long pte, unsigned long flags)
{
	return hypercall3(__HYPERVISOR_update_va_mapping, va, pte, flags);
}

#endif
