//! Predicted ports: the ports this client's streams went to lately, for which
//! [`crate::circmgr::CircMgr::maintain`] keeps clean circuits ready (as Tor keeps circuits for
//! the ports used in the last hour), besides the always-predicted
//! [`crate::circmgr::PREBUILD_PORTS`]. A new isolation class then finds a circuit built ahead
//! for its port instead of waiting for a build. Sans-IO: times come in as arguments.

use std::time::{Duration, Instant};

/// How long a port stays predicted after a stream to it.
pub const PREDICTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Most ports predicted at once beyond the fixed ones (the most recently used are kept), so an
/// application touching many ports cannot make the client keep circuits for each.
pub const MAX_PREDICTED: usize = 8;

/// Recently used ports, most recent last.
#[derive(Debug, Default)]
pub struct PredictedPorts {
    ports: Vec<(u16, Instant)>,
}

impl PredictedPorts {
    /// Notes a stream to `port` at `now`; true if the port was not predicted before (the
    /// circuit manager should then build for it).
    pub fn note(&mut self, port: u16, fixed: &[u16], now: Instant) -> bool {
        if port == 0 || fixed.contains(&port) {
            return false;
        }
        self.expire(now);
        let known = match self.ports.iter().position(|(p, _)| *p == port) {
            Some(i) => {
                self.ports.remove(i);
                true
            }
            None => false,
        };
        self.ports.push((port, now));
        if self.ports.len() > MAX_PREDICTED {
            self.ports.remove(0);
        }
        !known
    }

    /// The ports to keep clean circuits for at `now`: `fixed`, then the predicted ones.
    pub fn current(&mut self, fixed: &[u16], now: Instant) -> Vec<u16> {
        self.expire(now);
        fixed.iter().copied().chain(self.ports.iter().map(|(p, _)| *p)).collect()
    }

    fn expire(&mut self, now: Instant) {
        self.ports.retain(|(_, at)| now.saturating_duration_since(*at) < PREDICTION_LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: [u16; 2] = [80, 443];

    #[test]
    fn used_ports_are_predicted_for_an_hour() {
        let t0 = Instant::now();
        let mut p = PredictedPorts::default();
        assert!(p.note(8080, &FIXED, t0), "a new port");
        assert!(!p.note(8080, &FIXED, t0 + Duration::from_secs(1)), "already predicted");
        assert!(!p.note(80, &FIXED, t0), "fixed ports are always predicted");
        assert!(!p.note(0, &FIXED, t0), "no port (an onion-service or directory circuit)");
        assert_eq!(p.current(&FIXED, t0 + Duration::from_secs(60)), [80, 443, 8080]);
        // A use renews the prediction.
        p.note(8080, &FIXED, t0 + Duration::from_secs(1800));
        assert_eq!(p.current(&FIXED, t0 + Duration::from_secs(3700)), [80, 443, 8080]);
        assert_eq!(p.current(&FIXED, t0 + Duration::from_secs(1800) + PREDICTION_LIFETIME), [80, 443]);
    }

    #[test]
    fn at_most_the_most_recent_ports_are_kept() {
        let t0 = Instant::now();
        let mut p = PredictedPorts::default();
        for port in 1000..1000 + MAX_PREDICTED as u16 + 5 {
            p.note(port, &FIXED, t0);
        }
        let now = p.current(&FIXED, t0);
        assert_eq!(now.len(), FIXED.len() + MAX_PREDICTED);
        assert_eq!(now[FIXED.len()], 1005, "the oldest ones went first");
    }
}
