/* lib.h: the few freestanding helpers the stub needs. */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
const char *strstr(const char *h, const char *n);
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* printk writes to the PV console ring (start_info's console page and
 * event channel), as a domU's console driver does: on a release Xen, and
 * here, console_io is -EPERM for a domU. console_init finds the ring;
 * before it, printk falls back to console_io, which only the VMM's debug
 * log sees. */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void console_init(void);
void console_write(const char *s, int n);

/* Command-line parsing: cmdline_get("test", buf, size) for "test=NAME". */
int cmdline_get(const char *key, char *val, size_t size);
unsigned long cmdline_ulong(const char *key, unsigned long dflt);

#endif
