/* lib.c: string functions, a small vsnprintf, printk, command-line access. */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/io/console.h>
#include "lib.h"
#include "hypercall.h"
#include "guest.h"
#include "evtchn.h"

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

const char *strstr(const char *h, const char *n)
{
	size_t len = strlen(n);
	for (; *h; h++)
		if (!strncmp(h, n, len))
			return h;
	return len ? NULL : h;
}

void *memcpy(void *d, const void *s, size_t n)
{
	char *dp = d;
	const char *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

void *memset(void *d, int c, size_t n)
{
	char *dp = d;
	while (n--)
		*dp++ = (char)c;
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *ap = a, *bp = b;
	for (; n; n--, ap++, bp++)
		if (*ap != *bp)
			return *ap - *bp;
	return 0;
}

struct out {
	char *buf;
	size_t size, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct out *o, unsigned long v, int base, int width, char pad, int neg)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	while (width-- > n)
		put(o, pad);
	while (n)
		put(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '#') {
			put(&o, '0');
			put(&o, 'x');
			fmt++;
		}
		if (*fmt == '0')
			pad = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l')
			lng = 1, fmt++;
		switch (*fmt) {
		case 'd': {
			long v = lng ? va_arg(ap, long) : va_arg(ap, int);
			put_num(&o, v < 0 ? -(unsigned long)v : (unsigned long)v, 10, width, pad, v < 0);
			break;
		}
		case 'u':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 10, width, pad, 0);
			break;
		case 'x':
			put_num(&o, lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, width, pad, 0);
			break;
		case 'p':
			put(&o, '0');
			put(&o, 'x');
			put_num(&o, (unsigned long)va_arg(ap, void *), 16, width, pad, 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			while (*s)
				put(&o, *s++);
			break;
		}
		case 'c':
			put(&o, (char)va_arg(ap, int));
			break;
		case '%':
			put(&o, '%');
			break;
		default:
			put(&o, '?');
			break;
		}
	}
	if (o.size)
		o.buf[o.len < o.size ? o.len : o.size - 1] = '\0';
	return (int)o.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

void printk(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	console_write(buf, n);
}

/* The console ring, found once: its frame keeps its PFN across a suspend
 * and a restore (start_info's MFN field holds a PFN while suspending), and
 * the port is read from start_info at each write, since a new domain has a
 * new one. */
static struct xencons_interface *cons;

void console_init(void)
{
	unsigned long pfn = mfn_to_pfn(start_info->console.domU.mfn);
	if (pfn != ~0UL)
		cons = (struct xencons_interface *)(VIRT_BASE + (pfn << 12));
}

void console_write(const char *s, int n)
{
	if (!cons) {
		HYPERVISOR_console_io(CONSOLEIO_write, n, s);
		return;
	}
	evtchn_port_t port = start_info->console.domU.evtchn;
	for (int i = 0; i < n; i++) {
		/* Full: let the backend drain it (it reads on our signal). */
		while (cons->out_prod - __atomic_load_n(&cons->out_cons, __ATOMIC_ACQUIRE) >= (XENCONS_RING_IDX)sizeof(cons->out)) {
			evtchn_send(port);
			HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
		}
		cons->out[MASK_XENCONS_IDX(cons->out_prod, cons->out)] = s[i];
		__atomic_store_n(&cons->out_prod, cons->out_prod + 1, __ATOMIC_RELEASE);
	}
	evtchn_send(port);
}

/* cmdline_get finds "key=value" in start_info's command line; words are
 * separated by spaces. Returns 1 and copies value when found. */
int cmdline_get(const char *key, char *val, size_t size)
{
	const char *p = (const char *)start_info->cmd_line;
	size_t klen = strlen(key);

	while (*p) {
		while (*p == ' ')
			p++;
		const char *word = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - word) > klen && !strncmp(word, key, klen) && word[klen] == '=') {
			size_t n = p - word - klen - 1;
			if (n >= size)
				n = size - 1;
			memcpy(val, word + klen + 1, n);
			val[n] = '\0';
			return 1;
		}
	}
	return 0;
}

unsigned long cmdline_ulong(const char *key, unsigned long dflt)
{
	char buf[32];
	unsigned long v = 0;
	const char *p = buf;
	int base = 10;

	if (!cmdline_get(key, buf, sizeof(buf)))
		return dflt;
	if (p[0] == '0' && p[1] == 'x')
		base = 16, p += 2;
	for (; *p; p++) {
		int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else
			return dflt;
		v = v * base + d;
	}
	return v;
}
