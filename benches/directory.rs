//! `cargo bench --bench directory`: the directory at 1,000 and 10,000 synthetic relays (issue 13
//! point 7), in process, no network.
//!
//! Three authorities hold the same N signed relay descriptors (every relay reachable, one in five
//! an exit). For one voting round it prints one authority's time for each step (make its vote;
//! parse, verify and accept the two peers' votes; compute and sign the consensus; accept two
//! signatures and publish), the sizes of a vote, the consensus (plain and as the caches serve it,
//! compressed) and all microdescriptors, a client's time to parse and verify the consensus, and
//! what a client downloads per voting interval per relay listed. Times are wall time of one thread
//! on an otherwise idle machine (the round is single-threaded).

use std::sync::Arc;
use std::time::{Duration, Instant};

use allium_directory::authority::AuthorityState;
use allium_directory::microdescs::MICRODESCS_PATH;
use allium_directory::schedule::Schedule;
use allium_proto::doc::{AuthoritySigner, Consensus, RelayDescriptor, Vote};
use allium_proto::ids::RelayId;
use allium_proto::policy::ExitPolicy;
use ed25519_dalek::SigningKey;

/// The voting interval of the synthetic network (its value changes no figure here).
const INTERVAL: u64 = 3600;
/// A period start (unix seconds).
const T: u64 = 1_800_000_000 / INTERVAL * INTERVAL;

fn main() {
    println!("Allium directory at scale (synthetic relays, in process; times: one thread, wall clock)");
    for n in [1_000u32, 10_000] {
        let f = round(n);
        println!();
        println!("{n} relays");
        println!("  vote                        {:>10} bytes", f.vote_bytes);
        println!("  consensus                   {:>10} bytes ({} per relay; header {} bytes)", f.consensus_bytes, f.consensus_bytes / n as usize, f.header_bytes);
        println!("  consensus, compressed       {:>10} bytes ({} per relay)", f.compressed_bytes, f.compressed_bytes / n as usize);
        println!("  microdescriptors, all       {:>10} bytes ({} per relay; fetched once per relay and again only when one changes)", f.microdesc_bytes, f.microdesc_bytes / n as usize);
        println!("  authority: make its vote    {:>10.1} ms", ms(f.make_vote));
        println!("  authority: take 2 votes     {:>10.1} ms (parse, verify, accept)", ms(f.take_votes));
        println!("  authority: compute + sign   {:>10.1} ms", ms(f.compute));
        println!("  authority: 2 sigs, publish  {:>10.1} ms", ms(f.publish));
        println!("  authority CPU per round     {:>10.1} ms (the four steps above)", ms(f.make_vote + f.take_votes + f.compute + f.publish));
        println!("  client: parse + verify      {:>10.1} ms", ms(f.client_verify));
        println!(
            "  diff to the next consensus  {:>10} bytes ({} compressed: {:.1} per relay; 5% of relays changed, 1% gone, 1% new)",
            f.diff_bytes,
            f.diff_compressed_bytes,
            f.diff_compressed_bytes as f64 / f64::from(n)
        );
        println!(
            "  client download per interval {:>9} bytes per relay without diffs (the compressed consensus), {:.1} with",
            f.compressed_bytes / n as usize,
            f.diff_compressed_bytes as f64 / f64::from(n)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Figures {
    vote_bytes: usize,
    consensus_bytes: usize,
    header_bytes: usize,
    compressed_bytes: usize,
    microdesc_bytes: usize,
    diff_bytes: usize,
    diff_compressed_bytes: usize,
    make_vote: Duration,
    take_votes: Duration,
    compute: Duration,
    publish: Duration,
    client_verify: Duration,
}

fn key(seed: u32, tag: u8) -> SigningKey {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&seed.to_be_bytes());
    SigningKey::from_bytes(&b)
}

fn descriptor(i: u32) -> RelayDescriptor {
    let k = key(i, 1);
    let link = *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(key(i, 2).to_bytes())).as_bytes();
    let onion = *x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(key(i, 3).to_bytes())).as_bytes();
    RelayDescriptor {
        nickname: format!("relay{i}"),
        identity: RelayId(k.verifying_key().to_bytes()),
        onion_key: onion,
        link_key: link,
        link_cert: allium_proto::link::certify_link_key(&k, &link),
        // Documents only: nothing connects to these addresses.
        address: format!("127.{}.{}.{}:9001", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff).parse().expect("address"),
        policy: if i % 5 == 0 { ExitPolicy::default_exit() } else { ExitPolicy::reject_all() },
        family: vec![],
        bandwidth: 1_000_000 + u64::from(i % 1000) * 10_000,
        protocols: allium_directory::protocols::implemented_protocols(),
        published: T - 600,
        platform: Some("Allium 0.1.0".into()),
    }
}

/// Three authorities holding the same `n` relays, every one reachable.
fn network(n: u32) -> (Vec<AuthorityState>, Vec<RelayId>) {
    let keys: Vec<SigningKey> = (0..3).map(|i| key(i, 9)).collect();
    let ids: Vec<RelayId> = keys.iter().map(|k| RelayId(k.verifying_key().to_bytes())).collect();
    // Flag thresholds of a test network (every relay gets its flags at once): the sizes are those
    // of a network whose relays are all Running and Valid.
    let mut st: Vec<AuthorityState> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| AuthorityState::new(AuthoritySigner::certify(k, key(i as u32, 10), 0, u64::MAX), &ids, true, Schedule::new(INTERVAL)))
        .collect();
    for i in 0..n {
        upload(&mut st, descriptor(i), T - 600);
    }
    (st, ids)
}

fn upload(st: &mut [AuthorityState], d: RelayDescriptor, at: u64) {
    for a in st.iter_mut() {
        a.accept_descriptor(d.clone(), at).expect("descriptor accepted");
        a.record_reachability(d.identity, true, at);
    }
}

/// The times of one authority's steps in a round.
struct Steps {
    make_vote: Duration,
    take_votes: Duration,
    compute: Duration,
    publish: Duration,
}

/// One regular voting round for the period `t`: the published text and the first authority's
/// step times (the others' work is not timed).
fn publish_round(st: &mut [AuthorityState], t: u64) -> (String, String, Steps) {
    let schedule = Schedule::new(INTERVAL);
    let vote_at = schedule.vote_at_ms(t);
    let now = vote_at / 1000;
    let t0 = Instant::now();
    let (mine, _) = st[0].make_vote(t, now);
    let make_vote = t0.elapsed();
    let peers: Vec<Arc<str>> = st[1..].iter_mut().map(|a| a.make_vote(t, now).0).collect();
    let t1 = Instant::now();
    for text in &peers {
        let v = Vote::parse(text).expect("vote parses").verify(now).expect("vote verifies");
        st[0].accept_vote(v, text.clone(), vote_at + 10).expect("vote accepted");
    }
    let take_votes = t1.elapsed();
    for j in 1..3 {
        for (k, text) in std::iter::once(&mine).chain(peers.iter()).enumerate() {
            if k != j {
                let v = Vote::parse(text).expect("vote parses").verify(now).expect("vote verifies");
                st[j].accept_vote(v, text.clone(), vote_at + 10).expect("vote accepted");
            }
        }
    }
    let t2 = Instant::now();
    st[0].make_consensus(t).expect("consensus");
    let compute = t2.elapsed();
    let sigs: Vec<_> = st[1..].iter_mut().map(|a| a.make_consensus(t).expect("consensus")).collect();
    let t3 = Instant::now();
    let mut published = None;
    for s in sigs {
        if let Some(p) = st[0].accept_signature(s, t * 1000).expect("signature accepted") {
            published = Some(p);
        }
    }
    let publish = t3.elapsed();
    let text = published.expect("published").text.to_string();
    (text, mine.to_string(), Steps { make_vote, take_votes, compute, publish })
}

/// One voting round of three authorities over `n` relays, then the next one after churn: one
/// relay in 20 re-uploaded with another bandwidth, one in 100 gone, as many new.
fn round(n: u32) -> Figures {
    let (mut st, ids) = network(n);
    let (text, vote, steps) = publish_round(&mut st, T);
    let t4 = Instant::now();
    let c = Consensus::parse(&text).expect("consensus parses").dangerously_skip_time_check(&ids).expect("consensus verifies");
    let client_verify = t4.elapsed();
    assert_eq!(c.relays().len(), n as usize, "every relay listed");
    let header_bytes = c.signed_text().find("\nrelay ").map_or(0, |i| i + 1);
    let microdescs = st[0].microdescs_answer(MICRODESCS_PATH).unwrap_or_default();
    // Churn, then the next period.
    let next = T + INTERVAL;
    for i in (0..n).step_by(20) {
        let mut d = descriptor(i);
        d.bandwidth += 500_000;
        d.published = next - 900;
        upload(&mut st, d, next - 900);
    }
    for i in (0..n).step_by(100) {
        for a in st.iter_mut() {
            a.record_reachability(descriptor(i).identity, false, next - 1000);
            a.record_reachability(descriptor(i).identity, false, next - 400);
        }
        upload(&mut st, descriptor(n + i), next - 900);
    }
    let (text2, _, _) = publish_round(&mut st, next);
    let diff = allium_proto::doc::diff::make_diff(&text, &text2);
    assert_eq!(allium_proto::doc::diff::apply_diff(&text, &diff).as_deref(), Ok(text2.as_str()));
    Figures {
        vote_bytes: vote.len(),
        consensus_bytes: text.len(),
        header_bytes,
        compressed_bytes: allium_proto::dir_stream::compress(text.as_bytes()).len(),
        microdesc_bytes: microdescs.len(),
        diff_bytes: diff.len(),
        diff_compressed_bytes: allium_proto::dir_stream::compress(diff.as_bytes()).len(),
        make_vote: steps.make_vote,
        take_votes: steps.take_votes,
        compute: steps.compute,
        publish: steps.publish,
        client_verify,
    }
}
