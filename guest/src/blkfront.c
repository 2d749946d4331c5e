/*
 * blkfront.c: a PV block frontend (io/blkif.h over io/ring.h), as Linux's
 * xen-blkfront behaves: a v1 grant table of our own, the vbd found under
 * device/vbd, a ring of 2^ring-order pages (ring-order=N on the command
 * line, 0 to the backend's max-ring-page-order; Linux's
 * xen_blkif_max_ring_order) and an unbound port granted and allocated
 * for the backend, the xenbus states Initialising -> Initialised ->
 * Connected, and on a resume in a new domain (suspend returned 0) a
 * reconnection with new grant references and a new port, the requests
 * still without a response resubmitted once (blkif_recover).
 *
 * The pattern: every 8-byte word i of sector s written in cycle c holds
 * c << 48 | s << 16 | i, so a lost write leaves an older cycle, a
 * misplaced one another sector number. The host tests check the image
 * file against the same formula.
 */
#include <stdint.h>
#include <stddef.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/io/blkif.h>
#include <xen/io/protocols.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

/* xenbus states (io/xenbus.h). */
enum { XB_INITIALISING = 1, XB_INITWAIT, XB_INITIALISED, XB_CONNECTED, XB_CLOSING, XB_CLOSED };

#define MAX_RING_ORDER 4	/* Linux's XENBUS_MAX_RING_GRANT_ORDER */
#define MAX_RING_PAGES (1 << MAX_RING_ORDER)
#define MAX_RING_ENTRIES 512	/* __CONST_RING_SIZE: (16 * 4096 - 64) / 112, rounded down to a power of two */
#define NDATA MAX_RING_ENTRIES	/* data pages, one request each: the most in flight */
#define NPATTERN 16		/* data pages the pattern tests use */
#define SECTS_PER_PAGE 8
#define BANK_REFS (MAX_RING_PAGES + NDATA) /* grant references per connection: ring pages, then data */
#define GNT_FRAMES 3		/* v1 frames: the reserved entries and two banks */
_Static_assert(GNTTAB_NR_RESERVED_ENTRIES + 2 * BANK_REFS <= GNT_FRAMES * 4096 / sizeof(grant_entry_v1_t),
	       "the grant frames hold both banks");

/* The ring as io/ring.h lays it out: the indices, 56 bytes of
 * padding, then the entries. */
union blk_entry {
	struct blkif_request req;
	struct blkif_response rsp;
};
struct blk_sring {
	volatile uint32_t req_prod, req_event, rsp_prod, rsp_event;
	uint8_t pad[48];
	union blk_entry ring[MAX_RING_ENTRIES];
};
_Static_assert(offsetof(struct blk_sring, ring) == 64, "ring header");
_Static_assert(sizeof(struct blkif_request) == 112, "x86_64 blkif_request");
_Static_assert(sizeof(struct blk_sring) <= MAX_RING_PAGES * 4096, "the largest ring fits its pages");

/* A ring's pages are contiguous here, so entries that straddle a page
 * boundary are plain memory to us (each page is granted on its own). */
static char ring_pages[2][MAX_RING_PAGES][4096] __attribute__((aligned(4096)));
static char data_pages[NDATA][4096] __attribute__((aligned(4096)));
static char gnttab_page[GNT_FRAMES][4096] __attribute__((aligned(4096)));
static grant_entry_v1_t *gnttab;

/* A request's shadow, as blkfront keeps one: what to resubmit. */
static struct {
	int busy;
	uint8_t op;
	uint64_t sector;
	int16_t status;
	int done;
} shadow[NDATA];

static struct {
	char fe[64], be[96];	/* device/vbd/N and its backend's path */
	unsigned long sectors;
	int bank;		/* which ring pages and grant bank are live */
	unsigned order;		/* ring-page-order: 2^order ring pages */
	uint32_t ring_size;	/* entries, a power of two */
	struct blk_sring *ring;
	uint32_t req_prod, rsp_cons;
	evtchn_port_t port;
	unsigned long writes, reads, resubmitted, harvested;
} blk;

static unsigned long region;	/* sectors the pattern covers */

static uint64_t pattern(unsigned long cycle, uint64_t sector, unsigned i)
{
	return (uint64_t)cycle << 48 | sector << 16 | i;
}

/* GNTTABOP_setup_table for GNT_FRAMES v1 frames, mapped over
 * gnttab_page (again after a resume in a new domain, as Linux's
 * gnttab_resume does). */
static long gnttab_setup(void)
{
	xen_pfn_t frames[GNT_FRAMES] = { 0 };
	struct gnttab_setup_table op = { .dom = DOMID_SELF, .nr_frames = GNT_FRAMES };
	set_xen_guest_handle(op.frame_list, frames);
	long rc = hypercall3(__HYPERVISOR_grant_table_op, GNTTABOP_setup_table, (long)&op, 1);
	if (rc || op.status)
		return rc ? rc : op.status;
	for (int i = 0; i < GNT_FRAMES; i++) {
		rc = map_machine_page((unsigned long)gnttab_page[i], frames[i] << 12);
		if (rc)
			return rc;
	}
	gnttab = (grant_entry_v1_t *)gnttab_page;
	return 0;
}

/* Unmap the table's frames, as Linux's gnttab_suspend. */
static void gnttab_unmap(void)
{
	for (int i = 0; i < GNT_FRAMES; i++)
		map_machine_page((unsigned long)gnttab_page[i], 0);
	gnttab = NULL;
}

/* Grant a page of ours to dom0: frame and domid before the flags. */
static void grant(grant_ref_t ref, const void *page, int readonly)
{
	gnttab[ref].domid = 0;
	gnttab[ref].frame = pfn_to_mfn(virt_to_pfn(page));
	__atomic_thread_fence(__ATOMIC_RELEASE);
	gnttab[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
}

static grant_ref_t ring_ref(int bank, int page)
{
	return GNTTAB_NR_RESERVED_ENTRIES + bank * BANK_REFS + page;
}

static grant_ref_t data_ref(int bank, int i)
{
	return ring_ref(bank, MAX_RING_PAGES) + i;
}

/* End a bank's grants: the backend has unmapped them (it shows InitWait
 * or was never connected to them in this domain). */
static void end_bank(int bank)
{
	for (int i = 0; i < MAX_RING_PAGES; i++)
		__atomic_store_n(&gnttab[ring_ref(bank, i)].flags, 0, __ATOMIC_SEQ_CST);
	for (int i = 0; i < NDATA; i++)
		__atomic_store_n(&gnttab[data_ref(bank, i)].flags, 0, __ATOMIC_SEQ_CST);
}

static unsigned long parse_ulong(const char *s)
{
	unsigned long n = 0;
	for (; *s >= '0' && *s <= '9'; s++)
		n = n * 10 + (*s - '0');
	return n;
}

static int read_state(const char *dir)
{
	char path[128], v[16];
	snprintf(path, sizeof(path), "%s/state", dir);
	if (xs_read(0, path, v, sizeof(v)) < 0)
		return -1;
	return (int)parse_ulong(v);
}

static int write_node(uint32_t tx, const char *node, const char *value)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", blk.fe, node);
	return xs_write(tx, path, value);
}

static int switch_state(int state)
{
	char v[4];
	snprintf(v, sizeof(v), "%d", state);
	return write_node(0, "state", v);
}

/* Wait, through a watch on the backend's state, until it shows want;
 * Closing or Closed instead is a failure, its error node printed. */
static int wait_backend(int want)
{
	char path[128];
	for (;;) {
		int s = read_state(blk.be);
		if (s == want)
			return 0;
		if (s == XB_CLOSING || s == XB_CLOSED) {
			char err[128] = "", epath[160];
			/* error/backend/vbd/D/N under the backend domain's home. */
			const char *tail = strstr(blk.be, "/backend/");
			snprintf(epath, sizeof(epath), "/local/domain/0/error%s/error", tail ? tail : "");
			xs_read(0, epath, err, sizeof(err));
			printk("blkfront: backend state %d error=\"%s\"\n", s, err);
			return -1;
		}
		xs_wait_watch("blkback", path, sizeof(path));
	}
}

/* Find the vbd: the first entry under device/vbd, and its backend. */
static int find_vbd(void)
{
	char list[128], path[128];
	int n = xs_directory("device/vbd", list, sizeof(list));
	if (n <= 0) {
		xtf_error("no device/vbd (%d): the scenario needs a disk", n);
		return -1;
	}
	snprintf(blk.fe, sizeof(blk.fe), "device/vbd/%s", list);
	snprintf(path, sizeof(path), "%s/backend", blk.fe);
	if (xs_read(0, path, blk.be, sizeof(blk.be)) <= 0) {
		xtf_error("no %s", path);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/state", blk.be);
	xs_watch(path, "blkback"); /* EEXIST when a watch survived: fine */
	return 0;
}

/* __CONST_RING_SIZE: the entries of a ring of pages pages. */
static uint32_t ring_entries(unsigned pages)
{
	uint32_t n = (pages * 4096 - 64) / sizeof(union blk_entry), p = 1;
	while (p * 2 <= n)
		p *= 2;
	return p;
}

/* The ring's order, as Linux's blkfront picks it: what ring-order=N asks
 * (default 0), at most the backend's max-ring-page-order (0 when it
 * publishes none). ring-order-unchecked=1 asks for N whatever the
 * backend allows (a negative control: the backend must refuse it). */
static int ring_order(void)
{
	char path[128], v[16];
	unsigned long want = cmdline_ulong("ring-order", 0), max = 0;
	snprintf(path, sizeof(path), "%s/max-ring-page-order", blk.be);
	if (xs_read(0, path, v, sizeof(v)) > 0)
		max = parse_ulong(v);
	if (cmdline_ulong("ring-order-unchecked", 0)) {
		if (want > 31) {
			xtf_error("ring-order=%lu", want);
			return -1;
		}
		blk.order = want;
		return 0;
	}
	if (want > MAX_RING_ORDER) {
		xtf_error("ring-order=%lu: the stub has rings of up to %d pages", want, MAX_RING_PAGES);
		return -1;
	}
	blk.order = want < max ? want : max;
	if (blk.order != want)
		printk("blkfront: ring-order=%lu, the backend's max-ring-page-order is %lu\n", want, max);
	return 0;
}

/* talk_to_blkback: a fresh ring in the live bank, granted; a new unbound
 * port for dom0; ring-ref, event-channel and protocol in a transaction,
 * then Initialised; Connected once the backend is. */
static int connect(void)
{
	char num[16], node[16];
	if (ring_order())
		return -1;
	/* An unchecked order past ours publishes the refs of the pages we
	 * have: the backend must refuse the order before it reads them. */
	unsigned pages = 1u << (blk.order < MAX_RING_ORDER ? blk.order : MAX_RING_ORDER);
	blk.ring_size = ring_entries(pages);
	blk.ring = (struct blk_sring *)ring_pages[blk.bank];
	memset(blk.ring, 0, pages * 4096);
	blk.ring->req_event = blk.ring->rsp_event = 1;
	blk.req_prod = blk.rsp_cons = 0;
	for (unsigned i = 0; i < pages; i++)
		grant(ring_ref(blk.bank, i), ring_pages[blk.bank][i], 0);
	for (int i = 0; i < NDATA; i++)
		grant(data_ref(blk.bank, i), data_pages[i], 0);
	if (evtchn_alloc_unbound(0, &blk.port)) {
		xtf_error("alloc_unbound for dom0");
		return -1;
	}
	for (;;) {
		long tx = xs_transaction_start();
		if (tx < 0) {
			xtf_error("transaction start %ld", tx);
			return -1;
		}
		/* One page: ring-ref, as every backend reads it; more:
		 * ring-page-order and ring-ref0..N-1 (Linux's
		 * talk_to_blkback). */
		int rc = 0;
		if (blk.order == 0) {
			snprintf(num, sizeof(num), "%u", ring_ref(blk.bank, 0));
			rc = write_node(tx, "ring-ref", num);
		} else {
			snprintf(num, sizeof(num), "%u", blk.order);
			rc = write_node(tx, "ring-page-order", num);
			for (unsigned i = 0; i < pages && !rc; i++) {
				snprintf(node, sizeof(node), "ring-ref%u", i);
				snprintf(num, sizeof(num), "%u", ring_ref(blk.bank, i));
				rc = write_node(tx, node, num);
			}
		}
		snprintf(num, sizeof(num), "%u", blk.port);
		rc = rc ?: write_node(tx, "event-channel", num);
		rc = rc ?: write_node(tx, "protocol", XEN_IO_PROTO_ABI_X86_64);
		/* persistent=1: ask for persistent grants, as Linux's blkfront
		 * does by default (the backend then keeps the data pages
		 * mapped instead of mapping them per request). */
		if (cmdline_ulong("persistent", 0))
			rc = rc ?: write_node(tx, "feature-persistent", "1");
		int end = xs_transaction_end(tx, !rc);
		if (rc) {
			xtf_error("publishing the ring: %d", rc);
			return -1;
		}
		if (end == -XEN_EAGAIN)
			continue;
		if (end) {
			xtf_error("transaction end %d", end);
			return -1;
		}
		break;
	}
	if (switch_state(XB_INITIALISED) || wait_backend(XB_CONNECTED)) {
		xtf_failure("the backend did not connect");
		return -1;
	}
	char path[128], v[32];
	snprintf(path, sizeof(path), "%s/sectors", blk.be);
	if (xs_read(0, path, v, sizeof(v)) <= 0) {
		xtf_failure("no %s", path);
		return -1;
	}
	blk.sectors = parse_ulong(v);
	if (switch_state(XB_CONNECTED))
		return -1;
	printk("blkfront: connected vbd=%s ring-ref=%u ring-order=%u ring-size=%u port=%u sectors=%lu\n",
	       blk.fe + 11, ring_ref(blk.bank, 0), blk.order, blk.ring_size, blk.port, blk.sectors);
	return 0;
}

/* Put shadow[i]'s request on the ring (not yet pushed). */
static void queue(int i)
{
	struct blkif_request *r = &blk.ring->ring[blk.req_prod & (blk.ring_size - 1)].req;
	/* Field by field, as Linux's blkif_queue_rw_req: the backend reads
	 * nr_segments segments and nothing past them. */
	r->operation = shadow[i].op;
	r->nr_segments = 1;
	r->handle = 0;
	r->id = i;
	r->sector_number = shadow[i].sector;
	r->seg[0].gref = data_ref(blk.bank, i);
	r->seg[0].first_sect = 0;
	r->seg[0].last_sect = SECTS_PER_PAGE - 1;
	blk.req_prod++;
}

/* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publish what queue put on the
 * ring; notify the backend only if it asked for an event within the new
 * requests (req_event; it sets that once it finds the ring empty). */
static void push(void)
{
	uint32_t old = blk.ring->req_prod, new = blk.req_prod;
	__atomic_store_n(&blk.ring->req_prod, new, __ATOMIC_SEQ_CST);
	if ((uint32_t)(new - __atomic_load_n(&blk.ring->req_event, __ATOMIC_SEQ_CST)) < (uint32_t)(new - old))
		evtchn_send(blk.port);
}

/* Take every response on the ring: its request is done. */
static void consume(void)
{
	for (;;) {
		uint32_t prod = __atomic_load_n(&blk.ring->rsp_prod, __ATOMIC_ACQUIRE);
		while (blk.rsp_cons != prod) {
			struct blkif_response *r = &blk.ring->ring[blk.rsp_cons & (blk.ring_size - 1)].rsp;
			uint64_t id = r->id;
			if (id >= NDATA || !shadow[id].busy || shadow[id].done) {
				xtf_failure("response for id %lu that is not in flight", (unsigned long)id);
			} else {
				shadow[id].status = r->status;
				shadow[id].done = 1;
			}
			blk.rsp_cons++;
		}
		/* RING_FINAL_CHECK_FOR_RESPONSES: ask for the next one, look again. */
		__atomic_store_n(&blk.ring->rsp_event, blk.rsp_cons + 1, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&blk.ring->rsp_prod, __ATOMIC_SEQ_CST) == blk.rsp_cons)
			return;
	}
}

static int all_done(void)
{
	consume();
	for (int i = 0; i < NDATA; i++)
		if (shadow[i].busy && !shadow[i].done)
			return 0;
	return 1;
}

/* Wait for every request in flight; returns how many failed. */
static int complete(void)
{
	int bad = 0;
	wait_until(all_done());
	for (int i = 0; i < NDATA; i++) {
		if (!shadow[i].busy)
			continue;
		if (shadow[i].status != BLKIF_RSP_OKAY) {
			printk("blkfront: op=%u sector=%lu status=%d\n", shadow[i].op,
			       (unsigned long)shadow[i].sector, shadow[i].status);
			bad++;
		}
		shadow[i].busy = 0;
	}
	return bad;
}

/* Start one page-sized request per data page over the region (writes
 * carry cycle's pattern); does not wait. */
static void submit(uint8_t op, unsigned long cycle)
{
	for (unsigned long s = 0, i = 0; s < region; s += SECTS_PER_PAGE, i++) {
		if (op == BLKIF_OP_WRITE) {
			uint64_t *w = (uint64_t *)data_pages[i];
			for (unsigned k = 0; k < 4096 / 8; k++)
				w[k] = pattern(cycle, s + k / 64, k % 64);
			blk.writes++;
		} else {
			memset(data_pages[i], 0xa5, 4096);
			blk.reads++;
		}
		shadow[i] = (typeof(shadow[0])){ .busy = 1, .op = op, .sector = s };
		queue(i);
	}
	push();
}

/* Read the region back and check every byte against cycle's pattern. */
static int verify(unsigned long cycle)
{
	unsigned long wrong = 0;
	submit(BLKIF_OP_READ, cycle);
	if (complete()) {
		xtf_failure("read-back of cycle %lu failed", cycle);
		return -1;
	}
	for (unsigned long s = 0, i = 0; s < region; s += SECTS_PER_PAGE, i++) {
		const uint64_t *w = (const uint64_t *)data_pages[i];
		for (unsigned k = 0; k < 4096 / 8; k++) {
			if (w[k] == pattern(cycle, s + k / 64, k % 64))
				continue;
			if (!wrong++)
				printk("blkfront: sector %lu word %u = %#lx, want %#lx\n", s + k / 64,
				       k % 64, (unsigned long)w[k], (unsigned long)pattern(cycle, s + k / 64, k % 64));
		}
	}
	printk("blkfront: verified cycle=%lu sectors=%lu wrong-words=%lu\n", cycle, region, wrong);
	if (wrong)
		xtf_failure("cycle %lu: %lu words differ from the pattern", cycle, wrong);
	return wrong ? -1 : 0;
}

static int write_cycle(unsigned long cycle)
{
	submit(BLKIF_OP_WRITE, cycle);
	if (complete()) {
		xtf_failure("writes of cycle %lu failed", cycle);
		return -1;
	}
	return verify(cycle);
}

static int start(void)
{
	long rc = gnttab_setup();
	if (rc) {
		xtf_error("GNTTABOP_setup_table: %ld", rc);
		return -1;
	}
	if (find_vbd() || wait_backend(XB_INITWAIT) || connect())
		return -1;
	region = blk.sectors < NPATTERN * SECTS_PER_PAGE ? blk.sectors & ~7UL : NPATTERN * SECTS_PER_PAGE;
	if (!region) {
		xtf_error("the disk has %lu sectors", blk.sectors);
		return -1;
	}
	return 0;
}

/* The driver's part of test_suspend's cycles: cycle N's writes are left
 * in flight across the suspend, then completed and read back. */
static unsigned long cycle_now;

static int blk_start(void)
{
	if (start() || write_cycle(0))
		return -1;
	return 0;
}

static void blk_quiesce(unsigned long cycle)
{
	cycle_now = cycle + 1;
	submit(BLKIF_OP_WRITE, cycle_now);
	consume();
	int n = 0;
	for (int i = 0; i < NDATA; i++)
		n += shadow[i].busy && !shadow[i].done;
	printk("blkfront: suspending cycle=%lu in-flight=%d\n", cycle_now, n);
	/* As Linux's gnttab_suspend: the table's frames are Xen's, and no
	 * page table of ours may map them across a save. */
	gnttab_unmap();
}

/* After a resume in a new domain (or a non-cooperative one in the same
 * domain): back to Initialising; once the backend is in InitWait it will
 * never touch the old ring again, so its responses there are final; the
 * old grants and port go, and the rest is resubmitted on a new ring. */
static int reconnect(void)
{
	long rc = gnttab_setup();
	if (rc) {
		xtf_failure("GNTTABOP_setup_table after resume: %ld", rc);
		return -1;
	}
	char path[128];
	snprintf(path, sizeof(path), "%s/backend", blk.fe);
	if (xs_read(0, path, blk.be, sizeof(blk.be)) <= 0) {
		xtf_failure("no %s after resume", path);
		return -1;
	}
	snprintf(path, sizeof(path), "%s/state", blk.be);
	xs_watch(path, "blkback");
	if (switch_state(XB_INITIALISING) || wait_backend(XB_INITWAIT)) {
		xtf_failure("the backend did not return to InitWait");
		return -1;
	}
	unsigned long before = 0, after = 0;
	for (int i = 0; i < NDATA; i++)
		before += shadow[i].busy && shadow[i].done;
	consume(); /* the old ring: what the backend answered before it let go */
	for (int i = 0; i < NDATA; i++)
		after += shadow[i].busy && shadow[i].done;
	blk.harvested += after - before;
	end_bank(blk.bank);
	/* The old port, unless it is gone (a new domain) and its number now
	 * names one of the toolstack's channels. */
	evtchn_status_t st;
	if (blk.port != start_info->store_evtchn && blk.port != start_info->console.domU.evtchn &&
	    !evtchn_status(blk.port, &st) &&
	    ((st.status == EVTCHNSTAT_unbound && st.u.unbound.dom == 0) ||
	     (st.status == EVTCHNSTAT_interdomain && st.u.interdomain.dom == 0)))
		evtchn_close(blk.port);
	blk.bank ^= 1;
	if (connect())
		return -1;
	int n = 0;
	for (int i = 0; i < NDATA; i++) {
		if (shadow[i].busy && !shadow[i].done) {
			queue(i);
			n++;
		}
	}
	if (n)
		push();
	blk.resubmitted += n;
	printk("blkfront: reconnected answered-on-old-ring=%lu resubmitted=%d\n", after - before, n);
	return 0;
}

static void blk_resume(unsigned long cycle, long rc)
{
	if (rc == 0 && reconnect())
		return;
	long err;
	if (rc != 0 && (err = gnttab_setup())) {
		xtf_failure("GNTTABOP_setup_table after resume: %ld", err);
		return;
	}
	if (complete()) {
		xtf_failure("writes in flight at suspend %lu failed", cycle);
		return;
	}
	verify(cycle_now);
}

const struct suspend_driver blk_driver = {
	.start = blk_start, .quiesce = blk_quiesce, .resume = blk_resume,
};

static void report(void)
{
	printk("blkfront: writes=%lu reads=%lu resubmitted=%lu answered-on-old-ring=%lu region=%lu last-cycle=%lu\n",
	       blk.writes, blk.reads, blk.resubmitted, blk.harvested, region, cycle_now);
}

void blkfront_report(void)
{
	report();
}

/* The TSC, for the bench loop's phases (fill and push, wait, reap). */
static inline unsigned long bench_tsc(void)
{
	unsigned int lo, hi;
	asm volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi));
	return ((unsigned long)hi << 32) | lo;
}

/* Take the responses on the ring (as consume), and report whether any
 * request of the bench is done: its wait_until condition. */
static int any_done(void)
{
	consume();
	for (int i = 0; i < NDATA; i++)
		if (shadow[i].busy && shadow[i].done)
			return 1;
	return 0;
}

/* bench=N [op=read|write] [depth=D] [persistent=1] [ring-order=O] [scatter=1]: N 4 KiB
 * requests, up to D (1 to the ring's entries, 32 per page up to 512 at
 * ring-order=4; default 1) in flight at a time, as Linux's blkfront keeps
 * them: every free slot is filled and the batch pushed with one
 * notification at most (push's req_event check), then the guest blocks
 * until an event and takes every response there is (consume's rsp_event
 * check), walking the disk page by page (or scattered), between the "loop: start" and
 * "loop: end" markers the host benchmark times and counts exits at. */
static void bench(unsigned long n)
{
	char op[8] = "read";
	cmdline_get("op", op, sizeof(op));
	int write = !strcmp(op, "write");
	unsigned long depth = cmdline_ulong("depth", 1);
	/* scatter=1: page i of the walk is page i * 7919 mod the disk's
	 * (a permutation for a power-of-two disk): no two requests in a
	 * row are adjacent, so the backend cannot merge them. */
	unsigned long stride = cmdline_ulong("scatter", 0) ? 7919 : 1;
	unsigned long pages = blk.sectors / SECTS_PER_PAGE, bad = 0;
	if (!pages) {
		xtf_error("the disk has %lu sectors", blk.sectors);
		return;
	}
	if (depth < 1 || depth > blk.ring_size) {
		xtf_error("depth=%lu: want 1 to the ring's %u", depth, blk.ring_size);
		return;
	}
	for (unsigned long i = 0; i < depth; i++)
		memset(data_pages[i], 0x5a, 4096);
	printk("loop: start op=%s n=%lu depth=%lu\n", write ? "write" : "read", n, depth);
	unsigned long sent = 0, done = 0, batches = 0, wakes = 0;
	unsigned long t_fill = 0, t_wait = 0, t_reap = 0, t_loop = bench_tsc();
	while (done < n) {
		unsigned long t0 = bench_tsc();
		int queued = 0;
		for (unsigned long i = 0; i < depth && sent < n; i++) {
			if (shadow[i].busy)
				continue;
			shadow[i] = (typeof(shadow[0])){ .busy = 1, .op = write ? BLKIF_OP_WRITE : BLKIF_OP_READ,
							 .sector = (sent * stride % pages) * SECTS_PER_PAGE };
			queue(i);
			sent++;
			queued = 1;
		}
		if (queued) {
			push();
			batches++;
		}
		unsigned long t1 = bench_tsc();
		wait_until((wakes++, any_done()));
		unsigned long t2 = bench_tsc();
		for (unsigned long i = 0; i < depth; i++) {
			if (!shadow[i].busy || !shadow[i].done)
				continue;
			bad += shadow[i].status != BLKIF_RSP_OKAY;
			shadow[i].busy = 0;
			done++;
		}
		unsigned long t3 = bench_tsc();
		t_fill += t1 - t0;
		t_wait += t2 - t1;
		t_reap += t3 - t2;
	}
	t_loop = bench_tsc() - t_loop;
	printk("loop: end\n");
	printk("blkfront-bench: op=%s n=%lu depth=%lu batches=%lu errors=%lu wakes=%lu tsc-loop=%lu tsc-fill=%lu tsc-wait=%lu tsc-reap=%lu\n",
	       write ? "write" : "read", n, depth, batches, bad, wakes, t_loop, t_fill, t_wait, t_reap);
	if (bad)
		xtf_failure("%lu of %lu requests failed", bad, n);
}

/* blkfront [cycles=N]: write the pattern and read it back; with cycles,
 * through N suspends (test_suspend's protocol), writes in flight each time;
 * with bench=N, the benchmark loop instead. */
void test_blkfront(void)
{
	unsigned long n = cmdline_ulong("bench", 0);
	if (n) {
		if (events_init() || xs_init()) {
			xtf_error("events and xenstore");
			return;
		}
		if (!start())
			bench(n);
		return;
	}
	if (cmdline_ulong("cycles", 0)) {
		suspend_driver = &blk_driver;
		test_suspend();
		report();
		return;
	}
	if (events_init() || xs_init()) {
		xtf_error("events and xenstore");
		return;
	}
	if (start())
		return;
	cycle_now = 1;
	write_cycle(1);
	report();
}

/* blkfront-outside: a negative control. Writes past the last sector, and
 * straddling it, get BLKIF_RSP_ERROR; nothing reaches the image. */
void test_blkfront_outside(void)
{
	if (events_init() || xs_init()) {
		xtf_error("events and xenstore");
		return;
	}
	if (start())
		return;
	uint64_t at[2] = { blk.sectors, blk.sectors - SECTS_PER_PAGE / 2 };
	for (int i = 0; i < 2; i++) {
		memset(data_pages[i], 0xee, 4096);
		shadow[i] = (typeof(shadow[0])){ .busy = 1, .op = BLKIF_OP_WRITE, .sector = at[i] };
		queue(i);
	}
	push();
	wait_until(all_done());
	printk("blkfront-outside: sector=%lu status=%d sector=%lu status=%d\n",
	       (unsigned long)at[0], shadow[0].status, (unsigned long)at[1], shadow[1].status);
	for (int i = 0; i < 2; i++) {
		if (shadow[i].status != BLKIF_RSP_ERROR)
			xtf_failure("a write at sector %lu of %lu got status %d, want BLKIF_RSP_ERROR",
				    (unsigned long)at[i], blk.sectors, shadow[i].status);
		shadow[i].busy = 0;
	}
}
