/*
 * hvm.c: the stub's HVM/PVH build: where a PV-aware HVM guest finds what
 * a PV guest has in start_info, and its scenarios (the result line is
 * result.c's, shared with the PV build).
 *
 * The PV build's console (lib.c), event channels (evtchn.c) and xenstore
 * client (xs.c) are reused unchanged: this layer fills a start_info of
 * its own from the HVM params (HVMOP_get_param: the console and xenstore
 * rings' frames and ports), with frames = guest-physical frames (an HVM
 * guest has no P2M of its own) and the image identity-mapped (VIRT_BASE
 * 0). Where PV and HVM differ (xen-hvm-pvh.md §4-§6):
 *   - the hypercall page is written by the hypervisor when the guest
 *     writes the MSR that CPUID leaf base+2 names;
 *   - shared_info is placed with XENMEM_add_to_physmap at a frame of the
 *     guest's choosing;
 *   - events arrive through the callback vector (HVM_PARAM_CALLBACK_IRQ
 *     type 2), an interrupt through the stub's own IDT, not a PV
 *     callback; evtchn_upcall_mask means nothing, EFLAGS.IF masks;
 *   - the command line is hvm_start_info's (PVH); a type = "hvm" domain
 *     gets none from the builder, as on Xen, and the stub reads
 *     data/cmdline from its xenstore home instead (`xenstore-write` it
 *     while the domain is created paused);
 *   - a suspend is SCHEDOP_shutdown(SHUTDOWN_suspend) with no start_info.
 */
#include <stdarg.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/errno.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/event_channel.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include "evtchn.h"
#include "guest.h"
#include "hvm.h"
#include "hypercall.h"
#include "lib.h"
#include "xs.h"

/* What the shared PV code expects of its environment. */
static start_info_t hvm_si;
start_info_t *start_info = &hvm_si;
char shared_page[4096] __attribute__((aligned(4096)));

unsigned long pfn_to_mfn(unsigned long pfn) { return pfn; }
unsigned long mfn_to_pfn(unsigned long mfn) { return mfn; }
int smp_this_cpu(void) { return 0; }

/* An HVM guest maps nothing through Xen; events_init (the PV way to
 * shared_info) is not used here. */
long map_machine_page(unsigned long va, unsigned long maddr)
{
	return -XEN_ENOSYS;
}

static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
	return hypercall2(__HYPERVISOR_memory_op, cmd, (long)arg);
}

/* The IDT: exceptions 0-31 report and crash; the callback vector runs
 * the 2-level upcall (evtchn.c). */
struct gate {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, rsvd;
};
static struct gate idt[256] __attribute__((aligned(16)));
struct {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed)) hvm_idt_desc;
extern char hvm_exception_stubs[], hvm_upcall_entry[];

static void set_gate(int v, void *handler)
{
	unsigned long a = (unsigned long)handler;
	idt[v] = (struct gate){ .off0 = a, .sel = HVM_CS64, .type = 0x8e, /* P, DPL 0, interrupt gate */
		.off1 = a >> 16, .off2 = a >> 32 };
}

static void setup_idt(void)
{
	for (int v = 0; v < 32; v++)
		set_gate(v, hvm_exception_stubs + v * 16);
	set_gate(HVM_CALLBACK_VECTOR, hvm_upcall_entry);
	hvm_idt_desc.limit = sizeof(idt) - 1;
	hvm_idt_desc.base = (unsigned long)idt;
	asm volatile("lidt %0" ::"m"(hvm_idt_desc));
}

struct hvm_frame {
	unsigned long r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	unsigned long vector, error, rip, cs, rflags, rsp, ss;
};

void hvm_trap(struct hvm_frame *f)
{
	unsigned long cr2;
	asm volatile("mov %%cr2, %0" : "=r"(cr2));
	printk("Guest exception %lu at rip %#lx err %#lx cr2 %#lx rsp %#lx\n",
	       f->vector, f->rip, f->error, cr2, f->rsp);
	xtf_error("unexpected exception %lu at %#lx", f->vector, f->rip);
	xtf_exit();
}

static inline void sti(void) { asm volatile("sti" ::: "memory"); }
static inline void cli(void) { asm volatile("cli" ::: "memory"); }

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	asm volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* The hypercall page: Xen's leaves are found by their signature in the
 * hypervisor range (every 0x100, as Linux's xen_cpuid_base looks); leaf
 * base+2 names the MSR and the page count. Returns 0 or -1 (not on Xen). */
static int setup_hypercall_page(void)
{
	for (uint32_t base = 0x40000000; base < 0x40010000; base += 0x100) {
		uint32_t a, b, c, d;
		cpuid(base, &a, &b, &c, &d);
		if (b != 0x566e6558 || c != 0x65584d4d || d != 0x4d4d566e || a < base + 2)
			continue; /* "XenVMMXenVMM" */
		cpuid(base + 2, &a, &b, &c, &d);
		if (a < 1)
			return -1;
		unsigned long pa = (unsigned long)hypercall_page;
		asm volatile("wrmsr" ::"c"(b), "a"((uint32_t)pa), "d"((uint32_t)(pa >> 32)));
		return 0;
	}
	return -1;
}

static long param_get(uint32_t idx, uint64_t *v)
{
	struct xen_hvm_param p = { .domid = DOMID_SELF, .index = idx };
	long rc = HYPERVISOR_hvm_op(HVMOP_get_param, &p);
	*v = rc ? 0 : p.value;
	return rc;
}

static long param_set(uint32_t idx, uint64_t v)
{
	struct xen_hvm_param p = { .domid = DOMID_SELF, .index = idx, .value = v };
	return HYPERVISOR_hvm_op(HVMOP_set_param, &p);
}

/* Xen's system time in ns (HVMOP_get_time), for bounded waits. */
static uint64_t now_ns(void)
{
	struct xen_hvm_get_time t = { 0 };
	if (HYPERVISOR_hvm_op(HVMOP_get_time, &t))
		return 0;
	return t.now;
}

/* The rings' frames and ports, from the params, into start_info, where
 * the console and the xenstore client look. A new domain has new ports
 * (the frames are in the stream). */
static void read_params(void)
{
	uint64_t v;
	param_get(HVM_PARAM_CONSOLE_PFN, &v);
	hvm_si.console.domU.mfn = v;
	param_get(HVM_PARAM_CONSOLE_EVTCHN, &v);
	hvm_si.console.domU.evtchn = v;
	param_get(HVM_PARAM_STORE_PFN, &v);
	hvm_si.store_mfn = v;
	param_get(HVM_PARAM_STORE_EVTCHN, &v);
	hvm_si.store_evtchn = v;
}

/* The stub's own IPI port, whose events prove delivery. */
static evtchn_port_t ipi_port;

static long bind_ipi(evtchn_port_t *port)
{
	struct evtchn_bind_ipi op = { .vcpu = 0 };
	long rc = HYPERVISOR_event_channel_op(EVTCHNOP_bind_ipi, &op);
	*port = op.port;
	return rc;
}

/* connect does what a PV-aware HVM guest does at boot, and again after a
 * resume in a new domain (xen-hvm-pvh.md §6.5-6.6): shared_info at the
 * same frame, the callback vector (unless callback is 0: the negative
 * control), the ports read again, every port masked but its own IPI port,
 * and the xenstore connection. Returns 0 or a negative errno. */
static long connect(int callback)
{
	struct xen_add_to_physmap xatp = {
		.domid = DOMID_SELF, .space = XENMAPSPACE_shared_info, .idx = 0,
		.gpfn = (unsigned long)shared_page >> 12,
	};
	long rc = HYPERVISOR_memory_op(XENMEM_add_to_physmap, &xatp);
	if (rc) {
		printk("hvm: XENMEM_add_to_physmap(shared_info): %ld\n", rc);
		return rc;
	}
	shared = (shared_info_t *)shared_page;
	for (int i = 0; i < NR_PORTS / 64; i++)
		shared->evtchn_mask[i] = ~0UL;
	if (callback) {
		rc = param_set(HVM_PARAM_CALLBACK_IRQ, (2ULL << 56) | HVM_CALLBACK_VECTOR);
		if (rc) {
			printk("hvm: HVM_PARAM_CALLBACK_IRQ: %ld\n", rc);
			return rc;
		}
	}
	read_params();
	if ((rc = bind_ipi(&ipi_port)) || (rc = evtchn_unmask(ipi_port))) {
		printk("hvm: IPI port: %ld\n", rc);
		return rc;
	}
	if (hvm_si.store_evtchn && xs_init())
		return -XEN_EINVAL;
	return 0;
}

/* events_flow sends on the IPI port and waits, interrupts on, until the
 * upcall counted it or timeout_ms passed. Returns 1 when it arrived. */
static int events_flow(unsigned long timeout_ms)
{
	unsigned long before = event_count[ipi_port];
	uint64_t deadline = now_ns() + timeout_ms * 1000000ULL;
	evtchn_send(ipi_port);
	sti();
	while (event_count[ipi_port] == before && now_ns() < deadline)
		HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
	return event_count[ipi_port] != before;
}

#define EVENT_TIMEOUT_MS 2000

/* test=pvhvm-suspend: PVHVM suspend and resume (claim 10). The stub
 * watches control/shutdown; "suspend" is acked by emptying the node and
 * answered with SCHEDOP_shutdown(SHUTDOWN_suspend), no start_info. On 1
 * (a cancelled, fast resume) it keeps everything; on 0 (a slow resume or
 * one in a new domain) it redoes connect(). Each cycle ends with a
 * xenstore round trip and an event through the callback vector, bounded:
 * skip-callback=1 does not set the vector again, and its first resume in
 * a new domain ends with FAILURE saying no event arrived. "poweroff"
 * ends the scenario with its result. */
static void test_pvhvm_suspend(void)
{
	int skip = cmdline_ulong("skip-callback", 0) != 0;
	char path[128], val[64];

	if (!hvm_si.store_evtchn) {
		xtf_error("no xenstore (HVM_PARAM_STORE_EVTCHN 0)");
		return;
	}
	if (!events_flow(EVENT_TIMEOUT_MS)) {
		xtf_error("no event through the callback vector at boot");
		return;
	}
	if (xs_watch("control/shutdown", "ctl")) {
		xtf_error("cannot watch control/shutdown");
		return;
	}
	for (unsigned long cycle = 1;; cycle++) {
		printk("pvhvm: ready cycle=%lu\n", cycle);
		for (;;) {
			xs_wait_watch("ctl", path, sizeof(path));
			if (xs_read(0, "control/shutdown", val, sizeof(val)) > 0)
				break;
		}
		xs_write(0, "control/shutdown", ""); /* the ack, as Linux's */
		if (!strcmp(val, "poweroff"))
			return;
		if (strcmp(val, "suspend")) {
			printk("pvhvm: control/shutdown = \"%s\" ignored\n", val);
			continue;
		}
		cli();
		struct sched_shutdown sd = { .reason = SHUTDOWN_suspend };
		long rc = HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
		if (rc != 0 && rc != 1) {
			xtf_error("SCHEDOP_shutdown(SHUTDOWN_suspend) returned %ld", rc);
			return;
		}
		if (rc == 0) {
			long err = connect(!skip);
			if (err) {
				xtf_error("setup after the resume: %ld", err);
				return;
			}
			int w = xs_watch("control/shutdown", "ctl"); /* lost in a new domain */
			if (w && w != -XEN_EEXIST) {
				xtf_error("cannot watch control/shutdown again: %d", w);
				return;
			}
		}
		printk("pvhvm: resumed cycle=%lu rc=%ld (%s)\n", cycle, rc,
		       rc ? "cancelled: same domain, all kept" : "redid shared_info, callback vector, ports, xenstore");
		int n = xs_read(0, "domid", val, sizeof(val));
		if (n <= 0) {
			xtf_failure("no xenstore round trip after the resume (rc=%ld): %d", rc, n);
			return;
		}
		printk("pvhvm: xenstore round trip: domid=%s\n", val);
		if (!events_flow(EVENT_TIMEOUT_MS)) {
			xtf_failure("no event within %d ms after the resume (rc=%ld)%s", EVENT_TIMEOUT_MS, rc,
				    skip ? ": the callback vector was not set again (skip-callback=1)" : "");
			return;
		}
		printk("pvhvm: event through the callback vector after rc=%ld\n", rc);
	}
}

/* ACPI, found as ROMBIOS's s3_resume finds it: the RSDP in the BIOS area
 * (or at hvm_start_info's rsdp_paddr, which a PVH domain's builder sets
 * when it builds tables), the XSDT (or RSDT), the FADT. */
static int checksum_ok(const uint8_t *p, unsigned n)
{
	uint8_t s = 0;
	for (unsigned i = 0; i < n; i++)
		s += p[i];
	return s == 0;
}

static const uint8_t *find_rsdp(uint64_t hint)
{
	if (hint && hint < (1ULL << 32) && !memcmp((const void *)hint, "RSD PTR ", 8))
		return (const uint8_t *)hint;
	for (unsigned long a = 0xe0000; a < 0x100000; a += 16)
		if (!memcmp((const void *)a, "RSD PTR ", 8) && checksum_ok((const void *)a, 20))
			return (const uint8_t *)a;
	return NULL;
}

static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static const uint8_t *find_table(const uint8_t *rsdp, const char *sig)
{
	const uint8_t *sdt;
	int width;
	if (rsdp[15] >= 2 && rd64(rsdp + 24))
		sdt = (const uint8_t *)rd64(rsdp + 24), width = 8;
	else
		sdt = (const uint8_t *)(unsigned long)rd32(rsdp + 16), width = 4;
	uint32_t len = rd32(sdt + 4);
	if (len < 36 || len > 4096)
		return NULL;
	for (uint32_t off = 36; off + width <= len; off += width) {
		const uint8_t *t = (const uint8_t *)(width == 8 ? rd64(sdt + off) : rd32(sdt + off));
		if (t && !memcmp(t, sig, 4))
			return t;
	}
	return NULL;
}

/* The SLP_TYP of \_S3 from the DSDT's Name(\_S3_, Package(){a, ...})
 * (the root prefix optional): the first element as ZeroOp, OneOp or a
 * ByteConst. -1 if absent. */
static int s3_slp_typ(const uint8_t *dsdt)
{
	uint32_t len = rd32(dsdt + 4);
	for (uint32_t i = 36; i + 11 < len; i++) {
		const uint8_t *p = dsdt + i;
		if (p[0] != 0x08)
			continue;
		p += 1 + (p[1] == '\\');
		if (memcmp(p, "_S3_", 4) || p[4] != 0x12 || (p[5] & 0xc0))
			continue;
		const uint8_t *e = p + 7; /* after PkgLength (1 byte) and NumElements */
		switch (e[0]) {
		case 0x00: return 0;
		case 0x01: return 1;
		case 0x0a: return e[1];
		}
		return -1;
	}
	return -1;
}

extern char hvm_wake_start[], hvm_wake_end[];
long hvm_s3_sleep(unsigned int port, unsigned int value);

#define S3_PATTERN_WORDS (64 * 1024 / 8)
static uint64_t s3_pattern[S3_PATTERN_WORDS];

static uint64_t pattern_word(unsigned long i) { return 0x5a3c000000000000ULL ^ (i * 0x9e3779b97f4a7c15ULL); }

/* test=s3: ACPI S3 and back through the waking vector (claim 11). The
 * stub finds the FACS and PM1a_CNT through the FADT and \_S3's SLP_TYP in
 * the DSDT, copies its real-mode waking code below 1 MiB, sets the FACS
 * waking vector there (not with no-vector=1: the negative control, where
 * the firmware finds none and the VMM reports it), fills a buffer with a
 * pattern and enters S3 with SLP_TYP | SLP_EN. Woken (`runvm trigger DOM
 * s3resume`), its waking code returns to long mode, and it checks the
 * pattern, its console and an event through the callback vector (event
 * channels and params survive S3). */
static const struct hvm_start_info *hvm_start;

static void test_s3(void)
{
	int novector = cmdline_ulong("no-vector", 0) != 0;
	const uint8_t *rsdp = find_rsdp(hvm_start->rsdp_paddr), *fadt, *facs_p, *dsdt;

	if (!rsdp || !(fadt = find_table(rsdp, "FACP"))) {
		xtf_skip("no ACPI tables (a PVH domain has none here)");
		return;
	}
	uint32_t flen = rd32(fadt + 4);
	facs_p = (const uint8_t *)(flen >= 140 && rd64(fadt + 132) ? rd64(fadt + 132) : rd32(fadt + 36));
	dsdt = (const uint8_t *)(flen >= 148 && rd64(fadt + 140) ? rd64(fadt + 140) : rd32(fadt + 40));
	uint32_t pm1a_cnt = rd32(fadt + 64);
	if (!facs_p || memcmp(facs_p, "FACS", 4) || !dsdt || memcmp(dsdt, "DSDT", 4) || !pm1a_cnt) {
		xtf_error("FADT without FACS, DSDT or PM1a_CNT_BLK");
		return;
	}
	int typ = s3_slp_typ(dsdt);
	if (typ < 0) {
		xtf_skip("the DSDT has no \\_S3");
		return;
	}
	uint8_t *facs = (uint8_t *)facs_p;
	memcpy((void *)HVM_WAKE_ADDR, hvm_wake_start, hvm_wake_end - hvm_wake_start);
	uint32_t vector = novector ? 0 : HVM_WAKE_ADDR;
	memcpy(facs + 12, &vector, 4); /* firmware_waking_vector */
	memset(facs + 24, 0, 8);       /* x_firmware_waking_vector */
	for (unsigned long i = 0; i < S3_PATTERN_WORDS; i++)
		s3_pattern[i] = pattern_word(i);
	printk("s3: entering S3 (PM1a_CNT %#x, SLP_TYP %d, waking vector %#x)\n", pm1a_cnt, typ, vector);
	cli();
	long woke = hvm_s3_sleep(pm1a_cnt, (unsigned)typ << 10 | 1 << 13);
	if (!woke) {
		xtf_failure("the S3 write to PM1a_CNT returned without suspending");
		return;
	}
	printk("s3: woke through the waking vector %#x\n", vector);
	unsigned long bad = 0;
	for (unsigned long i = 0; i < S3_PATTERN_WORDS; i++)
		bad += s3_pattern[i] != pattern_word(i);
	if (bad) {
		xtf_failure("%lu of %u words of the pattern changed across S3", bad, S3_PATTERN_WORDS);
		return;
	}
	printk("s3: memory intact (%u bytes)\n", S3_PATTERN_WORDS * 8);
	/* Saved in S3 and restored, the guest wakes in a new domain (the S3
	 * state is not in Xen's stream), where CALLBACK_IRQ, shared_info's
	 * placement and the ports are gone: redo them, as after a resume in
	 * a new domain. In the same domain CALLBACK_IRQ is as it was. */
	uint64_t cb;
	if (param_get(HVM_PARAM_CALLBACK_IRQ, &cb) == 0 && cb == 0) {
		long err = connect(1);
		if (err) {
			xtf_error("setup after waking in a new domain: %ld", err);
			return;
		}
		printk("s3: woke in a new domain (CALLBACK_IRQ 0): redid shared_info, callback vector, ports, xenstore\n");
	}
	if (!events_flow(EVENT_TIMEOUT_MS)) {
		xtf_failure("no event through the callback vector after S3");
		return;
	}
	printk("s3: event through the callback vector after S3\n");
}

static void test_hello(void)
{
	printk("Hello from the xenresume stub (HVM build)\n");
}

static const struct {
	const char *name;
	void (*run)(void);
} hvm_scenarios[] = {
	{ "hello", test_hello },
	{ "pvhvm-suspend", test_pvhvm_suspend },
	{ "s3", test_s3 },
	{ NULL, NULL },
};

void hvm_main(unsigned long si_pa)
{
	const struct hvm_start_info *si = (const struct hvm_start_info *)si_pa;
	char name[64];

	hvm_start = si;
	setup_idt();
	if (setup_hypercall_page())
		for (;;) /* not on Xen: nothing to report through */
			asm volatile("cli; hlt");
	read_params();
	console_init();
	if (si->magic != XEN_HVM_START_MAGIC_VALUE) {
		xtf_error("hvm_start_info magic %#x", si->magic);
		xtf_exit();
	}
	if (si->cmdline_paddr)
		snprintf((char *)hvm_si.cmd_line, sizeof(hvm_si.cmd_line), "%s", (const char *)si->cmdline_paddr);
	long rc = connect(1);
	if (rc) {
		xtf_error("cannot set up events: %ld", rc);
		xtf_exit();
	}
	sti();
	if (!si->cmdline_paddr && hvm_si.store_evtchn) {
		char line[sizeof(hvm_si.cmd_line)];
		if (xs_read(0, "data/cmdline", line, sizeof(line)) > 0)
			snprintf((char *)hvm_si.cmd_line, sizeof(hvm_si.cmd_line), "%s", line);
	}
	if (!cmdline_get("test", name, sizeof(name)))
		memcpy(name, "hello", 6);
	printk("--- xenresume stub (hvm): test=%s ---\n", name);
	for (int i = 0; hvm_scenarios[i].name; i++) {
		if (!strcmp(hvm_scenarios[i].name, name)) {
			hvm_scenarios[i].run();
			xtf_exit();
		}
	}
	xtf_error("unknown test '%s'", name);
	xtf_exit();
}
