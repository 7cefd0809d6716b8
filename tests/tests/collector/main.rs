//! End-to-end tests of the collector: real processes, real gRPC, a real
//! SQLite file.

mod addresses;
mod e2e;
mod fleet;
mod hostile;
mod identity;
mod scrub;
mod shutdown;
mod tls;
mod web;
mod workers;
