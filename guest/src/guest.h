/* guest.h: the stub's global state and the XTF-style result API. */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdint.h>
#include <xen/xen.h>
#include "layout.h"

extern start_info_t *start_info;
extern unsigned long entry_rsi, entry_rsp;

/* P2M lookups through start_info->mfn_list (the guest's own P2M). */
unsigned long pfn_to_mfn(unsigned long pfn);
/* mfn_to_pfn searches the P2M; returns ~0UL for a frame not in it. */
unsigned long mfn_to_pfn(unsigned long mfn);
static inline unsigned long virt_to_pfn(const void *v)
{
	return ((unsigned long)v - VIRT_BASE) >> 12;
}

/* The result of the running scenario, printed once at the end as
 * "Test result: SUCCESS" (or FAILURE / ERROR / SKIP with a reason). */
void xtf_failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void xtf_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void xtf_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Print the result line and shut down: poweroff after SUCCESS and SKIP,
 * crash after FAILURE and ERROR (so `runvm run` exits non-zero). */
void __attribute__((noreturn)) xtf_exit(void);
/* Print the result line, then shut down with the given reason. */
void report_and_shutdown(unsigned int reason);
void __attribute__((noreturn)) shutdown(unsigned int reason);

/* A trap a scenario expects: trap() counts it in trap_seen and resumes
 * the guest skip bytes past the faulting instruction instead of crashing. */
extern volatile int trap_expect, trap_seen;
extern volatile unsigned long trap_skip, trap_error;

/* Map the machine address maddr (flags P|RW) at va, a page of the stub's
 * own, with update_va_mapping; 0 unmaps. Returns 0 or a negative errno. */
long map_machine_page(unsigned long va, unsigned long maddr);
/* Pages in .bss that scenarios remap (the original frame is lost). */
extern char shared_page[4096], scratch_page[4096];

/* A PV driver that takes part in test_suspend's cycles (blkfront.c):
 * start runs once events and xenstore are up (nonzero: give up); quiesce
 * after a request is acknowledged, before the suspend (what it leaves in
 * flight is the point); resume after the suspend returned rc, once
 * events, xenstore and watches are back. */
struct suspend_driver {
	int (*start)(void);
	void (*quiesce)(unsigned long cycle);
	void (*resume)(unsigned long cycle, long rc);
};
extern const struct suspend_driver *suspend_driver;
/* blkfront.c's driver and its closing report, which smp.c's disk=1 runs
 * alongside the secondaries. */
extern const struct suspend_driver blk_driver;
void blkfront_report(void);
void test_suspend(void);

#endif
