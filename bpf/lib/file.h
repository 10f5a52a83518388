/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * File operations, in both modes: resolve the target, decide, and write the record (and
 * BLOCK: SIGKILL in kill mode, -EPERM in lsm and fmodret modes).
 */
#ifndef STK_FILE_H
#define STK_FILE_H

#include "records.h"

/*
 * Where a file operation's path comes from: a kernel (dentry, mnt), walked,
 * or a path string relative to dirfd (kill mode's path-string syscalls; in
 * kernel memory when kstr: io_uring). Plain integers: 6.1 refuses trusted BTF
 * pointers as global-function args.
 */
struct path_src {
	__u64 dentry;
	__u64 mnt;
	__u64 upath;
	__s64 dirfd;
	__u32 kstr;
	__u32 moves; /* a rename's name: a directory moves the paths below it */
	__u8 other_name;    /* another name (hard link) of the file the operation named */
	__u8 names_unknown; /* the file has names not found: decided fail-closed */
	__u8 swapped;       /* kill mode: the path string changed during the syscall */
	__u8 pad;
};

/* resolves src into stk_rpaths[0] and *rp (head_tag: see stk_resolve_kpath) */
static __always_inline void resolve_src(struct path_src *src, __u32 head_tag, struct rpath *rp)
{
	if (src->dentry)
		stk_resolve_kpath(0, src->dentry, src->mnt, head_tag);
	else
		stk_resolve_user(src->dirfd, src->upath, src->kstr);
	get_rpath(0, rp);
}

/*
 * file_decide's lsm argument: kill mode (0), lsm and fmodret modes (1), or kill mode's
 * createExecutable of a name whose file's mode it can't read (a rename or link by path):
 * the record's outcome is STK_OUTCOME_PENDING and nothing is done; user space reads the
 * mode and acts (docs/kernel.md, "Attacks").
 */
#define DECIDE_PENDING 2

/*
 * Decide a file operation and write its record when some action applies.
 * Candidates first, then the path (not walked when its first component is in
 * no table and no selector without a path condition can act: walked for the
 * record only). Kill mode (lsm = 0): BLOCK sends SIGKILL (the operation has
 * happened). lsm and fmodret modes (lsm = 1): BLOCK returns -EPERM and the record says denied;
 * AUDIT_BLOCK never denies. Returns the LSM verdict (kill mode: 1 when it killed).
 */
static __always_inline int file_decide(struct entry *e, __u32 hook, __u32 ops, __u32 flags,
				       __u32 mode, __u32 fmode, struct path_src *src, int lsm)
{
	struct task_struct *task;
	struct stk_file_rec *r;
	struct pathbuf *pb;
	struct rpath rp = {};
	char comm[16] = {};
	__u32 actions, zero = 0, plen;
	int verdict = 0;

	if (!ops || !candidates(e, STK_PART_FILE, ops))
		return 0;
	/* another name is walked whole: one outside this mount is a name not seen */
	resolve_src(src, src->other_name ? 0 : HEAD_FILTER(e->slot, STK_PART_FILE), &rp);
	if (!rp.ok)
		return 0;
	if (src->other_name && rp.fileless)
		src->names_unknown = 1;
	/* names: process part only */
	actions = evaluate(e->s, &rp, comm, 0, src->moves, src->names_unknown);
	if (!actions)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	if (!rp.tables) /* not walked: the path for the record */
		resolve_src(src, 0, &rp);
	if (!rp.ok)
		rp.len = 0;
	if (rp.truncated)
		stat_inc(STK_STAT_PATH_TRUNCATED);
	pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);
	r = bpf_map_lookup_elem(&stk_recbufs, &zero);
	if (!pb || !r)
		return 0;

	task = (struct task_struct *)bpf_get_current_task(); /* only a record needs it */
	fill_hdr(&r->h, task, e->s, STK_KIND_FILE, hook, e->slot, e->ctl, e->cgid, actions);
	if (lsm == DECIDE_PENDING) {
		r->h.outcome = STK_OUTCOME_PENDING; /* nothing done: user space reads the mode */
	} else if (actions & STK_ACTION_BLOCK) {
		if (lsm) {
			stat_inc(STK_STAT_DENIALS);
			r->h.outcome = STK_OUTCOME_DENIED;
			verdict = -STK_EPERM;
		} else {
			r->h.outcome = kill_current();
			verdict = 1; /* kill mode: decided (a caller deciding more may stop) */
		}
	}
	r->ops = ops;
	r->flags = flags;
	r->mode = mode;
	r->fmode = fmode;
	r->volume = rp.volume;
	r->path_from_fd = src->dentry != 0;
	r->path_truncated = rp.truncated;
	r->other_name = src->other_name;
	r->names_unknown = src->names_unknown;
	r->path_swapped = src->swapped;
	__builtin_memcpy(r->comm, comm, 16);
	plen = rp.len;
	if (plen > STK_PATH_REC_MAX)
		plen = STK_PATH_REC_MAX;
	r->path_len = plen;
	bpf_probe_read_kernel(r->path, bound(plen, 4095), &pb->b[rp.start & (PB_SIZE - 1 - 4096)]);
	r->h.size = sizeof(*r) + bound(plen, 4095);
	output(r, sizeof(*r) + bound(plen, 4095));
	return verdict;
}

/*
 * A file's other names (hard links). Writing, truncating or changing the mode of a file
 * changes it under every name it has, and the kernel knows only the cached ones: the
 * hashed dentries on its inode's alias list (read without the inode's lock: a dentry freed
 * meanwhile ends the walk early, which counts as a name not seen). At most
 * STK_MAX_ALIASES besides the one operated on; when fewer are found than i_nlink says,
 * the names not seen are decided fail-closed (every blocking selector of the operations
 * matches, as for a path too long to see whole: docs/kernel.md, "Attacks").
 */
#define STK_MAX_ALIASES 8

struct names_ctx {
	struct path_src other; /* the name being decided (here: the stack is short) */
	__u64 node; /* the next alias list node */
	__u64 own;  /* the dentry the operation named */
	__u64 found[STK_MAX_ALIASES];
	__u32 n;    /* found */
	__u32 own_hashed;
};

/* in a map: bpf_loop's context must be on the stack, and the stack is short */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct names_ctx);
} stk_names_ctx SEC(".maps");

static long alias_cb(__u32 i, void *data)
{
	__u32 zero = 0;
	struct names_ctx *c = bpf_map_lookup_elem(&stk_names_ctx, &zero);
	struct hlist_node *node;
	struct dentry *d;

	if (!c || !c->node)
		return 1;
	node = (struct hlist_node *)c->node;
	d = container_of(node, struct dentry, d_u.d_alias);
	c->node = (__u64)BPF_CORE_READ(node, next);
	if (!BPF_CORE_READ(d, d_hash.pprev))
		return 0; /* unhashed: a name already gone */
	if ((__u64)d == c->own) {
		c->own_hashed = 1;
		return 0;
	}
	if (c->n >= STK_MAX_ALIASES)
		return 1; /* more than we decide: c->node stays set */
	c->found[c->n & (STK_MAX_ALIASES - 1)] = (__u64)d;
	c->n++;
	return 0;
}

/*
 * file_decide for an operation that changes an existing file (src: its dentry, or a path
 * string), then for each of its other names (a record each, other_name set); stops at a
 * denial (or a kill). Only a file with more than one link costs more than file_decide (i_nlink is
 * read). One call site of file_decide, in a loop: the stack stays that of one.
 */
static __always_inline int file_decide_names(struct entry *e, __u32 hook, __u32 ops,
					     __u32 flags, __u32 mode, __u32 fmode,
					     struct path_src *src, int lsm)
{
	struct dentry *d = (struct dentry *)src->dentry;
	struct path_src *p = src;
	struct names_ctx *c = NULL;
	struct inode *inode;
	__u32 nlink = 0, zero = 0, n = 0, i;
	int verdict = 0;

	if (d) {
		inode = KREAD(struct dentry, d, d_inode);
		nlink = KREAD(struct inode, inode, __i_nlink);
		if (nlink > 1 && candidates(e, STK_PART_FILE, ops))
			c = bpf_map_lookup_elem(&stk_names_ctx, &zero);
	}
	if (c) {
		__builtin_memset(c, 0, sizeof(*c));
		c->node = (__u64)BPF_CORE_READ(inode, i_dentry.first);
		c->own = src->dentry;
		bpf_loop(2 * STK_MAX_ALIASES + 2, alias_cb, NULL, 0);
		if (c->node || c->n + c->own_hashed < nlink) {
			src->names_unknown = 1;
			stat_inc(STK_STAT_NAMES_UNKNOWN);
		}
		n = c->n;
		c->other.mnt = src->mnt;
		c->other.other_name = 1;
	}
#pragma clang loop unroll(disable)
	for (i = 0; i <= STK_MAX_ALIASES && i <= n; i++) {
		if (i) {
			if (!c)
				break;
			c->other.dentry = c->found[(i - 1) & (STK_MAX_ALIASES - 1)];
			c->other.names_unknown = 0;
			p = &c->other;
		}
		verdict = file_decide(e, hook, ops, flags, mode, fmode, p, lsm);
		if (verdict)
			break;
	}
	return verdict;
}

#endif
