/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What Stockade's two BPF objects share (stockade.bpf.c: kill mode,
 * stockade_lsm.bpf.c: lsm mode): the maps, path resolution, the decision
 * (stk_evaluate), record writing, the process handler and the
 * sched_process_{exec,fork,exit} programs. Included once per object; see
 * docs/kernel.md.
 */
#ifndef STOCKADE_COMMON_H
#define STOCKADE_COMMON_H
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "stockade.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SIGKILL 9
#define STK_EPERM 1
#define CLONE_THREAD 0x10000
#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_WRONLY 01
#define S_IFMT 0170000
#define S_IFREG 0100000
#define S_IXUGO 0111
#define FMODE_CREATED 0x100000

/* path buffer: reverse walk ends at PB_END, "/" + user string follows it */
#define PB_END 4096
#define PB_SIZE 12288
#define REC_SIZE 12288

/* ------------------------------------------------------------------ maps */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stk_control);
} control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct stk_cgroup_key);
	__type(value, struct stk_cgroup_val);
} cgroup_masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * STK_OP_SLOTS);
	__type(key, __u32);
	__type(value, struct stk_mask);
} op_masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct stk_part_masks);
} part_masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stk_path_key);
	__type(value, struct stk_mask);
} exact_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stk_path_key);
	__type(value, struct stk_mask);
} child_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_lpm_key);
	__type(value, struct stk_mask);
} recursive_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stk_head_key);
	__type(value, __u8);
} path_heads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stk_name_key);
	__type(value, struct stk_mask);
} names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * STK_MAX_RESPONSES);
	__type(key, __u32);
	__type(value, struct stk_response);
} responses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STK_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

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
} tracked SEC(".maps");

struct eval_in {
	__u32 slot;
	__u32 part;
	__u32 ops;
	__u32 start;
	__u32 len;
	__u32 leaf;
	__u8 ok;
	__u8 tables; /* STK_TABLE_* bits: the path tables to look the path up in */
	__u8 volume;
	__u8 interactive;
	char comm[16];
};

struct scratch {
	struct eval_in in;
	struct stk_mask matched;
	struct stk_mask tmp;
	struct stk_path_key pkey;
	struct stk_lpm_key lkey;
	struct stk_name_key nkey;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

struct pathbuf {
	char b[PB_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pathbuf);
} pathbufs SEC(".maps");

struct recbuf {
	char b[REC_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct recbuf);
} recbufs SEC(".maps");

extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				__u64 value) __ksym __weak;

#ifndef bpf_ksym_exists /* libbpf < 1.2 */
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/* --------------------------------------------------------------- helpers */

/* x & mask that the compiler can't fold away (keeps the verifier's bounds) */
static __always_inline __u32 bound(__u32 x, __u32 mask)
{
	asm volatile("" : "+r"(x));
	return x & mask;
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/*
 * A resolved path: bytes [start, start + len) of a path buffer. `tables`:
 * the path tables that have entries under its first component (STK_TABLE_*
 * bits); 0: none, so it was not walked (only the volume is known; resolve
 * again without the filter for a record).
 */
struct rpath {
	__u32 start;
	__u32 len;
	__u32 leaf;   /* offset (from start) of the last '/' */
	__u8 volume;
	__u8 ok;
	__u8 truncated;
	__u8 tables;
};

/* offset (from start) of the last '/' in [start, start+len); leaf names are <= 255 bytes */
struct leaf_ctx {
	__u32 buf;
	__u32 start;
	__u32 len;
	__u32 leaf;
};

static long leaf_cb(__u32 i, void *data)
{
	struct leaf_ctx *c = data;
	struct pathbuf *pb = bpf_map_lookup_elem(&pathbufs, &c->buf);
	__u32 p;

	if (!pb || i + 1 > c->len)
		return 1;
	p = c->start + c->len - 1 - i;
	if (pb->b[p & (PB_SIZE - 1 - 4096)] == '/') {
		c->leaf = p - c->start;
		return 1;
	}
	return 0;
}

static __always_inline __u32 find_leaf(__u32 buf, __u32 start, __u32 len)
{
	struct leaf_ctx c = { .buf = buf, .start = start, .len = len, .leaf = 0 };

	bpf_loop(257, leaf_cb, &c, 0);
	return c.leaf;
}

static __always_inline __u8 volume_kind(struct vfsmount *vmnt, struct vfsmount *root_mnt)
{
	struct dentry *mroot;
	__u16 mode;

	if (vmnt == root_mnt)
		return STK_VOL_NONE;
	mroot = BPF_CORE_READ(vmnt, mnt_root);
	mode = BPF_CORE_READ(mroot, d_inode, i_mode);
	if ((mode & S_IFMT) == S_IFREG)
		return STK_VOL_FILE;
	return STK_VOL_MOUNT;
}

/*
 * d_path-like walk from (dentry, vmnt) up to the task's root, crossing
 * mounts. A copying walk writes the path so that it ends at b[PB_END]; a
 * non-copying one only finds the head (the component just below the root:
 * the path's first). One bpf_loop step per component (the verifier checks
 * the step once), at most STK_MAX_DEPTH components (then trunc is set).
 */
struct walk_ctx {
	struct dentry *d;
	struct vfsmount *vmnt;
	struct mount *mnt;
	struct dentry *mnt_root; /* vmnt->mnt_root, read once per mount */
	struct dentry *root_d;
	struct vfsmount *root_m;
	struct dentry *head;
	__u32 pos;
	__u32 leaf_pos; /* the leaf's '/' (PB_END until a component is written) */
	__u32 buf;
	__u8 copy;
	__u8 trunc;
	__u8 done;
};

static long walk_cb(__u32 i, void *data)
{
	struct walk_ctx *w = data;
	struct dentry *d = w->d, *parent;
	struct mount *mnt = w->mnt;
	struct pathbuf *pb;
	struct qstr q;
	__u32 len, pos = w->pos;

	if (d == w->root_d && w->vmnt == w->root_m)
		goto done;
	if (d == w->mnt_root) {
		struct mount *pm = BPF_CORE_READ(mnt, mnt_parent);
		struct vfsmount *pvm = &pm->mnt;

		if (pm == mnt)
			goto done;
		w->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = pm;
		w->vmnt = pvm;
		w->mnt_root = BPF_CORE_READ(pvm, mnt_root);
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (parent == d)
		goto done;
	w->head = d;
	w->d = parent;
	if (!w->copy)
		return 0;
	pb = bpf_map_lookup_elem(&pathbufs, &w->buf);
	if (!pb)
		return 1;
	q = BPF_CORE_READ(d, d_name);
	len = q.len;
	if (len > 255)
		len = 255;
	if (len + 1 >= pos) {
		w->trunc = 1;
		goto done;
	}
	pos -= len;
	bpf_probe_read_kernel(&pb->b[pos & (PB_END - 1)], bound(len, 255), q.name);
	pos -= 1;
	pb->b[pos & (PB_END - 1)] = '/';
	w->pos = pos & (PB_END - 1); /* stable range: lets the verifier converge */
	if (w->leaf_pos == PB_END)
		w->leaf_pos = w->pos;
	return 0;
done:
	w->done = 1;
	return 1;
}

struct troot {
	struct dentry *d;
	struct vfsmount *m;
};

static __always_inline void walk(struct walk_ctx *w, __u32 buf, __u8 copy, struct dentry *dentry,
				 struct vfsmount *vmnt, struct troot *root)
{
	w->d = dentry;
	w->vmnt = vmnt;
	w->mnt = container_of(vmnt, struct mount, mnt);
	w->mnt_root = BPF_CORE_READ(vmnt, mnt_root);
	w->root_d = root->d;
	w->root_m = root->m;
	w->head = NULL;
	w->pos = PB_END;
	w->leaf_pos = PB_END;
	w->buf = buf;
	w->copy = copy;
	w->trunc = 0;
	w->done = 0;
	bpf_loop(STK_MAX_DEPTH, walk_cb, w, 0);
	if (!w->done)
		w->trunc = 1;
}

/* Copying walk; returns where the path starts in b (it ends at PB_END). */
static __always_inline __u32 walk_path(char *b, struct walk_ctx *w, __u32 buf,
				       struct dentry *dentry, struct vfsmount *vmnt,
				       struct troot *root)
{
	__u32 pos;

	walk(w, buf, 1, dentry, vmnt, root);
	pos = w->pos;
	if (pos >= PB_END) {
		pos = PB_END - 1;
		b[PB_END - 1] = '/';
	}
	return pos;
}

/* the current task's root (direct loads: no helper calls) */
static __always_inline void task_root(struct troot *r)
{
	struct fs_struct *fs = bpf_get_current_task_btf()->fs;

	r->d = fs->root.dentry;
	r->m = fs->root.mnt;
}

static __always_inline void resolve_kpath(char *b, __u32 buf, struct dentry *d,
					  struct vfsmount *m, struct troot *root, struct rpath *rp)
{
	struct walk_ctx w;
	__u32 pos = walk_path(b, &w, buf, d, m, root);

	rp->start = pos;
	rp->len = PB_END - pos;
	rp->leaf = w.leaf_pos < PB_END ? w.leaf_pos - pos : 0;
	rp->volume = volume_kind(m, root->m);
	rp->truncated = w.trunc;
	rp->ok = 1;
}

/*
 * The path tables of the part (head_tag = slot << 8 | part) that have entries
 * under the first component of (d, m)'s path (STK_TABLE_* bits, 0: none).
 * Walks to that component without copying anything, looks it up in path_heads.
 */
static __always_inline __u8 head_tables(__u32 head_tag, struct dentry *d, struct vfsmount *m,
					struct troot *root)
{
	__u32 idx = ((head_tag >> 8) & 1) * 2 + (head_tag & 1), n;
	struct stk_head_key key = {};
	struct stk_part_masks *pm;
	struct walk_ctx w;
	struct dentry *head;
	struct qstr q;
	__u8 *bits;

	pm = bpf_map_lookup_elem(&part_masks, &idx);
	if (!pm || pm->any_head)
		return STK_TABLE_ALL;
	walk(&w, 0, 0, d, m, root);
	head = w.head;
	if (w.trunc || !head)
		return STK_TABLE_ALL; /* too deep, or the root itself: no filter */
	q = BPF_CORE_READ(head, d_name);
	n = q.len;
	if (n > STK_HEAD_BYTES)
		n = STK_HEAD_BYTES;
	key.tag = head_tag & 0xffff;
	key.len = q.len > STK_HEAD_BYTES ? STK_HEAD_BYTES + 1 : q.len;
	bpf_probe_read_kernel(key.head, n, q.name);
	bits = bpf_map_lookup_elem(&path_heads, &key);
	return bits ? *bits : 0;
}

/* the current task's open file `fd` (direct loads up to the fd array: no helper calls) */
static __always_inline struct file *fd_file(__s64 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	struct file *f = NULL;

	if (fd < 0 || !fdt || (__u64)fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fdt->fd[fd]);
	return f;
}

/*
 * In-place normalisation of a user-string path ("/a/./b//../c" -> "/a/c"),
 * one bpf_loop step per byte. The loop state lives in a map value, so the
 * verifier sees unknown scalars and checks the step once. ".." above the
 * root stays at the root; more than 64 nested components before a ".."
 * are not tracked (the path is then flagged truncated).
 */
struct norm_state {
	__u32 start;
	__u32 len;
	__u32 w;     /* write offset (from start) */
	__u32 cs;    /* offset of the current component's leading '/' */
	__u32 depth;
	__u32 lost;
	__u16 seg[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct norm_state);
} norm_map SEC(".maps");

#define NB(off) pb->b[(n->start + (off)) & (PB_SIZE - 1 - 4096)]

static long norm_cb(__u32 i, void *data)
{
	__u32 zero = 0, idx = i + 1, w, cs, len;
	struct norm_state *n = bpf_map_lookup_elem(&norm_map, &zero);
	struct pathbuf *pb = bpf_map_lookup_elem(&pathbufs, &zero);
	char ch;

	if (!n || !pb)
		return 1;
	len = n->len;
	if (idx > len)
		return 1;
	w = n->w & 8191;
	cs = n->cs & 8191;
	ch = idx < len ? NB(idx) : '/';
	if (ch != '/') {
		NB(w) = ch;
		n->w = w + 1;
		return 0;
	}
	if (w <= cs + 1) /* empty component ("//") */
		return 0;
	if (w == cs + 2 && NB(cs + 1) == '.') {
		n->w = cs + 1;
		return 0;
	}
	if (w == cs + 3 && NB(cs + 1) == '.' && NB(cs + 2) == '.') {
		if (n->depth > 0 && n->depth <= 64) {
			n->depth -= 1;
			cs = n->seg[n->depth & 63];
			n->cs = cs;
		} else if (n->depth > 64) {
			n->lost = 1;
		}
		n->w = cs + 1;
		return 0;
	}
	if (idx < len) {
		if (n->depth < 64)
			n->seg[n->depth & 63] = cs;
		n->depth += 1;
		n->cs = w;
		NB(w) = '/';
		n->w = w + 1;
	}
	return 0;
}

/* normalises buffer 0 [start, start+len) in place; returns the new length */
static __always_inline __u32 normalize(__u32 start, __u32 len, __u8 *trunc)
{
	__u32 zero = 0, w;
	struct norm_state *n = bpf_map_lookup_elem(&norm_map, &zero);
	struct pathbuf *pb = bpf_map_lookup_elem(&pathbufs, &zero);

	if (!n || !pb || len < 2)
		return len;
	n->start = start;
	n->len = len;
	n->w = 1;
	n->cs = 0;
	n->depth = 0;
	n->lost = 0;
	bpf_loop(len & 8191, norm_cb, NULL, 0);
	w = n->w & 8191;
	if (w > 1 && NB(w - 1) == '/')
		w--;
	if (n->lost)
		*trunc = 1;
	return w ? w : 1;
}

/*
 * Path as the process sees it from a user string: absolute strings are
 * taken as they are, relative ones are joined to the dirfd's path (or the
 * cwd). No "."/".." normalisation (see docs/kernel.md).
 */
static __always_inline void resolve_user(char *b, struct task_struct *task, __s64 dirfd,
					 const char *upath, struct troot *root, struct rpath *rp)
{
	long n;

	rp->ok = 0;
	n = bpf_probe_read_user_str(&b[PB_END + 1], STK_PATH_REC_MAX, upath);
	if (n <= 1)
		return;
	if (b[PB_END + 1] == '/') {
		rp->start = PB_END + 1;
		rp->len = n - 1;
		rp->volume = STK_VOL_NONE;
		rp->truncated = n >= STK_PATH_REC_MAX;
	} else {
		struct walk_ctx w;
		struct dentry *d;
		struct vfsmount *m;
		__u32 pos;

		if (dirfd == AT_FDCWD) {
			struct fs_struct *fs = BPF_CORE_READ(task, fs);

			d = BPF_CORE_READ(fs, pwd.dentry);
			m = BPF_CORE_READ(fs, pwd.mnt);
		} else {
			struct file *f = fd_file(dirfd);

			if (!f)
				return;
			d = BPF_CORE_READ(f, f_path.dentry);
			m = BPF_CORE_READ(f, f_path.mnt);
		}
		pos = walk_path(b, &w, 0, d, m, root);
		b[PB_END] = '/';
		if (pos == PB_END - 1)
			pos = PB_END; /* base is "/": avoid "//" */
		rp->start = pos;
		rp->len = PB_END + 1 + (n - 1) - pos;
		rp->volume = volume_kind(m, root->m);
		rp->truncated = w.trunc || n >= STK_PATH_REC_MAX;
	}
	rp->len = normalize(rp->start, rp->len, &rp->truncated);
	rp->leaf = find_leaf(0, rp->start, rp->len);
	rp->ok = 1;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct rpath);
} rpaths SEC(".maps");

/* head_tag for stk_resolve_kpath: filter on the part's path heads */
#define HEAD_FILTER(slot, part) (1u << 16 | ((slot) & 1) << 8 | ((part) & 1))

/*
 * Global functions, so the verifier checks each once per program instead of
 * once per call site and state. Results go to rpaths[buf]. With a head_tag
 * (HEAD_FILTER), rpaths[buf].tables says which tables of that part can match,
 * and a path that none can is not walked.
 */
__noinline int stk_resolve_kpath(__u32 buf, __u64 dentry, __u64 vmnt, __u32 head_tag)
{
	struct pathbuf *pb;
	struct rpath *rp;
	struct troot root;

	buf &= 1;
	pb = bpf_map_lookup_elem(&pathbufs, &buf);
	rp = bpf_map_lookup_elem(&rpaths, &buf);
	if (!pb || !rp)
		return 0;
	rp->ok = 0;
	if (!dentry || !vmnt)
		return 0;
	task_root(&root);
	rp->tables = head_tag ? head_tables(head_tag, (struct dentry *)dentry,
					    (struct vfsmount *)vmnt, &root) : STK_TABLE_ALL;
	if (!rp->tables) {
		rp->start = PB_END;
		rp->len = 0;
		rp->leaf = 0;
		rp->volume = volume_kind((struct vfsmount *)vmnt, root.m);
		rp->truncated = 0;
		rp->ok = 1;
		return 1;
	}
	resolve_kpath(pb->b, buf, (struct dentry *)dentry, (struct vfsmount *)vmnt, &root, rp);
	return rp->ok;
}

__noinline int stk_resolve_user(__s64 dirfd, __u64 upath)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pathbuf *pb;
	struct rpath *rp;
	struct troot root;
	__u32 zero = 0;

	pb = bpf_map_lookup_elem(&pathbufs, &zero);
	rp = bpf_map_lookup_elem(&rpaths, &zero);
	if (!pb || !rp)
		return 0;
	rp->ok = 0;
	rp->tables = STK_TABLE_ALL;
	task_root(&root);
	resolve_user(pb->b, task, dirfd, (const char *)upath, &root, rp);
	return rp->ok;
}

static __always_inline void get_rpath(__u32 buf, struct rpath *out)
{
	struct rpath *rp = bpf_map_lookup_elem(&rpaths, &buf);

	if (rp)
		__builtin_memcpy(out, rp, sizeof(*out));
	else
		out->ok = 0;
}

/* dst &= src; returns whether a bit is left */
static __always_inline int mask_and(struct stk_mask *dst, const struct stk_mask *src)
{
	__u64 acc = 0;
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++) {
		dst->w[i] &= src->w[i];
		acc |= dst->w[i];
	}
	return acc != 0;
}

static __always_inline void mask_or(struct stk_mask *dst, const struct stk_mask *src)
{
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		dst->w[i] |= src->w[i];
}

static __always_inline void mask_andnot(struct stk_mask *dst, const struct stk_mask *src)
{
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		dst->w[i] &= ~src->w[i];
}

static __always_inline int mask_zero(const struct stk_mask *m)
{
	__u64 acc = 0;
	int i;

	/* not unrolled: unrolled, the spills made stk_evaluate's frame 352 bytes, over
	 * 6.1's 512-byte limit for the whole call chain */
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		acc |= m->w[i];
	return acc == 0;
}

struct resp_ctx {
	__u32 base;
	__u32 actions;
};

static long resp_cb(__u32 i, void *data)
{
	struct resp_ctx *c = data;
	__u32 idx = c->base + i, zero = 0;
	struct stk_response *r = bpf_map_lookup_elem(&responses, &idx);
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	__u64 hit = 0, ex = 0;
	int w;

	if (!r || !s)
		return 1;
	for (w = 0; w < STK_MASK_WORDS; w++) {
		hit |= s->matched.w[w] & r->match.w[w];
		ex |= s->matched.w[w] & r->exclude.w[w];
	}
	if (hit && !ex)
		c->actions |= r->actions;
	return 0;
}

/*
 * The decision in two global functions (the verifier checks each once).
 * stk_candidates, before anything is resolved: scratch->matched (the
 * cgroup's selectors of the part) &= the selectors of any of the operations;
 * 0 when none is left. stk_evaluate, with the path and the process facts in
 * scratch->in: narrows scratch->matched to the matching selectors and
 * returns the actions (0: nothing to do).
 */
__noinline int stk_candidates(void)
{
	struct stk_mask *m;
	struct scratch *s;
	__u32 zero = 0, idx, op, slot, ops;

	s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	slot = s->in.slot & 1;
	ops = s->in.ops;
	__builtin_memset(&s->tmp, 0, sizeof(s->tmp));
	for (op = 0; op < STK_OP_COUNT; op++) {
		if (!(ops & (1u << op)))
			continue;
		idx = slot * STK_OP_SLOTS + op;
		m = bpf_map_lookup_elem(&op_masks, &idx);
		if (m)
			mask_or(&s->tmp, m);
	}
	return mask_and(&s->matched, &s->tmp);
}

__noinline int stk_evaluate(void)
{
	struct stk_control *ctl;
	struct stk_part_masks *pm;
	struct pathbuf *pbuf;
	struct stk_mask *m;
	struct scratch *s;
	struct resp_ctx rc;
	__u32 zero = 0, idx, len, dlen, n, slot, part, start;
	const char *b;

	s = bpf_map_lookup_elem(&scratch_map, &zero);
	ctl = bpf_map_lookup_elem(&control, &zero);
	pbuf = bpf_map_lookup_elem(&pathbufs, &zero);
	if (!s || !ctl || !pbuf)
		return 0;
	b = pbuf->b;
	slot = s->in.slot & 1;
	part = s->in.part & 1;
	idx = slot * 2 + part;
	pm = bpf_map_lookup_elem(&part_masks, &idx);
	if (!pm)
		return 0;

	/* path mask */
	__builtin_memcpy(&s->tmp, &pm->any_path, sizeof(s->tmp));
	len = s->in.len;
	start = s->in.start & (PB_SIZE - 1 - 4096);
	if (s->in.ok && len <= STK_MATCH_MAX && (s->in.tables & STK_TABLE_EXACT)) {
		__builtin_memset(&s->pkey, 0, sizeof(s->pkey));
		s->pkey.tag = slot << 8 | part;
		bpf_probe_read_kernel(s->pkey.path, bound(len, 255), &b[start]);
		m = bpf_map_lookup_elem(&exact_paths, &s->pkey);
		if (m)
			mask_or(&s->tmp, m);
	}
	if (s->in.ok && len > 1) {
		dlen = s->in.leaf; /* dirname length; 0 means "/" */
		if (dlen <= STK_MATCH_MAX && (s->in.tables & STK_TABLE_CHILDREN)) {
			__builtin_memset(&s->pkey, 0, sizeof(s->pkey));
			s->pkey.tag = slot << 8 | part;
			n = dlen ? dlen : 1;
			bpf_probe_read_kernel(s->pkey.path, bound(n, 255), &b[start]);
			m = bpf_map_lookup_elem(&child_paths, &s->pkey);
			if (m)
				mask_or(&s->tmp, m);
		}
		/* dirname + "/" (the '/' is already in the buffer), at most 255 bytes */
		n = dlen + 1;
		if (n > STK_LPM_PATH)
			n = STK_LPM_PATH;
		if (s->in.tables & STK_TABLE_RECURSIVE) {
			__builtin_memset(&s->lkey, 0, sizeof(s->lkey));
			s->lkey.tag = slot << 4 | part;
			s->lkey.prefixlen = 8 * (1 + n);
			bpf_probe_read_kernel(s->lkey.path, bound(n, 255), &b[start]);
			m = bpf_map_lookup_elem(&recursive_paths, &s->lkey);
			if (m)
				mask_or(&s->tmp, m);
		}
	}
	if (!mask_and(&s->matched, &s->tmp))
		return 0; /* the usual end: no selector matches the path */

	/* process name */
	if (part == STK_PART_PROCESS) {
		__builtin_memcpy(&s->tmp, &pm->any_name, sizeof(s->tmp));
		__builtin_memset(&s->nkey, 0, sizeof(s->nkey));
		s->nkey.slot = slot;
		__builtin_memcpy(s->nkey.comm, s->in.comm, 16);
		m = bpf_map_lookup_elem(&names, &s->nkey);
		if (m)
			mask_or(&s->tmp, m);
		mask_and(&s->matched, &s->tmp);
	}

	/* interactive */
	if (s->in.interactive)
		mask_andnot(&s->matched, &pm->req_non_interactive);
	else
		mask_andnot(&s->matched, &pm->req_interactive);

	/* volume */
	if (s->in.volume != STK_VOL_NONE) {
		mask_andnot(&s->matched, &pm->ignore_mounts);
		if (s->in.volume == STK_VOL_FILE)
			mask_andnot(&s->matched, &pm->ignore_files);
	}
	if (mask_zero(&s->matched))
		return 0;

	n = ctl->n_responses[slot][part];
	if (n > STK_MAX_RESPONSES)
		n = STK_MAX_RESPONSES;
	rc.base = (slot * 2 + part) * STK_MAX_RESPONSES;
	rc.actions = 0;
	bpf_loop(n, resp_cb, &rc, 0);
	return rc.actions;
}


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

static __always_inline void output(void *rec, __u64 size)
{
	asm volatile("" : "+r"(size));
	if (size > REC_SIZE)
		size = REC_SIZE;
	if (bpf_ringbuf_output(&events, rec, size, 0))
		stat_inc(STK_STAT_RB_FAIL);
	else
		stat_inc(STK_STAT_RECORDS);
}

struct entry {
	struct stk_control *ctl;
	struct stk_cgroup_val *cg;
	struct scratch *s;
	__u64 cgid;
	__u32 slot;
};

/*
 * The deepest listed cgroup among the current cgroup's ancestors (0: none),
 * so that cgroups a container creates below its own stay covered, with no
 * window in which they are unknown.
 */
__noinline __u64 stk_listed_ancestor(__u32 slot)
{
	struct stk_cgroup_key key = {};
	__u64 found = 0, id;
	int level;

	key.slot = slot & 1;
	for (level = 0; level < STK_MAX_CGROUP_DEPTH; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		key.cgroup_id = id;
		if (bpf_map_lookup_elem(&cgroup_masks, &key))
			found = id;
	}
	return found;
}

#define ACTIVE_SLOT 2 /* for enter_slot: read control.active_slot */

/*
 * Picks the slot (the active one, read once, unless given); returns 0 when
 * neither the current cgroup nor one of its ancestors is listed. e->cgid is
 * the listed cgroup.
 */
static __always_inline int enter_slot(struct entry *e, __u32 slot)
{
	struct stk_cgroup_key key = {};
	__u32 zero = 0;

	e->ctl = bpf_map_lookup_elem(&control, &zero);
	if (!e->ctl)
		return 0;
	e->slot = (slot == ACTIVE_SLOT ? e->ctl->active_slot : slot) & 1;
	e->cgid = bpf_get_current_cgroup_id();
	key.slot = e->slot;
	key.cgroup_id = e->cgid;
	e->cg = bpf_map_lookup_elem(&cgroup_masks, &key);
	if (!e->cg) {
		key.cgroup_id = stk_listed_ancestor(e->slot);
		if (!key.cgroup_id)
			return 0;
		e->cgid = key.cgroup_id;
		e->cg = bpf_map_lookup_elem(&cgroup_masks, &key);
		if (!e->cg)
			return 0;
	}
	e->s = bpf_map_lookup_elem(&scratch_map, &zero);
	return e->s != NULL;
}

static __always_inline int enter(struct entry *e)
{
	return enter_slot(e, ACTIVE_SLOT);
}

/*
 * lsm mode decides an exec or a fork in its LSM hook and reports it from the
 * sched_process_* tracepoint that follows in the same task. The hook's slot
 * is kept here (per task, per operation) so that the tracepoint decides with
 * the same bundle even when a reload flips the active slot in between; kill
 * mode has no hook, nothing is kept, the tracepoint reads the active slot.
 */
struct hook_slots {
	__u8 slot_plus_one[2]; /* [STK_OP_FORK], [STK_OP_EXEC]; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct hook_slots);
} hook_slots SEC(".maps");

/* in an LSM hook: the active slot, kept for the tracepoint of the same operation */
static __always_inline __u32 remember_slot(__u32 op)
{
	struct stk_control *ctl;
	struct hook_slots *h;
	__u32 zero = 0, slot;

	ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl)
		return ACTIVE_SLOT;
	slot = ctl->active_slot & 1;
	h = bpf_task_storage_get(&hook_slots, bpf_get_current_task_btf(), 0,
				 BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (h)
		h->slot_plus_one[op & 1] = slot + 1;
	return slot;
}

/* in a tracepoint: the slot the LSM hook of this operation used (then forgotten) */
static __always_inline __u32 recall_slot(__u32 op)
{
	struct hook_slots *h;
	__u32 kept;

	h = bpf_task_storage_get(&hook_slots, bpf_get_current_task_btf(), 0, 0);
	if (!h)
		return ACTIVE_SLOT;
	kept = h->slot_plus_one[op & 1];
	h->slot_plus_one[op & 1] = 0;
	return kept ? kept - 1 : ACTIVE_SLOT;
}

/* The first step of a decision (see stk_candidates): 0 when no selector can match. */
static __always_inline int candidates(struct entry *e, __u32 part, __u32 ops)
{
	struct scratch *s = e->s;

	s->in.slot = e->slot;
	s->in.part = part;
	s->in.ops = ops;
	__builtin_memcpy(&s->matched, &e->cg->part[part & 1], sizeof(s->matched));
	return stk_candidates();
}

/*
 * After candidates(): can a BLOCK row apply? Only if a candidate is in one's
 * match (a superset: exclusions and the path are not looked at yet).
 */
static __always_inline int may_block(struct entry *e, __u32 part)
{
	__u32 idx = e->slot * 2 + (part & 1);
	struct stk_part_masks *pm = bpf_map_lookup_elem(&part_masks, &idx);
	__u64 acc = 0;
	int i;

	if (!pm)
		return 1;
#pragma clang loop unroll(disable)
	for (i = 0; i < STK_MASK_WORDS; i++)
		acc |= e->s->matched.w[i] & pm->blocking.w[i];
	return acc != 0;
}

/* The rest of the decision, after candidates() (see stk_evaluate). */
static __always_inline __u32 evaluate(struct scratch *s, struct rpath *rp, const char *comm,
				      int interactive)
{
	s->in.start = rp->start;
	s->in.len = rp->len;
	s->in.leaf = rp->leaf;
	s->in.ok = rp->ok;
	s->in.tables = rp->tables;
	s->in.volume = rp->volume;
	s->in.interactive = interactive;
	__builtin_memcpy(s->in.comm, comm, 16);
	return stk_evaluate();
}

/* ------------------------------------------------------- file decisions */

/*
 * Where a file operation's path comes from: a kernel (dentry, mnt), walked,
 * or a user string relative to dirfd (kill mode's path-string syscalls).
 * Plain integers: 6.1 refuses trusted BTF pointers as global-function args.
 */
struct path_src {
	__u64 dentry;
	__u64 mnt;
	__u64 upath;
	__s64 dirfd;
};

/* resolves src into rpaths[0] and *rp (head_tag: see stk_resolve_kpath) */
static __always_inline void resolve_src(struct path_src *src, __u32 head_tag, struct rpath *rp)
{
	if (src->dentry)
		stk_resolve_kpath(0, src->dentry, src->mnt, head_tag);
	else
		stk_resolve_user(src->dirfd, src->upath);
	get_rpath(0, rp);
}

/*
 * Decide a file operation and write its record when some action applies.
 * Candidates first, then the path (not walked when its first component is in
 * no table and no selector without a path condition can act: walked for the
 * record only). Kill mode (lsm = 0): BLOCK sends SIGKILL (the operation has
 * happened). LSM mode: BLOCK returns -EPERM and the record says denied;
 * AUDIT_BLOCK never denies. Returns the LSM verdict.
 */
static __always_inline int file_decide(struct entry *e, __u32 hook, __u32 ops, __u32 flags,
				       __u32 mode, __u32 fmode, struct path_src *src, int lsm)
{
	struct task_struct *task;
	struct stk_file_rec *r;
	struct pathbuf *pb;
	struct rpath rp = {};
	char comm[16] = {};
	__u32 actions, zero = 0, plen;
	int verdict = 0;

	if (!ops || !candidates(e, STK_PART_FILE, ops))
		return 0;
	resolve_src(src, HEAD_FILTER(e->slot, STK_PART_FILE), &rp);
	if (!rp.ok)
		return 0;
	actions = evaluate(e->s, &rp, comm, 0); /* names are process-part only */
	if (!actions)
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	if (!rp.tables) /* not walked: the path for the record */
		resolve_src(src, 0, &rp);
	if (!rp.ok)
		rp.len = 0;
	if (rp.truncated)
		stat_inc(STK_STAT_PATH_TRUNC);
	pb = bpf_map_lookup_elem(&pathbufs, &zero);
	r = bpf_map_lookup_elem(&recbufs, &zero);
	if (!pb || !r)
		return 0;

	task = (struct task_struct *)bpf_get_current_task(); /* only a record needs it */
	fill_hdr(&r->h, task, e->s, STK_REC_FILE, hook, e->slot, e->ctl, e->cgid, actions);
	if (actions & STK_BLOCK) {
		if (lsm) {
			stat_inc(STK_STAT_DENIALS);
			r->h.outcome = STK_OUTCOME_DENIED;
			verdict = -STK_EPERM;
		} else {
			r->h.outcome = kill_current();
		}
	}
	r->ops = ops;
	r->flags = flags;
	r->mode = mode;
	r->fmode = fmode;
	r->volume = rp.volume;
	r->path_from_fd = src->dentry != 0;
	r->pad = 0;
	__builtin_memcpy(r->comm, comm, 16);
	plen = rp.len;
	if (plen > STK_PATH_REC_MAX)
		plen = STK_PATH_REC_MAX;
	r->path_len = plen;
	bpf_probe_read_kernel(r->path, bound(plen, 4095), &pb->b[rp.start & (PB_SIZE - 1 - 4096)]);
	r->h.size = sizeof(*r) + bound(plen, 4095);
	output(r, sizeof(*r) + bound(plen, 4095));
	return verdict;
}

/* ------------------------------------------------------ process programs */

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
 * component of bprm->filename, at most 15 bytes, zero-padded. Uses pathbufs[1].
 */
static __noinline void exec_comm(const char *filename, char *comm)
{
	struct pathbuf *pb;
	__u32 one = 1, st, i;
	int z = 0;
	long n;

	pb = bpf_map_lookup_elem(&pathbufs, &one);
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

/*
 * exec/fork: decide and report. From the sched_process_* tracepoints
 * (lsm = 0): after the operation, every action is reported, BLOCK kills (in
 * lsm mode the LSM hook has denied it already, with the same slot: see
 * remember_slot; a tracepoint sees BLOCK only when the process moved to
 * another cgroup between the two). From an LSM hook
 * (lsm = 1; exe_in/filename from the linux_binprm for exec): only a BLOCK is
 * handled there (record `denied`, returns -EPERM); what is allowed is
 * reported by the tracepoint once it has happened.
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

	op = hook == STK_HOOK_EXEC || hook == STK_HOOK_LSM_BPRM_CHECK ? STK_OP_EXEC : STK_OP_FORK;
	if (!enter_slot(&e, lsm ? remember_slot(op) : recall_slot(op)))
		return 0;
	if (!candidates(&e, STK_PART_PROCESS, 1u << op))
		return 0;
	if (lsm && !may_block(&e, STK_PART_PROCESS))
		return 0; /* the hook only blocks; the tracepoint reports the rest */
	pb = bpf_map_lookup_elem(&pathbufs, &zero);
	pb2 = bpf_map_lookup_elem(&pathbufs, &one);
	r = bpf_map_lookup_elem(&recbufs, &zero);
	if (!pb || !pb2 || !r)
		return 0;

	exe = exe_in ? exe_in : BPF_CORE_READ(task, mm, exe_file);
	if (exe) {
		exe_d = (__u64)BPF_CORE_READ(exe, f_path.dentry);
		exe_m = (__u64)BPF_CORE_READ(exe, f_path.mnt);
		stk_resolve_kpath(0, exe_d, exe_m, HEAD_FILTER(e.slot, STK_PART_PROCESS));
		get_rpath(0, &rp);
	}
	rp.volume = STK_VOL_NONE; /* volume conditions are file-part only */
	if (filename)
		exec_comm(filename, comm);
	else
		bpf_get_current_comm(comm, sizeof(comm));
	interactive = BPF_CORE_READ(task, signal, tty) != NULL;

	actions = evaluate(e.s, &rp, comm, interactive);
	if (!actions)
		return 0;
	if (lsm && !(actions & STK_BLOCK))
		return 0; /* reported by the tracepoint, after the operation */
	if (!rp.tables) { /* not walked: the executable's path, for the record */
		stk_resolve_kpath(0, exe_d, exe_m, 0);
		get_rpath(0, &rp);
	}

	fill_hdr(&r->h, task, e.s, STK_REC_PROCESS, hook, e.slot, e.ctl, e.cgid, actions);
	if (actions & STK_BLOCK) {
		if (lsm) {
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
	if (filename)
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

		bpf_map_update_elem(&tracked, &tgid, &tv, BPF_ANY);
	}
	return verdict;
}

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
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct stk_proc_rec *r;
	struct stk_control *ctl;
	__u32 tgid, zero = 0;
	struct tracked_val *tv;

	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	tv = bpf_map_lookup_elem(&tracked, &tgid);
	if (!tv)
		return 0;
	ctl = bpf_map_lookup_elem(&control, &zero);
	r = bpf_map_lookup_elem(&recbufs, &zero);
	if (!ctl || !r) {
		bpf_map_delete_elem(&tracked, &tgid);
		return 0;
	}
	__builtin_memset(r, 0, sizeof(struct stk_proc_rec));
	r->h.version = STK_RECORD_VERSION;
	r->h.kind = STK_REC_EXIT;
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
	bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}

#endif
