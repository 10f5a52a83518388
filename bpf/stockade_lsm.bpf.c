// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stockade lsm-mode programs: BPF LSM hooks that decide with the same code
 * and maps as kill mode (lib/) and return -EPERM before the
 * operation when a BLOCK applies (never for AUDIT_BLOCK); the
 * sched_process_{exec,fork,exit} tracepoints (shared) report processes,
 * cgroup_mkdir/rmdir (shared) cgroup v2 directories.
 * Loaded only where the probe found BPF LSM usable (see docs/kernel.md).
 */
#include "cgroup.h"
#include "file.h"
#include "process.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * open(O_TRUNC) of an existing file: file_open decides (modifyFile), then
 * the kernel calls path_truncate for the same file; this marks that call
 * (thread → dentry) so it is not decided and reported twice.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} stk_open_trunc SEC(".maps");

static __always_inline int is_reg(__u32 mode)
{
	return (mode & S_IFMT) == S_IFREG;
}

/*
 * (dentry, mnt) as a path source (the walk works for negative dentries too).
 * The pointers pass through the stack so that they become plain scalars
 * (6.1 refuses a trusted BTF pointer as a global function's argument).
 */
static __always_inline void kpath(struct dentry *d, struct vfsmount *m, struct path_src *src)
{
	bpf_probe_read_kernel(&src->dentry, sizeof(src->dentry), &d);
	bpf_probe_read_kernel(&src->mnt, sizeof(src->mnt), &m);
}

/* ------------------------------------------------------------- processes */

SEC("lsm/bprm_check_security")
int BPF_PROG(stk_lsm_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	return handle_process(ctx, STK_HOOK_LSM_BPRM_CHECK, NULL, BPF_CORE_READ(bprm, file),
			      BPF_CORE_READ(bprm, filename), 1);
}

SEC("lsm/task_alloc")
int BPF_PROG(stk_lsm_fork, struct task_struct *task, unsigned long clone_flags, int ret)
{
	if (ret)
		return ret;
	if (clone_flags & CLONE_THREAD)
		return 0; /* a new thread, not a new process */
	return handle_process(ctx, STK_HOOK_LSM_TASK_ALLOC, NULL, NULL, NULL, 1);
}

/* sched_process_*: what the hooks allowed, reported after it happened (as in kill mode) */

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

/* cgroup v2 directories made and removed: containers known before their first exec (lib/cgroup.h) */

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

/* ----------------------------------------------------------------- files */

SEC("lsm/file_open")
int BPF_PROG(stk_lsm_file_open, struct file *file, int ret)
{
	struct path_src src = {};
	struct entry e;
	__u32 flags, mode, fmode, ops;
	__u64 id, d;
	int verdict;

	if (ret)
		return ret;
	flags = BPF_CORE_READ(file, f_flags);
	if ((flags & O_ACCMODE) == 0 && !(flags & (O_CREAT | O_TRUNC)))
		return 0; /* read-only open (incl. exec) */
	if (!enter(&e))
		return 0;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	fmode = BPF_CORE_READ(file, f_mode);
	if (!is_reg(mode) || (fmode & FMODE_CREATED))
		return 0; /* a new file was decided at path_mknod, before it existed */
	ops = 1u << STK_OP_MODIFY_FILE | (mode & S_IXUGO ? 1u << STK_OP_MODIFY_EXECUTABLE : 0);
	d = (__u64)BPF_CORE_READ(file, f_path.dentry);
	kpath((struct dentry *)d, BPF_CORE_READ(file, f_path.mnt), &src);
	verdict = file_decide(&e, STK_HOOK_LSM_FILE_OPEN, ops, flags, mode, fmode, &src, 1);
	if (!verdict && (flags & O_TRUNC)) {
		id = bpf_get_current_pid_tgid();
		bpf_map_update_elem(&stk_open_trunc, &id, &d, BPF_ANY);
	}
	return verdict;
}

SEC("lsm/path_mknod")
int BPF_PROG(stk_lsm_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops;

	if (ret)
		return ret;
	if ((mode & S_IFMT) != 0 && !is_reg(mode))
		return 0;
	if (!enter(&e))
		return 0;
	ops = 1u << STK_OP_CREATE_FILE | (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
	kpath(dentry, BPF_CORE_READ(dir, mnt), &src);
	return file_decide(&e, STK_HOOK_LSM_PATH_MKNOD, ops, 0, mode, 0, &src, 1);
}

SEC("lsm/path_unlink")
int BPF_PROG(stk_lsm_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	struct path_src src = {};
	struct entry e;
	__u32 mode;

	if (ret)
		return ret;
	if (!enter(&e))
		return 0;
	mode = BPF_CORE_READ(dentry, d_inode, i_mode);
	kpath(dentry, BPF_CORE_READ(dir, mnt), &src);
	return file_decide(&e, STK_HOOK_LSM_PATH_UNLINK, 1u << STK_OP_DELETE_FILE, 0, mode, 0,
			   &src, 1);
}

SEC("lsm/path_rename")
int BPF_PROG(stk_lsm_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops, mode;

	if (ret)
		return ret;
	if (!enter(&e))
		return 0;
	/* as in kill mode: the new name, create + modify + delete; then the old name, gone
	 * (deleteFile) or, exchanged, replaced */
	ops = 1u << STK_OP_CREATE_FILE | 1u << STK_OP_MODIFY_FILE | 1u << STK_OP_DELETE_FILE;
	mode = BPF_CORE_READ(old_dentry, d_inode, i_mode);
	kpath(new_dentry, BPF_CORE_READ(new_dir, mnt), &src);
	src.moves = 1; /* a directory moves the paths below it */
	ret = file_decide(&e, STK_HOOK_LSM_PATH_RENAME, ops, flags, mode, 0, &src, 1);
	if (ret)
		return ret;
	kpath(old_dentry, BPF_CORE_READ(old_dir, mnt), &src);
	return file_decide(&e, STK_HOOK_LSM_PATH_RENAME,
			   flags & RENAME_EXCHANGE ? ops : 1u << STK_OP_DELETE_FILE, flags, mode, 0,
			   &src, 1);
}

SEC("lsm/path_link")
int BPF_PROG(stk_lsm_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	struct path_src src = {};
	struct entry e;

	if (ret)
		return ret;
	if (!enter(&e))
		return 0;
	kpath(new_dentry, BPF_CORE_READ(new_dir, mnt), &src);
	return file_decide(&e, STK_HOOK_LSM_PATH_LINK, 1u << STK_OP_CREATE_FILE, 0,
			   BPF_CORE_READ(old_dentry, d_inode, i_mode), 0, &src, 1);
}

SEC("lsm/path_chmod")
int BPF_PROG(stk_lsm_chmod, const struct path *path, umode_t mode, int ret)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops;

	if (ret)
		return ret;
	if (!enter(&e))
		return 0;
	/*
	 * As kill mode's chmod by path (events identical in both modes): modifyFile,
	 * + createExecutable when the new mode has an x bit. (fchmod comes here too.)
	 */
	ops = 1u << STK_OP_MODIFY_FILE | (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
	kpath(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt), &src);
	return file_decide(&e, STK_HOOK_LSM_PATH_CHMOD, ops, 0, mode, 0, &src, 1);
}

/* truncate, ftruncate, open(O_TRUNC) (skipped: decided at file_open) of (d, m) */
static __always_inline int truncate_decide(struct dentry *d, struct vfsmount *m, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u64 id, *marked;
	__u32 mode;

	id = bpf_get_current_pid_tgid();
	marked = bpf_map_lookup_elem(&stk_open_trunc, &id);
	if (marked) {
		int same = *marked == (__u64)d;

		bpf_map_delete_elem(&stk_open_trunc, &id);
		if (same)
			return 0; /* open(O_TRUNC): decided at file_open */
	}
	if (!enter(&e))
		return 0;
	mode = BPF_CORE_READ(d, d_inode, i_mode);
	if (!is_reg(mode))
		return 0;
	/* as kill mode's truncate by path: modifyFile */
	kpath(d, m, &src);
	return file_decide(&e, hook, 1u << STK_OP_MODIFY_FILE, 0, mode, 0, &src, 1);
}

/* truncate; before 6.2 also ftruncate and open(O_TRUNC) */
SEC("lsm/path_truncate")
int BPF_PROG(stk_lsm_truncate, const struct path *path, int ret)
{
	if (ret)
		return ret;
	return truncate_decide(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt),
			       STK_HOOK_LSM_PATH_TRUNCATE);
}

/* 6.2+: ftruncate and open(O_TRUNC) (not loaded where the hook doesn't exist: LsmSensor) */
SEC("lsm/file_truncate")
int BPF_PROG(stk_lsm_file_truncate, struct file *file, int ret)
{
	if (ret)
		return ret;
	return truncate_decide(BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt),
			       STK_HOOK_LSM_FILE_TRUNCATE);
}
