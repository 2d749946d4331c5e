/* xs.c: the guest's xenstore client. One request at a time; watch events
 * that arrive meanwhile are queued. */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/sched.h>
#include <xen/io/xs_wire.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

static struct xenstore_domain_interface *intf;
static evtchn_port_t port;
static uint32_t next_id;

#define NEVENTS 8
static struct { char path[128]; char token[32]; } events[NEVENTS];
static int nevents;

int xs_init(void)
{
	unsigned long pfn = mfn_to_pfn(start_info->store_mfn);
	if (pfn == ~0UL)
		return -1;
	intf = (struct xenstore_domain_interface *)(VIRT_BASE + (pfn << 12));
	port = start_info->store_evtchn;
	nevents = 0;
	/* The client is synchronous: it keeps its port masked and waits
	 * with SCHEDOP_poll, which wakes on a masked port's pending bit, so
	 * a request costs no upcall (each one is an interrupt injection and
	 * an iretq, expensive on a nested host). */
	evtchn_mask(port);
	return 0;
}

/* Wait until cond holds: poll the (masked) store port, then consume its
 * pending bit before looking again, so no signal is lost. */
#define wait_ring(cond) do {							\
	while (!(cond)) {						\
		evtchn_poll(port, 0);					\
		__atomic_fetch_and(&shared->evtchn_pending[port / 64],	\
				   ~(1UL << (port % 64)), __ATOMIC_SEQ_CST);	\
	}								\
} while (0)

/* put and get move bytes; callers signal once a whole message has moved
 * (the ring protocol asks for a signal after each update; a signal per
 * message is what Linux's xenbus does). Waiting for room or data signals
 * first, so the peer is never left unaware of what we did. */
static void put(const void *data, unsigned len)
{
	const char *p = data;
	while (len) {
		if (intf->req_prod - intf->req_cons >= XENSTORE_RING_SIZE) {
			evtchn_send(port);
			wait_ring(intf->req_prod - intf->req_cons < XENSTORE_RING_SIZE);
		}
		XENSTORE_RING_IDX prod = intf->req_prod;
		while (len && prod - intf->req_cons < XENSTORE_RING_SIZE) {
			intf->req[MASK_XENSTORE_IDX(prod)] = *p++;
			prod++, len--;
		}
		__atomic_store_n(&intf->req_prod, prod, __ATOMIC_RELEASE);
	}
}

static void get(void *data, unsigned len)
{
	char *p = data;
	while (len) {
		if (__atomic_load_n(&intf->rsp_prod, __ATOMIC_ACQUIRE) == intf->rsp_cons) {
			evtchn_send(port);
			wait_ring(__atomic_load_n(&intf->rsp_prod, __ATOMIC_ACQUIRE) != intf->rsp_cons);
		}
		XENSTORE_RING_IDX cons = intf->rsp_cons;
		while (len && cons != intf->rsp_prod) {
			char c = intf->rsp[MASK_XENSTORE_IDX(cons)];
			if (p)
				*p++ = c;
			cons++, len--;
		}
		__atomic_store_n(&intf->rsp_cons, cons, __ATOMIC_RELEASE);
	}
}

/* Read one message; queue it if it is a watch event. Returns its type. */
static uint32_t recv_msg_nosignal(struct xsd_sockmsg *h, char *buf, unsigned size);

static uint32_t recv_msg(struct xsd_sockmsg *h, char *buf, unsigned size)
{
	uint32_t t = recv_msg_nosignal(h, buf, size);
	evtchn_send(port); /* we consumed a message */
	return t;
}

static uint32_t recv_msg_nosignal(struct xsd_sockmsg *h, char *buf, unsigned size)
{
	get(h, sizeof(*h));
	if (h->type == XS_WATCH_EVENT) {
		char ev[192];
		unsigned n = h->len < sizeof(ev) ? h->len : sizeof(ev);
		get(ev, n);
		if (h->len > n)
			get(NULL, h->len - n);
		ev[sizeof(ev) - 1] = 0;
		if (nevents < NEVENTS) {
			unsigned plen = strlen(ev);
			snprintf(events[nevents].path, sizeof(events[0].path), "%s", ev);
			snprintf(events[nevents].token, sizeof(events[0].token), "%s",
				 plen + 1 < n ? ev + plen + 1 : "");
			nevents++;
		}
		return XS_WATCH_EVENT;
	}
	unsigned n = h->len < size ? h->len : size;
	get(buf, n);
	if (h->len > n)
		get(NULL, h->len - n);
	return h->type;
}

static const char *const errnames[] = { "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT",
	"ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN",
	"EISCONN", "E2BIG", "EPERM" };
static const int errvals[] = { XEN_EINVAL, XEN_EACCES, XEN_EEXIST, XEN_EISDIR, XEN_ENOENT,
	XEN_ENOMEM, XEN_ENOSPC, XEN_EIO, XEN_ENOTEMPTY, XEN_ENOSYS, XEN_EROFS, XEN_EBUSY,
	XEN_EAGAIN, XEN_EISCONN, XEN_E2BIG, XEN_EPERM };

/* One request: parts are concatenated, each but the last NUL-terminated
 * when nul is set. Returns the reply length or a negative Xen errno. */
static int talk(uint32_t type, uint32_t tx, const char *a, const char *b, int nul_b,
		char *reply, unsigned size)
{
	struct xsd_sockmsg h = { .type = type, .req_id = ++next_id, .tx_id = tx };
	unsigned la = strlen(a) + 1, lb = b ? strlen(b) + (nul_b ? 1 : 0) : 0;
	h.len = la + lb;
	put(&h, sizeof(h));
	put(a, la);
	if (b)
		put(b, lb);
	evtchn_send(port); /* a whole request is in the ring */
	for (;;) {
		struct xsd_sockmsg r;
		uint32_t t = recv_msg(&r, reply, size);
		if (t == XS_WATCH_EVENT)
			continue;
		if (r.req_id != h.req_id)
			return -XEN_EIO;
		if (t == XS_ERROR) {
			/* recv_msg put the error name in reply. */
			for (unsigned i = 0; i < sizeof(errvals) / sizeof(errvals[0]); i++)
				if (!strncmp(reply, errnames[i], strlen(errnames[i])))
					return -errvals[i];
			return -XEN_EIO;
		}
		return r.len < size ? (int)r.len : (int)size;
	}
}

int xs_read(uint32_t tx, const char *path, char *buf, unsigned size)
{
	int n = talk(XS_READ, tx, path, NULL, 0, buf, size - 1);
	if (n >= 0)
		buf[n] = 0;
	return n;
}

int xs_directory(const char *path, char *buf, unsigned size)
{
	int n = talk(XS_DIRECTORY, 0, path, NULL, 0, buf, size - 1);
	if (n >= 0)
		buf[n] = 0;
	return n;
}

int xs_write(uint32_t tx, const char *path, const char *value)
{
	char r[16];
	int n = talk(XS_WRITE, tx, path, value, 0, r, sizeof(r));
	return n < 0 ? n : 0;
}

int xs_watch(const char *path, const char *token)
{
	char r[16];
	int n = talk(XS_WATCH, 0, path, token, 1, r, sizeof(r));
	return n < 0 ? n : 0;
}

long xs_transaction_start(void)
{
	char r[16];
	int n = talk(XS_TRANSACTION_START, 0, "", NULL, 0, r, sizeof(r) - 1);
	if (n < 0)
		return n;
	r[n] = 0;
	long id = 0;
	for (char *p = r; *p >= '0' && *p <= '9'; p++)
		id = id * 10 + (*p - '0');
	return id;
}

int xs_transaction_end(uint32_t tx, int commit)
{
	char r[16];
	int n = talk(XS_TRANSACTION_END, tx, commit ? "T" : "F", NULL, 0, r, sizeof(r));
	return n < 0 ? n : 0;
}

static int take_event(const char *token, char *path, unsigned size)
{
	for (int i = 0; i < nevents; i++) {
		if (strcmp(events[i].token, token))
			continue;
		snprintf(path, size, "%s", events[i].path);
		for (int j = i; j + 1 < nevents; j++)
			events[j] = events[j + 1];
		nevents--;
		return 1;
	}
	return 0;
}

int xs_poll_watch(const char *token, char *path, unsigned size)
{
	while (__atomic_load_n(&intf->rsp_prod, __ATOMIC_ACQUIRE) != intf->rsp_cons) {
		struct xsd_sockmsg r;
		char junk[16];
		recv_msg(&r, junk, sizeof(junk));
	}
	return take_event(token, path, size);
}

void xs_wait_watch(const char *token, char *path, unsigned size)
{
	while (!take_event(token, path, size)) {
		struct xsd_sockmsg r;
		char junk[16];
		recv_msg(&r, junk, sizeof(junk));
	}
}

int xs_reset_watches(void)
{
	char r[16];
	int n = talk(XS_RESET_WATCHES, 0, "", NULL, 0, r, sizeof(r));
	nevents = 0;
	return n < 0 ? n : 0;
}

int xs_pending(void)
{
	return __atomic_load_n(&intf->rsp_prod, __ATOMIC_ACQUIRE) != intf->rsp_cons;
}

void xs_wait_event(void)
{
	while (!nevents) {
		struct xsd_sockmsg r;
		char junk[16];
		recv_msg(&r, junk, sizeof(junk));
	}
}

/* A request xenstored answers without touching the store: a type it does
 * not know (ENOSYS). (XS_CONTROL would do for dom0; a guest gets EACCES.) */
int xs_null(void)
{
	char r[16];
	return talk(99, 0, "x", NULL, 0, r, sizeof(r));
}
