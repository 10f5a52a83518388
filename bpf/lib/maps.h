/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The policy maps: what user space writes per slot (stockade/sensor/kernel.py,
 * KillSensor.write_slot) and the programs only read. Layouts in abi.h.
 * The hash maps are not preallocated (BPF_F_NO_PREALLOC): only user space adds entries, so
 * their kernel memory follows the bundle rather than max_entries (preallocated, the three
 * path tables alone took 85 MiB whatever the bundle: docs/benchmarks.md, footprint).
 */
#ifndef STK_MAPS_H
#define STK_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stk_control);
} stk_control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct stk_cgroup_key);
	__type(value, struct stk_cgroup_val);
} stk_cgroup_masks SEC(".maps");

/* the pods known to user space whose cgroup isn't made yet, by the name it will have: its
 * cgroup_mkdir lists it in stk_cgroup_masks at once (lib/cgroup.h, pod_cgroup_made) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_pod_cgroup_key);
	__type(value, struct stk_cgroup_val);
} stk_pod_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * STK_OP_SLOTS);
	__type(key, __u32);
	__type(value, struct stk_mask);
} stk_op_masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct stk_part_masks);
} stk_part_masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_path_key);
	__type(value, struct stk_mask);
} stk_exact_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_path_key);
	__type(value, struct stk_mask);
} stk_child_paths SEC(".maps");

/* directory → the selectors with a pattern at or below it (PathTables.below): a rename
 * of the directory moves the paths they match */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_path_key);
	__type(value, struct stk_mask);
} stk_dir_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_lpm_key);
	__type(value, struct stk_mask);
} stk_recursive_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_long_key);
	__type(value, struct stk_mask);
} stk_long_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_head_key);
	__type(value, __u8);
} stk_path_heads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct stk_name_key);
	__type(value, struct stk_mask);
} stk_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4 * STK_MAX_RESPONSES);
	__type(key, __u32);
	__type(value, struct stk_response);
} stk_responses SEC(".maps");

#endif
