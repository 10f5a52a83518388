/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every Stockade BPF object includes: the kernel types (the pinned vmlinux.h of the
 * target arch), libbpf's helpers, the ABI shared with user space (abi.h), the kernel's
 * constants the programs need, and the drop/kill counters (stk_stats).
 */
#ifndef STK_COMMON_H
#define STK_COMMON_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "abi.h"

/* kernel-side limits (user space never sees them) */
#define STK_MATCH_MAX 255          /* paths longer than this never match exact/children */
#define STK_PATH_REC_MAX 4095      /* paths in records are truncated to this many bytes */
#define STK_ARGS_MAX 1023          /* argv bytes in a process record */
#define STK_MAX_DEPTH 2080         /* walk steps per path: every component of a path that
				    * fits the 4 KiB buffer (2048) and 32 mount crossings */
#define STK_MAX_CGROUP_DEPTH 32    /* cgroup levels searched for a listed ancestor */

/* the kernel's constants (vmlinux.h has types, not macros) */
#define SIGKILL 9
#define STK_EPERM 1
#define CLONE_THREAD 0x10000
#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define RENAME_EXCHANGE 2
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_WRONLY 01
#define S_IFMT 0170000
#define S_IFREG 0100000
#define S_IXUGO 0111
#define FMODE_CREATED 0x100000
#define PROT_EXEC 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STK_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stk_stats SEC(".maps");

#ifndef bpf_ksym_exists /* libbpf < 1.2 */
#define bpf_ksym_exists(sym) (!!(sym))
#endif

/* 6.2+; __weak: absent on older kernels, where KREAD falls back to bpf_probe_read_kernel */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/*
 * p->field of a kernel struct `type`: where the kernel has bpf_rdonly_cast, a plain load
 * through the cast pointer (the verifier turns the cast into a move, and the load into one
 * that can't fault), else a bpf_probe_read_kernel call (~30 ns each here: a path walk does
 * one per component). The result may be a pointer the verifier tracks as such: a global
 * function's scalar argument can't be one (read it with BPF_CORE_READ instead).
 */
#define KREAD(type, p, field)                                                                \
	(bpf_ksym_exists(bpf_rdonly_cast) ?                                                    \
		 ((type *)bpf_rdonly_cast((const void *)(p), bpf_core_type_id_kernel(type)))->field : \
		 BPF_CORE_READ((type *)(p), field))

/* x & mask that the compiler can't fold away (keeps the verifier's bounds) */
static __always_inline __u32 bound(__u32 x, __u32 mask)
{
	asm volatile("" : "+r"(x));
	return x & mask;
}

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stk_stats, &idx);

	if (v)
		*v += 1;
}

#endif
