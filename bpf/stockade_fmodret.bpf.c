// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Stockade fmodret-mode programs, for kernels with BPF trampolines but without bpf in
 * the active LSM list: fmod_ret programs on the security_* functions that call the LSM
 * hooks lsm mode attaches to, with lsm mode's bodies (lib/deny.h), maps and records. An
 * fmod_ret program runs before the function; a non-zero return skips the function and is
 * returned in its place (-EPERM: the operation is refused before it happens, and no LSM
 * is asked), and `ret` is the return of the fmod_ret program before it on the same
 * function (0 if none). The sched_process_* and cgroup tracepoints as in lsm mode.
 * Loaded only where the probe found BPF LSM unusable and fmod_ret usable (docs/kernel.md).
 */
#include "common_progs.h"
#include "deny.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ------------------------------------------------------------- processes */

SEC("fmod_ret/security_bprm_check")
int BPF_PROG(stk_fmodret_exec, struct linux_binprm *bprm, int ret)
{
	return ret ?: deny_exec(ctx, bprm, STK_HOOK_FMODRET_BPRM_CHECK);
}

SEC("fmod_ret/security_task_alloc")
int BPF_PROG(stk_fmodret_fork, struct task_struct *task, unsigned long clone_flags, int ret)
{
	return ret ?: deny_fork(ctx, clone_flags, STK_HOOK_FMODRET_TASK_ALLOC);
}

SEC("fmod_ret/security_mmap_file")
int BPF_PROG(stk_fmodret_mmap, struct file *file, unsigned long prot, unsigned long flags,
	     int ret)
{
	return ret ?: deny_mmap(ctx, file, prot, STK_HOOK_FMODRET_MMAP_FILE);
}

/* sched_process_* and cgroup records: lib/common_progs.h */

/* ----------------------------------------------------------------- files */

SEC("fmod_ret/security_file_open")
int BPF_PROG(stk_fmodret_file_open, struct file *file, int ret)
{
	return ret ?: deny_file_open(file, STK_HOOK_FMODRET_FILE_OPEN);
}

SEC("fmod_ret/security_path_mknod")
int BPF_PROG(stk_fmodret_mknod, const struct path *dir, struct dentry *dentry, umode_t mode,
	     unsigned int dev, int ret)
{
	return ret ?: deny_mknod(dir, dentry, mode, STK_HOOK_FMODRET_PATH_MKNOD);
}

SEC("fmod_ret/security_path_unlink")
int BPF_PROG(stk_fmodret_unlink, const struct path *dir, struct dentry *dentry, int ret)
{
	return ret ?: deny_unlink(dir, dentry, STK_HOOK_FMODRET_PATH_UNLINK);
}

SEC("fmod_ret/security_path_rename")
int BPF_PROG(stk_fmodret_rename, const struct path *old_dir, struct dentry *old_dentry,
	     const struct path *new_dir, struct dentry *new_dentry, unsigned int flags, int ret)
{
	return ret ?: deny_rename(old_dir, old_dentry, new_dir, new_dentry, flags,
				  STK_HOOK_FMODRET_PATH_RENAME);
}

SEC("fmod_ret/security_path_link")
int BPF_PROG(stk_fmodret_link, struct dentry *old_dentry, const struct path *new_dir,
	     struct dentry *new_dentry, int ret)
{
	return ret ?: deny_link(old_dentry, new_dir, new_dentry, STK_HOOK_FMODRET_PATH_LINK);
}

SEC("fmod_ret/security_path_chmod")
int BPF_PROG(stk_fmodret_chmod, const struct path *path, umode_t mode, int ret)
{
	return ret ?: deny_chmod(path, mode, STK_HOOK_FMODRET_PATH_CHMOD);
}

/* truncate; before 6.2 also ftruncate and open(O_TRUNC) */
SEC("fmod_ret/security_path_truncate")
int BPF_PROG(stk_fmodret_truncate, const struct path *path, int ret)
{
	return ret ?: deny_truncate(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt),
				    STK_HOOK_FMODRET_PATH_TRUNCATE);
}

/* 6.2+: ftruncate and open(O_TRUNC) (not loaded where the function doesn't exist: FmodretSensor) */
SEC("fmod_ret/security_file_truncate")
int BPF_PROG(stk_fmodret_file_truncate, struct file *file, int ret)
{
	return ret ?: deny_truncate(BPF_CORE_READ(file, f_path.dentry),
				    BPF_CORE_READ(file, f_path.mnt), STK_HOOK_FMODRET_FILE_TRUNCATE);
}
