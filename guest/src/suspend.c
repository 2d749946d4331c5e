/*
 * suspend.c: the guest side of Xen's suspend protocol, as Linux and
 * Mini-OS do it. The toolstack writes "suspend" to control/shutdown; we ack
 * by writing "" in a transaction, quiesce, canonicalise start_info's store
 * and console MFNs to PFNs, unmap shared_info and call
 * SCHEDOP_shutdown(SHUTDOWN_suspend) with our start_info's MFN in %rdx.
 * It returns 1 when we carry on in the same domain (a cancelled suspend or
 * a checkpoint: everything is still in place) and 0 in a new domain (take
 * start_info from %rdx, remap shared_info, rebind every event channel,
 * reconnect to xenstore and re-register watches). A ring-3 PV kernel does
 * not register its trap table and callbacks again: the toolstack restores
 * them with the vCPU context, as libxc does.
 */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/sched.h>
#include <xen/event_channel.h>
#include <xen/vcpu.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

/* The workload: a hash chain over guest memory. Each step mixes in the
 * step number and a word of RAM, so a guest that lost or replayed steps,
 * or whose memory changed under it, ends on another hash. */
static unsigned long work_n, work_hash = 0xcbf29ce484222325UL;

static void work(unsigned long steps)
{
	unsigned long pages = start_info->nr_pages;
	for (unsigned long i = 0; i < steps; i++, work_n++) {
		const unsigned long *w = (const unsigned long *)(VIRT_BASE + ((work_n * 7919) % pages) * 4096);
		work_hash = (work_hash ^ work_n ^ *w) * 0x100000001b3UL;
	}
	printk("work: n=%lu hash=%#lx\n", work_n, work_hash);
}

/* dirty=N: while it waits for a suspend request the guest keeps writing
 * memory, N pages per step, round-robin over a 512 KiB buffer, each page
 * stamped with its write's sequence number (and its complement at the
 * page's end). After a resume every page must hold its last write: a
 * live migration that lost a page the guest dirtied is caught here. */
#define DIRTY_BUF_PAGES 128
static unsigned char dirty_buf[DIRTY_BUF_PAGES][4096] __attribute__((aligned(4096)));
static unsigned long dirty_pages, dirty_seq;

static void dirty_step(void)
{
	for (unsigned long i = 0; i < dirty_pages; i++, dirty_seq++) {
		volatile unsigned long *w = (volatile unsigned long *)dirty_buf[dirty_seq % DIRTY_BUF_PAGES];
		w[1] = dirty_seq;
		w[511] = ~dirty_seq;
	}
}

/* Returns the first page that does not hold its last write, or -1. */
static long dirty_check(void)
{
	for (unsigned long k = 0; k < DIRTY_BUF_PAGES && k < dirty_seq; k++) {
		unsigned long last = dirty_seq - 1 - ((dirty_seq - 1 - k) % DIRTY_BUF_PAGES);
		const volatile unsigned long *w = (const volatile unsigned long *)dirty_buf[k];
		if (w[1] != last || w[511] != ~last)
			return (long)k;
	}
	return -1;
}

static evtchn_port_t loop_a, loop_b, timer_port, suspend_port;
static unsigned long suspend_handled; /* events on suspend_port acted on */

/* The single-shot timer fires (after a restart of timers, on resume). */
static int timer_works(void)
{
	unsigned long before = event_count[timer_port];
	struct vcpu_set_singleshot_timer st = { .timeout_abs_ns = system_time() + 1000000 };
	if (HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &st))
		return 0;
	wait_until(event_count[timer_port] != before);
	return 1;
}

static int bind_timer(void)
{
	evtchn_bind_virq_t bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
	if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bv))
		return -1;
	timer_port = bv.port;
	return 0;
}

/* With suspend-evtchn=1 the guest publishes an unbound port in
 * device/suspend/event-channel: the toolstack then signals it instead of
 * writing control/shutdown, and no acknowledgement is due. */
static int publish_suspend_port(void)
{
	char num[16];
	if (!cmdline_ulong("suspend-evtchn", 0))
		return 0;
	if (evtchn_alloc_unbound(0, &suspend_port))
		return -1;
	snprintf(num, sizeof(num), "%u", suspend_port);
	suspend_handled = event_count[suspend_port];
	return xs_write(0, "device/suspend/event-channel", num);
}

static int bind_loopback(void)
{
	if (evtchn_alloc_unbound(DOMID_SELF, &loop_a) || evtchn_bind_interdomain(DOMID_SELF, loop_a, &loop_b))
		return -1;
	return 0;
}

/* After a resume that returned 0 the guest cannot tell a new domain (its
 * ports are gone and their numbers may now name the toolstack's new store
 * and console channels) from a non-cooperative resume in the same domain
 * (its ports still exist). So it closes an old port only if its status
 * shows it is still the channel the guest bound. */
static void close_stale_ports(void)
{
	evtchn_status_t sa, sb, st;
	if (!evtchn_status(loop_a, &sa) && !evtchn_status(loop_b, &sb) &&
	    sa.status == EVTCHNSTAT_interdomain && sb.status == EVTCHNSTAT_interdomain &&
	    sa.u.interdomain.port == loop_b && sb.u.interdomain.port == loop_a) {
		evtchn_close(loop_a);
		evtchn_close(loop_b);
	}
	if (!evtchn_status(timer_port, &st) && st.status == EVTCHNSTAT_virq && st.u.virq == VIRQ_TIMER)
		evtchn_close(timer_port);
	if (suspend_port && !evtchn_status(suspend_port, &st) && st.status == EVTCHNSTAT_unbound &&
	    st.u.unbound.dom == 0)
		evtchn_close(suspend_port);
	suspend_port = 0;
}

/* The loopback pair still carries events. */
static int loopback_works(void)
{
	unsigned long before = event_count[loop_b];
	if (evtchn_send(loop_a))
		return 0;
	return event_count[loop_b] == before + 1;
}

/* Ack a "suspend" request as Linux does: in a transaction, read
 * control/shutdown and write "" if it holds a command. Returns 1 when a
 * suspend was acknowledged. */
static int ack_suspend(void)
{
	for (;;) {
		long tx = xs_transaction_start();
		char cmd[32];
		if (tx < 0)
			return 0;
		if (xs_read(tx, "control/shutdown", cmd, sizeof(cmd)) < 0 || strcmp(cmd, "suspend")) {
			xs_transaction_end(tx, 0);
			return 0;
		}
		xs_write(tx, "control/shutdown", "");
		int rc = xs_transaction_end(tx, 1);
		if (rc == -XEN_EAGAIN)
			continue;
		return rc == 0;
	}
}

/* Wait for "suspend" (or the suspend event channel). "poweroff" and
 * "reboot" are acknowledged and obeyed at once, as Linux's
 * shutdown_handler does. Returns 1 for the event-channel method. */
static int wait_for_request(void)
{
	char path[128], cmd[32];
	for (;;) {
		/* Look before waiting: a request may have been written before
		 * the watch fired, or while we were busy. */
		if (xs_read(0, "control/shutdown", cmd, sizeof(cmd)) >= 0) {
			if (!strcmp(cmd, "suspend"))
				return 0;
			if (!strcmp(cmd, "poweroff") || !strcmp(cmd, "reboot")) {
				xs_write(0, "control/shutdown", "");
				printk("shutdown: request %s\n", cmd);
				report_and_shutdown(cmd[0] == 'p' ? SHUTDOWN_poweroff : SHUTDOWN_reboot);
			}
		}
		if (suspend_port) {
			wait_until(event_count[suspend_port] != suspend_handled || xs_pending());
			if (event_count[suspend_port] != suspend_handled) {
				suspend_handled = event_count[suspend_port];
				return 1;
			}
			xs_poll_watch("shutdown", path, sizeof(path));
		} else if (dirty_pages) {
			while (!xs_pending())
				dirty_step();
			xs_poll_watch("shutdown", path, sizeof(path));
		} else {
			xs_wait_watch("shutdown", path, sizeof(path));
		}
	}
}

static int setup(void)
{
	long rc = events_init();
	if (rc) {
		xtf_error("events_init: %ld", rc);
		return -1;
	}
	if (xs_init()) {
		xtf_error("store MFN %#lx is not in the P2M", start_info->store_mfn);
		return -1;
	}
	if (bind_loopback() || bind_timer()) {
		xtf_error("loopback and timer event channels");
		return -1;
	}
	char path[128];
	if (xs_write(0, "control/feature-suspend", "1") || xs_watch("control/shutdown", "shutdown")) {
		xtf_error("xenstore setup");
		return -1;
	}
	xs_wait_watch("shutdown", path, sizeof(path)); /* fires on registration */
	if (publish_suspend_port()) {
		xtf_error("publishing the suspend event channel");
		return -1;
	}
	return 0;
}

const struct suspend_driver *suspend_driver;

void test_suspend(void)
{
	char name[16] = "";
	cmdline_get("test", name, sizeof(name));
	unsigned long cycles = cmdline_ulong("cycles", strcmp(name, "idle") ? 1 : ~0UL);
	int bench = cmdline_ulong("bench", 0);
	dirty_pages = cmdline_ulong("dirty", 0);
	if (setup())
		return;
	if (suspend_driver && suspend_driver->start())
		return;
	work(1000);
	for (unsigned long cycle = 0; cycle < cycles; cycle++) {
		if (!bench || !cycle)
			printk("suspend: ready cycle=%lu\n", cycle);
		if (wait_for_request()) {
			printk("suspend: via event channel %u\n", suspend_port);
		} else if (!ack_suspend()) {
			xtf_failure("could not acknowledge the suspend request");
			return;
		} else if (!bench) {
			printk("suspend: acked\n");
		}
		if (!bench)
			work(1000);
		if (suspend_driver)
			suspend_driver->quiesce(cycle);

		/* With events off, as Linux suspends under stop_machine:
		 * canonicalise start_info and unmap shared_info (Xen's). */
		events_disable();
		unsigned long si_mfn = pfn_to_mfn(virt_to_pfn(start_info));
		start_info->store_mfn = mfn_to_pfn(start_info->store_mfn);
		start_info->console.domU.mfn = mfn_to_pfn(start_info->console.domU.mfn);
		map_machine_page((unsigned long)shared_page, 0);
		shared = NULL;

		unsigned long rdx;
		if (!bench)
			printk("suspend: calling rdx=%#lx\n", si_mfn);
		long rc = HYPERVISOR_suspend_rdx(si_mfn, &rdx);
		if (cmdline_ulong("ignore-rc", 0))
			rc = 1; /* negative control: pretend it was a cancel */

		if (rc == 1) {
			/* Same domain: undo our canonicalisation; everything
			 * else (ports, watches, the callback) is in place. */
			start_info->store_mfn = pfn_to_mfn(start_info->store_mfn);
			start_info->console.domU.mfn = pfn_to_mfn(start_info->console.domU.mfn);
			if (map_machine_page((unsigned long)shared_page, start_info->shared_info)) {
				xtf_failure("remapping shared_info after a cancelled suspend");
				return;
			}
			shared = (shared_info_t *)shared_page;
			if (xs_init()) {
				xtf_failure("store MFN %#lx is not ours after rc=1", start_info->store_mfn);
				return;
			}
			if (!bench)
				printk("resume: rc=1 same-domain\n");
		} else if (rc == 0) {
			/* A new domain: start_info is where %rdx says. */
			unsigned long pfn = mfn_to_pfn(rdx);
			if (pfn == ~0UL) {
				xtf_failure("rdx %#lx after resume is not one of our machine frames", rdx);
				return;
			}
			start_info = (start_info_t *)(VIRT_BASE + (pfn << 12));
			if (strcmp(start_info->magic, "xen-3.0-x86_64")) {
				xtf_failure("no start_info at rdx %#lx", rdx);
				return;
			}
			if (events_init()) {
				xtf_failure("remapping shared_info at %#lx", start_info->shared_info);
				return;
			}
			/* Our own ports may be gone: close what is still ours,
			 * rebind, restart timers. */
			close_stale_ports();
			char feat[4] = "";
			if (bind_loopback() || bind_timer() || xs_init()) {
				xtf_failure("rebinding after resume in a new domain");
				return;
			}
			/* Watches may survive (a non-cooperative resume in the
			 * same domain): start from none when xenstored can. */
			xs_read(0, "control/platform-feature-xs_reset_watches", feat, sizeof(feat));
			if (!strcmp(feat, "1") && xs_reset_watches()) {
				xtf_failure("XS_RESET_WATCHES");
				return;
			}
			if (xs_watch("control/shutdown", "shutdown")) {
				xtf_failure("rebinding after resume in a new domain");
				return;
			}
			char path[128];
			xs_wait_watch("shutdown", path, sizeof(path));
			xs_write(0, "control/feature-suspend", "1");
			if (publish_suspend_port()) {
				xtf_failure("republishing the suspend event channel");
				return;
			}
			printk("resume: rc=0 new-domain store_evtchn=%u console_evtchn=%u\n",
			       start_info->store_evtchn, start_info->console.domU.evtchn);
		} else {
			xtf_failure("suspend returned %ld", rc);
			return;
		}
		events_enable();
		if (dirty_pages) {
			long bad = dirty_check();
			if (bad >= 0) {
				xtf_failure("dirty: page %ld of the buffer lost its last write (seq %lu)", bad, dirty_seq);
				return;
			}
			printk("dirty: seq=%lu all pages hold their last write\n", dirty_seq);
		}
		if (suspend_driver)
			suspend_driver->resume(cycle, rc);
		if (bench)
			continue; /* the minimal cycle: no checks, no output */
		/* Whatever the path, everything must work. */
		char cmd[32];
		if (!loopback_works())
			xtf_failure("event channels do not work after resume");
		if (!timer_works())
			xtf_failure("the timer does not work after resume");
		if (xs_read(0, "control/shutdown", cmd, sizeof(cmd)) < 0)
			xtf_failure("xenstore does not work after resume");
		work(1000);
	}
}

/* suspend-reject: watch, but never acknowledge; the toolstack must time
 * out, cancel the request and leave us running. */
void test_suspend_reject(void)
{
	char path[128], cmd[32];
	if (setup())
		return;
	printk("suspend: ready cycle=0\n");
	wait_for_request();
	printk("suspend-reject: ignoring the request\n");
	do {
		work(100);
		xs_wait_watch("shutdown", path, sizeof(path));
	} while (xs_read(0, "control/shutdown", cmd, sizeof(cmd)) < 0 || cmd[0]);
	printk("suspend-reject: request cancelled\n");
	work(100);
}

/* suspend-noshutdown: acknowledge, then never suspend. */
void test_suspend_noshutdown(void)
{
	if (setup())
		return;
	printk("suspend: ready cycle=0\n");
	wait_for_request();
	ack_suspend();
	printk("suspend-noshutdown: acked, not suspending\n");
	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_block, NULL);
}
