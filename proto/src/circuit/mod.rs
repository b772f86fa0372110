//! Circuits as state machines: cells and the time in, events and cells to send out.
//!
//! Nothing here reads a clock, draws randomness of its own, or touches a socket: the owner
//! (`allium-net`'s tokio tasks, or the in-memory harness in the tests) feeds each cell with
//! the current [`std::time::Instant`], sends the cells a call returns, and asks
//! [`ClientCircuit::next_deadline`] when it must call back.
//!
//! - [`client`]: a client's circuit: the hops and their crypto layers, building (CREATE and
//!   EXTEND), RELAY_EARLY marking, reassembly, which hop may send what, streams waiting for
//!   CONNECTED and RESOLVED, the rendezvous virtual hop and the streams a service serves on it.
//! - [`relay`]: one relay's hop of a circuit: its crypto layer, the RELAY_EARLY gate, forwarding
//!   in both directions, EXTEND checks and the next hop's CREATED turned into EXTENDED.
//! - [`streams`]: the flow and congestion control of the streams on one circuit end (windows,
//!   SENDME tokens, XON/XOFF, the send queue, stalls).
//! - [`handshake`]: the one reassembly of a handshake spread over CREATE/CREATED and CONTINUE.
//! - [`fault`]: why a circuit ends, whose fault it was, and the one mapping to DESTROY reasons.

pub mod client;
pub mod fault;
pub mod handshake;
pub mod relay;
pub mod streams;

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;

pub use client::{ClientCircuit, Event, HopTarget};
pub use fault::Fault;
pub use handshake::{HandshakeRead, HandshakeReader};
pub use relay::{FromNext, FromPrev, RelayHop, Side, Teardown};
