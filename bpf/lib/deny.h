/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The modes that deny before the operation: lsm (BPF LSM hooks) and fmodret (fmod_ret
 * programs on the security_* functions that call those hooks) run these same bodies, each
 * taking its hook's arguments and the hook id its records carry. Each returns the verdict:
 * -EPERM when a BLOCK applies (never for AUDIT_BLOCK), else 0. The programs return a
 * non-zero `ret` (an earlier LSM's verdict; in fmodret mode, an earlier fmod_ret program's)
 * before calling them.
 */
#ifndef STK_DENY_H
#define STK_DENY_H

#include "file.h"
#include "process.h"

/*
 * open(O_TRUNC) of an existing file: deny_file_open decides (modifyFile), then the kernel
 * asks about truncating the same file; this marks that call (thread → dentry) so it is not
 * decided and reported twice.
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

/* exec: only a BLOCK is handled here; the sched_process_exec tracepoint reports the rest */
static __always_inline int deny_exec(void *ctx, struct linux_binprm *bprm, __u32 hook)
{
	return handle_process(ctx, hook, NULL, BPF_CORE_READ(bprm, file),
			      BPF_CORE_READ(bprm, filename), PROC_DENY);
}

/*
 * A file's code mapped PROT_EXEC without an exec of it (`ld.so PROGRAM`; the kernel's own
 * mappings of the executable are skipped): decided as an exec of that file, by its path and
 * name; only a BLOCK acts — every shared library is mapped so (kill mode: stk_mmap_exec).
 */
static __always_inline int deny_mmap(void *ctx, struct file *file, unsigned long prot,
				     __u32 hook)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct file *exe;

	if (!file || !(prot & PROT_EXEC))
		return 0;
	exe = task->mm ? task->mm->exe_file : NULL;
	if (exe && BPF_CORE_READ(exe, f_inode) == BPF_CORE_READ(file, f_inode))
		return 0;
	return handle_process(ctx, hook, NULL, file,
			      (const char *)BPF_CORE_READ(file, f_path.dentry, d_name.name),
			      PROC_MAPPED_DENY);
}

/* fork (a new process, not a thread): as exec */
static __always_inline int deny_fork(void *ctx, unsigned long clone_flags, __u32 hook)
{
	if (clone_flags & CLONE_THREAD)
		return 0;
	return handle_process(ctx, hook, NULL, NULL, NULL, PROC_DENY);
}

/* write/O_TRUNC/O_CREAT opens of an existing regular file: modifyFile (+modifyExecutable) */
static __always_inline int deny_file_open(struct file *file, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 flags, mode, fmode, ops;
	__u64 id, d;
	int verdict;

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
	verdict = file_decide_names(&e, hook, ops, flags, mode, fmode, &src, 1);
	if (!verdict && (flags & O_TRUNC)) {
		id = bpf_get_current_pid_tgid();
		bpf_map_update_elem(&stk_open_trunc, &id, &d, BPF_ANY);
	}
	return verdict;
}

/* mknod and open(O_CREAT) of a new file: createFile (+createExecutable) */
static __always_inline int deny_mknod(const struct path *dir, struct dentry *dentry, umode_t mode,
				      __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops;

	if ((mode & S_IFMT) != 0 && !is_reg(mode))
		return 0;
	if (!enter(&e))
		return 0;
	ops = 1u << STK_OP_CREATE_FILE | (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
	kpath(dentry, BPF_CORE_READ(dir, mnt), &src);
	return file_decide(&e, hook, ops, 0, mode, 0, &src, 1);
}

static __always_inline int deny_unlink(const struct path *dir, struct dentry *dentry, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 mode;

	if (!enter(&e))
		return 0;
	mode = BPF_CORE_READ(dentry, d_inode, i_mode);
	kpath(dentry, BPF_CORE_READ(dir, mnt), &src);
	return file_decide(&e, hook, 1u << STK_OP_DELETE_FILE, 0, mode, 0, &src, 1);
}

/* a name that a rename or link gives to a file with an execute bit creates an executable */
static __always_inline __u32 created_executable(__u32 mode)
{
	return is_reg(mode) && (mode & S_IXUGO) ? 1u << STK_OP_CREATE_EXECUTABLE : 0;
}

static __always_inline int deny_rename(const struct path *old_dir, struct dentry *old_dentry,
				       const struct path *new_dir, struct dentry *new_dentry,
				       unsigned int flags, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops, mode, new_mode;
	int verdict;

	if (!enter(&e))
		return 0;
	/* as in kill mode: the new name, create + modify + delete; then the old name, gone
	 * (deleteFile) or, exchanged, replaced; a name given to an executable also
	 * createExecutable */
	ops = 1u << STK_OP_CREATE_FILE | 1u << STK_OP_MODIFY_FILE | 1u << STK_OP_DELETE_FILE;
	mode = BPF_CORE_READ(old_dentry, d_inode, i_mode);
	kpath(new_dentry, BPF_CORE_READ(new_dir, mnt), &src);
	src.moves = 1; /* a directory moves the paths below it */
	verdict = file_decide(&e, hook, ops | created_executable(mode), flags, mode, 0, &src, 1);
	if (verdict)
		return verdict;
	kpath(old_dentry, BPF_CORE_READ(old_dir, mnt), &src);
	if (!(flags & RENAME_EXCHANGE))
		return file_decide(&e, hook, 1u << STK_OP_DELETE_FILE, flags, mode, 0, &src, 1);
	new_mode = BPF_CORE_READ(new_dentry, d_inode, i_mode);
	return file_decide(&e, hook, ops | created_executable(new_mode), flags, new_mode, 0, &src,
			   1);
}

/*
 * A hard link: createFile (+createExecutable) of the new name, and modifyFile
 * (+modifyExecutable) of the file linked, under each of its names: a link is a change of
 * the file (its link count, its ctime) that gives it a name the policy may not guard, so a
 * file that may not be changed may not be linked either (AppArmor: a link may not grant
 * more than its target allows).
 */
static __always_inline int deny_link(struct dentry *old_dentry, const struct path *new_dir,
				     struct dentry *new_dentry, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 mode;
	int verdict;

	if (!enter(&e))
		return 0;
	mode = BPF_CORE_READ(old_dentry, d_inode, i_mode);
	kpath(new_dentry, BPF_CORE_READ(new_dir, mnt), &src);
	verdict = file_decide(&e, hook, 1u << STK_OP_CREATE_FILE | created_executable(mode), 0,
			      mode, 0, &src, 1);
	if (verdict || !is_reg(mode))
		return verdict;
	kpath(old_dentry, BPF_CORE_READ(new_dir, mnt), &src);
	return file_decide_names(&e, hook, 1u << STK_OP_MODIFY_FILE |
				 (mode & S_IXUGO ? 1u << STK_OP_MODIFY_EXECUTABLE : 0),
				 0, mode, 0, &src, 1);
}

static __always_inline int deny_chmod(const struct path *path, umode_t mode, __u32 hook)
{
	struct path_src src = {};
	struct entry e;
	__u32 ops;

	if (!enter(&e))
		return 0;
	/*
	 * As kill mode's chmod by path (events identical in both modes): modifyFile,
	 * + createExecutable when the new mode has an x bit. (fchmod comes here too.)
	 */
	ops = 1u << STK_OP_MODIFY_FILE | (mode & S_IXUGO ? 1u << STK_OP_CREATE_EXECUTABLE : 0);
	kpath(BPF_CORE_READ(path, dentry), BPF_CORE_READ(path, mnt), &src);
	return file_decide_names(&e, hook, ops, 0, mode, 0, &src, 1);
}

/* truncate, ftruncate, open(O_TRUNC) (skipped: decided at file_open) of (d, m) */
static __always_inline int deny_truncate(struct dentry *d, struct vfsmount *m, __u32 hook)
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
	return file_decide_names(&e, hook, 1u << STK_OP_MODIFY_FILE, 0, mode, 0, &src, 1);
}

#endif
