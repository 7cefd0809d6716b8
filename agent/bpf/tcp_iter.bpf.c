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

// The kernel allows bpf_seq_write and bpf_skc_to_tcp_sock only to programs
// that declare a GPL-compatible license: this file is offered under GPL-2.0
// as well as the project's Apache-2.0, and tells the kernel "GPL".
char LICENSE[] SEC("license") = "GPL";
