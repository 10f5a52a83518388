/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * cgroup records: a cgroup v2 directory made or removed (tp_btf/cgroup_mkdir, cgroup_rmdir),
 * so that user space knows a container's cgroup id before its first exec, not only from its
 * next scan of the cgroup filesystem. Only the default (v2) hierarchy and only levels up to
 * STK_CGROUP_MAX_LEVEL: a deeper cgroup is decided through its listed ancestor, and the bound
 * limits what a container with a delegated cgroup can write. Their own small ring buffer
 * (stk_cgroups), so that an exec flood filling stk_events can't push them out; a lost one is
 * counted (STK_STAT_CGROUP_FAIL) and tells user space to rescan.
 */
#ifndef STK_CGROUP_H
#define STK_CGROUP_H

#include "common.h"

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

static __always_inline int cgroup_record(struct cgroup *cgrp, const char *path, __u8 created)
{
	struct stk_cgroup_rec *r;
	__u32 zero = 0, level;
	__u64 len;
	long n;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0; /* a cgroup v1 hierarchy (the default hierarchy's id is 0) */
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
