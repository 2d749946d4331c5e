/* evtchn.h: shared_info, the upcall and event channels (2-level ABI). */
#ifndef GUEST_EVTCHN_H
#define GUEST_EVTCHN_H

#include <stdint.h>
#include <xen/xen.h>
#include <xen/event_channel.h>

#define UPCALL_VECTOR 0xf3
#define NR_PORTS 1024

extern shared_info_t *shared;
extern volatile unsigned long event_count[NR_PORTS];

/* Map shared_info (by the machine address in start_info), install the
 * upcall vector and enable events. Returns 0 or a negative Xen errno. */
long events_init(void);
/* Map the machine address maddr at the fixmap slot; for negative tests. */
long map_machine_page(unsigned long va, unsigned long maddr);

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
