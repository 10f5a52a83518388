// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stockade lsm-mode programs: BPF LSM hooks that decide with the same code
 * and maps as kill mode (lib/) and return -EPERM before the
 * operation when a BLOCK applies (never for AUDIT_BLOCK; the bodies are lib/deny.h's,
 * shared with fmodret mode); the sched_process_{exec,fork,exit} tracepoints (shared)
 * report processes, cgroup_mkdir/rmdir (shared) cgroup v2 directories.
 * Loaded only where the probe found BPF LSM usable (see docs/kernel.md).
 */
#include "common_progs.h"
#include "deny.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ------------------------------------------------------------- processes */

SEC("lsm/bprm_check_security")
int BPF_PROG(stk_lsm_exec, struct linux_binprm *bprm, int ret)
{
	return ret ?: deny_exec(ctx, bprm, STK_HOOK_LSM_BPRM_CHECK);
}

SEC("lsm/task_alloc")
int BPF_PROG(stk_lsm_fork, struct task_struct *task, unsigned long clone_flags, int ret)
{
	return ret ?: deny_fork(ctx, clone_flags, STK_HOOK_LSM_TASK_ALLOC);
}

SEC("lsm/mmap_file")
int BPF_PROG(stk_lsm_mmap, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	return ret ?: deny_mmap(ctx, file, prot, STK_HOOK_LSM_MMAP_FILE);
}

/* sched_process_* and cgroup records: lib/common_progs.h */

/* ----------------------------------------------------------------- files */

SEC("lsm/file_open")
int BPF_PROG(stk_lsm_file_open, struct file *file, int ret)
{
	return ret ?: deny_file_open(file, STK_HOOK_LSM_FILE_OPEN);
}

SEC("lsm/path_mknod")
int BPF_PROG(stk_lsm_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	return ret ?: deny_mknod(dir, dentry, mode, STK_HOOK_LSM_PATH_MKNOD);
}

SEC("lsm/path_unlink")
int BPF_PROG(stk_lsm_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	return ret ?: deny_unlink(dir, dentry, STK_HOOK_LSM_PATH_UNLINK);
}

SEC("lsm/path_rename")
int BPF_PROG(stk_lsm_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	return ret ?: deny_rename(old_dir, old_dentry, new_dir, new_dentry, flags,
				  STK_HOOK_LSM_PATH_RENAME);
}

SEC("lsm/path_link")
int BPF_PROG(stk_lsm_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	return ret ?: deny_link(old_dentry, new_dir, new_dentry, STK_HOOK_LSM_PATH_LINK);
}

SEC("lsm/path_chmod")
int BPF_PROG(stk_lsm_chmod, const struct path *path, umode_t mode, int ret)
{
	return ret ?: deny_chmod(path, mode, STK_HOOK_LSM_PATH_CHMOD);
}

/* truncate; before 6.2 also ftruncate and open(O_TRUNC) */
SEC("lsm/path_truncate")
int BPF_PROG(stk_lsm_truncate, const struct path *path, int ret)
{
	return ret ?: deny_truncate(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt),
				    STK_HOOK_LSM_PATH_TRUNCATE);
}

/* 6.2+: ftruncate and open(O_TRUNC) (not loaded where the hook doesn't exist: LsmSensor) */
SEC("lsm/file_truncate")
int BPF_PROG(stk_lsm_file_truncate, struct file *file, int ret)
{
	return ret ?: deny_truncate(BPF_CORE_READ(file, f_path.dentry),
				    BPF_CORE_READ(file, f_path.mnt), STK_HOOK_LSM_FILE_TRUNCATE);
}
