/*
 * tests.c: the scenario table. Every scenario prints machine-readable lines
 * ("key: field=value ...") that the host tests parse, and ends with exactly
 * one "Test result:" line.
 */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/version.h>
#include <xen/vcpu.h>
#include <xen/errno.h>
#include <xen/event_channel.h>
#include <xen/callback.h>
#include <xen/io/console.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

static void test_hello(void)
{
	printk("Hello from a Xen PV guest on xenresume\n");
}

/* startinfo: echo every boot field and the entry registers, and check the
 * P2M is consistent with the frames start_info names. */
static void test_startinfo(void)
{
	const start_info_t *si = start_info;

	printk("entry: rsi=%#lx rsp=%#lx\n", entry_rsi, entry_rsp);
	printk("startinfo: magic=%s nr_pages=%#lx shared_info=%#lx flags=%#x\n",
	       si->magic, si->nr_pages, si->shared_info, si->flags);
	printk("startinfo: store_mfn=%#lx store_evtchn=%u console_mfn=%#lx console_evtchn=%u\n",
	       si->store_mfn, si->store_evtchn, si->console.domU.mfn, si->console.domU.evtchn);
	printk("startinfo: pt_base=%#lx nr_pt_frames=%#lx mfn_list=%#lx\n",
	       si->pt_base, si->nr_pt_frames, si->mfn_list);
	printk("startinfo: mod_start=%#lx mod_len=%#lx first_p2m_pfn=%#lx nr_p2m_frames=%#lx\n",
	       si->mod_start, si->mod_len, si->first_p2m_pfn, si->nr_p2m_frames);
	printk("startinfo: cmd_line=%s\n", (const char *)si->cmd_line);

	if ((unsigned long)si != entry_rsi)
		xtf_failure("start_info %p is not %%rsi at entry %#lx", si, entry_rsi);

	/* Every P2M entry must be a distinct machine frame, and no machine frame
	 * may equal its pseudo-physical frame number. */
	unsigned long first = pfn_to_mfn(0), bad = 0;
	for (unsigned long pfn = 0; pfn < si->nr_pages; pfn++) {
		unsigned long mfn = pfn_to_mfn(pfn);
		if (mfn == pfn || mfn == ~0UL)
			bad++;
		if (pfn && mfn <= pfn_to_mfn(pfn - 1) && mfn != first + pfn)
			bad++;
	}
	unsigned long store_pfn = mfn_to_pfn(si->store_mfn);
	unsigned long console_pfn = mfn_to_pfn(si->console.domU.mfn);
	unsigned long si_mfn = pfn_to_mfn(virt_to_pfn(si));
	unsigned long shinfo_pfn = mfn_to_pfn(si->shared_info >> 12);
	printk("p2m: entries=%lu bad=%lu store_pfn=%#lx console_pfn=%#lx start_info_mfn=%#lx shared_info_in_p2m=%d\n",
	       si->nr_pages, bad, store_pfn, console_pfn, si_mfn, shinfo_pfn != ~0UL);
	if (bad)
		xtf_failure("%lu bad P2M entries", bad);
	if (store_pfn == ~0UL || console_pfn == ~0UL)
		xtf_failure("store or console MFN not in the P2M");
	if (shinfo_pfn != ~0UL)
		xtf_failure("shared_info is a Xen page and must not be in the P2M");
}

static const char *const shutdown_names[] = {
	"poweroff", "reboot", "suspend", "crash", "watchdog", "soft_reset",
};

/* shutdown reason=NAME|N [rdx=mfn|pfn]: report, then SCHEDOP_shutdown. */
static void test_shutdown(void)
{
	char name[32];
	unsigned int why = SHUTDOWN_MAX + 1;

	if (!cmdline_get("reason", name, sizeof(name))) {
		xtf_error("shutdown needs reason=");
		return;
	}
	for (unsigned int i = 0; i <= SHUTDOWN_MAX; i++)
		if (!strcmp(name, shutdown_names[i]))
			why = i;
	if (why > SHUTDOWN_MAX)
		why = cmdline_ulong("reason", ~0U);

	if (why > SHUTDOWN_MAX) {
		/* An invalid reason must be refused and the domain keep running. */
		struct sched_shutdown sd = { .reason = why };
		long rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
		printk("shutdown: reason=%u rc=%ld\n", why, rc);
		if (rc != -XEN_EINVAL)
			xtf_failure("shutdown(%u) returned %ld, want -EINVAL", why, rc);
		return;
	}
	if (why != SHUTDOWN_suspend) {
		printk("shutdown: reason=%s\n", shutdown_names[why]);
		report_and_shutdown(why);
		return;
	}

	/* SHUTDOWN_suspend: %rdx carries the start_info MFN, or, with
	 * rdx=pfn, deliberately the PFN, which the toolstack must catch. */
	char mode[8] = "mfn";
	cmdline_get("rdx", mode, sizeof(mode));
	unsigned long pfn = virt_to_pfn(start_info);
	unsigned long rdx = strcmp(mode, "pfn") ? pfn_to_mfn(pfn) : pfn;
	printk("shutdown: reason=suspend rdx=%#lx\n", rdx);
	report_and_shutdown(SHUTDOWN_suspend);
	long rc = HYPERVISOR_suspend(rdx);
	printk("suspend: returned %ld\n", rc);
}

static int efault_calls, efault_ok;

static void expect_efault(const char *what, long rc)
{
	efault_calls++;
	if (rc == -XEN_EFAULT)
		efault_ok++;
	else
		xtf_failure("%s returned %ld, want -EFAULT", what, rc);
	printk("bad-pointer: %s rc=%ld\n", what, rc);
}

/* bad-pointer: every guest pointer the hypervisor follows is checked.
 * console_io is -EPERM for a domU whatever its arguments, so other calls
 * with buffers stand in for it. */
static void test_bad_pointer(void)
{
	char *unmapped = (char *)0x0000100000000000UL;
	char *noncanon = (char *)0x8000000000000000UL;
	char *ram_end = (char *)(VIRT_BASE + (start_info->nr_pages << 12));
	struct sched_shutdown *bad_sd = (void *)0x0000200000000000UL;

	expect_efault("xen_version extraversion", HYPERVISOR_xen_version(XENVER_extraversion, unmapped));
	expect_efault("xen_version capabilities", HYPERVISOR_xen_version(XENVER_capabilities, noncanon));
	expect_efault("xen_version past end of RAM", HYPERVISOR_xen_version(XENVER_extraversion, ram_end - 2));
	expect_efault("sched_op shutdown", HYPERVISOR_sched_op(SCHEDOP_shutdown, bad_sd));
	expect_efault("event_channel_op send", HYPERVISOR_event_channel_op(EVTCHNOP_send, unmapped));
	expect_efault("mmu_update requests", HYPERVISOR_mmu_update((mmu_update_t *)unmapped, 1, NULL, DOMID_SELF));
	expect_efault("set_trap_table", HYPERVISOR_set_trap_table((struct trap_info *)noncanon));
	expect_efault("callback_op register", HYPERVISOR_callback_op(CALLBACKOP_register, unmapped));

	long rc = HYPERVISOR_mmu_update((mmu_update_t *)unmapped, 0, NULL, DOMID_SELF);
	printk("bad-pointer: mmu_update zero count rc=%ld\n", rc);
	if (rc != 0)
		xtf_failure("a zero-length request list must not be touched (rc %ld)", rc);
	printk("bad-pointer: %d of %d calls got -EFAULT\n", efault_ok, efault_calls);
}

/* unhandled-fault (also triple-fault, its name in the ring-0 container):
 * with no trap table, a #UD has no handler, and Xen crashes the domain
 * (xenresume: exit 8 with a report), where a CPU would triple-fault. */
static void test_unhandled_fault(void)
{
	printk("unhandled-fault: clearing the trap table, then ud2\n");
	HYPERVISOR_set_trap_table(NULL);
	asm volatile("ud2");
}

static void test_exception(void)
{
	printk("exception: dividing by zero\n");
	/* An explicit div: C's 1/x with x == 0 is undefined and gcc may
	 * compile it without a division. */
	asm volatile("xor %%ecx, %%ecx; mov $1, %%eax; xor %%edx, %%edx; div %%ecx"
		     ::: "eax", "ecx", "edx");
	xtf_failure("div by zero did not fault");
}

static void test_version(void)
{
	static char extra[XEN_EXTRAVERSION_LEN];
	static char caps[XEN_CAPABILITIES_INFO_LEN];
	struct xen_feature_info fi = { .submap_idx = 0 };

	long ver = HYPERVISOR_xen_version(XENVER_version, NULL);
	long rc1 = HYPERVISOR_xen_version(XENVER_extraversion, extra);
	long rc2 = HYPERVISOR_xen_version(XENVER_capabilities, caps);
	long rc3 = HYPERVISOR_xen_version(XENVER_get_features, &fi);
	long psz = HYPERVISOR_xen_version(XENVER_pagesize, NULL);

	printk("version: major=%ld minor=%ld extra=%s\n", ver >> 16, ver & 0xffff, extra);
	printk("version: capabilities=%s\n", caps);
	printk("version: features[0]=%#x pagesize=%ld\n", fi.submap, psz);
	if (rc1 || rc2 || rc3)
		xtf_failure("xen_version calls failed: %ld %ld %ld", rc1, rc2, rc3);
	if (!strstr(caps, "xen-3.0-x86_64"))
		xtf_failure("capabilities lack xen-3.0-x86_64");
	if (psz != 4096)
		xtf_failure("pagesize %ld", psz);
}

static void test_vcpu(void)
{
	long up0 = HYPERVISOR_vcpu_op(VCPUOP_is_up, 0, NULL);
	long up1 = HYPERVISOR_vcpu_op(VCPUOP_is_up, 1, NULL);
	long upbig = HYPERVISOR_vcpu_op(VCPUOP_is_up, 100000, NULL);
	printk("vcpu: is_up(0)=%ld is_up(1)=%ld is_up(100000)=%ld\n", up0, up1, upbig);
	if (up0 != 1)
		xtf_failure("vCPU 0 is running this and must be up");
	if (upbig != -XEN_ENOENT)
		xtf_failure("is_up(100000) = %ld, want -ENOENT", upbig);
}

/* enosys: what xenresume does not implement answers -ENOSYS. */
static void test_enosys(void)
{
	long a = hypercall3(__HYPERVISOR_dm_op, 0, 0, 0);
	long b = hypercall3(127, 0, 0, 0);
	long c = HYPERVISOR_sched_op(99, NULL);
	long d = HYPERVISOR_xen_version(99, NULL);
	printk("enosys: dm_op=%ld hypercall127=%ld sched_op99=%ld xen_version99=%ld\n", a, b, c, d);
	if (a != -XEN_ENOSYS || b != -XEN_ENOSYS || c != -XEN_ENOSYS || d != -XEN_ENOSYS)
		xtf_failure("unimplemented calls must return -ENOSYS");
}

static void test_hypercall_loop(void)
{
	unsigned long n = cmdline_ulong("n", 1000), bad = 0;
	long want = HYPERVISOR_xen_version(XENVER_version, NULL);

	printk("loop: start n=%lu\n", n);
	for (unsigned long i = 0; i < n; i++)
		if (HYPERVISOR_xen_version(XENVER_version, NULL) != want)
			bad++;
	printk("loop: end\n");
	if (bad)
		xtf_failure("%lu calls returned a different version", bad);
}

extern void bare_exit_loop(unsigned long n);

/* A PV kernel may do port I/O only once its virtual IOPL allows it (at
 * CPL 3 every in/out faults and Xen emulates it under the virtual IOPL):
 * raise it to 1, the guest kernel's virtual CPL, as a driver that needs
 * port I/O would. Returns 0 on success. */
static int bare_exit_setup(void)
{
	struct physdev_set_iopl iopl = { .iopl = 1 };
	long ret = HYPERVISOR_physdev_op(PHYSDEVOP_set_iopl, &iopl);

	if (ret)
		xtf_error("PHYSDEVOP_set_iopl: %ld", ret);
	return ret != 0;
}

static void test_bare_loop(void)
{
	unsigned long n = cmdline_ulong("n", 1000);
	if (bare_exit_setup())
		return;
	printk("loop: start n=%lu\n", n);
	bare_exit_loop(n);
	printk("loop: end\n");
}

static inline unsigned long rdtsc(void)
{
	unsigned int lo, hi;
	asm volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi));
	return ((unsigned long)hi << 32) | lo;
}

/* exit-cost n=N: N bare exits and N cheap hypercalls, interleaved in chunks
 * of 100 and timed with the TSC, so that host noise hits both alike. */
static void test_exit_cost(void)
{
	unsigned long n = cmdline_ulong("n", 10000), bare = 0, hc = 0;
	long want = HYPERVISOR_xen_version(XENVER_version, NULL);

	if (bare_exit_setup())
		return;
	for (unsigned long done = 0; done < n; done += 100) {
		unsigned long t0 = rdtsc();
		bare_exit_loop(100);
		unsigned long t1 = rdtsc();
		for (int i = 0; i < 100; i++)
			if (HYPERVISOR_xen_version(XENVER_version, NULL) != want)
				xtf_failure("xen_version changed");
		unsigned long t2 = rdtsc();
		bare += t1 - t0;
		hc += t2 - t1;
	}
	printk("exit-cost: n=%lu bare_tsc=%lu hypercall_tsc=%lu ratio_x1000=%lu\n",
	       n, bare, hc, hc * 1000 / (bare ? bare : 1));
}

/* console-read: console_io is Xen's emergency console; a domU gets -EPERM
 * for reads and writes, as on a release Xen (a debug Xen lets a domU
 * write), and reads and writes its console through the console ring. */
static void test_console_read(void)
{
	char buf[64];
	long rd = HYPERVISOR_console_io(CONSOLEIO_read, sizeof(buf) - 1, buf);
	long wr = HYPERVISOR_console_io(CONSOLEIO_write, 4, "ping");
	printk("console-read: read rc=%ld write rc=%ld\n", rd, wr);
	if (rd != -XEN_EPERM || wr != -XEN_EPERM)
		xtf_failure("console_io for a domU: read %ld write %ld, want -EPERM", rd, wr);
}

/* clobber: which argument registers survive a hypercall. sched_op declares
 * two arguments, so a debug Xen (or xenresume --clobber-args) poisons %rdi
 * and %rsi but never %rdx, which is why %rdx can carry the start_info MFN. */
static void test_clobber(void)
{
	struct hypercall_regs r = { SCHEDOP_yield, 0x1111, 0x2222, 0x3333, 0x4444 };
	long ret = hypercall_regs(__HYPERVISOR_sched_op, &r);

	printk("clobber: ret=%ld rdi=%#lx rsi=%#lx rdx=%#lx r10=%#lx r8=%#lx\n",
	       ret, r.rdi, r.rsi, r.rdx, r.r10, r.r8);
	if (r.rdx != 0x2222 || r.r10 != 0x3333 || r.r8 != 0x4444)
		xtf_failure("registers beyond sched_op's two arguments changed");
}

/* hlt: a ring-3 kernel may not halt: hlt raises #GP(0), which Xen bounces
 * through the trap table; the handler moves past it and the scenario
 * checks it saw exactly that. With sti=1, the PV idle instead: events on,
 * SCHEDOP_block, which blocks the vCPU until an event or (here) a pause. */
static void test_hlt(void)
{
	if (cmdline_ulong("sti", 0)) {
		if (events_init()) {
			xtf_error("events_init");
			return;
		}
		printk("hlt: blocking with events enabled\n");
		/* Every port masked (the console's answers too), so only the
		 * host (a pause) takes the vCPU out of the block. */
		events_disable();
		for (int i = 0; i < NR_PORTS / 64; i++)
			shared->evtchn_mask[i] = ~0UL;
		shared->vcpu_info[0].evtchn_upcall_pending = 0;
		HYPERVISOR_sched_op(SCHEDOP_block, NULL);
		printk("hlt: woke up\n");
		return;
	}
	printk("hlt: halting in ring 3\n");
	trap_expect = 13, trap_skip = 1;
	asm volatile("hlt" ::: "memory");
	trap_expect = -1;
	printk("hlt: trap=%d error=%#lx\n", trap_seen, trap_error);
	if (trap_seen != 1 || trap_error != 0)
		xtf_failure("hlt in ring 3: %d #GP, error %#lx; want one #GP(0)", trap_seen, trap_error);
}

/* mmio: a PTE naming a frame outside the domain (guest-physical 0xf0000000
 * in the ring-0 container, unbacked) is refused: -EPERM, and nothing is
 * mapped. A negative control. */
static void test_mmio(void)
{
	long rc = map_machine_page((unsigned long)scratch_page, 0xf0000000UL);
	printk("mmio: mapping frame 0xf0000 rc=%ld\n", rc);
	if (rc != -XEN_EPERM)
		xtf_failure("mapping a frame outside the domain returned %ld, want -EPERM", rc);
}

#define CHECK(cond, ...) do { if (!(cond)) xtf_failure(__VA_ARGS__); } while (0)

/* evtchn: the 2-level event channel ABI end to end, and a round trip with
 * dom0 (the host test binds to the port this prints; without a peer the
 * scenario reports SKIP after 2 s). */
static void test_evtchn(void)
{
	evtchn_port_t a, b, c, d, e, bogus;
	evtchn_status_t st;
	long rc;

	if ((rc = events_init())) {
		xtf_error("events_init: %ld", rc);
		return;
	}
	/* Loopback interdomain: bind sets the new port pending. */
	CHECK(!evtchn_alloc_unbound(DOMID_SELF, &a), "alloc_unbound");
	CHECK(!evtchn_bind_interdomain(DOMID_SELF, a, &b), "bind_interdomain");
	CHECK(event_count[b] == 1, "bind did not signal the new port (%lu)", event_count[b]);
	CHECK(!evtchn_send(a), "send a");
	CHECK(event_count[b] == 2, "send on a: b got %lu", event_count[b]);
	CHECK(!evtchn_send(b), "send b");
	CHECK(event_count[a] == 1, "send on b: a got %lu", event_count[a]);
	/* IPI to ourselves. */
	evtchn_bind_ipi_t ipi = { .vcpu = 0 };
	CHECK(!HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &ipi), "bind_ipi");
	c = ipi.port;
	CHECK(!evtchn_send(c) && event_count[c] == 1, "ipi: %lu", event_count[c]);
	/* A masked port stays pending, without an upcall, until unmasked. */
	evtchn_mask(a);
	CHECK(!evtchn_send(b), "send b masked");
	CHECK(event_count[a] == 1 && evtchn_is_pending(a), "masked event delivered or lost");
	CHECK(!evtchn_poll(a, 0), "poll on a pending port");
	CHECK(!evtchn_unmask(a), "unmask");
	CHECK(event_count[a] == 2 && !evtchn_is_pending(a), "unmask did not deliver (%lu)", event_count[a]);
	/* Status, then close: the peer goes back to unbound. */
	CHECK(!evtchn_status(a, &st) && st.status == EVTCHNSTAT_interdomain &&
	      st.u.interdomain.port == b, "status a: %u", st.status);
	CHECK(!evtchn_close(b), "close b");
	CHECK(!evtchn_status(a, &st) && st.status == EVTCHNSTAT_unbound, "a after close: %u", st.status);
	CHECK(evtchn_send(b) == -XEN_EINVAL, "send on a closed port");
	CHECK(evtchn_send(4000) == -XEN_EINVAL, "send on port 4000");
	CHECK(!evtchn_send(a), "send on an unbound port is dropped, not an error");
	/* VIRQs bind once per vCPU. */
	evtchn_bind_virq_t virq = { .virq = VIRQ_DEBUG, .vcpu = 0 };
	CHECK(!HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &virq), "bind_virq");
	d = virq.port;
	CHECK(HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &virq) == -XEN_EEXIST, "second bind_virq");
	CHECK(!evtchn_status(d, &st) && st.status == EVTCHNSTAT_virq && st.u.virq == VIRQ_DEBUG, "virq status");
	virq.virq = 99;
	CHECK(HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &virq) == -XEN_EINVAL, "bind_virq 99");
	/* What an unprivileged guest may not do. */
	evtchn_alloc_unbound_t other = { .dom = 7, .remote_dom = 0 };
	CHECK(HYPERVISOR_event_channel_op(EVTCHNOP_alloc_unbound, &other) == -XEN_EPERM, "alloc for another domain");
	CHECK(evtchn_bind_interdomain(0, 1, &bogus) == -XEN_EINVAL, "bind to dom0's port 1");
	CHECK(HYPERVISOR_event_channel_op(EVTCHNOP_send, (void *)0x0000100000000000UL) == -XEN_EFAULT, "bad pointer");
	CHECK(HYPERVISOR_event_channel_op(99, &st) == -XEN_ENOSYS, "unknown op");
	/* update_va_mapping takes machine frames: a PFN is refused. */
	unsigned long pfn = virt_to_pfn(start_info);
	CHECK(map_machine_page((unsigned long)scratch_page, pfn << 12) == -XEN_EPERM, "a PFN was mapped as an MFN");
	CHECK(!map_machine_page((unsigned long)scratch_page, pfn_to_mfn(pfn) << 12) &&
	      !strcmp(((start_info_t *)scratch_page)->magic, "xen-3.0-x86_64"), "mapping by MFN");
	/* A non-canonical event callback is refused. */
	struct callback_register cb = { .type = CALLBACKTYPE_event, .address = 0x8000000000000000UL };
	CHECK(HYPERVISOR_callback_op(CALLBACKOP_register, &cb) == -XEN_EINVAL, "non-canonical callback accepted");
	/* A poll with a deadline in the past returns. */
	evtchn_mask(a);
	CHECK(!evtchn_poll(a, 1), "poll with an expired deadline");

	/* dom0: it binds to e and sends; we answer on e. */
	CHECK(!evtchn_alloc_unbound(0, &e), "alloc for dom0");
	printk("evtchn: host-port=%u\n", e);
	/* Nothing binds it under a plain `runvm run`: say so, never hang. */
	uint64_t deadline = system_time() + 2000000000ULL;
	while (!event_count[e] && system_time() < deadline)
		evtchn_poll(e, deadline);
	if (!event_count[e]) {
		xtf_skip("no dom0 peer bound port %u within 2 s: the round trip needs one "
			 "(the Go test TestEventChannels binds it; runvm run does not)", e);
		return;
	}
	CHECK(!evtchn_send(e), "send to dom0");
	printk("evtchn-ports: a=%u b=%u c=%u d=%u e=%u\n", a, b, c, d, e);
	printk("evtchn-events: a=%lu b=%lu c=%lu e=%lu\n",
	       event_count[a], event_count[b], event_count[c], event_count[e]);
}

static long singleshot(uint64_t deadline, uint32_t flags)
{
	struct vcpu_set_singleshot_timer st = { .timeout_abs_ns = deadline, .flags = flags };
	return HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &st);
}

/* timer: system time from vcpu_time_info, the wallclock, and VIRQ_TIMER
 * from the single-shot timer. */
static void test_timer(void)
{
	if (events_init()) {
		xtf_error("events_init");
		return;
	}
	evtchn_bind_virq_t bv = { .virq = VIRQ_TIMER, .vcpu = 0 };
	if (HYPERVISOR_event_channel_op(EVTCHNOP_bind_virq, &bv)) {
		xtf_error("bind VIRQ_TIMER");
		return;
	}
	evtchn_port_t tp = bv.port;
	uint64_t t0 = system_time(), last = t0;
	printk("timer: now=%lu wallclock=%u\n", (unsigned long)t0, shared->wc_sec);
	for (int i = 0; i < 10000; i++) {
		uint64_t t = system_time();
		CHECK(t >= last, "system time went backwards: %lu after %lu", (unsigned long)t, (unsigned long)last);
		last = t;
	}
	/* A deadline in the past with VCPU_SSHOTTMR_future is refused. */
	CHECK(singleshot(t0, VCPU_SSHOTTMR_future) == -XEN_ETIME, "past deadline accepted");
	/* Fire after 5 ms. */
	unsigned long before = event_count[tp];
	t0 = system_time();
	CHECK(!singleshot(t0 + 5000000, VCPU_SSHOTTMR_future), "singleshot");
	wait_until(event_count[tp] != before);
	uint64_t elapsed = system_time() - t0;
	CHECK(elapsed >= 5000000 && elapsed < 1000000000UL, "timer fired after %lu ns", (unsigned long)elapsed);
	/* A stopped timer does not fire; the next one does, once. */
	before = event_count[tp];
	CHECK(!singleshot(system_time() + 1000000, 0), "singleshot 2");
	CHECK(!HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL), "stop");
	t0 = system_time();
	CHECK(!hypercall2(__HYPERVISOR_set_timer_op, t0 + 20000000, 0), "set_timer_op");
	wait_until(event_count[tp] != before);
	uint64_t e2 = system_time() - t0;
	CHECK(e2 >= 20000000 && event_count[tp] == before + 1, "stopped timer fired (%lu ns, %lu events)",
	      (unsigned long)e2, event_count[tp] - before);
	CHECK(HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 1, NULL) == -XEN_ENOENT, "timer on vCPU 1");
	printk("timer: fired-after-ns=%lu stopped-then-rearmed-ns=%lu\n", (unsigned long)elapsed, (unsigned long)e2);
}

/* xs-bench n=N: N xenstore READs through the ring, interleaved with N
 * requests xenstored answers without touching the store (an unsupported
 * type: ENOSYS), timed with system time. */
static void test_xs_bench(void)
{
	unsigned long n = cmdline_ulong("n", 1000), read_ns = 0, null_ns = 0;
	char buf[64];
	if (events_init() || xs_init()) {
		xtf_error("setup");
		return;
	}
	for (unsigned long done = 0; done < n; done += 100) {
		uint64_t t0 = system_time();
		for (int i = 0; i < 100; i++)
			if (xs_read(0, "control/shutdown", buf, sizeof(buf)) < 0)
				xtf_failure("read");
		uint64_t t1 = system_time();
		for (int i = 0; i < 100; i++)
			if (xs_null() != -XEN_ENOSYS)
				xtf_failure("null request");
		uint64_t t2 = system_time();
		read_ns += t1 - t0;
		null_ns += t2 - t1;
	}
	printk("xs-bench: n=%lu read_ns=%lu null_ns=%lu\n", n, read_ns, null_ns);
}

/* console-ring: write through the PV console ring (xencons_interface) and
 * its event channel, as a kernel's hvc/xencons driver does. */
static void test_console_ring(void)
{
	if (events_init()) {
		xtf_error("events_init");
		return;
	}
	unsigned long pfn = mfn_to_pfn(start_info->console.domU.mfn);
	if (pfn == ~0UL) {
		xtf_error("console MFN not in the P2M");
		return;
	}
	struct xencons_interface *c = (struct xencons_interface *)(VIRT_BASE + (pfn << 12));
	evtchn_port_t port = start_info->console.domU.evtchn;
	const char *msg = "console-ring: hello through the ring\n";
	for (int rep = 0; rep < 200; rep++) { /* wraps the 2 KiB ring many times */
		for (const char *p = msg; *p; p++) {
			wait_until(c->out_prod - c->out_cons < sizeof(c->out));
			c->out[MASK_XENCONS_IDX(c->out_prod, c->out)] = *p;
			__atomic_store_n(&c->out_prod, c->out_prod + 1, __ATOMIC_RELEASE);
			if (c->out_prod - c->out_cons == sizeof(c->out))
				evtchn_send(port);
		}
		evtchn_send(port);
	}
}

static void test_fail(void)
{
	xtf_failure("deliberate failure (negative control)");
}

void test_blkfront(void), test_blkfront_outside(void), test_smp(void);
void test_suspend_reject(void), test_suspend_noshutdown(void);
void test_console_seq(void);

/* idle: a long-running guest for interactive use: it works, and obeys
 * suspend (either resume), poweroff and reboot requests. */
static void test_idle(void)
{
	printk("idle: waiting for control/shutdown requests\n");
	test_suspend();
}

struct scenario {
	const char *name;
	const char *what;
	void (*run)(void);
};

const struct scenario scenarios[] = {
	{ "hello", "print a greeting", test_hello },
	{ "startinfo", "echo start_info and the entry registers", test_startinfo },
	{ "shutdown", "SCHEDOP_shutdown with reason=NAME (rdx=pfn: wrong %rdx)", test_shutdown },
	{ "bad-pointer", "bad guest pointers get -EFAULT", test_bad_pointer },
	{ "unhandled-fault", "clear the trap table and fault: the domain crashes", test_unhandled_fault },
	{ "triple-fault", "the old name of unhandled-fault", test_unhandled_fault },
	{ "exception", "divide by zero; the guest's handler crashes it", test_exception },
	{ "version", "xen_version queries", test_version },
	{ "vcpu", "VCPUOP_is_up", test_vcpu },
	{ "enosys", "unimplemented hypercalls", test_enosys },
	{ "hypercall-loop", "n=N cheap hypercalls (benchmark)", test_hypercall_loop },
	{ "bare-loop", "n=N bare port-I/O exits (benchmark baseline)", test_bare_loop },
	{ "exit-cost", "n=N bare exits and hypercalls interleaved, TSC-timed", test_exit_cost },
	{ "console-read", "console_io read and write are -EPERM for a domU", test_console_read },
	{ "clobber", "which argument registers a hypercall clobbers", test_clobber },
	{ "hlt", "hlt in ring 3 is #GP through the trap table (sti=1: SCHEDOP_block)", test_hlt },
	{ "mmio", "mapping a frame outside the domain is -EPERM", test_mmio },
	{ "evtchn", "event channels end to end, and with dom0", test_evtchn },
	{ "suspend", "the suspend protocol, cycles=N times", test_suspend },
	{ "idle", "run until asked to suspend, power off or reboot", test_idle },
	{ "suspend-reject", "never acknowledge a suspend request", test_suspend_reject },
	{ "suspend-noshutdown", "acknowledge, then never suspend", test_suspend_noshutdown },
	{ "timer", "system time, wallclock, single-shot timer and VIRQ_TIMER", test_timer },
	{ "xs-bench", "n=N xenstore reads vs null requests over the ring", test_xs_bench },
	{ "console-ring", "write through the PV console ring", test_console_ring },
	{ "blkfront", "write a pattern to the vbd and read it back (cycles=N: across suspends)", test_blkfront },
	{ "blkfront-outside", "writes past the disk's end get BLKIF_RSP_ERROR (negative control)", test_blkfront_outside },
	{ "smp", "secondaries up, a hash chain each, down and up again (cycles=N: across suspends; disk=1: blkfront beside them; ipi=1: per-vCPU events)", test_smp },
	{ "console-seq", "numbered lines around cycles=N suspends (stale=1: keep the old console port)", test_console_seq },
	{ "fail", "always fails (negative control)", test_fail },
	{ NULL, NULL, NULL },
};
