// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
//
// tcpstall's BPF iter/tcp program: one fixed-size record per TCP
// connection of the network namespace the iterator was opened in, with the
// facts tcp_info does not give: absolute sequence numbers, the SACK blocks
// this side sends and the ones it last received, both window scales and
// the Nagle/cork bits. User space (agent/src/probe/record.rs) parses the
// records and joins them to the sock_diag sample by socket cookie.
//
// CO-RE: every field access below is relocated against the running
// kernel's BTF at load time (vmlinux.h marks all records
// preserve_access_index), so one object serves every kernel from 5.12
// (bpf_get_socket_cookie in tracing programs) on.
//
// Keep `struct tcpstall_rec` in step with the parser: its layout is the
// wire format between this program and the agent.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

// include/net/tcp_states.h; vmlinux.h may not carry these as names.
#define TS_TCP_TIME_WAIT 6
#define TS_TCP_LISTEN 10
#define TS_TCP_NEW_SYN_RECV 12

// "TSB1": record magic, little-endian in memory on the hosts we run on.
#define TCPSTALL_REC_MAGIC 0x31425354u
#define TCPSTALL_SACKS 4

struct tcpstall_sack {
	__u32 start;
	__u32 end;
};

// 136 bytes, every field naturally aligned, no implicit padding.
struct tcpstall_rec {
	__u32 magic;
	__u16 len;             // sizeof(struct tcpstall_rec)
	__u8 state;            // kernel TCP state number
	__u8 family;           // AF_INET or AF_INET6
	__u64 cookie;          // sock_diag's idiag_cookie
	__u64 bytes_acked;     // same snapshot as snd_una
	__u64 bytes_received;  // same snapshot as rcv_nxt
	__u32 snd_una;
	__u32 snd_nxt;
	__u32 write_seq;
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 rcv_wup;
	__u32 rcv_wnd;         // bytes, as last advertised (before scaling)
	__u32 snd_wnd;         // bytes, scaled
	__u8 snd_wscale;
	__u8 rcv_wscale;
	__u8 nonagle;          // TCP_NAGLE_OFF 1, TCP_NAGLE_CORK 2, TCP_NAGLE_PUSH 4
	__u8 num_sacks;        // valid entries of sacks_sent
	__u8 sack_ok;          // rx_opt.sack_ok (bit 0: SACK negotiated)
	__u8 pad[3];
	struct tcpstall_sack sacks_sent[TCPSTALL_SACKS];  // tp->selective_acks
	struct tcpstall_sack sacks_recv[TCPSTALL_SACKS];  // tp->recv_sack_cache
};

_Static_assert(sizeof(struct tcpstall_rec) == 136, "record layout");

SEC("iter/tcp")
int tcpstall_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcpstall_rec r = {};
	struct tcp_sock *tp;
	__u8 state;
	int i;

	if (!skc)
		return 0;
	state = skc->skc_state;
	if (state == TS_TCP_LISTEN || state == TS_TCP_TIME_WAIT || state == TS_TCP_NEW_SYN_RECV)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;

	r.magic = TCPSTALL_REC_MAGIC;
	r.len = sizeof(r);
	r.state = state;
	r.family = skc->skc_family;
	r.cookie = bpf_get_socket_cookie(tp);
	r.bytes_acked = tp->bytes_acked;
	r.bytes_received = tp->bytes_received;
	r.snd_una = tp->snd_una;
	r.snd_nxt = tp->snd_nxt;
	r.write_seq = tp->write_seq;
	r.rcv_nxt = tp->rcv_nxt;
	r.copied_seq = tp->copied_seq;
	r.rcv_wup = tp->rcv_wup;
	r.rcv_wnd = tp->rcv_wnd;
	r.snd_wnd = tp->snd_wnd;
	// Clang 14 miscomputes BPF_CORE_READ_BITFIELD(&tp->rx_opt, ...); the
	// path from tp is relocated correctly.
	r.snd_wscale = BPF_CORE_READ_BITFIELD(tp, rx_opt.snd_wscale);
	r.rcv_wscale = BPF_CORE_READ_BITFIELD(tp, rx_opt.rcv_wscale);
	r.sack_ok = BPF_CORE_READ_BITFIELD(tp, rx_opt.sack_ok);
	r.nonagle = BPF_CORE_READ_BITFIELD(tp, nonagle);
	r.num_sacks = tp->rx_opt.num_sacks;
	for (i = 0; i < TCPSTALL_SACKS; i++) {
		r.sacks_sent[i].start = tp->selective_acks[i].start_seq;
		r.sacks_sent[i].end = tp->selective_acks[i].end_seq;
		r.sacks_recv[i].start = tp->recv_sack_cache[i].start_seq;
		r.sacks_recv[i].end = tp->recv_sack_cache[i].end_seq;
	}

	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

// ---------------------------------------------------------------------------
// The poll's first phase in the kernel (issue 27): instead of sock_diag's
// base dump, which copies every connection out for the agent to keep the
// few with a queue, this program writes only the sockets the agent may
// want: a send queue, a cookie it follows (TRACKED), a 4-tuple it watches
// (WATCHED), a local endpoint it counts holders of (ENDPOINTS); listeners
// (few; they tell who opened a connection); and at the end of the walk how
// many sockets it saw. Each socket as sock_diag's `struct inet_diag_msg`
// header would give it (family, state, sockid with cookie, queues), so the
// agent reads both paths with one parser and asks for the wanted ones in
// full by the same exact request.

#define TS_TCP_SYN_RECV 3
#define AF_INET_ 2
#define AF_INET6_ 10

// "TSB2": a filter record's magic.
#define TCPSTALL_FILTER_MAGIC 0x32425354u
#define KIND_SOCKET 1
#define KIND_END 2

// include/uapi/linux/inet_diag.h's inet_diag_msg, 72 bytes.
struct tcpstall_diag_msg {
	__u8 family;
	__u8 state;
	__u8 timer;
	__u8 retrans;
	__be16 sport;
	__be16 dport;
	__be32 src[4];
	__be32 dst[4];
	__u32 ifindex;
	__u32 cookie[2];
	__u32 expires;
	__u32 rqueue;
	__u32 wqueue;
	__u32 uid;
	__u32 inode;
};

// 80 bytes: magic, kind, then the message (KIND_SOCKET) or, at the end of
// the walk (KIND_END), the number of sockets seen in its first 8 bytes.
struct tcpstall_filter_rec {
	__u32 magic;
	__u8 kind;
	__u8 pad[3];
	struct tcpstall_diag_msg msg;
};

_Static_assert(sizeof(struct tcpstall_diag_msg) == 72, "inet_diag_msg layout");
_Static_assert(sizeof(struct tcpstall_filter_rec) == 80, "filter record layout");

// An address as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), and
// ports in host order.
struct tcpstall_endpoint {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

struct tcpstall_tuple {
	struct tcpstall_endpoint local;
	struct tcpstall_endpoint remote;
};

// Entries allocated as they are added (BPF_F_NO_PREALLOC): the maps are
// empty at rest and in `snapshot` (which loads this object for the other
// program), and preallocated the three held 19 MB (bpftool's memlock)
// against 3 MB of buckets now.
#define FILTER_ENTRIES 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FILTER_ENTRIES);
	__type(key, __u64);
	__type(value, __u8);
} TRACKED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FILTER_ENTRIES);
	__type(key, struct tcpstall_tuple);
	__type(value, __u8);
} WATCHED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, FILTER_ENTRIES);
	__type(key, struct tcpstall_endpoint);
	__type(value, __u8);
} ENDPOINTS SEC(".maps");

// How many entries each map holds (set by the agent with them): a socket
// costs a lookup only in a map that has entries.
struct tcpstall_sizes {
	__u32 tracked;
	__u32 watched;
	__u32 endpoints;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcpstall_sizes);
} SIZES SEC(".maps");

static __always_inline void endpoint_of(struct tcpstall_endpoint *e, __u8 family,
					const __be32 *v4, const struct in6_addr *v6, __u16 port)
{
	if (family == AF_INET6_) {
		__builtin_memcpy(e->addr, v6, 16);
	} else {
		e->addr[10] = 0xff;
		e->addr[11] = 0xff;
		__builtin_memcpy(&e->addr[12], v4, 4);
	}
	e->port = port;
}

SEC("iter/tcp")
int tcpstall_filter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct tcpstall_filter_rec r;
	struct tcpstall_sizes *sizes;
	struct tcp_sock *tp = NULL;
	__u32 zero = 0, wq = 0;
	__u64 cookie = 0;
	bool have_cookie = false, want;
	__u8 state, family;

	if (!skc) {
		// The walk's end: how many sockets it saw (seq_num is the last
		// one's index here: 0 - 1 when there was none).
		__u64 seen = ctx->meta->seq_num + 1;

		__builtin_memset(&r, 0, sizeof(r));
		r.magic = TCPSTALL_FILTER_MAGIC;
		r.kind = KIND_END;
		__builtin_memcpy(&r.msg, &seen, sizeof(seen));
		bpf_seq_write(seq, &r, sizeof(r));
		return 0;
	}
	// Most sockets of a host at rest leave here: no queue, nothing named.
	state = skc->skc_state;
	if (state != TS_TCP_TIME_WAIT && state != TS_TCP_NEW_SYN_RECV) {
		tp = bpf_skc_to_tcp_sock(skc);
		if (tp && state != TS_TCP_LISTEN)
			wq = tp->write_seq - tp->snd_una;
	}
	want = state == TS_TCP_LISTEN || wq > 0;
	family = skc->skc_family;
	if (!want) {
		sizes = bpf_map_lookup_elem(&SIZES, &zero);
		if (!sizes || !(sizes->tracked | sizes->watched | sizes->endpoints))
			return 0;
		if (sizes->tracked) {
			cookie = bpf_get_socket_cookie(skc);
			have_cookie = true;
			if (bpf_map_lookup_elem(&TRACKED, &cookie))
				want = true;
		}
		if (!want && (sizes->watched || sizes->endpoints)) {
			struct tcpstall_tuple t = {};

			endpoint_of(&t.local, family, &skc->skc_rcv_saddr, &skc->skc_v6_rcv_saddr,
				    skc->skc_num);
			endpoint_of(&t.remote, family, &skc->skc_daddr, &skc->skc_v6_daddr,
				    bpf_ntohs(skc->skc_dport));
			if (sizes->watched && bpf_map_lookup_elem(&WATCHED, &t))
				want = true;
			else if (sizes->endpoints && bpf_map_lookup_elem(&ENDPOINTS, &t.local))
				want = true;
		}
		if (!want)
			return 0;
	}
	if (!have_cookie)
		cookie = bpf_get_socket_cookie(skc);

	__builtin_memset(&r, 0, sizeof(r));
	r.magic = TCPSTALL_FILTER_MAGIC;
	r.kind = KIND_SOCKET;
	r.msg.family = family;
	// sock_diag's states: a request socket is SYN-RECV, a TIME-WAIT one
	// its substate.
	r.msg.state = state;
	if (state == TS_TCP_NEW_SYN_RECV) {
		r.msg.state = TS_TCP_SYN_RECV;
	} else if (state == TS_TCP_TIME_WAIT) {
		struct tcp_timewait_sock *tw = bpf_skc_to_tcp_timewait_sock(skc);

		if (tw)
			r.msg.state = tw->tw_sk.tw_substate;
	}
	// sock_diag's queues (tcp_diag_get_info).
	if (tp) {
		if (state == TS_TCP_LISTEN) {
			r.msg.rqueue = tp->inet_conn.icsk_inet.sk.sk_ack_backlog;
			r.msg.wqueue = tp->inet_conn.icsk_inet.sk.sk_max_ack_backlog;
		} else {
			int rq = (int)(tp->rcv_nxt - tp->copied_seq);

			r.msg.rqueue = rq > 0 ? rq : 0;
			r.msg.wqueue = wq;
		}
	}
	r.msg.sport = bpf_htons(skc->skc_num);
	r.msg.dport = skc->skc_dport;
	if (family == AF_INET6_) {
		__builtin_memcpy(r.msg.src, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(r.msg.dst, &skc->skc_v6_daddr, 16);
	} else {
		r.msg.src[0] = skc->skc_rcv_saddr;
		r.msg.dst[0] = skc->skc_daddr;
	}
	r.msg.ifindex = skc->skc_bound_dev_if;
	r.msg.cookie[0] = (__u32)cookie;
	r.msg.cookie[1] = (__u32)(cookie >> 32);
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

// The kernel allows bpf_seq_write and bpf_skc_to_tcp_sock only to programs
// that declare a GPL-compatible license: this file is offered under GPL-2.0
// as well as the project's Apache-2.0, and tells the kernel "GPL".
char LICENSE[] SEC("license") = "GPL";
