/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Process tracking: exec and fork decided and reported (handle_process), the processes that
 * got a record (stk_tracked), whose exit writes an exit record (exit_record).
 */
#ifndef STK_PROCESS_H
#define STK_PROCESS_H

#include "records.h"

extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				__u64 value) __ksym __weak;

/* processes that got a record: their exit produces an exit record */
struct tracked_val {
	__u64 start_time;
	__u64 cgroup_id; /* the listed (container) cgroup that decided */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct tracked_val);
} stk_tracked SEC(".maps");

static __always_inline void proc_fields(struct stk_proc_rec *r, struct task_struct *task)
{
	struct signal_struct *sig = BPF_CORE_READ(task, signal);
	struct tty_struct *tty = BPF_CORE_READ(sig, tty);

	r->start_time_ns = BPF_CORE_READ(task, start_time);
	r->parent_start_time_ns = BPF_CORE_READ(task, real_parent, start_time);
	r->sid = BPF_CORE_READ(sig, pids[PIDTYPE_SID], numbers[0].nr);
	r->pgid = BPF_CORE_READ(sig, pids[PIDTYPE_PGID], numbers[0].nr);
	r->interactive = tty != NULL;
	r->tty_index = tty ? BPF_CORE_READ(tty, index) : 0;
	r->tty_major = tty ? BPF_CORE_READ(tty, driver, major) : 0;
	r->exit_code = 0;
}

/*
 * The exec name the kernel will give the new program (comm): the last
 * component of bprm->filename, at most 15 bytes, zero-padded. Uses stk_pathbufs[1].
 */
static __noinline void exec_comm(const char *filename, char *comm)
{
	struct pathbuf *pb;
	__u32 one = 1, st, i;
	int z = 0;
	long n;

	pb = bpf_map_lookup_elem(&stk_pathbufs, &one);
	if (!pb)
		return;
	n = bpf_probe_read_kernel_str(pb->b, 4096, filename);
	if (n <= 1)
		return;
	st = find_leaf(1, 0, n - 1);
	if (pb->b[st & 4095] == '/')
		st++;
	bpf_probe_read_kernel(comm, 15, &pb->b[st & 4095]);
	comm[15] = 0;
	for (i = 0; i < 16; i++) {
		if (!comm[i])
			z = 1;
		if (z)
			comm[i] = 0;
	}
}

/* handle_process's `lsm` */
#define PROC_REPORT 0 /* a sched_process_* tracepoint */
#define PROC_DENY 1   /* an LSM hook, or fmodret mode's program on its security_* function */
#define PROC_MAPPED 2 /* kill mode: a file's code mapped without exec (ld.so PROGRAM) */
#define PROC_MAPPED_DENY 3 /* the same, from an LSM hook (or fmodret): -EPERM */

/*
 * exec/fork: decide and report. From the sched_process_* tracepoints
 * (PROC_REPORT): after the operation, every action is reported, BLOCK kills (in
 * lsm mode the LSM hook has denied it already, with the same slot: see
 * remember_slot; a tracepoint sees BLOCK only when the process moved to
 * another cgroup between the two). From an LSM hook
 * (PROC_DENY; exe_in/filename from the linux_binprm for exec): only a BLOCK is
 * handled there (record `denied`, returns -EPERM); what is allowed is
 * reported by the tracepoint once it has happened. PROC_MAPPED (exe_in: the
 * file mapped PROT_EXEC, filename: its name): an exec of that file, only a
 * BLOCK acts (killed before the code runs; every library would be reported else);
 * PROC_MAPPED_DENY: the same from lsm/fmodret mode's mmap_file, denied (EPERM).
 */
static __always_inline int handle_process(void *ctx, __u32 hook, struct task_struct *child,
					  struct file *exe_in, const char *filename, int lsm)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct stk_proc_rec *r;
	struct pathbuf *pb, *pb2;
	struct file *exe;
	struct rpath rp = {}, cwd = {};
	struct entry e;
	char comm[16] = {};
	__u32 actions, zero = 0, one = 1, off, alen, op;
	__u64 astart, aend, exe_d = 0, exe_m = 0;
	int interactive, verdict = 0;

	op = hook == STK_HOOK_FORK || hook == STK_HOOK_LSM_TASK_ALLOC ||
			     hook == STK_HOOK_FMODRET_TASK_ALLOC
		     ? STK_OP_FORK
		     : STK_OP_EXEC;
	if (!enter_slot(&e, lsm == PROC_DENY    ? remember_slot(op)
			    : lsm >= PROC_MAPPED ? ACTIVE_SLOT
						 : recall_slot(op)))
		return 0;
	if (!candidates(&e, STK_PART_PROCESS, 1u << op))
		return 0;
	if (lsm && !may_block(&e, STK_PART_PROCESS))
		return 0; /* the hook only blocks; the tracepoint reports the rest */
	pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);
	pb2 = bpf_map_lookup_elem(&stk_pathbufs, &one);
	r = bpf_map_lookup_elem(&stk_recbufs, &zero);
	if (!pb || !pb2 || !r)
		return 0;

	exe = exe_in ? exe_in : BPF_CORE_READ(task, mm, exe_file);
	if (exe) {
		exe_d = (__u64)BPF_CORE_READ(exe, f_path.dentry);
		exe_m = (__u64)BPF_CORE_READ(exe, f_path.mnt);
		stk_resolve_kpath(0, exe_d, exe_m, HEAD_FILTER(e.slot, STK_PART_PROCESS));
		get_rpath(0, &rp);
	}
	rp.volume = STK_VOLUME_NONE; /* volume conditions are file-part only */
	if (filename)
		exec_comm(filename, comm);
	else
		bpf_get_current_comm(comm, sizeof(comm));
	interactive = BPF_CORE_READ(task, signal, tty) != NULL;

	actions = evaluate(e.s, &rp, comm, interactive, 0, 0);
	if (!actions)
		return 0;
	if (lsm && !(actions & STK_ACTION_BLOCK))
		return 0; /* reported by the tracepoint, after the operation */
	if (!rp.tables) { /* not walked: the executable's path, for the record */
		stk_resolve_kpath(0, exe_d, exe_m, 0);
		get_rpath(0, &rp);
	}

	fill_hdr(&r->h, task, e.s, STK_KIND_PROCESS, hook, e.slot, e.ctl, e.cgid, actions);
	if (actions & STK_ACTION_BLOCK) {
		if (lsm == PROC_DENY || lsm == PROC_MAPPED_DENY) {
			stat_inc(STK_STAT_DENIALS);
			r->h.outcome = STK_OUTCOME_DENIED;
			verdict = -STK_EPERM;
		} else if (child) {
			if (bpf_ksym_exists(bpf_send_signal_task) &&
			    bpf_send_signal_task(child, SIGKILL, PIDTYPE_TGID, 0) == 0) {
				stat_inc(STK_STAT_KILLS);
				r->h.outcome = STK_OUTCOME_KILLED;
			} else {
				stat_inc(STK_STAT_KILL_FAIL);
				r->h.outcome = STK_OUTCOME_KILL_FAILED;
			}
		} else {
			r->h.outcome = kill_current();
		}
	}
	if (child) {
		/* the record describes the new process; the parent is current */
		r->h.pid = BPF_CORE_READ(child, pid);
		r->h.tgid = BPF_CORE_READ(child, tgid);
		r->h.ppid = BPF_CORE_READ(task, tgid);
		proc_fields(r, task);
		r->start_time_ns = BPF_CORE_READ(child, start_time);
		r->parent_start_time_ns = BPF_CORE_READ(task, start_time);
	} else {
		proc_fields(r, task);
	}
	__builtin_memcpy(r->comm, comm, 16);

	/* exe */
	alen = rp.ok ? rp.len : 0;
	if (alen > STK_PATH_REC_MAX)
		alen = STK_PATH_REC_MAX;
	r->exe_len = alen;
	r->exe_truncated = rp.ok && rp.truncated;
	r->exe_fileless = rp.ok && rp.fileless;
	if (r->exe_truncated)
		stat_inc(STK_STAT_PATH_TRUNCATED);
	bpf_probe_read_kernel(&r->data[0], bound(alen, 4095), &pb->b[rp.start & (PB_SIZE - 1 - 4096)]);
	off = alen & 4095;

	/* cwd */
	{
		struct fs_struct *fs = BPF_CORE_READ(task, fs);

		stk_resolve_kpath(1, (__u64)BPF_CORE_READ(fs, pwd.dentry),
				  (__u64)BPF_CORE_READ(fs, pwd.mnt), 0);
		get_rpath(1, &cwd);
		if (!cwd.ok)
			cwd.len = 0;
		alen = cwd.len;
		if (alen > STK_PATH_REC_MAX)
			alen = STK_PATH_REC_MAX;
		r->cwd_len = alen;
		bpf_probe_read_kernel(&r->data[bound(off, 4095)], bound(alen, 4095),
				      &pb2->b[cwd.start & (PB_SIZE - 1 - 4096)]);
		off += alen & 4095;
	}

	/* args */
	astart = BPF_CORE_READ(task, mm, arg_start);
	aend = BPF_CORE_READ(task, mm, arg_end);
	alen = aend > astart ? aend - astart : 0;
	if (lsm == PROC_DENY)
		alen = 0; /* a denied exec: the new argv is in the new mm, not readable here */
	if (alen > STK_ARGS_MAX)
		alen = STK_ARGS_MAX;
	if (bpf_probe_read_user(&r->data[bound(off, 8191)], bound(alen, 1023), (void *)astart))
		alen = 0;
	r->args_len = alen & 1023;
	off += alen & 1023;

	r->h.size = sizeof(*r) + off;
	output(r, sizeof(*r) + (off & 16383));

	{
		__u32 tgid = r->h.tgid;
		struct tracked_val tv = { .start_time = r->start_time_ns, .cgroup_id = e.cgid };

		bpf_map_update_elem(&stk_tracked, &tgid, &tv, BPF_ANY);
	}
	return verdict;
}

/* sched_process_exit: the exit record of a process that had a record */
static __always_inline int exit_record(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct stk_proc_rec *r;
	struct stk_control *ctl;
	__u32 tgid, zero = 0;
	struct tracked_val *tv;

	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	tv = bpf_map_lookup_elem(&stk_tracked, &tgid);
	if (!tv)
		return 0;
	ctl = bpf_map_lookup_elem(&stk_control, &zero);
	r = bpf_map_lookup_elem(&stk_recbufs, &zero);
	if (!ctl || !r) {
		bpf_map_delete_elem(&stk_tracked, &tgid);
		return 0;
	}
	__builtin_memset(r, 0, sizeof(struct stk_proc_rec));
	r->h.version = STK_RECORD_VERSION;
	r->h.kind = STK_KIND_EXIT;
	r->h.hook = STK_HOOK_EXIT;
	r->h.slot = ctl->active_slot & 1;
	r->h.generation = ctl->generation[r->h.slot & 1];
	r->h.ktime_ns = bpf_ktime_get_ns();
	r->h.cgroup_id = tv->cgroup_id;
	r->h.mntns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	r->h.pid = BPF_CORE_READ(task, pid);
	r->h.tgid = tgid;
	r->h.ppid = BPF_CORE_READ(task, real_parent, tgid);
	r->h.uid = BPF_CORE_READ(task, cred, uid.val);
	r->h.gid = BPF_CORE_READ(task, cred, gid.val);
	proc_fields(r, task);
	r->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	r->h.size = sizeof(*r);
	output(r, sizeof(*r));
	bpf_map_delete_elem(&stk_tracked, &tgid);
	return 0;
}

#endif
