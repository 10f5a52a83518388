/*
 * argv: operation, path[, new path] — the file operation through int $0x80 from a 64-bit
 * process (built static and non-PIE: its buffers have 32-bit addresses); exits with the errno
 */
#include <string.h>
static char a[4096], b[4096];
static long sys32(long nr, long x, long y, long z)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(x), "c"(y), "d"(z) : "memory");
	return ret;
}
int main(int argc, char **argv)
{
	const char *op = argv[1];
	long r;

	strcpy(a, argv[2]);
	if (argc > 3)
		strcpy(b, argv[3]);
	r = !strcmp(op, "open")	 ? sys32(5, (long)a, 01 | 0100, 0644)
	  : !strcmp(op, "creat")	? sys32(8, (long)a, 0644, 0)
	  : !strcmp(op, "unlink")   ? sys32(10, (long)a, 0, 0)
	  : !strcmp(op, "rename")   ? sys32(38, (long)a, (long)b, 0)
	  : !strcmp(op, "chmod")	? sys32(15, (long)a, 0755, 0)
	  : !strcmp(op, "truncate") ? sys32(92, (long)a, 0, 0)
	  : -1000;
	return r < 0 ? (int)-r : 0; /* the errno */
}
