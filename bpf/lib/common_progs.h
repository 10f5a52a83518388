// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Programs every object attaches the same way, defined once: a process's exit and the
 * cgroup v2 directories made and removed (containers known before their first exec,
 * lib/cgroup.h). Included once by each stockade*.bpf.c, after its own includes.
 */
#ifndef STK_COMMON_PROGS_H
#define STK_COMMON_PROGS_H

#include "cgroup.h"
#include "process.h"

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
