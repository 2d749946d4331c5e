/* evtchn.h: shared_info, the upcall and event channels (2-level ABI). */
#ifndef GUEST_EVTCHN_H
#define GUEST_EVTCHN_H

#include <stdint.h>
#include <xen/xen.h>
#include <xen/event_channel.h>

#define NR_PORTS 1024

extern shared_info_t *shared;
extern volatile unsigned long event_count[NR_PORTS];
/* The vCPU the guest bound each port to (0 unless smp.c moved it), and
 * the vCPUs whose upcall took each port (a bit per vCPU). */
extern volatile uint8_t port_cpu[NR_PORTS];
extern volatile unsigned long event_cpus[NR_PORTS];
/* The vCPU running the caller: 0, or a secondary by its stack (smp.c). */
int smp_this_cpu(void);
/* Where each vCPU's vcpu_info is, when the guest moved it with
 * VCPUOP_register_vcpu_info (smp.c); NULL: its slot in shared_info. */
#define MAX_VCPU_INFO 16
extern vcpu_info_t *volatile registered_vcpu_info[MAX_VCPU_INFO];

/* Map shared_info (by the machine address in start_info) and enable
 * events. Returns 0 or a negative Xen errno. */
long events_init(void);
/* Events off and on, through vcpu_info's evtchn_upcall_mask (a ring-3
 * kernel has no cli/sti of its own); no-ops while shared_info is not
 * mapped. events_enable delivers what became pending meanwhile. */
void events_disable(void);
void events_enable(void);

long evtchn_alloc_unbound(domid_t remote, evtchn_port_t *port);
long evtchn_bind_interdomain(domid_t remote, evtchn_port_t rport, evtchn_port_t *port);
long evtchn_send(evtchn_port_t port);
long evtchn_close(evtchn_port_t port);
long evtchn_unmask(evtchn_port_t port);
long evtchn_status(evtchn_port_t port, evtchn_status_t *st);
void evtchn_mask(evtchn_port_t port);
int evtchn_is_pending(evtchn_port_t port);
/* Block until port is pending (or an upcall is due); timeout in absolute
 * system-time ns, 0 for none. */
long evtchn_poll(evtchn_port_t port, uint64_t timeout);

/* Xen system time (ns) from vcpu_time_info, with the version protocol. */
uint64_t system_time(void);

#endif
