/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The decision: which selectors of a listed cgroup match an operation, and the actions of
 * the response rows that apply (stk_candidates, stk_evaluate), from the active slot or the
 * slot an LSM hook kept for the tracepoint of the same operation (stk_hook_slots).
 */
#ifndef STK_DECISION_H
#define STK_DECISION_H

#include "path.h"

struct eval_in {
	__u32 slot;
	__u32 part;
	__u32 ops;
	__u32 start;
	__u32 len;
	__u32 leaf;
	__u8 ok;
	__u8 tables; /* STK_TABLE_* bits: the path tables to look the path up in */
	__u8 volume;
	__u8 interactive;
	__u8 truncated; /* the path is a tail: it may match any blocking selector */
	__u8 moves;     /* a rename's name: selectors below it match too (stk_dir_paths) */
	char comm[16];
};

struct scratch {
	struct eval_in in;
	struct stk_mask matched;
	struct stk_mask tmp;
	struct stk_path_key pkey;
	struct stk_lpm_key lkey;
	struct stk_long_key xkey;
	struct stk_name_key nkey;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} stk_scratch SEC(".maps");

/* dst &= src; returns whether a bit is left */
static __always_inline int mask_and(struct stk_mask *dst, const struct stk_mask *src)
{
	__u64 acc = 0;
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++) {
		dst->w[i] &= src->w[i];
		acc |= dst->w[i];
	}
	return acc != 0;
}

static __always_inline void mask_or(struct stk_mask *dst, const struct stk_mask *src)
{
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		dst->w[i] |= src->w[i];
}

static __always_inline void mask_andnot(struct stk_mask *dst, const struct stk_mask *src)
{
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		dst->w[i] &= ~src->w[i];
}

static __always_inline int mask_zero(const struct stk_mask *m)
{
	__u64 acc = 0;
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		acc |= m->w[i];
	return acc == 0;
}

struct resp_ctx {
	__u32 base;
	__u32 actions;
};

static long resp_cb(__u32 i, void *data)
{
	struct resp_ctx *c = data;
	__u32 idx = c->base + i, zero = 0;
	struct stk_response *r = bpf_map_lookup_elem(&stk_responses, &idx);
	struct scratch *s = bpf_map_lookup_elem(&stk_scratch, &zero);
	__u64 hit = 0, ex = 0;
	int w;

	if (!r || !s)
		return 1;
	for (w = 0; w < STK_MASK_WORDS; w++) {
		hit |= s->matched.w[w] & r->match.w[w];
		ex |= s->matched.w[w] & r->exclude.w[w];
	}
	if (hit && !ex)
		c->actions |= r->actions;
	return 0;
}

/*
 * Entries longer than the 255-byte keys (stk_long_paths), looked up only for a path longer
 * than 255 bytes: the path itself and its dirname when at most 511 bytes, and every
 * "dir/" prefix of 256..511 bytes (the recursive entries the LPM trie can't hold).
 */
static __always_inline void long_lookup(struct scratch *s, const char *b, __u32 start, __u32 n,
					__u32 tag)
{
	struct stk_mask *m;

	__builtin_memset(&s->xkey, 0, sizeof(s->xkey));
	s->xkey.tag = tag;
	bpf_probe_read_kernel(s->xkey.path, bound(n, 511), &b[start]);
	m = bpf_map_lookup_elem(&stk_long_paths, &s->xkey);
	if (m)
		mask_or(&s->tmp, m);
}

struct long_ctx {
	__u32 start;
	__u32 last; /* the last '/' offset that can end a stored prefix */
	__u32 tag;
};

static long long_prefix_cb(__u32 i, void *data)
{
	struct long_ctx *c = data;
	__u32 zero = 0, p = STK_MATCH_MAX + i; /* a '/' here ends a prefix of p + 1 > 255 bytes */
	struct scratch *s = bpf_map_lookup_elem(&stk_scratch, &zero);
	struct pathbuf *pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);
	__u32 start = bound(c->start, PB_SIZE - 1 - 4096);

	if (!s || !pb || p > c->last)
		return 1;
	if (pb->b[start + bound(p, 511)] == '/')
		long_lookup(s, pb->b, start, p + 1, c->tag);
	return 0;
}

static __always_inline void long_lookups(struct scratch *s, const char *b, __u32 start,
					 __u32 len, __u32 dlen, __u32 slot, __u32 part)
{
	struct long_ctx c = { .start = start, .tag = slot << 4 | STK_TABLE_RECURSIVE << 1 | part };

	if (len <= STK_LONG_PATH && (s->in.tables & STK_TABLE_EXACT))
		long_lookup(s, b, start, len, slot << 4 | STK_TABLE_EXACT << 1 | part);
	if (dlen > STK_MATCH_MAX && dlen <= STK_LONG_PATH && (s->in.tables & STK_TABLE_CHILDREN))
		long_lookup(s, b, start, dlen, slot << 4 | STK_TABLE_CHILDREN << 1 | part);
	c.last = len - 2 < STK_LONG_PATH - 1 ? len - 2 : STK_LONG_PATH - 1;
	if (c.last >= STK_MATCH_MAX && (s->in.tables & STK_TABLE_RECURSIVE))
		bpf_loop(c.last - STK_MATCH_MAX + 1, long_prefix_cb, &c, 0);
}

/*
 * The decision in two global functions (the verifier checks each once).
 * stk_candidates, before anything is resolved: scratch->matched (the
 * cgroup's selectors of the part) &= the selectors of any of the operations;
 * 0 when none is left. stk_evaluate, with the path and the process facts in
 * scratch->in: narrows scratch->matched to the matching selectors and
 * returns the actions (0: nothing to do).
 */
__noinline int stk_candidates(void)
{
	struct stk_mask *m;
	struct scratch *s;
	__u32 zero = 0, idx, op, slot, ops;

	s = bpf_map_lookup_elem(&stk_scratch, &zero);
	if (!s)
		return 0;
	slot = s->in.slot & 1;
	ops = s->in.ops;
	__builtin_memset(&s->tmp, 0, sizeof(s->tmp));
	for (op = 0; op < STK_OP_COUNT; op++) {
		if (!(ops & (1u << op)))
			continue;
		idx = slot * STK_OP_SLOTS + op;
		m = bpf_map_lookup_elem(&stk_op_masks, &idx);
		if (m)
			mask_or(&s->tmp, m);
	}
	return mask_and(&s->matched, &s->tmp);
}

__noinline int stk_evaluate(void)
{
	struct stk_control *ctl;
	struct stk_part_masks *pm;
	struct pathbuf *pbuf;
	struct stk_mask *m;
	struct scratch *s;
	struct resp_ctx rc;
	__u32 zero = 0, idx, len, dlen, n, slot, part, start;
	const char *b;

	s = bpf_map_lookup_elem(&stk_scratch, &zero);
	ctl = bpf_map_lookup_elem(&stk_control, &zero);
	pbuf = bpf_map_lookup_elem(&stk_pathbufs, &zero);
	if (!s || !ctl || !pbuf)
		return 0;
	b = pbuf->b;
	slot = s->in.slot & 1;
	part = s->in.part & 1;
	idx = slot * 2 + part;
	pm = bpf_map_lookup_elem(&stk_part_masks, &idx);
	if (!pm)
		return 0;

	/* path mask */
	__builtin_memcpy(&s->tmp, &pm->any_path, sizeof(s->tmp));
	len = s->in.len;
	start = s->in.start & (PB_SIZE - 1 - 4096);
	if (s->in.ok && len <= STK_MATCH_MAX && (s->in.tables & STK_TABLE_EXACT)) {
		__builtin_memset(&s->pkey, 0, sizeof(s->pkey));
		s->pkey.tag = slot << 8 | part;
		bpf_probe_read_kernel(s->pkey.path, bound(len, 255), &b[start]);
		m = bpf_map_lookup_elem(&stk_exact_paths, &s->pkey);
		if (m)
			mask_or(&s->tmp, m);
	}
	if (s->in.ok && len > 1) {
		dlen = s->in.leaf; /* dirname length; 0 means "/" */
		if (dlen <= STK_MATCH_MAX && (s->in.tables & STK_TABLE_CHILDREN)) {
			__builtin_memset(&s->pkey, 0, sizeof(s->pkey));
			s->pkey.tag = slot << 8 | part;
			n = dlen ? dlen : 1;
			bpf_probe_read_kernel(s->pkey.path, bound(n, 255), &b[start]);
			m = bpf_map_lookup_elem(&stk_child_paths, &s->pkey);
			if (m)
				mask_or(&s->tmp, m);
		}
		/* dirname + "/" (the '/' is already in the buffer), at most 255 bytes */
		n = dlen + 1;
		if (n > STK_LPM_PATH)
			n = STK_LPM_PATH;
		if (s->in.tables & STK_TABLE_RECURSIVE) {
			__builtin_memset(&s->lkey, 0, sizeof(s->lkey));
			s->lkey.tag = slot << 4 | part;
			s->lkey.prefixlen = 8 * (1 + n);
			bpf_probe_read_kernel(s->lkey.path, bound(n, 255), &b[start]);
			m = bpf_map_lookup_elem(&stk_recursive_paths, &s->lkey);
			if (m)
				mask_or(&s->tmp, m);
		}
		if (len > STK_MATCH_MAX)
			long_lookups(s, b, start, len, dlen, slot, part);
	}
	if (s->in.ok && s->in.moves && len <= STK_MATCH_MAX && s->in.tables) {
		__builtin_memset(&s->pkey, 0, sizeof(s->pkey));
		s->pkey.tag = slot << 8 | part;
		bpf_probe_read_kernel(s->pkey.path, bound(len, 255), &b[start]);
		m = bpf_map_lookup_elem(&stk_dir_paths, &s->pkey);
		if (m)
			mask_or(&s->tmp, m);
	}
	if (s->in.truncated) /* fail closed: a path we can't see whole may be any blocked one */
		mask_or(&s->tmp, &pm->blocking);
	if (!mask_and(&s->matched, &s->tmp))
		return 0; /* the usual end: no selector matches the path */

	/* process name */
	if (part == STK_PART_PROCESS) {
		__builtin_memcpy(&s->tmp, &pm->any_name, sizeof(s->tmp));
		__builtin_memset(&s->nkey, 0, sizeof(s->nkey));
		s->nkey.slot = slot;
		__builtin_memcpy(s->nkey.comm, s->in.comm, 16);
		m = bpf_map_lookup_elem(&stk_names, &s->nkey);
		if (m)
			mask_or(&s->tmp, m);
		mask_and(&s->matched, &s->tmp);
	}

	/* interactive */
	if (s->in.interactive)
		mask_andnot(&s->matched, &pm->req_non_interactive);
	else
		mask_andnot(&s->matched, &pm->req_interactive);

	/* volume */
	if (s->in.volume != STK_VOLUME_NONE) {
		mask_andnot(&s->matched, &pm->ignore_mounts);
		if (s->in.volume == STK_VOLUME_FILE)
			mask_andnot(&s->matched, &pm->ignore_files);
	}
	if (mask_zero(&s->matched))
		return 0;

	n = ctl->n_responses[slot][part];
	if (n > STK_MAX_RESPONSES)
		n = STK_MAX_RESPONSES;
	rc.base = (slot * 2 + part) * STK_MAX_RESPONSES;
	rc.actions = 0;
	bpf_loop(n, resp_cb, &rc, 0);
	return rc.actions;
}

struct entry {
	struct stk_control *ctl;
	struct stk_cgroup_val *cg;
	struct scratch *s;
	__u64 cgid;
	__u32 slot;
	__u32 seq; /* stk_control.seq, read before the masks */
};

/*
 * The deepest listed cgroup among the current cgroup's ancestors (0: none),
 * so that cgroups a container creates below its own stay covered, with no
 * window in which they are unknown.
 */
__noinline __u64 stk_listed_ancestor(__u32 slot)
{
	struct stk_cgroup_key key = {};
	__u64 found = 0, id;
	int level;

	key.slot = slot & 1;
	for (level = 0; level < STK_MAX_CGROUP_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		key.cgroup_id = id;
		if (bpf_map_lookup_elem(&stk_cgroup_masks, &key))
			found = id;
	}
	return found;
}

#define ACTIVE_SLOT 2 /* for enter_slot: read stk_control.active_slot */

/*
 * Picks the slot (the active one, read once, unless given); returns 0 when
 * neither the current cgroup nor one of its ancestors is listed. e->cgid is
 * the listed cgroup.
 */
static __always_inline int enter_slot(struct entry *e, __u32 slot)
{
	struct stk_cgroup_key key = {};
	__u32 zero = 0;

	e->ctl = bpf_map_lookup_elem(&stk_control, &zero);
	if (!e->ctl)
		return 0;
	/* seq before the slot and the masks: a flip or a change after this read bumps it again */
	e->seq = e->ctl->seq;
	asm volatile("" ::: "memory");
	e->slot = (slot == ACTIVE_SLOT ? e->ctl->active_slot : slot) & 1;
	e->cgid = bpf_get_current_cgroup_id();
	key.slot = e->slot;
	key.cgroup_id = e->cgid;
	e->cg = bpf_map_lookup_elem(&stk_cgroup_masks, &key);
	if (!e->cg) {
		key.cgroup_id = stk_listed_ancestor(e->slot);
		if (!key.cgroup_id)
			return 0;
		e->cgid = key.cgroup_id;
		e->cg = bpf_map_lookup_elem(&stk_cgroup_masks, &key);
		if (!e->cg)
			return 0;
	}
	e->s = bpf_map_lookup_elem(&stk_scratch, &zero);
	return e->s != NULL;
}

static __always_inline int enter(struct entry *e)
{
	return enter_slot(e, ACTIVE_SLOT);
}

/*
 * lsm mode decides an exec or a fork in its LSM hook and reports it from the
 * sched_process_* tracepoint that follows in the same task. The hook's slot
 * is kept here (per task, per operation) so that the tracepoint decides with
 * the same bundle even when a reload flips the active slot in between; kill
 * mode has no hook, nothing is kept, the tracepoint reads the active slot.
 */
struct hook_slots {
	__u8 slot_plus_one[2]; /* [STK_OP_FORK], [STK_OP_EXEC]; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hook_slots);
} stk_hook_slots SEC(".maps");

/* in an LSM hook: the active slot, kept for the tracepoint of the same operation */
static __always_inline __u32 remember_slot(__u32 op)
{
	struct stk_control *ctl;
	struct hook_slots *h;
	__u32 zero = 0, slot;

	ctl = bpf_map_lookup_elem(&stk_control, &zero);
	if (!ctl)
		return ACTIVE_SLOT;
	slot = ctl->active_slot & 1;
	h = bpf_task_storage_get(&stk_hook_slots, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (h)
		h->slot_plus_one[op & 1] = slot + 1;
	return slot;
}

/* in a tracepoint: the slot the LSM hook of this operation used (then forgotten) */
static __always_inline __u32 recall_slot(__u32 op)
{
	struct hook_slots *h;
	__u32 kept;

	h = bpf_task_storage_get(&stk_hook_slots, bpf_get_current_task_btf(), 0, 0);
	if (!h)
		return ACTIVE_SLOT;
	kept = h->slot_plus_one[op & 1];
	h->slot_plus_one[op & 1] = 0;
	return kept ? kept - 1 : ACTIVE_SLOT;
}

/* The first step of a decision (see stk_candidates): 0 when no selector can match. */
static __always_inline int candidates(struct entry *e, __u32 part, __u32 ops)
{
	struct scratch *s = e->s;

	s->in.slot = e->slot;
	s->in.part = part;
	s->in.ops = ops;
	__builtin_memcpy(&s->matched, &e->cg->part[part & 1], sizeof(s->matched));
	return stk_candidates();
}

/*
 * After candidates(): can a BLOCK row apply? Only if a candidate is in one's
 * match (a superset: exclusions and the path are not looked at yet).
 */
static __always_inline int may_block(struct entry *e, __u32 part)
{
	__u32 idx = e->slot * 2 + (part & 1);
	struct stk_part_masks *pm = bpf_map_lookup_elem(&stk_part_masks, &idx);
	__u64 acc = 0;
	int i;

	if (!pm)
		return 1;
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		acc |= e->s->matched.w[i] & pm->blocking.w[i];
	return acc != 0;
}

/* The rest of the decision, after candidates() (see stk_evaluate). */
/* unseen: the path may not be the only one that counts (fail closed, as for a truncated one) */
static __always_inline __u32 evaluate(struct scratch *s, struct rpath *rp, const char *comm,
				      int interactive, int moves, int unseen)
{
	/*
	 * A path the head filter ruled out of every table (not walked, so not truncated): only
	 * the selectors without a path condition can match it, as in stk_evaluate's first step.
	 */
	if (rp->ok && !rp->tables && !unseen) {
		__u32 idx = (s->in.slot & 1) * 2 + (s->in.part & 1);
		struct stk_part_masks *pm = bpf_map_lookup_elem(&stk_part_masks, &idx);
		__u64 acc = 0;
		int i;

		if (!pm)
			return 0;
#pragma clang loop unroll(disable)
		for (i = 0; i < STK_MASK_WORDS; i++)
			acc |= s->matched.w[i] & pm->any_path.w[i];
		if (!acc)
			return 0;
	}
	s->in.start = rp->start;
	s->in.len = rp->len;
	s->in.leaf = rp->leaf;
	s->in.ok = rp->ok;
	s->in.tables = rp->tables;
	s->in.volume = rp->volume;
	s->in.interactive = interactive;
	s->in.truncated = (rp->ok && rp->truncated) || unseen;
	s->in.moves = moves;
	__builtin_memcpy(s->in.comm, comm, 16);
	return stk_evaluate();
}

#endif
