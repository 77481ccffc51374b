// SPDX-License-Identifier: Apache-2.0
/*
 * flowtrail DNS capture: the DNS answers local sockets receive, from a cgroup_skb/ingress
 * program attached to the cgroup v2 root.
 *
 * A cgroup's ingress programs run for every packet a socket of that cgroup (or of a descendant)
 * is about to receive, in whichever network namespace the socket lives: attached at the root
 * they see every socket on the host. The skb then starts at the network header, the receiving
 * socket is known, and its cgroup v2 id is the one the flow capture reads from the same socket
 * (sk_cgrp_data), so an answer is named after the workload exactly as its flows are.
 *
 * Kept: UDP datagrams and TCP segments with source port 53 and a payload. The program copies
 * at most DNS_CAPTURE_MAX payload bytes and never drops or changes a packet (it returns 1).
 * IPv6 packets whose next header is not UDP or TCP directly (extension headers) are not seen.
 * The program runs with bottom halves off (softirq, or a loopback delivery in process context
 * with BHs disabled), so runs never nest on a CPU and one scratch record per CPU is enough.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "dns.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define DNS_PORT 53

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* set by the loader before load */
} dns_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNS_DROP__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} dns_drops SEC(".maps");

/* A record is built here (far beyond the 512-byte stack), then copied to the ring at its size. */
struct dns_scratch {
	struct dns_record hdr;
	__u8 data[DNS_CAPTURE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_scratch);
} dns_scratch SEC(".maps");

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&dns_drops, &reason);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/*
 * Every packet any local socket receives comes here, so the common case (not from port 53) is
 * decided from the packet's linear data without a helper call: 1 = certainly not DNS, 0 = maybe
 * (from port 53, or headers not in the linear data: the careful path below decides).
 */
static __always_inline int surely_not_dns(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 proto, *l4;
	__u16 *ports;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;

		if ((void *)(ip + 1) > end)
			return 0;
		proto = ip->protocol;
		l4 = data + ip->ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;

		if ((void *)(ip6 + 1) > end)
			return 0;
		proto = ip6->nexthdr;
		l4 = (__u8 *)(ip6 + 1);
	} else {
		return 1;
	}
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 1;
	ports = (__u16 *)l4;
	if ((void *)(ports + 1) > end)
		return 0;
	return ports[0] != bpf_htons(DNS_PORT);
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	struct dns_scratch *s;
	struct sk_buff *kskb;
	struct sock *sk;
	__u32 zero = 0, off, len, cap;
	__u16 sport, dport;
	__u8 proto;

	if (surely_not_dns(skb))
		return 1;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return 1;
		/* sockets receive whole datagrams; a fragment here is not one to read */
		if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return 1;
		proto = ip.protocol;
		off = ip.ihl * 4;
		if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
			return 1;
		s = bpf_map_lookup_elem(&dns_scratch, &zero);
		if (!s)
			return 1;
		__builtin_memset(s->hdr.saddr, 0, sizeof(s->hdr.saddr));
		__builtin_memset(s->hdr.daddr, 0, sizeof(s->hdr.daddr));
		__builtin_memcpy(s->hdr.saddr, &ip.saddr, 4);
		__builtin_memcpy(s->hdr.daddr, &ip.daddr, 4);
		s->hdr.family = AF_INET;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 1;
		proto = ip6.nexthdr;
		off = sizeof(ip6);
		if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
			return 1;
		s = bpf_map_lookup_elem(&dns_scratch, &zero);
		if (!s)
			return 1;
		__builtin_memcpy(s->hdr.saddr, &ip6.saddr, 16);
		__builtin_memcpy(s->hdr.daddr, &ip6.daddr, 16);
		s->hdr.family = AF_INET6;
	} else {
		return 1;
	}

	if (proto == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
			return 1;
		sport = bpf_ntohs(udp.source);
		dport = bpf_ntohs(udp.dest);
		off += sizeof(udp);
	} else {
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)))
			return 1;
		sport = bpf_ntohs(tcp.source);
		dport = bpf_ntohs(tcp.dest);
		off += tcp.doff * 4;
	}
	if (sport != DNS_PORT || skb->len <= off)
		return 1; /* not from a DNS server, or no payload (a bare TCP ACK, SYN or FIN) */

	len = skb->len - off;
	cap = len < DNS_CAPTURE_MAX ? len : DNS_CAPTURE_MAX;
	/* the verifier wants the copy's bounds in plain sight */
	if (cap < 1 || cap > DNS_CAPTURE_MAX)
		return 1;
	if (bpf_skb_load_bytes(skb, off, s->data, cap)) {
		count_drop(DNS_DROP_READ_FAILED);
		return 1;
	}

	kskb = bpf_cast_to_kern_ctx(skb);
	sk = kskb->sk;
	s->hdr.ts_ns = bpf_ktime_get_ns();
	s->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
	s->hdr.netns_ino = sk ? BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) : 0;
	s->hdr.msg_len = len;
	s->hdr.proto = proto;
	s->hdr.sport = sport;
	s->hdr.dport = dport;
	s->hdr.cap_len = cap;
	s->hdr._pad0 = 0;
	s->hdr._pad1 = 0;
	s->hdr._pad2 = 0;
	if (bpf_ringbuf_output(&dns_events, s, sizeof(s->hdr) + cap, 0))
		count_drop(DNS_DROP_RINGBUF_FULL);
	return 1;
}
