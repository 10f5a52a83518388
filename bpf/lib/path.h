/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Path resolution: a kernel (dentry, mnt) or a user string → the path as the process sees
 * it, in a per-CPU path buffer (stk_pathbufs), with its leaf, volume kind and the path
 * tables that can match under its first component (stk_path_heads).
 */
#ifndef STK_PATH_H
#define STK_PATH_H

#include "maps.h"

/* path buffer: reverse walk ends at PB_END, "/" + user string follows it */
#define PB_END 4096
#define PB_SIZE 12288

struct pathbuf {
	char b[PB_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct pathbuf);
} stk_pathbufs SEC(".maps");


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
	__u8 fileless; /* (d, m) is in no directory: a memfd, or a deleted file */
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
	struct pathbuf *pb = bpf_map_lookup_elem(&stk_pathbufs, &c->buf);
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
	struct inode *ino;
	__u16 mode;

	if (vmnt == root_mnt)
		return STK_VOLUME_NONE;
	mroot = KREAD(struct vfsmount, vmnt, mnt_root);
	ino = KREAD(struct dentry, mroot, d_inode);
	mode = KREAD(struct inode, ino, i_mode);
	if ((mode & S_IFMT) == S_IFREG)
		return STK_VOLUME_FILE;
	return STK_VOLUME_MOUNT;
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
	__u8 detached; /* ended at a dentry that is its own parent: pseudo (memfd) or disconnected */
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
		struct mount *pm = KREAD(struct mount, mnt, mnt_parent);
		struct vfsmount *pvm = &pm->mnt;

		if (pm == mnt)
			goto done;
		w->d = KREAD(struct mount, mnt, mnt_mountpoint);
		w->mnt = pm;
		w->vmnt = pvm;
		w->mnt_root = KREAD(struct vfsmount, pvm, mnt_root);
		return 0;
	}
	parent = KREAD(struct dentry, d, d_parent);
	w->head = d;
	w->d = parent;
	if (parent == d) /* its own name is all the path there is ("/memfd:x") */
		w->detached = w->done = 1;
	if (!w->copy)
		return parent == d; /* bpf_loop: 0 or 1, nothing the verifier can't bound */
	pb = bpf_map_lookup_elem(&stk_pathbufs, &w->buf);
	if (!pb)
		return 1;
	q = KREAD(struct dentry, d, d_name);
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
	return parent == d;
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
	w->mnt_root = KREAD(struct vfsmount, vmnt, mnt_root);
	w->root_d = root->d;
	w->root_m = root->m;
	w->head = NULL;
	w->pos = PB_END;
	w->leaf_pos = PB_END;
	w->buf = buf;
	w->copy = copy;
	w->trunc = 0;
	w->done = 0;
	w->detached = 0;
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
	/* detached, or unlinked while in use (an unhashed dentry) */
	rp->fileless = w.detached || !KREAD(struct dentry, d, d_hash.pprev);
	rp->ok = 1;
}

/*
 * The path tables of the part (head_tag = slot << 8 | part) that have entries
 * under the first component of (d, m)'s path (STK_TABLE_* bits, 0: none).
 * Walks to that component without copying anything, looks it up in stk_path_heads.
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

	pm = bpf_map_lookup_elem(&stk_part_masks, &idx);
	if (!pm || pm->any_head)
		return STK_TABLE_ALL;
	walk(&w, 0, 0, d, m, root);
	head = w.head;
	if (w.trunc || !head)
		return STK_TABLE_ALL; /* too deep, or the root itself: no filter */
	q = KREAD(struct dentry, head, d_name);
	n = q.len;
	if (n > STK_HEAD_BYTES)
		n = STK_HEAD_BYTES;
	key.tag = head_tag & 0xffff;
	key.len = q.len > STK_HEAD_BYTES ? STK_HEAD_BYTES + 1 : q.len;
	bpf_probe_read_kernel(key.head, n, q.name);
	bits = bpf_map_lookup_elem(&stk_path_heads, &key);
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
} stk_norm SEC(".maps");

#define NB(off) pb->b[(n->start + (off)) & (PB_SIZE - 1 - 4096)]

static long norm_cb(__u32 i, void *data)
{
	__u32 zero = 0, idx = i + 1, w, cs, len;
	struct norm_state *n = bpf_map_lookup_elem(&stk_norm, &zero);
	struct pathbuf *pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);
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
	struct norm_state *n = bpf_map_lookup_elem(&stk_norm, &zero);
	struct pathbuf *pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);

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
 * Path as the process sees it from a path string (in user memory, or in the kernel's
 * copy when kstr: io_uring's struct filename): absolute strings are taken as they
 * are, relative ones are joined to the dirfd's path (or the cwd); then normalised.
 */
static __always_inline void resolve_user(char *b, struct task_struct *task, __s64 dirfd,
					 const char *upath, int kstr, struct troot *root,
					 struct rpath *rp)
{
	long n;

	rp->ok = 0;
	if (kstr)
		n = bpf_probe_read_kernel_str(&b[PB_END + 1], STK_PATH_REC_MAX, upath);
	else
		n = bpf_probe_read_user_str(&b[PB_END + 1], STK_PATH_REC_MAX, upath);
	if (n <= 1)
		return;
	if (b[PB_END + 1] == '/') {
		rp->start = PB_END + 1;
		rp->len = n - 1;
		rp->volume = STK_VOLUME_NONE;
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
} stk_rpaths SEC(".maps");

/* head_tag for stk_resolve_kpath: filter on the part's path heads */
#define HEAD_FILTER(slot, part) (1u << 16 | ((slot) & 1) << 8 | ((part) & 1))

/*
 * Global functions, so the verifier checks each once per program instead of
 * once per call site and state. Results go to stk_rpaths[buf]. With a head_tag
 * (HEAD_FILTER), stk_rpaths[buf].tables says which tables of that part can match,
 * and a path that none can is not walked.
 */
__noinline int stk_resolve_kpath(__u32 buf, __u64 dentry, __u64 vmnt, __u32 head_tag)
{
	struct pathbuf *pb;
	struct rpath *rp;
	struct troot root;

	buf &= 1;
	pb = bpf_map_lookup_elem(&stk_pathbufs, &buf);
	rp = bpf_map_lookup_elem(&stk_rpaths, &buf);
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
		rp->fileless = 0;
		rp->ok = 1;
		return 1;
	}
	resolve_kpath(pb->b, buf, (struct dentry *)dentry, (struct vfsmount *)vmnt, &root, rp);
	return rp->ok;
}

__noinline int stk_resolve_user(__s64 dirfd, __u64 upath, __u32 kstr)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pathbuf *pb;
	struct rpath *rp;
	struct troot root;
	__u32 zero = 0;

	pb = bpf_map_lookup_elem(&stk_pathbufs, &zero);
	rp = bpf_map_lookup_elem(&stk_rpaths, &zero);
	if (!pb || !rp)
		return 0;
	rp->ok = 0;
	rp->tables = STK_TABLE_ALL;
	task_root(&root);
	resolve_user(pb->b, task, dirfd, (const char *)upath, kstr, &root, rp);
	return rp->ok;
}

static __always_inline void get_rpath(__u32 buf, struct rpath *out)
{
	struct rpath *rp = bpf_map_lookup_elem(&stk_rpaths, &buf);

	if (rp)
		__builtin_memcpy(out, rp, sizeof(*out));
	else
		out->ok = 0;
}

#endif
