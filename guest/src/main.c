/*
 * main.c: boot, start_info checks and the scenario table (the XTF-style
 * result is result.c's). A scenario is chosen with "test=NAME" on the start_info command line.
 */
#include <stdarg.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include <xen/callback.h>
#include "evtchn.h"
#include "guest.h"
#include "hypercall.h"
#include "lib.h"

start_info_t *start_info;
unsigned long entry_rsi, entry_rsp;

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
 * SHUTDOWN_crash, as a kernel's oops path would, unless the scenario
 * expects the trap. Xen keeps CR2 for a ring-3 kernel in vcpu_info. */
struct trap_frame {
	unsigned long r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	unsigned long vector, error, rip, cs, rflags, rsp, ss;
};

volatile int trap_expect = -1, trap_seen;
volatile unsigned long trap_skip, trap_error;

void trap(struct trap_frame *f)
{
	if ((int)f->vector == trap_expect) {
		trap_seen++;
		trap_error = f->error;
		f->rip += trap_skip;
		return;
	}
	unsigned long cr2 = shared ? shared->vcpu_info[0].arch.cr2 : 0;
	printk("Guest exception %lu at rip %#lx err %#lx cr2 %#lx rsp %#lx\n",
	       f->vector, f->rip, f->error, cr2, f->rsp);
	xtf_error("unexpected exception %lu at %#lx", f->vector, f->rip);
	xtf_exit();
}

void failsafe(void)
{
	printk("Guest failsafe callback\n");
	xtf_error("failsafe callback");
	xtf_exit();
}

/* The trap table: vectors 0-31 to the stubs in head.S, kernel CS (Xen
 * makes its RPL 3), DPL 0 (int $n from user mode faults) except #BP and
 * #OF, which user mode may raise, as Linux's and XTF's tables have it. */
extern char exception_stubs[], upcall_entry[], failsafe_entry[];
struct trap_info trap_table[33]; /* smp.c gives it to the secondaries */

static void setup_traps(void)
{
	for (int v = 0; v < 32; v++)
		trap_table[v] = (struct trap_info){
			.vector = v, .flags = (v == 3 || v == 4) ? 3 : 0,
			.cs = FLAT_KERNEL_CS, .address = (unsigned long)(exception_stubs + v * 16),
		};
	if (HYPERVISOR_set_trap_table(trap_table))
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &(struct sched_shutdown){ SHUTDOWN_crash });
	struct callback_register ev = {
		.type = CALLBACKTYPE_event, .address = (unsigned long)upcall_entry,
	}, fs = {
		.type = CALLBACKTYPE_failsafe, .address = (unsigned long)failsafe_entry,
	};
	if (HYPERVISOR_callback_op(CALLBACKOP_register, &ev) ||
	    HYPERVISOR_callback_op(CALLBACKOP_register, &fs))
		HYPERVISOR_sched_op(SCHEDOP_shutdown, &(struct sched_shutdown){ SHUTDOWN_crash });
}

char shared_page[4096] __attribute__((aligned(4096)));
char scratch_page[4096] __attribute__((aligned(4096)));

long map_machine_page(unsigned long va, unsigned long maddr)
{
	return HYPERVISOR_update_va_mapping(va, maddr ? maddr | 3 : 0, UVMF_INVLPG);
}

/* Page-table entry bits and the frame in an entry. */
#define PTE_RO 0x21UL /* P|A */
#define PTE_RW 0x23UL /* P|RW|A */
#define PTE_TABLE 0x67UL /* P|RW|U|A|D, as the builder writes them */
#define PTE_FRAME(e) (((e) & 0x000ffffffffff000UL) >> 12)

/* The virtual address of the table an entry points to; ~0UL if its frame
 * is not ours. */
static unsigned long *table_of(unsigned long e)
{
	unsigned long pfn = mfn_to_pfn(PTE_FRAME(e));
	return pfn == ~0UL ? NULL : (unsigned long *)(VIRT_BASE + (pfn << 12));
}

/* map_ram maps the RAM past the builder's start-of-day region at
 * VIRT_BASE + (pfn << 12), as a PV kernel extends its initial mapping:
 * for each 2 MiB not mapped yet, its first frame becomes its L1 table
 * (after a new L2's, when it starts a GiB that has none), filled and
 * hooked in by one mmu_update; the table frames are mapped read-only, as
 * Xen requires of page-table pages. Frames past the builder's region are
 * still zero at boot. */
static mmu_update_t ram_req[513];

static void map_ram(void)
{
	unsigned long nr = start_info->nr_pages;
	unsigned long *l4 = (unsigned long *)start_info->pt_base;
	unsigned long *l3 = NULL, *l2 = NULL;
	int fresh_l2 = 0;

	for (unsigned long pfn = 0; pfn < nr; pfn += 512) {
		unsigned long va = VIRT_BASE + (pfn << 12);
		unsigned long next = pfn; /* the first frame not a table */
		if (!l3 && !(l3 = table_of(l4[(va >> 39) & 511])))
			goto fail;
		unsigned long *l3e = &l3[(va >> 30) & 511];
		if (!((va >> 21) & 511) || !l2) {
			if (!(*l3e & 1)) {
				mmu_update_t u = {
					.ptr = (pfn_to_mfn(virt_to_pfn(l3)) << 12) + ((unsigned long)l3e & 0xfff),
					.val = pfn_to_mfn(next) << 12 | PTE_TABLE,
				};
				if (HYPERVISOR_mmu_update(&u, 1, NULL, DOMID_SELF))
					goto fail;
				l2 = (unsigned long *)(VIRT_BASE + (next << 12));
				next++;
				fresh_l2 = 1;
			} else if (!(l2 = table_of(*l3e))) {
				goto fail;
			} else {
				fresh_l2 = 0;
			}
		}
		unsigned long l2i = (va >> 21) & 511;
		if (!fresh_l2 && (l2[l2i] & 1))
			continue;
		unsigned long l1pfn = next++, l1 = pfn_to_mfn(l1pfn) << 12;
		for (unsigned long i = 0; i < 512; i++)
			ram_req[i] = (mmu_update_t){
				.ptr = l1 + i * 8,
				.val = pfn_to_mfn(pfn + i) << 12 | (pfn + i < next ? PTE_RO : PTE_RW),
			};
		ram_req[512] = (mmu_update_t){
			.ptr = (pfn_to_mfn(virt_to_pfn(l2)) << 12) + l2i * 8, .val = l1 | PTE_TABLE,
		};
		long rc = HYPERVISOR_mmu_update(ram_req, 513, NULL, DOMID_SELF);
		if (rc) {
			printk("map_ram: pfn %#lx: mmu_update %ld\n", pfn, rc);
			goto fail;
		}
		fresh_l2 = 0;
	}
	return;
fail:
	xtf_error("cannot map RAM past the start-of-day region");
	xtf_exit();
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
	setup_traps();

	if (strcmp(si->magic, "xen-3.0-x86_64")) {
		/* Cannot trust anything else in start_info; say so and stop. */
		printk("bad start_info magic\n");
		xtf_error("start_info magic is not xen-3.0-x86_64");
		xtf_exit();
	}
	console_init();
	map_ram();
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
