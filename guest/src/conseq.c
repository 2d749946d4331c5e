/*
 * conseq.c: the console-seq scenario. The guest numbers every line it
 * prints ("cseq N") in bursts: at start, between acknowledging each
 * suspend request and suspending, and right after each resume. A console
 * backend that loses or repeats output across a checkpoint, a resume or
 * a restore into a new domain shows as a missing or repeated number.
 *
 * stale=1 is the negative control: after a resume in a new domain the
 * guest puts its old domain's console port back into start_info, as a
 * driver that never rebinds would, and then prints for ever. Its output
 * stops reaching the backend (the ring fills and the guest spins
 * signalling a port that is not the console's); the toolstack must say
 * so rather than wait.
 */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/event_channel.h>
#include "guest.h"
#include "lib.h"

static unsigned long seq, lines;
static evtchn_port_t first_port;
static int stale;

static void burst(void)
{
	for (unsigned long i = 0; i < lines; i++)
		printk("cseq %lu\n", seq++);
}

static int seq_start(void)
{
	first_port = start_info->console.domU.evtchn;
	burst();
	return 0;
}

static void seq_quiesce(unsigned long cycle)
{
	burst();
}

static void seq_resume(unsigned long cycle, long rc)
{
	if (stale && rc == 0) {
		start_info->console.domU.evtchn = first_port;
		for (;;)
			burst();
	}
	burst();
}

static const struct suspend_driver seq_driver = {
	.start = seq_start, .quiesce = seq_quiesce, .resume = seq_resume,
};

/* console-seq [lines=N] [cycles=N] [stale=1] */
void test_console_seq(void)
{
	lines = cmdline_ulong("lines", 50);
	stale = cmdline_ulong("stale", 0);
	suspend_driver = &seq_driver;
	test_suspend();
	printk("console-seq: last=%lu lines=%lu\n", seq, lines);
}
