/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts shared between the C programs and the Rust loader.
 * Fixed-width fields only, explicit padding, no bool. Mirrored by
 * `identityd_bpf::types` and checked by a layout test. */
#ifndef IDENTITYD_COUNTER_TYPES_H
#define IDENTITYD_COUNTER_TYPES_H

#include <linux/types.h>

/* Index into the `counters` per-CPU array. */
#define IDD_COUNTER_SEEN 0
#define IDD_COUNTER_MAX 1

struct idd_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
