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
 * Decide a file operation and write its record when some action applies.
 * Candidates first, then the path (not walked when its first component is in
 * no table and no selector without a path condition can act: walked for the
 * record only). Kill mode (lsm = 0): BLOCK sends SIGKILL (the operation has
 * happened). lsm and fmodret modes (lsm = 1): BLOCK returns -EPERM and the record says denied;
 * AUDIT_BLOCK never denies. Returns the LSM verdict.
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
	resolve_src(src, HEAD_FILTER(e->slot, STK_PART_FILE), &rp);
	if (!rp.ok)
		return 0;
	actions = evaluate(e->s, &rp, comm, 0, src->moves); /* names: process part only */
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
	if (actions & STK_ACTION_BLOCK) {
		if (lsm) {
			stat_inc(STK_STAT_DENIALS);
			r->h.outcome = STK_OUTCOME_DENIED;
			verdict = -STK_EPERM;
		} else {
			r->h.outcome = kill_current();
		}
	}
	r->ops = ops;
	r->flags = flags;
	r->mode = mode;
	r->fmode = fmode;
	r->volume = rp.volume;
	r->path_from_fd = src->dentry != 0;
	r->path_truncated = rp.truncated;
	__builtin_memset(r->pad, 0, sizeof(r->pad));
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

#endif
