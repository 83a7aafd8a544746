/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The path classifier, attached with tc (clsact/tcx) on the pod-facing veths
 * (ingress: packets leaving the pod) and, with IDD_ANY_SOURCE, on the node's
 * egress. Every pod-to-remote-pod packet gets the mark of its path
 * (WireGuard, IPsec, the node's Envoy, plaintext-allowed) or, in strict mode
 * without an encrypted path, is dropped; everything else passes untouched.
 * idd_to_pod guards the other direction (ingress strict, see classify.h). */
#include "../lib/classify.h"

SEC("classifier")
int idd_classifier(struct __sk_buff *skb)
{
	return idd_classify(skb);
}

/* Ingress strict, on the same veths' egress (packets going into the pod); shares the
 * classifier's maps. */
SEC("classifier")
int idd_to_pod(struct __sk_buff *skb)
{
	return idd_guard_pod(skb);
}

char _license[] SEC("license") = "Dual BSD/GPL";
