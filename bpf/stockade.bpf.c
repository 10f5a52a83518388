// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stockade kill-mode programs: the sched_process_{exec,fork,exit} tracepoints
 * (lib/common_progs.h, shared with the other modes) and the file-operation
 * syscalls (lib/file.h decides and reports). Decisions
 * are made from the policy maps (see docs/kernel.md); only operations with
 * actions produce a record; `block` is SIGKILL. cgroup_mkdir/rmdir report
 * cgroup v2 directories (lib/common_progs.h, shared with the other modes).
 */
#include "common_progs.h"
#include "file.h"
#include "process.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ------------------------------------------------------ process programs */

/* exec, fork and exit: lib/common_progs.h */

/*
 * A program's code can run without an exec of it: the loader (`ld.so PROGRAM`) maps it
 * PROT_EXEC. Such a mapping of a file other than the executable is decided as an exec of
 * that file (its path, its name), but only a BLOCK acts — every shared library is mapped
 * so. The SIGKILL lands before the mapping returns to user space: no code of it runs.
 */
SEC("tracepoint/syscalls/sys_enter_mmap")
int stk_mmap_exec(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct file *f, *exe;

	if (!(ctx->args[2] & PROT_EXEC))
		return 0;
	f = fd_file((__s64)ctx->args[4]);
	if (!f)
		return 0;
	exe = task->mm ? task->mm->exe_file : NULL;
	if (exe && BPF_CORE_READ(exe, f_inode) == BPF_CORE_READ(f, f_inode))
		return 0;
	return handle_process(ctx, STK_HOOK_EXEC_MAPPED, NULL, f,
			      (const char *)BPF_CORE_READ(f, f_path.dentry, d_name.name), PROC_MAPPED);
}


/* --------------------------------------------------------- file programs */

/* a file syscall's arguments, from its sys_enter to its sys_exit */
struct call {
	__u64 args[5];
	__u32 hook; /* 0: nothing stashed */
	__u32 extra; /* open flags (open family), old mode (fchmod), 1: strings saved (path-string calls) */
};

/*
 * Per thread: the call, and the listed cgroup and masks its sys_enter found, which its
 * sys_exit reuses instead of looking them up again unless stk_control.seq moved since
 * (a cgroup's masks changed, or the active slot flipped: then it looks them up afresh).
 */
struct inflight {
	struct call call;
	__u64 cgid;
	__u32 slot;
	__u32 seq;
	struct stk_cgroup_val cg;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct inflight);
} stk_inflight SEC(".maps");

/*
 * A path-string syscall's strings as they were at its sys_enter (per thread): the kernel
 * copies them right after, so these are what it most likely used; sys_exit decides them
 * and compares them with the strings then — another thread may have changed them in
 * between (a difference: both decided, flagged path_swapped, counted).
 */
struct saved_strs {
	char s[2][STK_PATH_REC_MAX + 1]; /* [0] the name (a rename's or link's new one), [1] the old name */
	__s32 len[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct saved_strs);
} stk_saved_strs SEC(".maps");

/* a path-string syscall's (dirfd, string) arguments: the name, and a rename's or link's old name */
static __always_inline int string_args(__u32 hook, __u64 *args, struct path_src *name,
				       struct path_src *old)
{
	switch (hook) {
	case STK_HOOK_UNLINK:
	case STK_HOOK_TRUNCATE:
	case STK_HOOK_CHMOD:
	case STK_HOOK_MKNOD:
		name->upath = args[0];
		return 1;
	case STK_HOOK_UNLINKAT:
	case STK_HOOK_FCHMODAT:
	case STK_HOOK_FCHMODAT2:
	case STK_HOOK_MKNODAT:
		name->dirfd = (__s32)args[0];
		name->upath = args[1];
		return 1;
	case STK_HOOK_RENAME:
	case STK_HOOK_LINK:
		name->upath = args[1];
		old->upath = args[0];
		return 1;
	case STK_HOOK_RENAMEAT:
	case STK_HOOK_RENAMEAT2:
	case STK_HOOK_LINKAT:
		name->dirfd = (__s32)args[2];
		name->upath = args[3];
		old->dirfd = (__s32)args[0];
		old->upath = args[1];
		return 1;
	}
	return 0;
}

/* a map value's address as a plain integer (6.1 refuses pointers as global-function args) */
static __always_inline __u64 plain(const void *p)
{
	__u64 u = 0;

	bpf_probe_read_kernel(&u, sizeof(u), &p);
	return u;
}

/* sys_enter: a copy of the strings (0: none could be kept; sys_exit then reads them) */
static __always_inline __u32 save_strings(__u32 hook, __u64 *args)
{
	struct path_src name = {}, old = {};
	struct saved_strs *ss;

	if (!string_args(hook, args, &name, &old))
		return 0;
	ss = bpf_task_storage_get(&stk_saved_strs, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!ss) {
		stat_inc(STK_STAT_INFLIGHT_FAIL);
		return 0;
	}
	ss->len[0] = bpf_probe_read_user_str(ss->s[0], STK_PATH_REC_MAX, (void *)name.upath);
	ss->len[1] = old.upath ?
		bpf_probe_read_user_str(ss->s[1], STK_PATH_REC_MAX, (void *)old.upath) : 0;
	return 1;
}

/* does the user string at sys_exit differ from the one saved at sys_enter? */
struct cmp_ctx {
	__u64 saved;
	__u32 len;
	__u32 differ;
};

static long cmp_cb(__u32 i, void *data)
{
	struct cmp_ctx *c = data;
	struct pathbuf *pb;
	__u32 one = 1, off = (i * 8) & (PB_END - 8), rest;
	__u64 a, b = 0, keep = ~0ull;

	pb = bpf_map_lookup_elem(&stk_pathbufs, &one);
	if (!pb || off >= c->len)
		return 1;
	a = *(__u64 *)&pb->b[off];
	bpf_probe_read_kernel(&b, sizeof(b), (void *)(c->saved + off));
	rest = c->len - off;
	if (rest < 8)
		keep = (1ull << (rest * 8)) - 1; /* bytes past the string's end: whatever was there */
	if ((a ^ b) & keep) {
		c->differ = 1;
		return 1;
	}
	return 0;
}

static __always_inline int string_changed(__u64 upath, char *saved, __s32 saved_len)
{
	struct cmp_ctx c = { .saved = (__u64)saved };
	struct pathbuf *pb;
	__u32 one = 1;
	long n;

	pb = bpf_map_lookup_elem(&stk_pathbufs, &one);
	if (!pb || saved_len < 1)
		return 0;
	n = bpf_probe_read_user_str(pb->b, STK_PATH_REC_MAX, (void *)upath);
	if (n != saved_len)
		return 1;
	c.len = n;
	bpf_loop(((__u32)n + 7) / 8, cmp_cb, &c, 0);
	return c.differ;
}

/* a syscall's entry: stash the arguments of a call that can be a file operation of a listed cgroup */
static __always_inline int stash(__u32 hook, __u64 *args)
{
	struct inflight *v;
	struct entry e;
	__u32 extra = 0;

	switch (hook) {
	case STK_HOOK_OPEN:
		extra = args[1];
		break;
	case STK_HOOK_OPENAT:
		extra = args[2];
		break;
	case STK_HOOK_OPENAT2: {
		__u64 f = 0;

		bpf_probe_read_user(&f, sizeof(f), (void *)args[2]); /* open_how.flags */
		extra = f;
		break;
	}
	case STK_HOOK_CREAT:
		extra = O_CREAT | O_WRONLY | O_TRUNC;
		break;
	case STK_HOOK_UNLINKAT:
		if (args[2] & AT_REMOVEDIR)
			return 0;
		break;
	}
	if (hook <= STK_HOOK_CREAT && (extra & O_ACCMODE) == 0 && !(extra & (O_CREAT | O_TRUNC)))
		return 0; /* read-only open */
	if (!enter(&e))
		return 0;
	/*
	 * A container without file selectors: no operation can be a candidate (stk_candidates
	 * ANDs this mask), so nothing to stash. Masks changed while the syscall runs
	 * (KillSensor.set_cgroup) apply from its next syscall; for a stashed call, from its
	 * sys_exit (stk_control.seq).
	 */
	if (mask_zero(&e.cg->part[STK_PART_FILE]))
		return 0;
	if (hook == STK_HOOK_FCHMOD) {
		struct file *f = fd_file((__s64)args[0]);

		if (!f)
			return 0;
		extra = BPF_CORE_READ(f, f_inode, i_mode);
	}
	v = bpf_task_storage_get(&stk_inflight, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!v) {
		stat_inc(STK_STAT_INFLIGHT_FAIL);
		return 0;
	}
	__builtin_memcpy(v->call.args, args, sizeof(v->call.args));
	if (hook >= STK_HOOK_UNLINK)
		extra = hook == STK_HOOK_FCHMOD ? extra : save_strings(hook, args);
	v->call.extra = extra;
	v->call.hook = hook;
	v->cgid = e.cgid;
	v->slot = e.slot;
	v->seq = e.seq;
	/* the exit decides file operations only: the process part stays as created (zero) */
	__builtin_memcpy(&v->cg.part[STK_PART_FILE], &e.cg->part[STK_PART_FILE],
			 sizeof(v->cg.part[STK_PART_FILE]));
	return 0;
}

/*
 * Attached to every syscalls/sys_enter_* of interest, with the syscall's
 * STK_HOOK_* as the attachment's BPF cookie (syscall numbers differ between
 * architectures; the cookie doesn't).
 */
SEC("tracepoint/syscalls/sys_enter_openat")
int stk_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 hook = bpf_get_attach_cookie(ctx);
	__u64 args[5];

	if (hook < STK_HOOK_OPEN || hook > STK_HOOK_MKNODAT)
		return 0;
	/*
	 * One copy of the five argument slots: the context of a syscall with
	 * fewer arguments is shorter, and a program that reads past it directly
	 * is refused at attach.
	 */
	bpf_probe_read_kernel(args, sizeof(args), (void *)ctx + offsetof(typeof(*ctx), args));
	return stash(hook, args);
}

static __always_inline int has_prefix(const char *s, const char *p, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (s[i] != p[i])
			return 0;
	return 1;
}

/* "/proc/PID/fd/" where PID is the caller's process or thread: where N starts (0: not so) */
static __always_inline __u32 own_pid_fd(const char *s)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = 0, i;
	char c;

	for (i = 0; i < 8; i++) {
		c = s[(6 + i) & 31];
		if (c < '0' || c > '9')
			break;
		pid = pid * 10 + (c - '0');
	}
	if (!i || (pid != id >> 32 && pid != (__u32)id))
		return 0;
	if (s[(6 + i) & 31] != '/' || s[(7 + i) & 31] != 'f' || s[(8 + i) & 31] != 'd' ||
	    s[(9 + i) & 31] != '/')
		return 0;
	return 10 + i;
}

/*
 * The open file a path string names without a path (chmod, truncate follow it): "" (only
 * accepted with AT_EMPTY_PATH: the dirfd itself), or procfs' magic links "/proc/self/fd/N",
 * "/proc/thread-self/fd/N", "/dev/fd/N", "/proc/PID/fd/N" (PID: the caller's). NULL: a
 * plain path.
 */
static __always_inline struct file *string_file(__u64 upath, __s64 dirfd, __u32 kstr, char *s)
{
	__u32 start, i;
	__s64 fd = 0;
	char c;

	if ((kstr ? bpf_probe_read_kernel_str(s, 32, (void *)upath) :
		    bpf_probe_read_user_str(s, 32, (void *)upath)) < 1)
		return NULL;
	if (!s[0])
		return fd_file(dirfd);
	if (has_prefix(s, "/proc/self/fd/", 14))
		start = 14;
	else if (has_prefix(s, "/dev/fd/", 8))
		start = 8;
	else if (has_prefix(s, "/proc/thread-self/fd/", 21))
		start = 21;
	else if (has_prefix(s, "/proc/", 6))
		start = own_pid_fd(s);
	else
		return NULL;
	if (!start)
		return NULL;
	for (i = 0; i < 8; i++) {
		c = s[(start + i) & 31];
		if (!c)
			break;
		if (c < '0' || c > '9')
			return NULL;
		fd = fd * 10 + (c - '0');
	}
	return i && !s[(start + i) & 31] ? fd_file(fd) : NULL;
}

/* a syscall exit's decisions (here, not on the stack: the stack is short) */
struct finish_state {
	struct path_src srcs[2]; /* the name, a rename's or link's old name */
	__u64 upath[2];          /* the strings' addresses in the caller's memory */
	__u32 ops[2];            /* each name's operations (0: none) */
	char head[32];           /* string_file's look at a string */
	__u32 unknown_exe;       /* a rename or link by path: the file's x bits are unknown */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct finish_state);
} stk_finish SEC(".maps");

/*
 * A path-string syscall's exit (it succeeded): what to decide — the name (srcs[0], ops[0]),
 * a rename's or link's old name (srcs[1], ops[1]: the link's as modifyFile of the file
 * linked), from the strings saved at sys_enter (upath: the strings' addresses, to read them
 * again: a string that differs now is flagged swapped). 0: nothing.
 */
static __always_inline int string_ops(struct call *v, struct path_src *srcs, __u32 *opv,
				      __u64 *upath, __u32 *flagsp, __u32 *modep, char *head,
				      __u32 *unknown_exe)
{
	struct path_src *name = &srcs[0], *old = &srcs[1];
	struct saved_strs *ss = NULL;
	struct file *f = NULL;
	__u32 ops = 0, old_ops = 0, mode = 0, flags = 0;
	int moves = 0;

	if (!string_args(v->hook, v->args, name, old))
		return 0;
	switch (v->hook) {
	case STK_HOOK_UNLINK:
	case STK_HOOK_UNLINKAT:
		if (v->hook == STK_HOOK_UNLINKAT)
			flags = v->args[2];
		ops = 1u << STK_OP_DELETE_FILE;
		break;
	case STK_HOOK_TRUNCATE:
		ops = 1u << STK_OP_MODIFY_FILE;
		break;
	case STK_HOOK_RENAME:
	case STK_HOOK_RENAMEAT:
	case STK_HOOK_RENAMEAT2:
		flags = v->hook == STK_HOOK_RENAMEAT2 ? v->args[4] : 0;
		/* new name, or replacing a file: without a lookup we can't tell which */
		ops = 1u << STK_OP_CREATE_FILE | 1u << STK_OP_MODIFY_FILE | 1u << STK_OP_DELETE_FILE;
		/* the old name is gone (or, exchanged, replaced) */
		old_ops = flags & RENAME_EXCHANGE ? ops : 1u << STK_OP_DELETE_FILE;
		moves = 1; /* a directory moves the paths below it */
		break;
	case STK_HOOK_LINK:
	case STK_HOOK_LINKAT:
		flags = v->hook == STK_HOOK_LINKAT ? v->args[4] : 0;
		ops = 1u << STK_OP_CREATE_FILE;
		old_ops = 1u << STK_OP_MODIFY_FILE; /* the file linked: see deny_link */
		break;
	case STK_HOOK_CHMOD:
	case STK_HOOK_FCHMODAT:
	case STK_HOOK_FCHMODAT2:
	case STK_HOOK_MKNOD:
	case STK_HOOK_MKNODAT:
		mode = v->args[v->hook == STK_HOOK_CHMOD || v->hook == STK_HOOK_MKNOD ? 1 : 2];
		if (v->hook >= STK_HOOK_MKNOD) {
			if ((mode & S_IFMT) != 0 && (mode & S_IFMT) != S_IFREG)
				return 0;
			ops = 1u << STK_OP_CREATE_FILE;
		} else {
			ops = 1u << STK_OP_MODIFY_FILE;
		}
		if (mode & S_IXUGO)
			ops |= 1u << STK_OP_CREATE_EXECUTABLE;
		break;
	}
	upath[0] = name->upath;
	upath[1] = old->upath;
	if (v->extra) { /* saved at sys_enter (else read now, as they are) */
		ss = bpf_task_storage_get(&stk_saved_strs, bpf_get_current_task_btf(), 0, 0);
		if (ss) {
			name->upath = plain(ss->s[0]);
			old->upath = old->upath ? plain(ss->s[1]) : 0;
			name->kstr = old->kstr = 1;
			name->swapped = string_changed(upath[0], ss->s[0], ss->len[0]);
			old->swapped = old->upath && string_changed(upath[1], ss->s[1], ss->len[1]);
			if (name->swapped || old->swapped)
				stat_inc(STK_STAT_PATH_SWAPPED);
		}
	}
	/* chmod, truncate: through an fd named by "" or /proc/self/fd/N? */
	if (ops & (1u << STK_OP_MODIFY_FILE) && !(ops & (1u << STK_OP_DELETE_FILE)))
		f = string_file(name->upath, name->dirfd, name->kstr, head);
	else if (old_ops == 1u << STK_OP_MODIFY_FILE) /* a link of an fd's file */
		f = string_file(old->upath, old->dirfd, old->kstr, head);
	if (f) {
		struct path_src *fp = old_ops ? old : name;

		fp->dentry = (__u64)BPF_CORE_READ(f, f_path.dentry);
		fp->mnt = (__u64)BPF_CORE_READ(f, f_path.mnt);
		if (old_ops) { /* a link: the file's mode is known, so is createExecutable */
			mode = BPF_CORE_READ(f, f_inode, i_mode);
			if (mode & S_IXUGO) {
				ops |= 1u << STK_OP_CREATE_EXECUTABLE;
				old_ops |= 1u << STK_OP_MODIFY_EXECUTABLE;
			}
		}
	}
	name->moves = old->moves = moves;
	/* a rename's or link's new name: whether the file has an x bit is unknown by path */
	*unknown_exe = old_ops && !f;
	opv[0] = ops;
	opv[1] = old->upath ? old_ops : 0;
	*flagsp = flags;
	*modep = mode;
	return 1;
}

/*
 * The exit's entry: the listed cgroup and masks its sys_enter stashed while stk_control.seq
 * is what it was then (one array load instead of the cgroup id and a hash lookup), else
 * looked up afresh. The call is decided as the cgroup it was made in.
 */
static __always_inline int reenter(struct entry *e, struct inflight *vp)
{
	__u32 zero = 0;

	e->ctl = bpf_map_lookup_elem(&stk_control, &zero);
	if (!e->ctl)
		return 0;
	if (e->ctl->seq != vp->seq) {
		if (!enter(e))
			return 0;
		/*
		 * The fresh masks into the stash, so that e->cg points into task storage either
		 * way: the verifier then checks what follows once, not once per kind of pointer
		 * (twice made kill mode's load take 1.7 s instead of 0.8 s).
		 */
		__builtin_memcpy(&vp->cg.part[STK_PART_FILE], &e->cg->part[STK_PART_FILE],
				 sizeof(vp->cg.part[STK_PART_FILE]));
		e->cg = &vp->cg;
		return 1;
	}
	e->seq = vp->seq;
	e->slot = vp->slot & 1;
	e->cgid = vp->cgid;
	e->cg = &vp->cg;
	e->s = bpf_map_lookup_elem(&stk_scratch, &zero);
	return e->s != NULL;
}

/* a syscall's exit: decide and report what its entry stashed */
static __always_inline int finish(long ret)
{
	struct inflight *vp;
	struct finish_state *st;
	struct path_src *src, *p;
	struct entry e;
	struct call v;
	__u32 ops = 0, mode = 0, fmode = 0, flags = 0, zero = 0, j;
	int i;

	vp = bpf_task_storage_get(&stk_inflight, bpf_get_current_task_btf(), 0, 0);
	if (!vp || !vp->call.hook)
		return 0;
	__builtin_memcpy(&v, &vp->call, sizeof(v));
	vp->call.hook = 0;
	if (ret < 0)
		return 0;
	st = bpf_map_lookup_elem(&stk_finish, &zero);
	if (!st || !reenter(&e, vp))
		return 0;
	__builtin_memset(st, 0, sizeof(*st));
	st->srcs[0].dirfd = st->srcs[1].dirfd = AT_FDCWD;
	src = &st->srcs[0];

	switch (v.hook) {
	case STK_HOOK_OPEN:
	case STK_HOOK_OPENAT:
	case STK_HOOK_OPENAT2:
	case STK_HOOK_CREAT:
	case STK_HOOK_FCHMOD:
	case STK_HOOK_FTRUNCATE: {
		__s64 fd = v.hook <= STK_HOOK_CREAT ? ret : (__s64)v.args[0];
		struct file *f = fd_file(fd);
		struct inode *ino;

		if (!f)
			return 0;
		ino = KREAD(struct file, f, f_inode);
		mode = KREAD(struct inode, ino, i_mode);
		if ((mode & S_IFMT) != S_IFREG)
			return 0;
		fmode = KREAD(struct file, f, f_mode);
		src->dentry = (__u64)KREAD(struct file, f, f_path.dentry);
		src->mnt = (__u64)KREAD(struct file, f, f_path.mnt);
		if (v.hook <= STK_HOOK_CREAT) {
			flags = v.extra;
			if (fmode & FMODE_CREATED)
				ops = 1u << STK_OP_CREATE_FILE |
				      (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
			else
				ops = 1u << STK_OP_MODIFY_FILE |
				      (mode & S_IXUGO ? 1u << STK_OP_MODIFY_EXECUTABLE : 0);
		} else if (v.hook == STK_HOOK_FCHMOD) {
			__u32 old = v.extra, nmode = v.args[1];

			ops = 1u << STK_OP_MODIFY_FILE;
			if (old & S_IXUGO)
				ops |= 1u << STK_OP_MODIFY_EXECUTABLE;
			else if (nmode & S_IXUGO)
				ops |= 1u << STK_OP_CREATE_EXECUTABLE;
		} else {
			ops = 1u << STK_OP_MODIFY_FILE |
			      (mode & S_IXUGO ? 1u << STK_OP_MODIFY_EXECUTABLE : 0);
		}
		st->ops[0] = ops;
		break;
	}
	default:
		if (!string_ops(&v, st->srcs, st->ops, st->upath, &flags, &mode, st->head,
				&st->unknown_exe))
			return 0;
	}
	/* the names, then the strings that changed since sys_enter as they are now (fail
	 * closed: either may be what the kernel used); one call site, so the stack is one's */
#pragma clang loop unroll(disable)
	for (i = 0; i < 5; i++) {
		j = i > 2 ? i - 3 : i & 1; /* 0, 1: the names; 2: pending; 3, 4: the names now */
		p = &st->srcs[j];
		if (i == 2) { /* a name given to a file whose mode is unknown: user space reads it */
			if (st->unknown_exe)
				file_decide(&e, v.hook, 1u << STK_OP_CREATE_EXECUTABLE, flags, mode,
					    fmode, p, DECIDE_PENDING);
			continue;
		}
		if (!st->ops[j])
			continue;
		if (i > 2) {
			if (!p->swapped)
				continue;
			p->upath = st->upath[j];
			p->kstr = 0;
			p->dentry = p->mnt = 0;
		}
		if (file_decide_names(&e, v.hook, st->ops[j], flags, mode, fmode, p, 0) && !i)
			st->unknown_exe = 0; /* killed already: no need to read its mode */
	}
	return 0;
}

/* Attached to the matching syscalls/sys_exit_*. */
SEC("tracepoint/syscalls/sys_exit_openat")
int stk_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	return finish(ctx->ret);
}

/*
 * The 32-bit system-call ABI (int $0x80, sysenter; a 64-bit process may use it too): the
 * syscalls/ tracepoints never fire for these calls, so raw sys_enter/sys_exit programs
 * recognise them (the task's TS_COMPAT status) and map the i386 numbers to the same hooks.
 * Every syscall of the machine passes here; anything not compat returns after one load.
 * x86 only: arm64's AArch32 tasks are not covered (docs/kernel.md, "Attacks").
 */
#define TS_COMPAT 0x0002

static __always_inline int in_compat_syscall(void)
{
#ifdef __TARGET_ARCH_x86
	return bpf_get_current_task_btf()->thread_info.status & TS_COMPAT;
#else
	return 0;
#endif
}

static __always_inline __u32 compat_hook(long nr)
{
	switch (nr) { /* arch/x86/entry/syscalls/syscall_32.tbl */
	case 5: return STK_HOOK_OPEN;
	case 8: return STK_HOOK_CREAT;
	case 9: return STK_HOOK_LINK;
	case 10: return STK_HOOK_UNLINK;
	case 14: return STK_HOOK_MKNOD;
	case 15: return STK_HOOK_CHMOD;
	case 38: return STK_HOOK_RENAME;
	case 92: case 193: return STK_HOOK_TRUNCATE; /* truncate, truncate64 */
	case 93: case 194: return STK_HOOK_FTRUNCATE; /* ftruncate, ftruncate64 */
	case 94: return STK_HOOK_FCHMOD;
	case 295: return STK_HOOK_OPENAT;
	case 297: return STK_HOOK_MKNODAT;
	case 301: return STK_HOOK_UNLINKAT;
	case 302: return STK_HOOK_RENAMEAT;
	case 303: return STK_HOOK_LINKAT;
	case 306: return STK_HOOK_FCHMODAT;
	case 353: return STK_HOOK_RENAMEAT2;
	case 437: return STK_HOOK_OPENAT2;
	case 452: return STK_HOOK_FCHMODAT2;
	}
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(stk_compat_enter, struct pt_regs *regs, long id)
{
	__u32 hook;
	__u64 args[5];

	if (!in_compat_syscall())
		return 0;
	hook = compat_hook(id);
	if (!hook)
		return 0;
#ifdef __TARGET_ARCH_x86
	/* ebx, ecx, edx, esi, edi: 32-bit values (dirfds sign-extend where they are used) */
	args[0] = (__u32)regs->bx;
	args[1] = (__u32)regs->cx;
	args[2] = (__u32)regs->dx;
	args[3] = (__u32)regs->si;
	args[4] = (__u32)regs->di;
#endif
	return stash(hook, args);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(stk_compat_exit, struct pt_regs *regs, long ret)
{
	return in_compat_syscall() ? finish(ret) : 0;
}

/* ------------------------------------------------------------ io_uring */

/*
 * io_uring's file requests never pass the syscall tracepoints. Decided when submitted, in
 * the submitter (or its SQPOLL thread), from the request io_uring has prepared: the path
 * is the kernel's own copy (struct filename), so no other thread can change it after the
 * decision. The request may run at once (kill mode kills after, as for syscalls); its
 * result is not known here, so a request that will fail is decided too.
 */
SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(stk_uring_submit, struct io_kiocb *req)
{
	struct path_src src = { .kstr = 1 }, old = { .kstr = 1 };
	struct filename *name;
	struct entry e;
	__u32 ops, old_ops = 0, flags = 0, mode = 0, hook;
	int killed;
	void *cmd = (void *)req + bpf_core_field_offset(struct io_kiocb, cmd);

	switch (BPF_CORE_READ(req, opcode)) {
	case IORING_OP_OPENAT:
	case IORING_OP_OPENAT2: {
		struct io_open *o = cmd;

		flags = BPF_CORE_READ(o, how.flags);
		if ((flags & O_ACCMODE) == 0 && !(flags & (O_CREAT | O_TRUNC)))
			return 0; /* read-only open */
		mode = BPF_CORE_READ(o, how.mode);
		src.dirfd = BPF_CORE_READ(o, dfd);
		name = BPF_CORE_READ(o, filename);
		hook = STK_HOOK_IO_URING_OPENAT;
		/* a new file or an existing one: without a lookup we can't tell which */
		ops = 1u << STK_OP_MODIFY_FILE;
		if (flags & O_CREAT)
			ops |= 1u << STK_OP_CREATE_FILE |
			       (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
		break;
	}
	case IORING_OP_UNLINKAT: {
		struct io_unlink *u = cmd;

		flags = BPF_CORE_READ(u, flags);
		if (flags & AT_REMOVEDIR)
			return 0;
		src.dirfd = BPF_CORE_READ(u, dfd);
		name = BPF_CORE_READ(u, filename);
		hook = STK_HOOK_IO_URING_UNLINKAT;
		ops = 1u << STK_OP_DELETE_FILE;
		break;
	}
	case IORING_OP_RENAMEAT: {
		struct io_rename *r = cmd;

		flags = BPF_CORE_READ(r, flags);
		src.dirfd = BPF_CORE_READ(r, new_dfd);
		name = BPF_CORE_READ(r, newpath);
		old.dirfd = BPF_CORE_READ(r, old_dfd);
		old.upath = (__u64)BPF_CORE_READ(r, oldpath, name);
		src.moves = old.moves = 1;
		hook = STK_HOOK_IO_URING_RENAMEAT;
		ops = 1u << STK_OP_CREATE_FILE | 1u << STK_OP_MODIFY_FILE | 1u << STK_OP_DELETE_FILE;
		old_ops = flags & RENAME_EXCHANGE ? ops : 1u << STK_OP_DELETE_FILE;
		break;
	}
	case IORING_OP_LINKAT: {
		struct io_link *l = cmd;

		flags = BPF_CORE_READ(l, flags);
		src.dirfd = BPF_CORE_READ(l, new_dfd);
		name = BPF_CORE_READ(l, newpath);
		old.dirfd = BPF_CORE_READ(l, old_dfd);
		old.upath = (__u64)BPF_CORE_READ(l, oldpath, name);
		hook = STK_HOOK_IO_URING_LINKAT;
		ops = 1u << STK_OP_CREATE_FILE;
		old_ops = 1u << STK_OP_MODIFY_FILE; /* the file linked, as for the syscall */
		break;
	}
	default:
		return 0;
	}
	if (!name || !enter(&e))
		return 0;
	src.upath = (__u64)BPF_CORE_READ(name, name);
	killed = file_decide(&e, hook, ops, flags, mode, 0, &src, 0);
	if (!old.upath)
		return 0;
	/* a rename's or link's old name, and the new name's createExecutable, as for the syscall */
	file_decide(&e, hook, old_ops, flags, mode, 0, &old, 0);
	if (!killed)
		file_decide(&e, hook, 1u << STK_OP_CREATE_EXECUTABLE, flags, mode, 0, &src,
			    DECIDE_PENDING);
	return 0;
}
