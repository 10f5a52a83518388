// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Capability probes for the enforcement-mode detection (stockade/sensor/probe.py). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "abi.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* in .bss, written and read by user space through the ".bss" map */
struct stk_probe_state probe_state = {};

/* lsm mode: a do-nothing BPF LSM program on file_open */
SEC("lsm/file_open")
int BPF_PROG(stk_probe_lsm, struct file *file)
{
	return 0;
}

/* fmodret mode: security_file_open fails with EPERM for the thread user space names */
SEC("fmod_ret/security_file_open")
int BPF_PROG(stk_probe_fmodret, struct file *file, int ret)
{
	if (ret || !probe_state.deny_tid || (__u32)bpf_get_current_pid_tgid() != probe_state.deny_tid)
		return ret;
	probe_state.hits += 1;
	return -1; /* -EPERM */
}

/* kill mode: SIGKILL the child that user space execs right after attaching */
SEC("tracepoint/sched/sched_process_exec")
int stk_probe_kill(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	if (!probe_state.target_ppid ||
	    BPF_CORE_READ(task, real_parent, tgid) != probe_state.target_ppid)
		return 0;
	probe_state.hits += 1;
	probe_state.ret = bpf_send_signal(9);
	return 0;
}
