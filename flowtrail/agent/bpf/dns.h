/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kernel/user record of flowtrail's DNS capture, defined once.
 *
 * dns.bpf.c writes one `struct dns_record` header followed by `cap_len` bytes of the DNS message
 * into the `dns_events` ring buffer for every packet from port 53 that a local socket receives.
 * flowtrail/agent/dns_capture.py reads the header with one numpy dtype;
 * tests/kernel/test_record_layout.py checks that dtype against this struct's BTF in the compiled
 * object, so change both together.
 *
 * Layout rules: fixed-width fields only, explicit padding, 8-byte aligned header size.
 */
#ifndef FLOWTRAIL_DNS_H
#define FLOWTRAIL_DNS_H

/* Bytes of one DNS message copied at most; a longer one arrives cut (cap_len < msg_len). */
#define DNS_CAPTURE_MAX 2048

/* drop reasons: indexes into the per-CPU `dns_drops` array */
enum dns_drop_reason {
	DNS_DROP_RINGBUF_FULL = 0, /* a packet found no room in the ring buffer */
	DNS_DROP_READ_FAILED = 1,  /* the packet's bytes could not be copied */
	DNS_DROP__COUNT = 2,
};

struct dns_record {
	__u64 ts_ns;     /* CLOCK_MONOTONIC ns when the packet reached the socket */
	__u64 cgroup_id; /* cgroup v2 id of the receiving socket (as flows' cgroup_id) */
	__u32 netns_ino; /* inode number of the receiving socket's network namespace */
	__u32 msg_len;   /* payload bytes in the packet (UDP: the message; TCP: the segment's) */
	__u16 family;    /* AF_INET (2) or AF_INET6 (10) */
	__u8 proto;      /* IPPROTO_UDP (17) or IPPROTO_TCP (6) */
	__u8 _pad0;
	__u16 sport;     /* the sender's port (53), host byte order */
	__u16 dport;     /* the receiving socket's port, host byte order */
	__u16 cap_len;   /* payload bytes copied after this header: min(msg_len, DNS_CAPTURE_MAX) */
	__u16 _pad1;
	__u8 saddr[16];  /* the sender (the DNS server): IPv4 in the first 4 bytes, else IPv6 */
	__u8 daddr[16];  /* the receiver (the local workload), same encoding */
	__u32 _pad2;
};

#endif /* FLOWTRAIL_DNS_H */
