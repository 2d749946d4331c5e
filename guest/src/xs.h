/* xs.h: a xenstore client over the ring page (io/xs_wire.h). */
#ifndef GUEST_XS_H
#define GUEST_XS_H

#include <stdint.h>

/* Connect through start_info's store frame (an MFN, translated through
 * the P2M) and event channel. Returns 0, or -1 if the frame is not ours. */
int xs_init(void);
int xs_read(uint32_t tx, const char *path, char *buf, unsigned size);
/* XS_DIRECTORY: the children's names, each NUL-terminated; returns the
 * reply's length (0: none) or a negative Xen errno. */
int xs_directory(const char *path, char *buf, unsigned size);
int xs_write(uint32_t tx, const char *path, const char *value);
int xs_watch(const char *path, const char *token);
/* A request xenstored answers ENOSYS (the benchmarks' null request). */
int xs_null(void);
/* Whether a reply or event is waiting in the ring. */
int xs_pending(void);
/* Wait until a watch event (of any token) is queued, not taking it: the
 * store port is masked (the ring is waited on with SCHEDOP_poll), so
 * SCHEDOP_block does not wait for xenstore. */
void xs_wait_event(void);
/* XS_RESET_WATCHES: drop every watch this connection had. */
int xs_reset_watches(void);
/* Returns a transaction id, or a negative error. */
long xs_transaction_start(void);
/* Returns 0, -XEN_EAGAIN on conflict, or another negative error. */
int xs_transaction_end(uint32_t tx, int commit);
/* Wait for the next watch event with this token; copies its path. */
void xs_wait_watch(const char *token, char *path, unsigned size);
/* Non-blocking: 1 if an event with this token has arrived (consumed). */
int xs_poll_watch(const char *token, char *path, unsigned size);

/* Wait until cond holds, without losing a wakeup: events are masked
 * (evtchn_upcall_mask) while cond is checked; SCHEDOP_block returns at
 * once if an upcall is already pending, and unmasks events, so the upcall
 * runs on the way back, before cond is checked again. */
#define wait_until(cond) do {							\
	for (;;) {							\
		events_disable();					\
		if (cond) {						\
			events_enable();				\
			break;						\
		}							\
		HYPERVISOR_sched_op(SCHEDOP_block, NULL);		\
	}								\
} while (0)

#endif
