/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Records: building one in the per-CPU record buffer (stk_recbufs), its header, the kill
 * that a kill-mode BLOCK sends, and writing it to a ring buffer: alerts and blocks to their
 * own (stk_alerts), so that a flood of log and exit records (stk_events) can't push them out.
 */
#ifndef STK_RECORDS_H
#define STK_RECORDS_H

#include "decision.h"

#define REC_SIZE 12288

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} stk_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} stk_alerts SEC(".maps");

#define STK_ALERTING (STK_ACTION_ALERT | STK_ACTION_BLOCK | STK_ACTION_AUDIT_BLOCK)

struct recbuf {
	char b[REC_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct recbuf);
} stk_recbufs SEC(".maps");

static __always_inline void fill_hdr(struct stk_rec_hdr *h, struct task_struct *task,
				     struct scratch *s, __u32 kind, __u32 hook, __u32 slot,
				     struct stk_control *ctl, __u64 cgid, __u32 actions)
{
	h->version = STK_RECORD_VERSION;
	h->kind = kind;
	h->hook = hook;
	h->outcome = STK_OUTCOME_ALLOWED;
	h->slot = slot;
	h->actions = actions;
	h->ktime_ns = bpf_ktime_get_ns();
	h->cgroup_id = cgid;
	h->generation = ctl->generation[slot & 1];
	h->mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	h->pid = BPF_CORE_READ(task, pid);
	h->tgid = BPF_CORE_READ(task, tgid);
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = BPF_CORE_READ(task, cred, uid.val);
	h->gid = BPF_CORE_READ(task, cred, gid.val);
	__builtin_memcpy(&h->matched, &s->matched, sizeof(h->matched));
}

static __always_inline __u8 kill_current(void)
{
	if (bpf_send_signal(SIGKILL) == 0) {
		stat_inc(STK_STAT_KILLS);
		return STK_OUTCOME_KILLED;
	}
	stat_inc(STK_STAT_KILL_FAIL);
	return STK_OUTCOME_KILL_FAILED;
}

/* rec starts with its header: alerts and blocks go to stk_alerts, the rest to stk_events */
static __always_inline void output(void *rec, __u64 size)
{
	struct stk_rec_hdr *h = rec;
	int alert = h->actions & STK_ALERTING;

	asm volatile("" : "+r"(size));
	if (size > REC_SIZE)
		size = REC_SIZE;
	if (!bpf_ringbuf_output(alert ? (void *)&stk_alerts : (void *)&stk_events, rec, size, 0)) {
		stat_inc(STK_STAT_RECORDS);
		return;
	}
	stat_inc(STK_STAT_RB_FAIL);
	stat_inc(alert ? STK_STAT_LOST_ALERT
		       : h->kind == STK_KIND_EXIT ? STK_STAT_LOST_EXIT : STK_STAT_LOST_LOG);
}

#endif
