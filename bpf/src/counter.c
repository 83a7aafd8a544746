/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The first, smallest tc program: counts every packet it sees and passes it.
 * It proves the C -> clang -> aya -> kernel path end to end; the path
 * classifier builds on the same lib/ headers. */
#include "../lib/counter.h"

/* Load-time setting: a mark to OR into skb->mark (0 = leave the mark alone).
 * Set from Rust with EbpfLoader::set_global("IDD_MARK", ..). */
volatile const __u32 IDD_MARK = 0;

SEC("classifier")
int idd_counter(struct __sk_buff *skb)
{
	idd_count(IDD_COUNTER_SEEN, skb->len);
	if (IDD_MARK)
		skb->mark |= IDD_MARK;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
