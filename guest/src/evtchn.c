/* evtchn.c: shared_info mapping, the 2-level upcall handler, event channels. */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/sched.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"

shared_info_t *shared;
volatile unsigned long event_count[NR_PORTS];
volatile uint8_t port_cpu[NR_PORTS];
volatile unsigned long event_cpus[NR_PORTS];
vcpu_info_t *volatile registered_vcpu_info[MAX_VCPU_INFO];

/* events_init maps shared_info over the .bss page shared_page (by the
 * machine address start_info gives), unmasks every port and enables
 * events. The event callback was registered at boot (main.c) and stays
 * registered across a suspend: in a new domain the toolstack restores it
 * with the rest of the vCPU context. */
long events_init(void)
{
	long rc = map_machine_page((unsigned long)shared_page, start_info->shared_info);
	if (rc)
		return rc;
	shared = (shared_info_t *)shared_page;
	for (int i = 0; i < NR_PORTS / 64; i++)
		shared->evtchn_mask[i] = 0;
	events_enable();
	return 0;
}

void events_disable(void)
{
	if (shared)
		shared->vcpu_info[0].evtchn_upcall_mask = 1;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* As Linux's xen_restore_fl: unmask, then if an upcall became pending
 * while masked, enter Xen (any hypercall) so that it is delivered. */
void events_enable(void)
{
	if (!shared)
		return;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	shared->vcpu_info[0].evtchn_upcall_mask = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (shared->vcpu_info[0].evtchn_upcall_pending)
		HYPERVISOR_xen_version(XENVER_version, NULL);
}

/* The 2-level upcall (event_channel.h, Xen's event_2l.c order), on
 * whichever vCPU took it (smp_this_cpu: the secondaries run on stacks of
 * their own). As Linux's cpu_evtchn_mask, a vCPU takes only the ports the
 * guest bound to it (port_cpu): a word's pending bits are shared, and a
 * port bound elsewhere stays pending for its own vCPU. */
void evtchn_upcall(void)
{
	if (!shared)
		return; /* only with events off; cannot happen */
	int cpu = smp_this_cpu();
	vcpu_info_t *vi = cpu < MAX_VCPU_INFO && registered_vcpu_info[cpu] ? registered_vcpu_info[cpu] : &shared->vcpu_info[cpu];
	do {
		vi->evtchn_upcall_pending = 0;
		unsigned long sel = __atomic_exchange_n(&vi->evtchn_pending_sel, 0, __ATOMIC_SEQ_CST);
		while (sel) {
			int i = __builtin_ctzl(sel);
			sel &= sel - 1;
			unsigned long pend = shared->evtchn_pending[i] & ~shared->evtchn_mask[i];
			while (pend) {
				int j = __builtin_ctzl(pend);
				pend &= pend - 1;
				unsigned int port = i * 64 + j;
				if (port >= NR_PORTS || port_cpu[port] != cpu)
					continue;
				__atomic_fetch_and(&shared->evtchn_pending[i], ~(1UL << j), __ATOMIC_SEQ_CST);
				event_count[port]++;
				__atomic_fetch_or(&event_cpus[port], 1UL << cpu, __ATOMIC_SEQ_CST);
			}
		}
	} while (vi->evtchn_upcall_pending);
}

long evtchn_alloc_unbound(domid_t remote, evtchn_port_t *port)
{
	evtchn_alloc_unbound_t op = { .dom = DOMID_SELF, .remote_dom = remote };
	long rc = HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &op);
	*port = op.port;
	return rc;
}

long evtchn_bind_interdomain(domid_t remote, evtchn_port_t rport, evtchn_port_t *port)
{
	evtchn_bind_interdomain_t op = { .remote_dom = remote, .remote_port = rport };
	long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_interdomain, &op);
	*port = op.local_port;
	return rc;
}

long evtchn_send(evtchn_port_t port)
{
	evtchn_send_t op = { .port = port };
	return HYPERVISOR_event_channel_op(EVTCHNOP_send, &op);
}

long evtchn_close(evtchn_port_t port)
{
	evtchn_close_t op = { .port = port };
	return HYPERVISOR_event_channel_op(EVTCHNOP_close, &op);
}

long evtchn_unmask(evtchn_port_t port)
{
	evtchn_unmask_t op = { .port = port };
	return HYPERVISOR_event_channel_op(EVTCHNOP_unmask, &op);
}

long evtchn_status(evtchn_port_t port, evtchn_status_t *st)
{
	*st = (evtchn_status_t){ .dom = DOMID_SELF, .port = port };
	return HYPERVISOR_event_channel_op(EVTCHNOP_status, st);
}

void evtchn_mask(evtchn_port_t port)
{
	__atomic_fetch_or(&shared->evtchn_mask[port / 64], 1UL << (port % 64), __ATOMIC_SEQ_CST);
}

int evtchn_is_pending(evtchn_port_t port)
{
	return (shared->evtchn_pending[port / 64] >> (port % 64)) & 1;
}

long evtchn_poll(evtchn_port_t port, uint64_t timeout)
{
	struct sched_poll p = { .nr_ports = 1, .timeout = timeout };
	set_xen_guest_handle(p.ports, &port);
	return HYPERVISOR_sched_op(SCHEDOP_poll, &p);
}

uint64_t system_time(void)
{
	volatile struct vcpu_time_info *t = &shared->vcpu_info[0].time;
	uint32_t ver;
	uint64_t ns;
	do {
		ver = t->version;
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		unsigned int lo, hi;
		asm volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
		uint64_t delta = (((uint64_t)hi << 32) | lo) - t->tsc_timestamp;
		int8_t shift = t->tsc_shift;
		delta = shift >= 0 ? delta << shift : delta >> -shift;
		ns = t->system_time + (uint64_t)(((unsigned __int128)delta * t->tsc_to_system_mul) >> 32);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
	} while ((ver & 1) || ver != t->version);
	return ns;
}
