/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Stockade: layouts shared by the BPF programs (stockade.bpf.c) and the
 * Python loader (stockade/sensor/maps.py, stockade/sensor/records.py).
 * Any change here must bump STK_RECORD_VERSION and update both.
 */
#ifndef STOCKADE_H
#define STOCKADE_H

#define STK_RECORD_VERSION 1
#define STK_MASK_WORDS 16          /* 1024 selector bits per policy part */
#define STK_MATCH_MAX 255          /* paths longer than this never match exact/children */
#define STK_PATH_KEY 256           /* zero-padded path key bytes */
#define STK_LPM_PATH 255           /* path bytes in an LPM key (1 tag byte + 255 = 256) */
#define STK_PATH_REC_MAX 4095      /* paths in records are truncated to this many bytes */
#define STK_ARGS_MAX 1023          /* argv bytes in a process record */
#define STK_MAX_DEPTH 64           /* path components walked per path */
#define STK_MAX_RESPONSES 1024     /* response rows per slot and part (= the compiler's limit) */
#define STK_MAX_CGROUP_DEPTH 32    /* cgroup levels searched for a listed ancestor */
#define STK_HEAD_BYTES 11          /* first-component bytes in a path_heads key */

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
#define STK_OP_SLOTS 8 /* op_masks index = slot * STK_OP_SLOTS + op */

enum stk_action { STK_LOG = 1, STK_ALERT = 2, STK_BLOCK = 4, STK_AUDIT_BLOCK = 8 };

enum stk_outcome {
	STK_OUTCOME_ALLOWED = 0,     /* nothing blocked */
	STK_OUTCOME_KILLED = 1,      /* kill mode: SIGKILL sent */
	STK_OUTCOME_KILL_FAILED = 2, /* kill mode: bpf_send_signal failed */
	STK_OUTCOME_DENIED = 3,      /* lsm mode: -EPERM returned before the operation */
};

enum stk_volume { STK_VOL_NONE = 0, STK_VOL_MOUNT = 1, STK_VOL_FILE = 2 };

enum stk_kind { STK_REC_PROCESS = 1, STK_REC_FILE = 2, STK_REC_EXIT = 3 };

enum stk_hook {
	STK_HOOK_EXEC = 1,
	STK_HOOK_FORK = 2,
	STK_HOOK_EXIT = 3,
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
	/* lsm mode (BPF LSM hooks) */
	STK_HOOK_LSM_BPRM_CHECK = 100, /* bprm_check_security: exec */
	STK_HOOK_LSM_TASK_ALLOC = 101, /* task_alloc: fork */
	STK_HOOK_LSM_FILE_OPEN = 110,
	STK_HOOK_LSM_PATH_MKNOD = 111, /* mknod and open(O_CREAT) of a new file */
	STK_HOOK_LSM_PATH_UNLINK = 112,
	STK_HOOK_LSM_PATH_RENAME = 113,
	STK_HOOK_LSM_PATH_LINK = 114,
	STK_HOOK_LSM_PATH_CHMOD = 115,
	STK_HOOK_LSM_PATH_TRUNCATE = 116,
};

enum stk_stat {
	STK_STAT_RB_FAIL = 0,        /* ring-buffer output failed (record lost) */
	STK_STAT_INFLIGHT_FAIL = 1,  /* could not stash syscall args */
	STK_STAT_PATH_TRUNC = 2,     /* a path was truncated (depth or length) */
	STK_STAT_RECORDS = 3,        /* records written */
	STK_STAT_KILLS = 4,          /* SIGKILLs sent */
	STK_STAT_KILL_FAIL = 5,      /* bpf_send_signal failures */
	STK_STAT_DENIALS = 6,        /* lsm mode: -EPERM returned */
	STK_STAT_COUNT = 8,
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
 * path_heads hash (tag = slot << 8 | part): the first component of every
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

/* part_masks index = slot * 2 + part */
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
	__u32 pad;
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
	__u8 pad[3];
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
	__u32 pad;
	char comm[16];
	char path[];
}; /* fixed part: 192 + 40 = 232 bytes */

#endif
