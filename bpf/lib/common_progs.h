// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Programs every object attaches the same way, defined once: a process's exec, fork and
 * exit, and the cgroup v2 directories made and removed (containers known before their
 * first exec, lib/cgroup.h). Included once by each stockade*.bpf.c.
 */
#ifndef STK_COMMON_PROGS_H
#define STK_COMMON_PROGS_H

#include "cgroup.h"
#include "process.h"

/* exec and fork, after they happened: handle_process reports every action and kills on
 * BLOCK (kill mode's enforcement; in the modes that deny, their hook refused it already) */
SEC("tracepoint/sched/sched_process_exec")
int stk_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	return handle_process(ctx, STK_HOOK_EXEC, NULL, NULL, NULL, 0);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(stk_fork, struct task_struct *parent, struct task_struct *child)
{
	if (child->pid != child->tgid)
		return 0; /* a new thread, not a new process */
	return handle_process(ctx, STK_HOOK_FORK, child, NULL, NULL, 0);
}

SEC("tracepoint/sched/sched_process_exit")
int stk_exit(struct trace_event_raw_sched_process_template *ctx)
{
	return exit_record();
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(stk_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return cgroup_record(cgrp, path, 1);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(stk_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return cgroup_record(cgrp, path, 0);
}

#endif
