//! Why a circuit ends, and whose fault it was.

use crate::cell::DestroyReason;
use crate::crypto::cell_crypto::CellCryptoError;

/// Why a circuit state machine gave up on its circuit. Every variant ends the circuit: the
/// owner sends DESTROY with [`Fault::destroy_reason`] (unless the circuit was destroyed from
/// outside) and fails every stream (END reason DESTROY).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The peer broke the protocol: a relay on the path, or across a rendezvous join the other
    /// end. Includes a relay cell that failed authentication (tampered, replayed, reordered).
    #[error("peer broke the protocol: {0}")]
    Protocol(String),
    /// A DESTROY arrived (with the reason a hop told end to end in CLOSING, if it did).
    #[error("circuit destroyed ({0:?})")]
    Destroyed(DestroyReason),
    /// One of this end's own limits (a cell counter ran out): nobody's fault.
    #[error("local limit: {0}")]
    Local(&'static str),
}

impl Fault {
    /// A protocol violation by the peer.
    pub fn protocol(why: impl std::fmt::Display) -> Self {
        Fault::Protocol(why.to_string())
    }

    /// The reason this end's DESTROY carries.
    pub fn destroy_reason(&self) -> DestroyReason {
        match self {
            Fault::Protocol(_) => DestroyReason::Protocol,
            Fault::Destroyed(_) => DestroyReason::Destroyed,
            Fault::Local(_) => DestroyReason::ResourceLimit,
        }
    }

    /// Whether the peer is to blame (worth a warning; the rest are routine).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Fault::Protocol(_))
    }
}

impl From<CellCryptoError> for Fault {
    fn from(e: CellCryptoError) -> Self {
        match e {
            CellCryptoError::CounterExhausted => Fault::Local("relay-cell counter exhausted"),
            CellCryptoError::NotAuthenticated => Fault::Protocol("relay cell failed authentication".into()),
            CellCryptoError::NoSuchHop => Fault::Local("no such hop"),
        }
    }
}
