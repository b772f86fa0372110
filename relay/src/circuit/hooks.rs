//! Test-only faults a relay can be told to commit on its circuits (`dangerous_test_*`
//! options): stop forwarding, corrupt forwarded cells, inject a message or a RELAY_EARLY
//! toward the client.

use super::*;

/// Cells forwarded toward the client before the `inject_from_middle` test hook acts.
pub const INJECT_AFTER: u64 = 200;

/// What the `inject_from_middle` test hook does.
#[derive(Debug, Clone)]
pub enum Injection {
    /// Sends the client this message of the hop's own.
    Message(RelayMsg),
    /// Forwards the cell toward the client as RELAY_EARLY (the 2014 signal, THREATS A16).
    MarkEarly,
}

impl RelayCircuit {
    /// Test-only fault: once `INJECT_AFTER` cells went toward the client, send it a message of
    /// this hop's own (which only the last hop may send), or mark the cell RELAY_EARLY.
    pub(super) fn hook_inject(&mut self) -> Option<Injection> {
        self.forwarded_in += 1;
        if self.forwarded_in == INJECT_AFTER {
            if let Some(i) = self.ctx.inject_from_middle.clone() {
                tracing::info!("test hook: sending the client a message from a middle hop");
                return Some(i);
            }
        }
        None
    }

    /// Test-only fault: true once this relay has stopped forwarding on this circuit (it drops
    /// the cell); `outbound` counts a cell toward the exit.
    pub(super) fn hook_stopped(&mut self, outbound: bool) -> bool {
        self.forwarded_out += u64::from(outbound);
        if let Some(after) = self.ctx.stop_forwarding_after {
            if self.forwarded_out > after {
                return true;
            }
        }
        false
    }

    /// Test-only fault: flip a byte of every forwarded relay cell after the first N.
    pub(super) fn hook_corrupt(&mut self, body: &mut [u8; PAYLOAD_LEN]) {
        self.forwarded += 1;
        if let Some(after) = self.ctx.corrupt_after {
            if self.forwarded > after {
                body[(self.forwarded as usize * 7) % PAYLOAD_LEN] ^= 0x01;
            }
        }
    }
}
