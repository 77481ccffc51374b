// SPDX-License-Identifier: Apache-2.0
/*
 * flowtrail capture: one record per closed TCP connection, from sock:inet_sock_set_state.
 *
 * A socket enters `flow_starts` on its first opening transition (CLOSE->SYN_SENT for connect(),
 * LISTEN->SYN_RECV for an accepted child) and leaves it on the change to CLOSE, when its record
 * goes to the ring buffer. Identity (cgroup, netns) is read from the socket itself, never from the
 * current task: accepted sockets are made, and closes often run, in softirq on behalf of nobody
 * in particular.
 * Listening sockets never enter the map. Every loss is counted in `flow_drops`.
 *
 * An accepted socket's own cgroup is its listener's, and the listener may belong to someone
 * else than the process serving the connection (systemd socket activation, pre-fork servers that
 * move their children): the accept/accept4 syscall exit tracepoints find the returned socket in
 * the caller's file table and give its entry the caller's cgroup, pid and comm.
 *
 * The state-change program comes twice, the loader attaches one: on the raw tracepoint
 * (preferred) or on the classic one (a kernel that refuses the raw one). A classic tracepoint
 * program shares one per-CPU guard with every kprobe and classic tracepoint program on the
 * host (trace_call_bpf: bpf_prog_active): a state change in softirq that interrupts any of
 * them, the accept programs here included, is skipped (a recursion miss, a lost open or
 * close). A raw tracepoint program has a guard of its own (prog->active), so only a run of
 * itself on that CPU can make it skip one: a softirq interrupting it in process context (a
 * hardware interrupt's exit runs pending softirqs). For that case a second copy of the raw
 * program, attached after it, takes over: it handles a change only when the first did not
 * mark that change as its own (so the kernel skipped the first for it), and counts it.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "flow.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ECONNREFUSED 111
#define ECONNRESET 104
#define ETIMEDOUT 110
#define EPIPE 32
#define EEXIST 17

/* TCP states as the tracepoint reports them (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10
#define TCP_CLOSING 11

char LICENSE[] SEC("license") = "GPL";

/* Sizes are set by the loader (bpf_map__set_max_entries) before load; these are defaults. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64); /* the struct sock's address: unique while the socket lives */
	__type(value, struct flow_record);
} flow_starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_DROP__COUNT);
	__type(key, __u32);
	__type(value, __u64);
} flow_drops SEC(".maps");

/* One counter, seeded by the loader with CLOCK_MONOTONIC ns so ids stay unique across reloads. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flow_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_config);
} flow_config SEC(".maps");

/* A zeroed record to seed new map entries (too big for the 512-byte BPF stack many times over):
 * one per program that may run nested on a CPU (SCRATCH_FIRST, SCRATCH_SECOND). */
#define SCRATCH_FIRST 0
#define SCRATCH_SECOND 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct flow_record);
} flow_scratch SEC(".maps");

/* Per CPU: [1] the changes the second copy handled because the first was skipped for them. Read
 * by the loader: the first program's recursion misses less these are the changes no program
 * handled. ([0] is unused: the index stays as loaders read it.) */
#define NEST_HANDLED 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} flow_nesting SEC(".maps");

/* Per CPU and level (0: task context, 1: softirq): the change the first program last ran for,
 * so the second can tell a change the first handled from one the kernel skipped it for. */
struct nest_mark {
	__u64 sk;
	__u32 oldstate;
	__u32 newstate;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct nest_mark);
} flow_nest_marks SEC(".maps");

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&flow_drops, &reason);

	if (n) /* per-CPU, but a nested run on this CPU may add to it meanwhile */
		__sync_fetch_and_add(n, 1);
}

/*
 * One state change, as either program saw it: `tp` is the classic tracepoint's record (NULL for
 * the raw one, whose only arguments are the socket and the two states).
 */
struct change {
	const struct trace_event_raw_inet_sock_set_state *tp;
	struct sock *sk;
	int oldstate;
	int newstate;
	__u16 family;
	__u32 scratch; /* SCRATCH_FIRST or SCRATCH_SECOND: the running program's */
};

/*
 * The socket's addresses and ports at this change. The classic tracepoint copied them into its
 * record; from the raw one they are read from the same fields its TP_fast_assign reads
 * (include/trace/events/sock.h): inet_saddr/inet_daddr for IPv4, sk_v6_rcv_saddr/sk_v6_daddr
 * for IPv6, inet_sport/inet_dport in host order. Both programs run inside the tracepoint call,
 * so they see the same values.
 */
static __always_inline void fill_tuple(struct flow_record *r, const struct change *c)
{
	long err;

	r->family = c->family;
	if (c->tp) {
		const struct trace_event_raw_inet_sock_set_state *tp = c->tp;

		r->sport = tp->sport;
		r->dport = tp->dport;
		/* the verifier forbids loads through an offset ctx pointer: copy with the helper */
		if (c->family == AF_INET)
			err = bpf_probe_read_kernel(r->saddr, 4, tp->saddr) |
			      bpf_probe_read_kernel(r->daddr, 4, tp->daddr);
		else
			err = bpf_probe_read_kernel(r->saddr, 16, tp->saddr_v6) |
			      bpf_probe_read_kernel(r->daddr, 16, tp->daddr_v6);
	} else {
		/* locals: the CO-RE macros relocate every access in their source expression */
		struct sock *sk = c->sk;
		struct inet_sock *inet = (struct inet_sock *)sk;
		__u16 sport = 0, dport = 0;

		err = BPF_CORE_READ_INTO(&sport, inet, inet_sport) |
		      BPF_CORE_READ_INTO(&dport, sk, __sk_common.skc_dport);
		r->sport = bpf_ntohs(sport);
		r->dport = bpf_ntohs(dport);
		if (c->family == AF_INET)
			err |= BPF_CORE_READ_INTO((__u32 *)r->saddr, inet, inet_saddr) |
			       BPF_CORE_READ_INTO((__u32 *)r->daddr, sk, __sk_common.skc_daddr);
		else
			err |= BPF_CORE_READ_INTO((struct in6_addr *)r->saddr, sk,
						  __sk_common.skc_v6_rcv_saddr) |
			       BPF_CORE_READ_INTO((struct in6_addr *)r->daddr, sk,
						  __sk_common.skc_v6_daddr);
	}
	if (err)
		count_drop(FLOW_DROP_READ_FAILED); /* the record goes on, its addresses zero */
}

static __always_inline __u16 local_port(const struct change *c)
{
	struct inet_sock *inet = (struct inet_sock *)c->sk;

	if (c->tp)
		return c->tp->sport;
	return bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
}

static __always_inline void fill_identity(struct flow_record *r, struct sock *sk)
{
	if (bpf_core_field_exists(sk->sk_cgrp_data))
		r->cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	r->netns_ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* Which SYN/FIN sequence numbers the byte counters include (see enum flow_seq_flags). */
static __always_inline __u8 seq_flags(const struct flow_record *r, struct sock *sk, int oldstate)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	unsigned long sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	int sock_done = bpf_core_enum_value(enum sock_flags, SOCK_DONE);
	__u8 flags = 0;

	if (r->established && r->direction == FLOW_DIR_OUTBOUND)
		flags |= FLOW_SEQ_SYN_ACKED;
	/* our FIN went out in these states; it is counted once snd_una has passed it */
	if ((oldstate == TCP_FIN_WAIT1 || oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING ||
	     oldstate == TCP_LAST_ACK) &&
	    BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		flags |= FLOW_SEQ_FIN_ACKED;
	/* tcp_fin() sets SOCK_DONE when the peer's in-order FIN advanced rcv_nxt */
	if (r->established && (sk_flags >> sock_done) & 1)
		flags |= FLOW_SEQ_FIN_RECEIVED;
	return flags;
}

static __always_inline void fill_counters(struct flow_record *r, struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	r->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	r->bytes_received = BPF_CORE_READ(tp, bytes_received);
	r->segs_out = BPF_CORE_READ(tp, segs_out);
	r->segs_in = BPF_CORE_READ(tp, segs_in);
	r->total_retrans = BPF_CORE_READ(tp, total_retrans);
	r->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
}

static __always_inline int on_open(const struct change *c, __u64 key, __u8 direction)
{
	__u32 zero = 0, slot = c->scratch;
	struct flow_record *r = bpf_map_lookup_elem(&flow_scratch, &slot);
	__u64 *seq = bpf_map_lookup_elem(&flow_seq, &zero);
	long err;

	if (!r || !seq)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	r->sock_id = __sync_fetch_and_add(seq, 1);
	r->start_ns = bpf_ktime_get_ns();
	r->direction = direction;
	if (direction == FLOW_DIR_OUTBOUND) {
		/* connect() runs in the caller's context; accepted children are made in softirq */
		r->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(r->comm, sizeof(r->comm));
	}
	fill_tuple(r, c);
	fill_identity(r, c->sk);
	err = bpf_map_update_elem(&flow_starts, &key, r, BPF_NOEXIST);
	if (err == -EEXIST) {
		count_drop(FLOW_DROP_STALE_START);
		err = bpf_map_update_elem(&flow_starts, &key, r, BPF_EXIST);
	}
	if (err != 0)
		count_drop(FLOW_DROP_MAP_FULL);
	return 0;
}

static __always_inline int on_established(const struct change *c, __u64 key)
{
	struct flow_record *r = bpf_map_lookup_elem(&flow_starts, &key);

	if (!r)
		return 0;
	/* connect() picks its local port after SYN_SENT: take the final tuple now (an accepted
	 * child had its whole tuple at SYN_RECV) */
	if (r->direction == FLOW_DIR_OUTBOUND)
		fill_tuple(r, c);
	r->established = 1;
	if (!r->established_ns)
		r->established_ns = bpf_ktime_get_ns();
	return 0;
}

/*
 * How the socket ended (enum flow_outcome). An established socket that goes to CLOSE straight
 * from ESTABLISHED or CLOSE_WAIT skipped the FIN exchange: a RST (sent or received) or the
 * kernel's abort; tcp_reset() also leaves ECONNRESET/EPIPE in sk_err from the FIN states.
 */
static __always_inline __u8 outcome(const struct flow_record *r, int err, int oldstate)
{
	if (r->established) {
		if (err == ECONNRESET || err == EPIPE || oldstate == TCP_ESTABLISHED ||
		    oldstate == TCP_CLOSE_WAIT)
			return FLOW_OUTCOME_RESET;
		return FLOW_OUTCOME_ESTABLISHED;
	}
	if (err == ECONNREFUSED)
		return FLOW_OUTCOME_REFUSED;
	if (err == ETIMEDOUT)
		return FLOW_OUTCOME_TIMEOUT;
	/* no error at all: close() during connect, as an application's own timeout does */
	if (err == 0 && r->direction == FLOW_DIR_OUTBOUND && oldstate == TCP_SYN_SENT)
		return FLOW_OUTCOME_ABANDONED;
	return FLOW_OUTCOME_FAILED;
}

/*
 * Waking the reader for every record costs more than the record at high close rates: wake it
 * once wakeup_bytes are queued; below that it finds the records when its poll times out.
 */
static __always_inline __u64 wakeup_flags(void)
{
	__u32 zero = 0;
	struct flow_config *cfg = bpf_map_lookup_elem(&flow_config, &zero);

	if (!cfg || !cfg->wakeup_bytes)
		return 0; /* the kernel's default: wake when the reader had caught up */
	if (bpf_ringbuf_query(&flow_events, BPF_RB_AVAIL_DATA) >= cfg->wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline int on_close(const struct change *c, __u64 key)
{
	struct flow_record *start = bpf_map_lookup_elem(&flow_starts, &key);
	struct sock *sk = c->sk;
	struct flow_record *r;
	int err;

	if (!start) {
		count_drop(FLOW_DROP_UNTRACKED_CLOSE);
		return 0;
	}
	r = bpf_ringbuf_reserve(&flow_events, sizeof(*r), 0);
	if (!r) {
		count_drop(FLOW_DROP_RINGBUF_FULL);
		bpf_map_delete_elem(&flow_starts, &key);
		return 0;
	}
	__builtin_memcpy(r, start, sizeof(*r));
	r->end_ns = bpf_ktime_get_ns();
	/* a tuple still without its local port (the ESTABLISHED change was never seen) */
	if (r->sport == 0 && local_port(c) != 0)
		fill_tuple(r, c);
	/* cgroup and netns were read from the socket at open: a socket's sk_cgrp_data is set
	 * when it is created (or cloned from its listener) and never changes, nor does its netns */
	fill_counters(r, sk);
	/* closing from any state past the handshake means it was established, even when the
	 * ESTABLISHED transition itself was missed (a nested tracepoint the kernel skipped) */
	if (c->oldstate != TCP_SYN_SENT && c->oldstate != TCP_SYN_RECV)
		r->established = 1;
	r->seq_flags = seq_flags(r, sk, c->oldstate);
	err = BPF_CORE_READ(sk, sk_err);
	r->sk_err = err;
	r->outcome = outcome(r, err, c->oldstate);
	bpf_ringbuf_submit(r, wakeup_flags());
	bpf_map_delete_elem(&flow_starts, &key);
	return 0;
}

/*
 * accept()/accept4() returned `fd` in the current task: if it is a socket flow_starts tracks as
 * inbound, the task that took it is who serves it. The file, socket and sock must point at one
 * another: the file table can change under us (another thread's dup2), and then nothing is
 * touched.
 */
static __always_inline int on_accepted(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file *file = NULL;
	struct file **fds;
	struct socket *sock;
	struct sock *sk;
	struct flow_record *r;
	__u64 key;

	if (fd < 0 || fd >= BPF_CORE_READ(task, files, fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	sock = (struct socket *)BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != file)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_socket) != sock)
		return 0;
	key = (__u64)sk;
	r = bpf_map_lookup_elem(&flow_starts, &key);
	if (!r || r->direction != FLOW_DIR_INBOUND)
		return 0;
	r->cgroup_id = bpf_get_current_cgroup_id();
	r->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	r->accepted = 1;
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int flow_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accepted(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int flow_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accepted(ctx->ret);
}

static __always_inline int on_change(const struct change *c, __u16 protocol)
{
	int oldstate = c->oldstate, newstate = c->newstate;
	__u64 key = (__u64)c->sk;

	if (protocol != IPPROTO_TCP)
		return 0;
	if (c->family != AF_INET && c->family != AF_INET6)
		return 0;
	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE))
		return 0; /* listening sockets are not flows */
	if (newstate == TCP_SYN_SENT)
		return on_open(c, key, FLOW_DIR_OUTBOUND);
	if (newstate == TCP_SYN_RECV && oldstate == TCP_LISTEN)
		return on_open(c, key, FLOW_DIR_INBOUND);
	if (newstate == TCP_ESTABLISHED)
		return on_established(c, key);
	if (newstate == TCP_CLOSE)
		return on_close(c, key);
	return 0;
}

/* trace_inet_sock_set_state(const struct sock *sk, int oldstate, int newstate): the arguments
 * are read once, into a nest_mark, as the verifier refuses loads through an offset ctx pointer
 * (which the compiler makes of repeated reads) */
static __always_inline void raw_args(struct bpf_raw_tracepoint_args *ctx, struct nest_mark *a)
{
	a->sk = ctx->args[0];
	a->oldstate = (__u32)ctx->args[1];
	a->newstate = (__u32)ctx->args[2];
}

static __always_inline int on_raw(const struct nest_mark *a, __u32 scratch)
{
	struct sock *sk = (struct sock *)a->sk;
	struct change c = {
		.tp = NULL,
		.sk = sk,
		.oldstate = (int)a->oldstate,
		.newstate = (int)a->newstate,
		.family = BPF_CORE_READ(sk, __sk_common.skc_family),
		.scratch = scratch,
	};

	return on_change(&c, BPF_CORE_READ(sk, sk_protocol));
}

/*
 * The level of this change on this CPU: 1 in a softirq, 0 in task context. x86-64 runs every
 * softirq on the CPU's interrupt stack and a task's changes on the task's own stack, where the
 * tracepoint's arguments (ctx) are. Elsewhere 0 for all: see flow_set_state_second.
 */
/* x86-64 THREAD_SIZE: 16 KiB, doubled with KASAN. A bound any larger could reach the next
 * mapping (an interrupt stack) and take a softirq for task context. */
extern bool CONFIG_KASAN __kconfig __weak;
#define TASK_STACK_BOUND (CONFIG_KASAN ? 32 << 10 : 16 << 10)
static __always_inline __u32 change_level(struct bpf_raw_tracepoint_args *ctx)
{
#if defined(__TARGET_ARCH_x86)
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 stack = (__u64)BPF_CORE_READ(task, stack), at = (__u64)ctx;

	return at >= stack && at < stack + TASK_STACK_BOUND ? 0 : 1;
#else
	return 0;
#endif
}

/*
 * The pair: this program and flow_set_state_second (attached after it) both run for every
 * change; the kernel skips one only while that same one runs on this CPU in task context and a
 * softirq making a change interrupts it. Then the second must take the change over.
 *
 * The first marks, per level, which change it runs for (socket and states), before anything
 * else; the second handles a change only when the mark at its level is not that change, and
 * clears a mark it matched. A softirq is never interrupted by another change and task-context
 * runs on one CPU never overlap, so at each level the first's mark for a change is read by the
 * second's run for that same change, unless the first was skipped: then the mark is an older
 * change's (or none), wherever in the first's run the softirq came, and the second handles it.
 * A change that interrupts the second leaves its mark behind (the kernel skipped the second);
 * a later change never matches it, as one socket never makes the same change twice in a row.
 * Where the level is unknown (not x86-64) both levels share mark 0: a softirq interrupting the
 * second before it reads the mark would make the second handle the change it runs for again,
 * counted (a second open as stale_start, a second close as untracked_close), never lost.
 */
SEC("raw_tracepoint/inet_sock_set_state")
int flow_set_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 level = change_level(ctx);
	struct nest_mark *mark = bpf_map_lookup_elem(&flow_nest_marks, &level), args;

	raw_args(ctx, &args);
	if (mark)
		*mark = args;
	return on_raw(&args, SCRATCH_FIRST);
}

SEC("raw_tracepoint/inet_sock_set_state")
int flow_set_state_second(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 level = change_level(ctx), key = NEST_HANDLED;
	struct nest_mark *mark = bpf_map_lookup_elem(&flow_nest_marks, &level), args;
	__u64 *handled = bpf_map_lookup_elem(&flow_nesting, &key);

	if (!mark || !handled)
		return 0;
	raw_args(ctx, &args);
	if (mark->sk == args.sk && mark->oldstate == args.oldstate &&
	    mark->newstate == args.newstate) {
		mark->sk = 0; /* the first handled it */
		return 0;
	}
	__sync_fetch_and_add(handled, 1);
	return on_raw(&args, SCRATCH_SECOND);
}

SEC("tracepoint/sock/inet_sock_set_state")
int flow_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct change c = {
		.tp = ctx,
		.sk = (struct sock *)ctx->skaddr,
		.oldstate = ctx->oldstate,
		.newstate = ctx->newstate,
		.family = ctx->family,
		.scratch = SCRATCH_FIRST,
	};

	return on_change(&c, ctx->protocol);
}
