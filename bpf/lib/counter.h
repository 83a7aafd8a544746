/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef IDENTITYD_LIB_COUNTER_H
#define IDENTITYD_LIB_COUNTER_H

#include "common.h"
#include "../src/counter_types.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IDD_COUNTER_MAX);
	__type(key, __u32);
	__type(value, struct idd_counter);
} counters SEC(".maps");

static __always_inline void idd_count(__u32 idx, __u64 len)
{
	struct idd_counter *c = bpf_map_lookup_elem(&counters, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

#endif
