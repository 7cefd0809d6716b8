//! Domain types shared by the tcpstall agent, collector and CLI: one TCP
//! socket as a poll saw it ([`SocketSample`]), the kernel's `tcp_info`
//! parsed by length ([`TcpInfo`]), and the stream positions derived from
//! them ([`Positions`]). No I/O and no async runtime live here.
#![forbid(unsafe_code)]

pub mod duration;
pub mod end;
pub mod error;
pub mod flow;
pub mod held;
pub mod kernel_tcp;
pub mod positions;
pub mod sample;
pub mod tcp_info;

pub use end::{AbsoluteSeq, EndSample, OwnerMissing, ProcessOwner};
pub use error::error_chain;
pub use flow::{FlowKey, FlowTuple};
pub use held::{HeldEnd, HeldSpan, HeldSpanError};
pub use kernel_tcp::{FactSource, KernelTcp, SackBlock};
pub use positions::Positions;
pub use sample::{normalize_addr, CongName, Opened, SkMemInfo, SocketSample, TcpState, TimerKind};
pub use tcp_info::{TcpInfo, TcpInfoError};
