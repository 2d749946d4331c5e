/*
 * smp.c: the SMP scenario (test=smp). vCPU 0 brings every secondary up as
 * Linux's cpu_initialize_context does: a vcpu_guest_context
 * (VCPUOP_initialise) with the kernel's L4, trap table and callbacks, then
 * VCPUOP_up. Each secondary runs a hash chain of its own, a budget of steps
 * per cycle, sleeping in SCHEDOP_poll once it is spent. Before a suspend
 * vCPU 0 stops them and they take themselves down (VCPUOP_down); after it
 * vCPU 0 re-registers their runstate areas (xen_vcpu_restore) and brings
 * them up again: VCPUOP_up alone in the same domain, VCPUOP_initialise
 * first where up says -EINVAL (a new domain, or a same-domain resume with
 * fast=0, which resets the secondaries). Then every runstate area must
 * show the vCPU running again since it was brought up, with sane times,
 * and every chain must be the hash of its steps.
 *
 * keep-up=1 leaves the secondaries up and busy through the suspend, as
 * Linux's are (spinning in stop_machine): their contexts are saved and
 * restored with vCPU 0's.
 *
 * disk=1 runs blkfront.c's driver alongside (the vbd's pattern written,
 * left in flight at each suspend, completed and verified after it) while
 * the secondaries run their chains: vCPU 0 brings them up, does the disk's
 * part, and only then waits for their budgets.
 *
 * ipi=1 checks per-vCPU event delivery at boot and after every resume:
 * each secondary unmasks its own vcpu_info and binds an IPI port to itself
 * (EVTCHNOP_bind_ipi), vCPU 0 moves one end of a loopback pair to the
 * last secondary (EVTCHNOP_bind_vcpu), then sends on them all; each must
 * be taken once, by its own vCPU's upcall (on that vCPU's stack). The
 * ports sit in the second word of the 2-level bitmap (filler ports take
 * the first), where vCPU 0 has no port of its own, so vCPU 0's upcall
 * never scans them unless Xen marks vCPU 0 for them.
 *
 * fpu=1 initialises the secondaries with VGCF_i387_valid and an fpu_ctxt
 * (FXSAVE image) holding an x87 control word and an MXCSR no vCPU starts
 * with (round toward zero in both): each secondary records both at its
 * first instruction, and vCPU 0 checks them after the boot bring-up, as
 * arch_set_info_guest loads fpu_ctxt. fpu-no-flag=1 (a negative control)
 * fills fpu_ctxt the same but leaves VGCF_i387_valid clear, still
 * expecting the values: Xen then gives the secondaries the reset state
 * (FCW 0x37f, MXCSR 0x1f80), and the check fails.
 *
 * vcpu-info=1 (with ipi=1, without cycles) has each secondary move its
 * vcpu_info into a page of ours (VCPUOP_register_vcpu_info) before it
 * unmasks and binds its IPI port; its upcall then reads only the new
 * place, so its IPI is taken only if Xen delivers there. vcpu-info-stale=1
 * (a negative control) registers it but keeps unmasking the old slot in
 * shared_info: Xen looks at the registered one, still masked, and the
 * IPIs never arrive.
 *
 * Negative controls: forget-runstate=1 skips the re-registration after a
 * resume that returned 0, forget-up=1 never brings the last secondary up
 * again; both must fail. ipi-masked=1 leaves the secondaries' events
 * masked (their IPIs are never taken); ipi-wrong-cpu=1 expects the port
 * moved to the last secondary on vCPU 0 (a port bound to another vCPU
 * must not reach vCPU 0); both must fail.
 */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

#define MAX_CPUS 16
#define STACK_SIZE 8192
#define STEPS 200000UL /* chain steps per secondary per cycle */

struct link {
	unsigned long n, hash; /* the chain: hash of steps 0..n-1 */
};

struct cpu {
	/* The chain, in two slots: a step writes the slot cur does not name,
	 * then flips cur, so memory always holds a whole link, whatever
	 * instant the vCPU is stopped (or reset) at. */
	struct link link[2];
	volatile int cur;
	volatile unsigned long budget;   /* run until n reaches it */
	volatile unsigned long starts;   /* entries at secondary_main */
	volatile int stop, parked;
	volatile int quiet_seen; /* it saw quiet and no longer reads shared_info */
	unsigned long checked_n, checked_hash; /* vCPU 0's replay */
	/* ipi=1: vCPU 0 sets events; the secondary unmasks its vcpu_info
	 * and binds ipi_port to itself (or masks it again), then says so in
	 * events_on. */
	volatile int events, events_on;
	volatile evtchn_port_t ipi_port;
	volatile long ipi_rc;
	/* fpu=1: the x87 control word and MXCSR at secondary_main's entry. */
	volatile uint16_t fcw;
	volatile uint32_t mxcsr;
};

static struct cpu cpus[MAX_CPUS];
static struct vcpu_runstate_info runstate[MAX_CPUS] __attribute__((aligned(64)));
static char stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(16)));
static struct vcpu_guest_context ctxt;
static int ncpus;
/* keep-up=1's stop_machine: while set, the secondaries do not read
 * shared_info (the suspend unmaps it) and yield instead of sleeping. */
static volatile int quiet;
/* The cmdline's switches, read once by vCPU 0. */
static int disk, ipi, ipi_masked, ipi_wrong_cpu, fpu, fpu_no_flag, vcpu_info_reg, vcpu_info_stale;
_Static_assert(MAX_CPUS <= MAX_VCPU_INFO, "registered_vcpu_info covers every vCPU");

/* vcpu-info=1: the secondaries' vcpu_info, registered in a page of ours,
 * one 64-byte slot each. */
static vcpu_info_t own_vcpu_info[MAX_CPUS] __attribute__((aligned(4096)));
_Static_assert(sizeof(own_vcpu_info) <= 4096, "one page");

/* fpu=1's values: RC = round toward zero, PC = 64 bits, every exception
 * masked (FCW); RC = toward zero, every exception masked (MXCSR). */
#define FPU_FCW 0x0f7f
#define FPU_MXCSR 0x7f80

extern struct trap_info trap_table[33];
extern char upcall_entry[], failsafe_entry[];

static unsigned long step(unsigned long h, unsigned long n)
{
	return (h ^ n) * 0x100000001b3UL;
}

static long vcpu_op(int cmd, int id, void *arg)
{
	return HYPERVISOR_vcpu_op(cmd, id, arg);
}

int smp_this_cpu(void)
{
	char *sp = __builtin_frame_address(0);
	if (sp >= stacks[0] && sp < stacks[MAX_CPUS])
		return (sp - stacks[0]) / STACK_SIZE;
	return 0; /* vCPU 0 runs on the boot stack */
}

/* ipi=1, on the secondary: events on (its IPI port bound to itself, its
 * vcpu_info unmasked and anything pending taken) or off again. */
static void secondary_events(int id, struct cpu *c)
{
	vcpu_info_t *vi = &shared->vcpu_info[id];
	int on = c->events;
	if (on && vcpu_info_reg && !registered_vcpu_info[id]) {
		/* The current contents move there; Xen then marks every
		 * selector and the upcall pending (one spurious upcall). */
		struct vcpu_register_vcpu_info r = {
			.mfn = pfn_to_mfn(virt_to_pfn(own_vcpu_info)),
			.offset = (unsigned long)&own_vcpu_info[id] & 4095,
		};
		long rc = vcpu_op(VCPUOP_register_vcpu_info, id, &r);
		if (rc) {
			c->ipi_rc = rc;
			c->events_on = on;
			return;
		}
		registered_vcpu_info[id] = &own_vcpu_info[id];
	}
	if (registered_vcpu_info[id] && !vcpu_info_stale)
		vi = registered_vcpu_info[id];
	if (on) {
		evtchn_bind_ipi_t op = { .vcpu = id };
		long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &op);
		if (!rc && op.port >= NR_PORTS) {
			evtchn_close(op.port); /* past what the upcall counts */
			rc = -XEN_ENOSPC;
		}
		if (!rc) {
			port_cpu[op.port] = id;
			c->ipi_port = op.port;
		}
		c->ipi_rc = rc;
		if (!ipi_masked) {
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			vi->evtchn_upcall_mask = 0;
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			if (vi->evtchn_upcall_pending)
				HYPERVISOR_xen_version(XENVER_version, NULL);
		}
	} else {
		vi->evtchn_upcall_mask = 1;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	c->events_on = on;
}

/* A secondary: the chain, one step at a time in memory (so that vCPU 0
 * can replay it), until stopped; then down, and on again when it is up
 * again in the same domain. */
static void __attribute__((noreturn, used)) secondary_main(unsigned long id)
{
	struct cpu *c = &cpus[id];
	uint16_t fcw;
	uint32_t mxcsr;
	asm volatile("fnstcw %0" : "=m"(fcw));
	asm volatile("stmxcsr %0" : "=m"(mxcsr));
	c->fcw = fcw;
	c->mxcsr = mxcsr;
	c->starts++;
	c->parked = 0;
	for (;;) {
		while (!c->stop) {
			if (c->events != c->events_on)
				secondary_events(id, c);
			int q = quiet;
			if (q)
				c->quiet_seen = 1;
			struct link l = c->link[c->cur];
			if (l.n < c->budget) {
				c->link[!c->cur] = (struct link){ l.n + 1, step(l.hash, l.n) };
				__atomic_thread_fence(__ATOMIC_RELEASE);
				c->cur = !c->cur;
				continue;
			}
			if (q) {
				HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
				continue;
			}
			/* Spent: sleep a millisecond (RUNSTATE_blocked). */
			struct sched_poll p = { .nr_ports = 0, .timeout = system_time() + 1000000 };
			HYPERVISOR_sched_op(SCHEDOP_poll, &p);
		}
		c->parked = 1;
		vcpu_op(VCPUOP_down, id, NULL);
		c->parked = 0;
	}
}

/* VCPUOP_initialise for secondary id: kernel mode on our L4, Xen's flat
 * selectors, our trap table and callbacks, its own stack, entering
 * secondary_main(id). */
static long initialise(int id)
{
	memset(&ctxt, 0, sizeof(ctxt));
	ctxt.flags = VGCF_in_kernel;
	ctxt.user_regs.rip = (unsigned long)secondary_main;
	ctxt.user_regs.rdi = id;
	ctxt.user_regs.rsp = (unsigned long)(stacks[id] + STACK_SIZE) - 8; /* as after a call */
	ctxt.user_regs.cs = FLAT_KERNEL_CS;
	ctxt.user_regs.ss = FLAT_KERNEL_SS;
	ctxt.user_regs.rflags = 0x200;
	ctxt.kernel_ss = FLAT_KERNEL_SS;
	ctxt.kernel_sp = ctxt.user_regs.rsp;
	for (int v = 0; v < 32; v++)
		ctxt.trap_ctxt[v] = trap_table[v];
	ctxt.event_callback_eip = (unsigned long)upcall_entry;
	ctxt.failsafe_callback_eip = (unsigned long)failsafe_entry;
	ctxt.ctrlreg[3] = pfn_to_mfn(virt_to_pfn((void *)start_info->pt_base)) << 12;
	if (fpu) {
		/* The FXSAVE layout: FCW at 0, MXCSR at 24; the tag word
		 * (abridged, 4) 0: every register empty. */
		uint16_t fcw = FPU_FCW;
		uint32_t mxcsr = FPU_MXCSR;
		memcpy(&ctxt.fpu_ctxt.x[0], &fcw, sizeof(fcw));
		memcpy(&ctxt.fpu_ctxt.x[24], &mxcsr, sizeof(mxcsr));
		if (!fpu_no_flag)
			ctxt.flags |= VGCF_i387_valid;
	}
	return vcpu_op(VCPUOP_initialise, id, &ctxt);
}

static int register_runstate(int id)
{
	struct vcpu_register_runstate_memory_area a = { .addr.v = &runstate[id] };
	long rc = vcpu_op(VCPUOP_register_runstate_memory_area, id, &a);
	if (rc)
		xtf_failure("register_runstate_memory_area(%d): %ld", id, rc);
	return rc ? -1 : 0;
}

/* A consistent copy of vCPU id's runstate area (XEN_RUNSTATE_UPDATE
 * clear and the same before and after). */
static struct vcpu_runstate_info read_runstate(int id)
{
	volatile struct vcpu_runstate_info *r = &runstate[id];
	struct vcpu_runstate_info copy;
	uint64_t t;
	do {
		t = r->state_entry_time;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		copy = *(struct vcpu_runstate_info *)r;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while ((t & XEN_RUNSTATE_UPDATE) || t != r->state_entry_time);
	return copy;
}

/* Spin (yielding) until cond or for at most ms milliseconds. */
#define spin_until(cond, ms) ({							\
	uint64_t _end = system_time() + (ms) * 1000000UL;			\
	while (!(cond) && system_time() < _end)					\
		HYPERVISOR_sched_op(SCHEDOP_yield, NULL);			\
	(cond);									\
})

/* The runstate of a vCPU brought up at system time up: it has run since
 * (state_entry_time after up, or its running time grown), and no time is
 * in the future. */
static void check_runstate(int id, uint64_t up, const char *when)
{
	struct vcpu_runstate_info r = read_runstate(id);
	uint64_t now = system_time(), sum = 0;
	for (int s = 0; s < 4; s++)
		sum += r.time[s];
	if (r.state_entry_time < up) {
		xtf_failure("vcpu %d's runstate area stopped updating %s (state %d since %lu, up at %lu)",
			    id, when, r.state, (unsigned long)r.state_entry_time, (unsigned long)up);
		return;
	}
	if (r.state == RUNSTATE_offline || r.state_entry_time > now + 1000000 || sum > now + 1000000) {
		xtf_failure("vcpu %d's runstate %s: state %d since %lu, times %lu/%lu/%lu/%lu at %lu",
			    id, when, r.state, (unsigned long)r.state_entry_time, (unsigned long)r.time[0],
			    (unsigned long)r.time[1], (unsigned long)r.time[2], (unsigned long)r.time[3],
			    (unsigned long)now);
		return;
	}
	struct vcpu_runstate_info g;
	if (vcpu_op(VCPUOP_get_runstate_info, id, &g) || g.state_entry_time < r.state_entry_time)
		xtf_failure("vcpu %d: get_runstate_info disagrees with the area %s", id, when);
}

/* Where vCPU id's chain is. */
static struct link chain_of(int id)
{
	struct cpu *c = &cpus[id];
	int cur;
	struct link l;
	do {
		cur = c->cur;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		l = c->link[cur];
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while (cur != c->cur);
	return l;
}

/* Replay the chain vCPU 0 has not checked yet. */
static void check_chain(int id)
{
	struct cpu *c = &cpus[id];
	struct link l = chain_of(id);
	unsigned long n = l.n, h = c->checked_hash;
	for (unsigned long i = c->checked_n; i < n; i++)
		h = step(h, i);
	if (h != l.hash) {
		xtf_failure("vcpu %d's chain: %#lx after %lu steps, want %#lx", id, l.hash, n, h);
		return;
	}
	c->checked_n = n;
	c->checked_hash = h;
}

/* The secondaries vCPU 0 keeps up: all of them, or with hotplug=1 those
 * whose cpu/N/availability says "online". */
static unsigned long online_mask;
#define for_each_online(id) \
	for (int id = 1; id < ncpus; id++) if (online_mask & (1UL << id))

/* disk=1: the chain steps the secondaries made while vCPU 0 did the
 * disk's part, over all of them (the report's beside=). */
static unsigned long beside;

static unsigned long steps_now(void)
{
	unsigned long n = 0;
	for (int id = 1; id < ncpus; id++)
		n += chain_of(id).n;
	return n;
}

/* What bring_up_issue brought up, for bring_up_wait. */
static uint64_t up_at;
static unsigned long up_mask;
static const char *up_when;

/* Bring the secondaries in mask up (with a new budget each); 0 or -1. */
static int bring_up_issue(const char *when, int boot, unsigned long mask)
{
	uint64_t up = system_time();
	up_at = up, up_mask = mask, up_when = when;
	int forget = cmdline_ulong("forget-up", 0) && !boot;
	quiet = 0;
	for (int id = 1; id < ncpus; id++) {
		if (!(mask & (1UL << id)))
			continue;
		cpus[id].stop = 0;
		cpus[id].quiet_seen = 0;
		cpus[id].budget += STEPS;
		if (forget && id == ncpus - 1)
			continue; /* negative control */
		long rc = vcpu_op(VCPUOP_up, id, NULL);
		if (rc == -XEN_EINVAL) {
			/* Not initialised: a fresh start, from the chain in memory. */
			if ((rc = initialise(id)) == 0)
				rc = vcpu_op(VCPUOP_up, id, NULL);
		}
		if (rc) {
			xtf_failure("bringing vcpu %d up %s: %ld", id, when, rc);
			return -1;
		}
	}
	return 0;
}

/* Wait until each secondary bring_up_issue brought up spent its budget. */
static void bring_up_wait(void)
{
	uint64_t up = up_at;
	unsigned long mask = up_mask;
	const char *when = up_when;
	for (int id = 1; id < ncpus; id++) {
		if (!(mask & (1UL << id)))
			continue;
		/* Until it spent its budget and went to sleep since: a
		 * runstate change after up, which a live area shows. */
		spin_until(chain_of(id).n >= cpus[id].budget && read_runstate(id).state_entry_time >= up, 3000);
		if (chain_of(id).n < cpus[id].budget) {
			xtf_failure("vcpu %d is stuck %s at step %lu of %lu (is_up %ld)", id, when, chain_of(id).n,
				    cpus[id].budget, vcpu_op(VCPUOP_is_up, id, NULL));
			return;
		}
		check_runstate(id, up, when);
	}
}

static void bring_up_mask(const char *when, int boot, unsigned long mask)
{
	if (!bring_up_issue(when, boot, mask))
		bring_up_wait();
}

/* Stop the secondaries in mask and wait until each is down and offline. */
static void take_down_mask(unsigned long mask)
{
	for (int id = 1; id < ncpus; id++)
		if (mask & (1UL << id))
			cpus[id].stop = 1;
	for (int id = 1; id < ncpus; id++) {
		if (!(mask & (1UL << id)))
			continue;
		if (!spin_until(cpus[id].parked && vcpu_op(VCPUOP_is_up, id, NULL) == 0 &&
				read_runstate(id).state == RUNSTATE_offline, 5000)) {
			xtf_failure("vcpu %d did not go down (parked %d, is_up %ld, runstate %d)", id,
				    cpus[id].parked, vcpu_op(VCPUOP_is_up, id, NULL), read_runstate(id).state);
			return;
		}
		check_chain(id);
	}
}

static void take_down(void)
{
	take_down_mask(online_mask);
}

/* vCPUs online: vCPU 0 and the secondaries in mask. */
static int count(unsigned long mask)
{
	int n = 1;
	for (; mask; mask &= mask - 1)
		n++;
	return n;
}

/* The secondaries whose cpu/N/availability is "online" (libxl writes one
 * node per vCPU up to maxvcpus; Linux's cpu_hotplug.c reads them). */
static unsigned long available(void)
{
	unsigned long mask = 0;
	for (int id = 1; id < ncpus; id++) {
		char path[32], v[16];
		snprintf(path, sizeof(path), "cpu/%d/availability", id);
		if (xs_read(0, path, v, sizeof(v)) >= 0 && !strcmp(v, "online"))
			mask |= 1UL << id;
	}
	return mask;
}

static long bind_vcpu(evtchn_port_t port, int id)
{
	evtchn_bind_vcpu_t op = { .port = port, .vcpu = id };
	return HYPERVISOR_event_channel_op(EVTCHNOP_bind_vcpu, &op);
}

/* Forget a port the IPI check bound, and close it. */
static void drop_port(evtchn_port_t p)
{
	evtchn_close(p);
	if (p < NR_PORTS) {
		port_cpu[p] = 0;
		event_cpus[p] = 0;
		event_count[p] = 0;
	}
}

/* Wait for one event on port, then check it was taken once, by vCPU
 * want's upcall (only want's upcall takes it: port_cpu). */
static void check_delivery(evtchn_port_t port, int want, const char *what, const char *when)
{
	spin_until(event_count[port] > 0, 2000);
	if (event_count[port] != 1 || event_cpus[port] != 1UL << want)
		xtf_failure("%s port %u %s: taken %lu times, on vcpus %#lx, want once on vcpu %d", what, port, when,
			    event_count[port], event_cpus[port], want);
}

/* ipi=1: per-vCPU delivery (see the top of the file). */
static void ipi_check(const char *when)
{
	static evtchn_port_t fillers[64];
	int nf = 0, target = 0;
	evtchn_port_t a = 0, b = 0, p;
	if (!ipi)
		return;
	for_each_online(id)
		target = id;
	if (!target)
		return;
	/* Fillers until the next port is in the bitmap's second word. */
	while (nf < 64) {
		if (evtchn_alloc_unbound(DOMID_SELF, &p)) {
			xtf_failure("alloc_unbound for a filler %s", when);
			goto out;
		}
		if (p >= 64) {
			evtchn_close(p);
			break;
		}
		fillers[nf++] = p;
	}
	/* The loopback pair: a moved to the target vCPU, b sends to it. */
	if (evtchn_alloc_unbound(DOMID_SELF, &a) || evtchn_bind_interdomain(DOMID_SELF, a, &b) ||
	    a >= NR_PORTS || b >= NR_PORTS) {
		xtf_failure("a loopback pair %s", when);
		goto out;
	}
	spin_until(event_count[b] > 0, 1000); /* bind_interdomain set b pending, on vCPU 0 */
	long rc = bind_vcpu(a, target);
	if (rc) {
		xtf_failure("EVTCHNOP_bind_vcpu(%u, %d) %s: %ld", a, target, when, rc);
		goto out;
	}
	if (!ipi_wrong_cpu)
		port_cpu[a] = target;
	for_each_online(id)
		cpus[id].events = 1;
	for_each_online(id) {
		if (!spin_until(cpus[id].events_on, 3000) || cpus[id].ipi_rc) {
			xtf_failure("vcpu %d: events on %d, bind_ipi %ld %s", id, cpus[id].events_on, cpus[id].ipi_rc, when);
			goto out;
		}
		if (cpus[id].ipi_port < 64) {
			xtf_failure("vcpu %d's IPI port %u is in vCPU 0's word", id, cpus[id].ipi_port);
			goto out;
		}
	}
	/* Xen's evtchn_bind_vcpu moves only unbound, interdomain and global
	 * VIRQ ports: an IPI port stays where it was bound. */
	if ((rc = bind_vcpu(cpus[target].ipi_port, 0)) != -XEN_EINVAL) {
		xtf_failure("EVTCHNOP_bind_vcpu of an IPI port %s: %ld, want -EINVAL", when, rc);
		goto out;
	}
	for_each_online(id)
		evtchn_send(cpus[id].ipi_port);
	evtchn_send(b);
	for_each_online(id)
		check_delivery(cpus[id].ipi_port, id, "IPI", when);
	check_delivery(a, port_cpu[a], "bind_vcpu", when);
	printk("smp: ipi %s: ports", when);
	for_each_online(id)
		printk(" %u@%d", cpus[id].ipi_port, id);
	printk(" and %u@%d delivered\n", a, target);
out:
	for_each_online(id)
		cpus[id].events = 0;
	for_each_online(id) {
		if (!spin_until(!cpus[id].events_on, 3000))
			xtf_failure("vcpu %d did not mask its events %s", id, when);
		if (cpus[id].ipi_port)
			drop_port(cpus[id].ipi_port);
		cpus[id].ipi_port = 0;
	}
	if (b)
		drop_port(b);
	if (a)
		drop_port(a);
	while (nf)
		drop_port(fillers[--nf]);
}

/* fpu=1: every secondary brought up at boot started with fpu_ctxt's x87
 * control word and MXCSR. */
static void fpu_check(void)
{
	for_each_online(id) {
		struct cpu *c = &cpus[id];
		printk("smp: fpu vcpu=%d fcw=%#x mxcsr=%#x\n", id, c->fcw, c->mxcsr);
		if (c->fcw != FPU_FCW || c->mxcsr != FPU_MXCSR)
			xtf_failure("vcpu %d started with FCW %#x MXCSR %#x, want fpu_ctxt's %#x %#x", id, c->fcw,
				    c->mxcsr, FPU_FCW, FPU_MXCSR);
	}
}

static int smp_start(void)
{
	for (ncpus = 1; ncpus < MAX_CPUS; ncpus++)
		if (vcpu_op(VCPUOP_is_up, ncpus, NULL) == -XEN_ENOENT)
			break;
	if (ncpus < 2) {
		xtf_error("test=smp needs vcpus >= 2");
		return -1;
	}
	if (HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_runstate_update_flag)) {
		xtf_failure("VMASST_TYPE_runstate_update_flag");
		return -1;
	}
	disk = cmdline_ulong("disk", 0);
	ipi = cmdline_ulong("ipi", 0);
	ipi_masked = cmdline_ulong("ipi-masked", 0);
	ipi_wrong_cpu = cmdline_ulong("ipi-wrong-cpu", 0);
	ipi |= ipi_masked | ipi_wrong_cpu;
	fpu_no_flag = cmdline_ulong("fpu-no-flag", 0);
	fpu = cmdline_ulong("fpu", 0) || fpu_no_flag;
	vcpu_info_stale = cmdline_ulong("vcpu-info-stale", 0);
	vcpu_info_reg = cmdline_ulong("vcpu-info", 0) || vcpu_info_stale;
	ipi |= vcpu_info_reg;
	if (vcpu_info_reg && cmdline_ulong("cycles", 0)) {
		/* A new domain forgets the registration: not modelled here. */
		xtf_error("vcpu-info=1 is for a run without suspends");
		return -1;
	}
	online_mask = (1UL << ncpus) - 2;
	if (cmdline_ulong("hotplug", 0))
		online_mask = available();
	for (int id = 1; id < ncpus; id++) {
		cpus[id].link[0].hash = cpus[id].checked_hash = 0xcbf29ce484222325UL;
		if (vcpu_op(VCPUOP_is_up, id, NULL) != 0 || vcpu_op(VCPUOP_up, id, NULL) != -XEN_EINVAL) {
			xtf_failure("vcpu %d is not down and uninitialised at boot", id);
			return -1;
		}
		if (register_runstate(id))
			return -1;
		if (!(online_mask & (1UL << id)))
			continue; /* hotplug=1: offline until the toolstack says */
		long rc = initialise(id);
		if (rc) {
			xtf_failure("VCPUOP_initialise(%d): %ld", id, rc);
			return -1;
		}
		if ((rc = initialise(id)) != -XEN_EEXIST) {
			xtf_failure("a second VCPUOP_initialise(%d): %ld, want -EEXIST", id, rc);
			return -1;
		}
	}
	if (vcpu_op(VCPUOP_up, ncpus, NULL) != -XEN_ENOENT) {
		xtf_failure("VCPUOP_up of vcpu %d of %d is not -ENOENT", ncpus, ncpus);
		return -1;
	}
	printk("smp: %d vcpus online=%d\n", ncpus, count(online_mask));
	if (bring_up_issue("at boot", 1, online_mask))
		return -1;
	unsigned long n = steps_now();
	if (disk && blk_driver.start())
		return -1;
	beside += steps_now() - n;
	bring_up_wait();
	ipi_check("at boot");
	if (fpu)
		fpu_check();
	return 0;
}

/* keep-up=1: the secondaries stay up, spinning, through the suspend, as
 * Linux's do (stop_machine): their contexts are in the save stream. */
static void smp_quiesce(unsigned long cycle)
{
	if (disk)
		blk_driver.quiesce(cycle); /* the devices first, as Linux's dpm_suspend */
	if (cmdline_ulong("keep-up", 0)) {
		for (int id = 1; id < ncpus; id++)
			cpus[id].quiet_seen = 0;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		quiet = 1;
		for (int id = 1; id < ncpus; id++) {
			cpus[id].budget += STEPS; /* busy at the suspend */
			if (!spin_until(cpus[id].quiet_seen, 5000))
				xtf_failure("vcpu %d does not quiesce", id);
		}
		return;
	}
	take_down();
}

static void smp_resume(unsigned long cycle, long rc)
{
	if (rc == 0 && !cmdline_ulong("forget-runstate", 0))
		for (int id = 1; id < ncpus; id++)
			if (register_runstate(id))
				return;
	const char *when = rc ? "after a same-domain resume" : "after a new-domain resume";
	if (bring_up_issue(when, 0, online_mask))
		return;
	unsigned long n = steps_now();
	if (disk)
		blk_driver.resume(cycle, rc);
	beside += steps_now() - n;
	bring_up_wait();
	ipi_check(when);
}

static const struct suspend_driver smp_driver = {
	.start = smp_start, .quiesce = smp_quiesce, .resume = smp_resume,
};

static void report(void)
{
	for (int id = 1; id < ncpus; id++) {
		struct vcpu_runstate_info r;
		vcpu_op(VCPUOP_get_runstate_info, id, &r);
		printk("smp: vcpu %d steps=%lu starts=%lu running=%lu blocked=%lu offline=%lu\n", id,
		       chain_of(id).n, cpus[id].starts, (unsigned long)r.time[RUNSTATE_running],
		       (unsigned long)r.time[RUNSTATE_blocked], (unsigned long)r.time[RUNSTATE_offline]);
	}
	if (disk)
		printk("smp: disk beside=%lu chain steps\n", beside);
}

/* hotplug=1: follow cpu/N/availability, as Linux's cpu_hotplug.c does
 * (a watch on "cpu"): a vCPU that becomes "online" is brought up
 * (initialised the first time), one that becomes "offline" is taken down;
 * until control/shutdown says poweroff. */
static void hotplug(void)
{
	char path[128], cmd[32];
	if (xs_watch("cpu", "cpu") || xs_watch("control/shutdown", "shutdown")) {
		xtf_error("xenstore watches");
		return;
	}
	for (;;) {
		int changed = 0;
		while (xs_poll_watch("cpu", path, sizeof(path)))
			changed = 1;
		if (changed) {
			/* The reads below may queue more events: looked at
			 * on the next round, before any wait. */
			unsigned long want = available();
			unsigned long down = online_mask & ~want, up = want & ~online_mask;
			take_down_mask(down);
			online_mask = want;
			bring_up_mask("after a hot-plug", 1, up);
			printk("smp: online=%d\n", count(online_mask));
		}
		if (xs_poll_watch("shutdown", path, sizeof(path)) &&
		    xs_read(0, "control/shutdown", cmd, sizeof(cmd)) >= 0 && !strcmp(cmd, "poweroff")) {
			xs_write(0, "control/shutdown", "");
			return;
		}
		xs_wait_event();
	}
}

/* smp [cycles=N]: bring the secondaries up, run, take them down; with
 * cycles, through N suspends (test_suspend's protocol). */
void test_smp(void)
{
	if (cmdline_ulong("cycles", 0)) {
		suspend_driver = &smp_driver;
		test_suspend();
		take_down();
		report();
		if (disk)
			blkfront_report();
		return;
	}
	if (events_init() || xs_init()) {
		xtf_error("events and xenstore");
		return;
	}
	if (smp_start())
		return;
	if (cmdline_ulong("hotplug", 0))
		hotplug();
	take_down();
	report();
	if (disk)
		blkfront_report();
}
