/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The kernel ABI: every constant, enum and layout shared by the BPF programs and user space
 * (stockade/sensor/abi.py mirrors each one by name; tests/unit/test_abi.py compares the two
 * through the objects' BTF, so a change on one side only fails there). Enums, not #defines,
 * so that they reach the BTF. Change both sides together; a record layout change also bumps
 * STK_RECORD_VERSION (docs/kernel.md, "The kernel ABI").
 */
#ifndef STK_ABI_H
#define STK_ABI_H

enum stk_const {
	STK_RECORD_VERSION = 3,
	STK_MASK_WORDS = 16,       /* 1024 selector bits per policy part */
	STK_PATH_KEY = 256,        /* zero-padded path key bytes */
	STK_LPM_PATH = 255,        /* path bytes in an LPM key (1 tag byte + 255 = 256) */
	STK_LONG_PATH = 511,       /* path bytes in a stk_long_key (1 + 511 = 512, a key's most) */
	STK_HEAD_BYTES = 11,       /* first-component bytes in a stk_path_heads key */
	STK_OP_SLOTS = 8,          /* stk_op_masks index = slot * STK_OP_SLOTS + op */
	STK_MAX_RESPONSES = 1024,  /* response rows per slot and part (= the compiler's limit) */
	STK_CGROUP_PATH = 512,     /* path bytes in a cgroup record at most (longer: truncated) */
	STK_CGROUP_MAX_LEVEL = 8,  /* cgroups deeper than this get no cgroup record */
	STK_POD_CGROUP_NAME = 68,  /* name bytes in a stk_pod_cgroup_key (the longest is 65) */
};

enum stk_part { STK_PART_PROCESS = 0, STK_PART_FILE = 1 };

enum stk_op {
	STK_OP_FORK = 0,
	STK_OP_EXEC = 1,
	STK_OP_CREATE_EXECUTABLE = 2,
	STK_OP_MODIFY_EXECUTABLE = 3,
	STK_OP_CREATE_FILE = 4,
	STK_OP_MODIFY_FILE = 5,
	STK_OP_DELETE_FILE = 6,
	STK_OP_COUNT = 7,
};

enum stk_action { /* bits */
	STK_ACTION_LOG = 1,
	STK_ACTION_ALERT = 2,
	STK_ACTION_BLOCK = 4,
	STK_ACTION_AUDIT_BLOCK = 8, /* audit mode: reported as would-block, never done */
};

enum stk_outcome {
	STK_OUTCOME_ALLOWED = 0,     /* nothing blocked */
	STK_OUTCOME_KILLED = 1,      /* kill mode: SIGKILL sent */
	STK_OUTCOME_KILL_FAILED = 2, /* kill mode: bpf_send_signal failed */
	STK_OUTCOME_DENIED = 3,      /* lsm mode: -EPERM returned before the operation */
	STK_OUTCOME_PENDING = 4,     /* kill mode: acts only if the file has an x bit (user space) */
};

enum stk_volume { STK_VOLUME_NONE = 0, STK_VOLUME_MOUNT = 1, STK_VOLUME_FILE = 2 };

enum stk_kind { STK_KIND_PROCESS = 1, STK_KIND_FILE = 2, STK_KIND_EXIT = 3, STK_KIND_CGROUP = 4 };

enum stk_hook {
	STK_HOOK_EXEC = 1,
	STK_HOOK_FORK = 2,
	STK_HOOK_EXIT = 3,
	STK_HOOK_EXEC_MAPPED = 4, /* kill mode: a file's code mapped PROT_EXEC (ld.so PROGRAM) */
	STK_HOOK_OPEN = 10,
	STK_HOOK_OPENAT = 11,
	STK_HOOK_OPENAT2 = 12,
	STK_HOOK_CREAT = 13,
	STK_HOOK_UNLINK = 20,
	STK_HOOK_UNLINKAT = 21,
	STK_HOOK_RENAME = 30,
	STK_HOOK_RENAMEAT = 31,
	STK_HOOK_RENAMEAT2 = 32,
	STK_HOOK_LINK = 40,
	STK_HOOK_LINKAT = 41,
	STK_HOOK_CHMOD = 50,
	STK_HOOK_FCHMOD = 51,
	STK_HOOK_FCHMODAT = 52,
	STK_HOOK_FCHMODAT2 = 53,
	STK_HOOK_TRUNCATE = 60,
	STK_HOOK_FTRUNCATE = 61,
	STK_HOOK_MKNOD = 70,
	STK_HOOK_MKNODAT = 71,
	/* io_uring requests, decided when submitted (tp_btf/io_uring_submit_req) */
	STK_HOOK_IO_URING_OPENAT = 80, /* IORING_OP_OPENAT, IORING_OP_OPENAT2 */
	STK_HOOK_IO_URING_UNLINKAT = 81,
	STK_HOOK_IO_URING_RENAMEAT = 82,
	STK_HOOK_IO_URING_LINKAT = 83,
	/* lsm mode (BPF LSM hooks) */
	STK_HOOK_LSM_BPRM_CHECK = 100, /* bprm_check_security: exec */
	STK_HOOK_LSM_TASK_ALLOC = 101, /* task_alloc: fork */
	STK_HOOK_LSM_MMAP_FILE = 102,  /* mmap_file: a file's code mapped PROT_EXEC (ld.so PROGRAM) */
	STK_HOOK_LSM_FILE_OPEN = 110,
	STK_HOOK_LSM_PATH_MKNOD = 111, /* mknod and open(O_CREAT) of a new file */
	STK_HOOK_LSM_PATH_UNLINK = 112,
	STK_HOOK_LSM_PATH_RENAME = 113,
	STK_HOOK_LSM_PATH_LINK = 114,
	STK_HOOK_LSM_PATH_CHMOD = 115,
	STK_HOOK_LSM_PATH_TRUNCATE = 116,
	STK_HOOK_LSM_FILE_TRUNCATE = 117, /* 6.2+: ftruncate, open(O_TRUNC) */
	/* fmodret mode: fmod_ret programs on the security_* functions that call the LSM hooks */
	STK_HOOK_FMODRET_BPRM_CHECK = 120, /* security_bprm_check: exec */
	STK_HOOK_FMODRET_TASK_ALLOC = 121, /* security_task_alloc: fork */
	STK_HOOK_FMODRET_MMAP_FILE = 122,  /* security_mmap_file */
	STK_HOOK_FMODRET_FILE_OPEN = 130,
	STK_HOOK_FMODRET_PATH_MKNOD = 131,
	STK_HOOK_FMODRET_PATH_UNLINK = 132,
	STK_HOOK_FMODRET_PATH_RENAME = 133,
	STK_HOOK_FMODRET_PATH_LINK = 134,
	STK_HOOK_FMODRET_PATH_CHMOD = 135,
	STK_HOOK_FMODRET_PATH_TRUNCATE = 136,
	STK_HOOK_FMODRET_FILE_TRUNCATE = 137, /* 6.2+ */
};

enum stk_stat {
	STK_STAT_RB_FAIL = 0,        /* records lost (full ring buffer): the sum of the LOST_* */
	STK_STAT_INFLIGHT_FAIL = 1,  /* could not stash syscall args */
	STK_STAT_PATH_TRUNCATED = 2, /* a path was truncated (depth or length) */
	STK_STAT_RECORDS = 3,        /* records written */
	STK_STAT_KILLS = 4,          /* SIGKILLs sent */
	STK_STAT_KILL_FAIL = 5,      /* bpf_send_signal failures */
	STK_STAT_DENIALS = 6,        /* lsm mode: -EPERM returned */
	STK_STAT_LOST_LOG = 7,       /* log-only records lost (stk_events full) */
	STK_STAT_LOST_ALERT = 8,     /* alert/block/would-block records lost (stk_alerts full) */
	STK_STAT_LOST_EXIT = 9,      /* exit records lost (stk_events full) */
	STK_STAT_CGROUP_FAIL = 10,   /* cgroup records lost (stk_cgroups full): rescan; not in RB_FAIL */
	STK_STAT_NAMES_UNKNOWN = 11, /* a changed file (nlink > 1) had names not in the dcache */
	STK_STAT_PATH_SWAPPED = 12,  /* kill mode: a path string differed at sys_exit from sys_enter */
	STK_STAT_COUNT = 16,         /* stk_stats entries (spares for new counters) */
};

struct stk_mask {
	__u64 w[STK_MASK_WORDS];
};

struct stk_cgroup_key {
	__u32 slot;
	__u32 pad;
	__u64 cgroup_id;
};

struct stk_cgroup_val {
	struct stk_mask part[2]; /* indexed by enum stk_part */
};

/* a known pod's cgroup not made yet: its directory's name, zero-padded */
struct stk_pod_cgroup_key {
	__u32 slot;
	char name[STK_POD_CGROUP_NAME];
};

/* exact / children hash maps: tag = slot << 8 | part */
struct stk_path_key {
	__u32 tag;
	char path[STK_PATH_KEY];
};

/* recursive LPM trie: tag = slot << 4 | part; prefixlen = 8 * (1 + strlen(path)) */
struct stk_lpm_key {
	__u32 prefixlen;
	__u8 tag;
	char path[STK_LPM_PATH];
};

/*
 * stk_long_paths hash: the table entries longer than the keys above (a processExecutable
 * may be 511 bytes): an exact path, a children directory or a recursive "dir/" prefix,
 * zero-padded; tag = slot << 4 | table << 1 | part (table: one STK_TABLE_* bit).
 */
struct stk_long_key {
	__u8 tag;
	char path[STK_LONG_PATH];
};

/*
 * stk_path_heads hash (tag = slot << 8 | part): the first component of every
 * exact, children and recursive path in a slot's tables → the STK_TABLE_*
 * bits of the tables with entries under it, so that a path is looked up only
 * where something can match, and not walked when nothing can. len is the
 * component's length, or STK_HEAD_BYTES + 1 when longer (head then holds its
 * first STK_HEAD_BYTES bytes; colliding components share their bits, which
 * only costs lookups). Python: PathTables.heads.
 */
enum stk_table {
	STK_TABLE_EXACT = 1,
	STK_TABLE_CHILDREN = 2,
	STK_TABLE_RECURSIVE = 4,
	STK_TABLE_ALL = 7,
};

struct stk_head_key {
	__u32 tag;
	__u8 len;
	char head[STK_HEAD_BYTES];
};

struct stk_name_key {
	__u32 slot;
	char comm[16];
};

/* stk_part_masks index = slot * 2 + part */
struct stk_part_masks {
	struct stk_mask any_path;
	struct stk_mask any_name;
	struct stk_mask req_interactive;
	struct stk_mask req_non_interactive;
	struct stk_mask ignore_mounts;
	struct stk_mask ignore_files;
	struct stk_mask blocking; /* selectors in the match of a BLOCK row */
	__u32 any_head; /* 1: some path entry matches every first component (no head filter) */
	__u32 pad;
};

/* responses index = (slot * 2 + part) * STK_MAX_RESPONSES + row */
struct stk_response {
	struct stk_mask match;
	struct stk_mask exclude;
	__u32 actions;
	__u16 policy;
	__u16 pad;
};

struct stk_control {
	__u32 active_slot;
	/* bumped by user space after every change of a listed cgroup's masks and every flip of
	 * active_slot: kill mode's syscall exit reuses its entry's masks while it is unchanged */
	__u32 seq;
	__u64 generation[2];
	__u32 n_responses[2][2]; /* [slot][part] */
};

/* ---- ring-buffer records (little endian, packed by natural alignment) ---- */

struct stk_rec_hdr {
	__u16 version;
	__u16 kind;
	__u16 hook;
	__u8 outcome;
	__u8 slot;
	__u32 size; /* total record bytes */
	__u32 actions;
	__u64 ktime_ns;
	__u64 cgroup_id;
	__u64 generation;
	__u32 mntns;
	__u32 pid; /* thread id (host pid namespace) */
	__u32 tgid;
	__u32 ppid; /* tgid of the real parent */
	__u32 uid;
	__u32 gid;
	struct stk_mask matched;
}; /* 192 bytes */

struct stk_proc_rec {
	struct stk_rec_hdr h;
	__u64 start_time_ns;        /* task->start_time (monotonic) */
	__u64 parent_start_time_ns;
	__u32 sid;                  /* session leader pid */
	__u32 pgid;                 /* process group leader pid */
	__u32 tty_index;
	__u32 tty_major;
	__u32 exit_code;
	__u8 interactive;           /* session has a controlling tty */
	__u8 exe_truncated;         /* 1: exe is the tail of a path too long to resolve */
	__u8 exe_fileless;          /* 1: exe is in no directory (memfd, deleted file) */
	__u8 pad;
	char comm[16];
	__u16 exe_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 pad2;
	char data[]; /* exe, cwd, args (NUL-separated argv) */
}; /* fixed part: 192 + 64 = 256 bytes */

struct stk_file_rec {
	struct stk_rec_hdr h;
	__u32 ops;    /* bit (1 << enum stk_op) per operation */
	__u32 flags;  /* open flags, unlinkat/renameat2/linkat flags */
	__u32 mode;   /* inode mode (fd-based) or the requested mode */
	__u32 fmode;  /* file->f_mode for fd-based hooks */
	__u8 volume;  /* enum stk_volume */
	__u8 path_from_fd; /* 1: path and volume from the opened file */
	__u16 path_len;
	__u8 path_truncated; /* 1: path is the tail of a path too long to resolve */
	__u8 other_name;     /* 1: path is another name (hard link) of the file operated on */
	__u8 names_unknown;  /* 1: the file has names not found (not cached): decided fail-closed */
	__u8 path_swapped;   /* 1: kill mode: the path string changed during the syscall */
	char comm[16];
	char path[];
}; /* fixed part: 192 + 40 = 232 bytes */

/*
 * A cgroup v2 directory made or removed (kind STK_KIND_CGROUP, in stk_cgroups): how user space
 * learns a container's cgroup before its first exec. Not a stk_rec_hdr: it starts with the
 * same version and kind, and carries only what names the cgroup.
 */
struct stk_cgroup_rec {
	__u16 version;
	__u16 kind;
	__u8 created;        /* 1: cgroup_mkdir, 0: cgroup_rmdir */
	__u8 path_truncated; /* 1: path is the first STK_CGROUP_PATH bytes of a longer one */
	__u16 path_len;
	__u32 level;         /* cgrp->level: the v2 root is 0 */
	__u32 pad;
	__u64 ktime_ns;
	__u64 cgroup_id;     /* cgrp->kn->id: the directory's inode, bpf_get_current_cgroup_id() */
	char path[];         /* relative to the v2 root, "/a/b"; not NUL-terminated */
}; /* fixed part: 32 bytes */

/* probe.bpf.c's state in .bss: written and read by stockade/sensor/probe.py */
struct stk_probe_state {
	__u32 target_ppid; /* kill probe: the parent of the child to kill */
	__u32 hits;
	__s64 ret;
	__u32 deny_tid; /* fmodret probe: the thread whose opens are denied */
	__u32 pad;
};

/*
 * Not used by any program: names every enum and struct above so that clang puts them in
 * every object's BTF (it emits only the types that maps, globals and function arguments
 * reach), where tests/unit/test_abi.py reads them. In a section libbpf does not load: no
 * map, no code.
 */
struct stk_abi {
	enum stk_const constants;
	enum stk_part part;
	enum stk_op op;
	enum stk_action action;
	enum stk_outcome outcome;
	enum stk_volume volume;
	enum stk_kind kind;
	enum stk_hook hook;
	enum stk_stat stat;
	enum stk_table table;
	struct stk_mask mask;
	struct stk_cgroup_key cgroup_key;
	struct stk_cgroup_val cgroup_val;
	struct stk_pod_cgroup_key pod_cgroup_key;
	struct stk_path_key path_key;
	struct stk_lpm_key lpm_key;
	struct stk_long_key long_key;
	struct stk_head_key head_key;
	struct stk_name_key name_key;
	struct stk_part_masks part_masks;
	struct stk_response response;
	struct stk_control control;
	struct stk_rec_hdr rec_hdr;
	struct stk_probe_state probe_state;
};

struct stk_abi stk_abi SEC(".stk_abi");
struct stk_proc_rec stk_abi_proc_rec SEC(".stk_abi");
struct stk_file_rec stk_abi_file_rec SEC(".stk_abi");
struct stk_cgroup_rec stk_abi_cgroup_rec SEC(".stk_abi");

#endif
