/*
 * result.c: the XTF-style result both builds of the stub end with, one
 * line: "Test result: SUCCESS", or FAILURE / ERROR / SKIP with a reason,
 * then the shutdown that goes with it.
 */
#include <stdarg.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/sched.h>
#include "guest.h"
#include "hypercall.h"
#include "lib.h"

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

