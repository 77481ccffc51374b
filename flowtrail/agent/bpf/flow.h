/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The kernel/user record of flowtrail's capture, defined once.
 *
 * The BPF program writes `struct flow_record` into the ring buffer when a TCP socket closes and
 * keeps one per live socket in the `flow_starts` hash map. flowtrail/agent/capture.py reads both
 * with one numpy dtype; tests/kernel/test_record_layout.py checks that dtype against this
 * struct's BTF in the compiled object, so change both together.
 *
 * Layout rules: fixed-width fields only, explicit padding, 8-byte aligned total size.
 */
#ifndef FLOWTRAIL_FLOW_H
#define FLOWTRAIL_FLOW_H

/* direction: how the connection was opened on this host */
enum flow_direction {
	FLOW_DIR_UNKNOWN = 0,
	FLOW_DIR_OUTBOUND = 1, /* active open: this end called connect() */
	FLOW_DIR_INBOUND = 2,  /* passive open: this end accepted it */
};

/* outcome: how the connection ended */
enum flow_outcome {
	FLOW_OUTCOME_ESTABLISHED = 0, /* reached ESTABLISHED, then closed with FINs */
	FLOW_OUTCOME_REFUSED = 1,     /* never established: RST in SYN_SENT (ECONNREFUSED) */
	FLOW_OUTCOME_TIMEOUT = 2,     /* never established: the kernel's SYN retries ran out
				       * (ETIMEDOUT) */
	FLOW_OUTCOME_FAILED = 3,      /* never established: an error other than the above
				       * (unreachable, ...) */
	FLOW_OUTCOME_RESET = 4,       /* reached ESTABLISHED, then ended abortively: a RST sent or
				       * received, or the kernel gave up on it */
	FLOW_OUTCOME_ABANDONED = 5,   /* never established: the connecting application closed the
				       * socket mid-handshake with no error (its own timeout) */
};

/* drop reasons: indexes into the per-CPU `flow_drops` array */
enum flow_drop_reason {
	FLOW_DROP_RINGBUF_FULL = 0,   /* a closed record found no room in the ring buffer */
	FLOW_DROP_MAP_FULL = 1,       /* a new socket found no room in flow_starts: never reported */
	FLOW_DROP_UNTRACKED_CLOSE = 2, /* a socket closed that opened before capture started */
	FLOW_DROP_READ_FAILED = 3,    /* a kernel read of the socket failed */
	FLOW_DROP_STALE_START = 4,    /* a new socket found an old entry at its address (that
				       * socket's close was never seen): the old one is lost */
	FLOW_DROP__COUNT = 5,
};

/*
 * tcp_sock.bytes_acked / bytes_received count sequence space, so a SYN or FIN can sit inside
 * them: the SYN of an active open is acked through tcp_ack(), a FIN takes one sequence number
 * each way. The program reports which did; user space subtracts them to get payload bytes.
 */
enum flow_seq_flags {
	FLOW_SEQ_SYN_ACKED = 1,   /* our SYN is counted in bytes_acked (active open, established) */
	FLOW_SEQ_FIN_ACKED = 2,   /* our FIN is counted in bytes_acked */
	FLOW_SEQ_FIN_RECEIVED = 4, /* the peer's FIN is counted in bytes_received */
};

struct flow_record {
	__u64 sock_id;        /* unique per socket per boot (a counter seeded from CLOCK_MONOTONIC) */
	__u64 start_ns;       /* CLOCK_MONOTONIC ns of the first state change seen (SYN_SENT/SYN_RECV) */
	__u64 end_ns;         /* CLOCK_MONOTONIC ns of the change to CLOSE; 0 while live */
	__u64 bytes_acked;    /* tcp_sock.bytes_acked */
	__u64 bytes_received; /* tcp_sock.bytes_received */
	__u64 cgroup_id;      /* cgroup v2 id (kernfs node id) of the task that accepted it, else
			       * the socket's own (sk_cgrp_data: an accepted one's is its
			       * listener's, whoever serves it) */
	__u32 segs_out;       /* tcp_sock.segs_out */
	__u32 segs_in;        /* tcp_sock.segs_in */
	__u32 total_retrans;  /* tcp_sock.total_retrans */
	__u32 srtt_us;        /* smoothed RTT in microseconds (tcp_sock.srtt_us >> 3) */
	__u32 netns_ino;      /* inode number of the socket's network namespace */
	__u32 pid;            /* tgid of the task that called connect() or accept(); else 0 */
	__u8 saddr[16];       /* local address: IPv4 in the first 4 bytes, else IPv6 */
	__u8 daddr[16];       /* remote address, same encoding */
	__u16 sport;          /* local port, host byte order */
	__u16 dport;          /* remote port, host byte order */
	__u16 family;         /* AF_INET (2) or AF_INET6 (10) */
	__u8 direction;       /* enum flow_direction */
	__u8 outcome;         /* enum flow_outcome */
	__s32 sk_err;         /* sk->sk_err at close (positive errno), 0 if none */
	__u8 established;     /* 1 once the socket reached ESTABLISHED */
	__u8 seq_flags;       /* enum flow_seq_flags: control flags inside the byte counters */
	__u8 accepted;        /* 1: an inbound socket some task accept()ed; cgroup_id, pid and
			       * comm are then that task's, not the listener's */
	__u8 _pad;
	char comm[16];        /* comm of the task that called connect() or accept(); else empty */
	__u64 established_ns; /* CLOCK_MONOTONIC ns of the change to ESTABLISHED; 0 if never seen.
			       * Both ends reach it within one trip of the handshake's last
			       * segment, however many SYNs were lost before: what pairs them */
};

/* Settings user space writes into the one-entry `flow_config` array after load. */
struct flow_config {
	__u64 wakeup_bytes; /* wake the reader only once this much is queued (0: every record) */
};

#endif /* FLOWTRAIL_FLOW_H */
