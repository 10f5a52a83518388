/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup records: a cgroup v2 directory made or removed (tp_btf/cgroup_mkdir, cgroup_rmdir),
 * so that user space knows a container's cgroup id before its first exec, not only from its
 * next scan of the cgroup filesystem. Only the default (v2) hierarchy and only levels up to
 * STK_CGROUP_MAX_LEVEL: a deeper cgroup is decided through its listed ancestor, and the bound
 * limits what a container with a delegated cgroup can write. Their own small ring buffer
 * (stk_cgroups), so that an exec flood filling stk_events can't push them out; a lost one is
 * counted (STK_STAT_CGROUP_FAIL) and tells user space to rescan.
 *
 * A pod's cgroup is also listed here, in the mkdir itself, when user space knows the pod
 * already (stk_pod_cgroups): its containers' cgroups, made right after it, are decided by it
 * from their first exec, however late user space reads the record. A removed cgroup leaves
 * stk_cgroup_masks here too, whether or not user space ever read its mkdir.
 */
#ifndef STK_CGROUP_H
#define STK_CGROUP_H

#include "common.h"
#include "maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} stk_cgroups SEC(".maps");

/* a record and its path, + 1 byte: a path of more than STK_CGROUP_PATH bytes shows */
struct cgroup_recbuf {
	char b[sizeof(struct stk_cgroup_rec) + STK_CGROUP_PATH + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cgroup_recbuf);
} stk_cgroup_recbufs SEC(".maps");

/*
 * A known pod's cgroup made: listed in the active slot with the masks user space put under
 * its name. Not below a listed cgroup: a container can't give a cgroup of its own a pod's
 * name to be decided by that pod's masks instead of its own.
 */
static __always_inline void pod_cgroup_made(struct cgroup *cgrp, __u64 id)
{
	struct stk_pod_cgroup_key key = {};
	struct stk_cgroup_key listed = {};
	struct cgroup_subsys_state *css;
	struct stk_cgroup_val *val;
	struct stk_control *ctl;
	__u32 zero = 0;
	int level;

	ctl = bpf_map_lookup_elem(&stk_control, &zero);
	if (!ctl)
		return;
	key.slot = ctl->active_slot & 1;
	/* a longer name fills the key with no NUL: it can't equal a key user space wrote */
	if (bpf_probe_read_kernel_str(key.name, sizeof(key.name), BPF_CORE_READ(cgrp, kn, name)) <= 0)
		return;
	val = bpf_map_lookup_elem(&stk_pod_cgroups, &key);
	if (!val)
		return;
	listed.slot = key.slot;
	css = BPF_CORE_READ(cgrp, self.parent);
	for (level = 0; level < STK_CGROUP_MAX_LEVEL && css; level++) {
		listed.cgroup_id = BPF_CORE_READ(css, cgroup, kn, id);
		if (bpf_map_lookup_elem(&stk_cgroup_masks, &listed))
			return;
		css = BPF_CORE_READ(css, parent);
	}
	listed.cgroup_id = id;
	if (bpf_map_update_elem(&stk_cgroup_masks, &listed, val, BPF_ANY))
		stat_inc(STK_STAT_CGROUP_FAIL);
}

/* a removed cgroup unlisted in both slots (its id, an inode number, may be another's later) */
static __always_inline void cgroup_gone(__u64 id)
{
	struct stk_cgroup_key key = {.cgroup_id = id};

	bpf_map_delete_elem(&stk_cgroup_masks, &key);
	key.slot = 1;
	bpf_map_delete_elem(&stk_cgroup_masks, &key);
}

static __always_inline int cgroup_record(struct cgroup *cgrp, const char *path, __u8 created)
{
	struct stk_cgroup_rec *r;
	__u32 zero = 0, level;
	__u64 len;
	long n;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0; /* a cgroup v1 hierarchy (the default hierarchy's id is 0) */
	if (created)
		pod_cgroup_made(cgrp, BPF_CORE_READ(cgrp, kn, id));
	else
		cgroup_gone(BPF_CORE_READ(cgrp, kn, id));
	level = BPF_CORE_READ(cgrp, level);
	if (level > STK_CGROUP_MAX_LEVEL)
		return 0;
	r = bpf_map_lookup_elem(&stk_cgroup_recbufs, &zero);
	if (!r) {
		stat_inc(STK_STAT_CGROUP_FAIL);
		return 0;
	}
	n = bpf_probe_read_kernel_str(r->path, STK_CGROUP_PATH + 1, path);
	len = n > 0 ? n - 1 : 0;
	r->path_truncated = 0;
	if (len >= STK_CGROUP_PATH) {
		char next = 0;

		/* STK_CGROUP_PATH bytes read: truncated if the path goes on */
		bpf_probe_read_kernel(&next, 1, path + STK_CGROUP_PATH);
		r->path_truncated = next != 0;
		len = STK_CGROUP_PATH;
	}
	if (r->path_truncated)
		stat_inc(STK_STAT_PATH_TRUNCATED);
	r->version = STK_RECORD_VERSION;
	r->kind = STK_KIND_CGROUP;
	r->created = created;
	r->path_len = len;
	r->level = level;
	r->pad = 0;
	r->ktime_ns = bpf_ktime_get_ns();
	r->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	/* a bound the verifier keeps: 6.1 lost it (docs/kernel.md, "Keeping the verifier happy") */
	asm volatile("" : "+r"(len));
	if (len > STK_CGROUP_PATH)
		len = STK_CGROUP_PATH;
	if (bpf_ringbuf_output(&stk_cgroups, r, sizeof(*r) + len, 0))
		stat_inc(STK_STAT_CGROUP_FAIL);
	return 0;
}

#endif
