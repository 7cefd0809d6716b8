//! Domain types shared by the tcpstall agent, collector and CLI: one TCP
//! socket as a poll saw it ([`SocketSample`]), the kernel's `tcp_info`
//! parsed by length ([`TcpInfo`]), and the stream positions derived from
//! them ([`Positions`]); and the words every part uses of them: why a
//! sample was sent ([`SampleReason`]), an episode's sides and end reasons,
//! the diagnoses, and time ([`time`]); what an agent tells the collector
//! ([`ingest`]) and what the collector's store keeps and its queries
//! answer ([`record`]). No I/O and no async runtime live here.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod container;
pub mod diagnosis;
pub mod duration;
pub mod end;
pub mod episode;
pub mod error;
pub mod facts;
pub mod flow;
pub mod held;
pub mod incident;
pub mod ingest;
pub mod kernel_tcp;
pub mod machine;
pub mod packed;
pub mod positions;
pub mod record;
pub mod sample;
pub mod tcp_info;
pub mod time;

pub use container::Container;
pub use diagnosis::Diagnosis;
pub use end::{AbsoluteSeq, EndSample, OwnerMissing, ProcessOwner, SampleReason};
pub use episode::{EndReason, Side};
pub use error::error_chain;
pub use flow::{FlowKey, FlowTuple, Translation};
pub use held::{HeldEnd, HeldSpan, HeldSpanError};
pub use ingest::{
    AgentBatch, AgentHello, ClosedSocket, FromCollector, Heartbeat, HostHello, Lookup,
    NamespaceAddresses, ProbeSet, ToAgent, ToCollector, Welcome,
};
pub use kernel_tcp::{FactSource, KernelTcp, SackBlock};
pub use machine::{MachineId, MachineIdError};
pub use packed::Packed;
pub use positions::Positions;
pub use sample::{normalize_addr, CongName, Opened, SkMemInfo, SocketSample, TcpState, TimerKind};
pub use tcp_info::{TcpInfo, TcpInfoError};
pub use time::Clock;

/// Declares modules that are public only with the calling crate's feature
/// `internals` (its own integration tests, the end-to-end tests and the
/// benchmarks turn it on) and crate-private otherwise: how the agent and the
/// collector keep their insides from other users. The `cfg` is the
/// caller's, evaluated where the macro expands.
#[macro_export]
macro_rules! internal_mods {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "internals")]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}
