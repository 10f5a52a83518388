/* argv: open PATH | unlink PATH | rename OLD NEW | link OLD NEW — one io_uring request (no
 * liburing); exits with the errno of a failed request */
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct io_uring_params p;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	char *sq, *cq;
	unsigned *tail;
	int fd, res;

	memset(&p, 0, sizeof(p));
	fd = syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0) {
		perror("io_uring_setup");
		return 2;
	}
	sq = mmap(0, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
	cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(*cqe), PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
	sqe = mmap(0, p.sq_entries * sizeof(*sqe), PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
	memset(sqe, 0, sizeof(*sqe));
	sqe->fd = AT_FDCWD;
	sqe->addr = (unsigned long)argv[2];
	if (!strcmp(argv[1], "open")) {
		sqe->opcode = IORING_OP_OPENAT;
		sqe->open_flags = O_WRONLY | O_CREAT;
		sqe->len = 0644;
	} else if (!strcmp(argv[1], "unlink")) {
		sqe->opcode = IORING_OP_UNLINKAT;
	} else {
		sqe->opcode = !strcmp(argv[1], "rename") ? IORING_OP_RENAMEAT : IORING_OP_LINKAT;
		sqe->len = AT_FDCWD;
		sqe->addr2 = (unsigned long)argv[3];
	}
	((unsigned *)(sq + p.sq_off.array))[0] = 0;
	tail = (unsigned *)(sq + p.sq_off.tail);
	__atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) {
		perror("io_uring_enter");
		return 2;
	}
	cqe = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	res = cqe[*(unsigned *)(cq + p.cq_off.head) & *(unsigned *)(cq + p.cq_off.ring_mask)].res;
	if (res < 0) {
		fprintf(stderr, "%s: %s\n", argv[1], strerror(-res));
		return -res; /* the errno */
	}
	if (!strcmp(argv[1], "open") && write(res, "x", 1) != 1)
		return 1;
	return 0;
}
