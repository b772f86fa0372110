//! Path choice (for now: three distinct relays chosen by bandwidth, an exit that allows the
//! target). Guards, families and subnet rules come with the client issue.

use std::net::IpAddr;

use allium_proto::doc::ConsensusRelay;
use rand::seq::SliceRandom;
use rand::Rng;

/// Why no path could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("no exit in the consensus allows this destination")]
    NoExit,
    #[error("the consensus lists too few relays for a 3-hop path")]
    TooFewRelays,
}

/// What the stream wants from the exit.
#[derive(Debug, Clone, Copy)]
pub enum ExitNeed {
    /// An IP literal: the exit's policy must allow exactly this.
    Addr(IpAddr, u16),
    /// A host name: the exit must allow the port for some address.
    Port(u16),
}

impl ExitNeed {
    /// Does this relay's policy allow the destination?
    pub fn allowed_by(&self, r: &ConsensusRelay) -> bool {
        match *self {
            ExitNeed::Addr(ip, port) => r.policy.allows(ip, port),
            ExitNeed::Port(port) => r.policy.allows_port_somewhere(port),
        }
    }
}

/// Chooses guard, middle and exit: three distinct relays, weighted by advertised bandwidth.
pub fn choose_path<'a, R: Rng>(relays: &'a [ConsensusRelay], need: ExitNeed, rng: &mut R) -> Result<[&'a ConsensusRelay; 3], PathError> {
    let exits: Vec<&ConsensusRelay> = relays.iter().filter(|r| need.allowed_by(r)).collect();
    let exit = *exits.choose_weighted(rng, weight).map_err(|_| PathError::NoExit)?;
    let others: Vec<&ConsensusRelay> = relays.iter().filter(|r| r.identity != exit.identity).collect();
    let guard = *others.choose_weighted(rng, weight).map_err(|_| PathError::TooFewRelays)?;
    let middles: Vec<&ConsensusRelay> = others.into_iter().filter(|r| r.identity != guard.identity).collect();
    let middle = *middles.choose_weighted(rng, weight).map_err(|_| PathError::TooFewRelays)?;
    Ok([guard, middle, exit])
}

fn weight(r: &&ConsensusRelay) -> u64 {
    r.bandwidth.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use allium_proto::doc::Protocols;
    use allium_proto::ids::RelayId;
    use allium_proto::policy::ExitPolicy;
    use rand::SeedableRng;

    fn relay(i: u8, exit: bool) -> ConsensusRelay {
        ConsensusRelay {
            nickname: format!("r{i}"),
            identity: RelayId([i; 32]),
            onion_key: [i; 32],
            link_key: [i; 32],
            link_cert: [0; 64],
            address: format!("127.{i}.0.1:5000").parse().unwrap(),
            policy: if exit { ExitPolicy::parse_rules(&["accept *:80", "reject *:*"]).unwrap() } else { ExitPolicy::reject_all() },
            family: vec![],
            bandwidth: 1000 * i as u64,
            protocols: Protocols::new(),
            published: 0,
            descriptor_digest: [0; 32],
        }
    }

    #[test]
    fn three_distinct_relays_and_a_suitable_exit() {
        let relays: Vec<_> = (1..=6).map(|i| relay(i, i > 4)).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let [g, m, e] = choose_path(&relays, ExitNeed::Port(80), &mut rng).unwrap();
            assert!(g.identity != m.identity && m.identity != e.identity && g.identity != e.identity);
            assert!(e.policy.allows_port_somewhere(80));
        }
        assert_eq!(choose_path(&relays, ExitNeed::Port(443), &mut rng).unwrap_err(), PathError::NoExit);
        assert_eq!(choose_path(&relays[3..5], ExitNeed::Port(80), &mut rng).unwrap_err(), PathError::TooFewRelays);
    }
}
