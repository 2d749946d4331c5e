/*
 * main.c: boot, start_info checks, the XTF-style result, and the scenario
 * table. A scenario is chosen with "test=NAME" on the start_info command line.
 */
#include <stdarg.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include "guest.h"
#include "hypercall.h"
#include "lib.h"

start_info_t *start_info;
unsigned long entry_rsi, entry_rsp;

enum result { RESULT_SUCCESS, RESULT_SKIP, RESULT_ERROR, RESULT_FAILURE };
static const char *const result_names[] = { "SUCCESS", "SKIP", "ERROR", "FAILURE" };
static enum result result = RESULT_SUCCESS;
static char reason[256];

static void set_result(enum result r, const char *fmt, va_list ap)
{
	/* The worst result wins; the first reason of that severity is kept. */
	if (r > result) {
		result = r;
		vsnprintf(reason, sizeof(reason), fmt, ap);
	}
}

void xtf_failure(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_result(RESULT_FAILURE, fmt, ap);
	va_end(ap);
	va_start(ap, fmt);
	char buf[256];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	printk("Failure: %s\n", buf);
}

void xtf_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_result(RESULT_ERROR, fmt, ap);
	va_end(ap);
}

void xtf_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	set_result(RESULT_SKIP, fmt, ap);
	va_end(ap);
}

void shutdown(unsigned int why)
{
	struct sched_shutdown sd = { .reason = why };
	HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
	/* Only a suspend returns; anything else that comes back is a bug. */
	printk("shutdown(%u) returned\n", why);
	for (;;)
		HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
}

static void print_result(void)
{
	if (result == RESULT_SUCCESS)
		printk("Test result: SUCCESS\n");
	else
		printk("Test result: %s: %s\n", result_names[result], reason);
}

void report_and_shutdown(unsigned int why)
{
	print_result();
	if (result >= RESULT_ERROR)
		shutdown(SHUTDOWN_crash);
	if (why != SHUTDOWN_suspend)
		shutdown(why);
}

void xtf_exit(void)
{
	report_and_shutdown(SHUTDOWN_poweroff);
	shutdown(SHUTDOWN_poweroff);
}

unsigned long pfn_to_mfn(unsigned long pfn)
{
	if (pfn >= start_info->nr_pages)
		return ~0UL;
	return ((unsigned long *)start_info->mfn_list)[pfn];
}

unsigned long mfn_to_pfn(unsigned long mfn)
{
	const unsigned long *p2m = (const unsigned long *)start_info->mfn_list;
	for (unsigned long pfn = 0; pfn < start_info->nr_pages; pfn++)
		if (p2m[pfn] == mfn)
			return pfn;
	return ~0UL;
}

/* The exception handler: a guest that faults says where and shuts down with
 * SHUTDOWN_crash, as a kernel's oops path would. */
struct trap_frame {
	unsigned long r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	unsigned long vector, error, rip, cs, rflags, rsp, ss;
};

void trap(struct trap_frame *f)
{
	unsigned long cr2;
	asm volatile("mov %%cr2, %0" : "=r"(cr2));
	printk("Guest exception %lu at rip %#lx err %#lx cr2 %#lx rsp %#lx\n",
	       f->vector, f->rip, f->error, cr2, f->rsp);
	xtf_error("unexpected exception %lu at %#lx", f->vector, f->rip);
	xtf_exit();
}

struct idt_entry {
	uint16_t off0, sel;
	uint8_t ist, type;
	uint16_t off1;
	uint32_t off2, rsvd;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
extern char exception_stubs[];

void set_idt_entry(int v, void *handler)
{
	uint16_t cs;
	unsigned long a = (unsigned long)handler;
	asm volatile("mov %%cs, %0" : "=r"(cs));
	idt[v] = (struct idt_entry){
		.off0 = a & 0xffff, .sel = cs, .type = 0x8e,
		.off1 = (a >> 16) & 0xffff, .off2 = a >> 32,
	};
}

static void setup_idt(void)
{
	for (int v = 0; v < 32; v++)
		set_idt_entry(v, exception_stubs + v * 16);
	struct { uint16_t lim; uint64_t base; } __attribute__((packed)) d = {
		sizeof(idt) - 1, (uint64_t)idt,
	};
	asm volatile("lidt %0" : : "m"(d));
}

/* Scenarios live in tests.c. */
struct scenario {
	const char *name;
	const char *what;
	void (*run)(void);
};
extern const struct scenario scenarios[];

void xen_main(start_info_t *si, unsigned long rsi, unsigned long rsp)
{
	char name[64];

	start_info = si;
	entry_rsi = rsi;
	entry_rsp = rsp;
	setup_idt();

	if (strcmp(si->magic, "xen-3.0-x86_64")) {
		/* Cannot trust anything else in start_info; say so and stop. */
		printk("bad start_info magic\n");
		xtf_error("start_info magic is not xen-3.0-x86_64");
		xtf_exit();
	}
	if (!cmdline_get("test", name, sizeof(name)))
		memcpy(name, "hello", 6);

	printk("--- xenresume stub: test=%s ---\n", name);
	for (const struct scenario *s = scenarios; s->name; s++) {
		if (!strcmp(s->name, name)) {
			s->run();
			xtf_exit();
		}
	}
	xtf_error("unknown test '%s'", name);
	xtf_exit();
}
