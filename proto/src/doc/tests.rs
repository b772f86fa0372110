//! Tests of the documents: round trips, tampering, keyword rules, consensus verification
//! (THREATS A10), consensus computation, and parsers fed random or mutated text (A3, A4).

use std::net::SocketAddr;

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

use super::lines::enc64;
use super::*;
use crate::ids::RelayId;
use crate::policy::ExitPolicy;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn id(k: &SigningKey) -> RelayId {
    RelayId(k.verifying_key().to_bytes())
}

/// When the test certificates are valid: from a day before [`LT`] to 30 days after it.
const CERT_FROM: u64 = LT.valid_after - 86_400;
const CERT_UNTIL: u64 = LT.valid_until + 30 * 86_400;

/// The signing key an authority with identity `k` uses in these tests.
fn signing_key(k: &SigningKey) -> SigningKey {
    let mut b = k.to_bytes();
    b[0] ^= 0xa5;
    b[31] ^= 0x3c;
    SigningKey::from_bytes(&b)
}

/// `k`'s signing key, certified by `k` for [`CERT_FROM`]..=[`CERT_UNTIL`].
fn signer(k: &SigningKey) -> AuthoritySigner {
    signer_for(k, CERT_FROM, CERT_UNTIL)
}

fn signer_for(k: &SigningKey, published: u64, expires: u64) -> AuthoritySigner {
    AuthoritySigner::certify(k, signing_key(k), published, expires)
}

fn desc(k: &SigningKey, nick: &str, published: u64) -> RelayDescriptor {
    let link_key = [k.to_bytes()[0] ^ 0x55; 32];
    RelayDescriptor {
        nickname: nick.to_string(),
        identity: id(k),
        onion_key: [k.to_bytes()[0] ^ 0xaa; 32],
        link_key,
        link_cert: certify_link_key(k, &link_key),
        address: "192.0.2.7:9001".parse().unwrap(),
        policy: ExitPolicy::default_exit(),
        family: vec![RelayId([1; 32]), RelayId([2; 32])],
        bandwidth: 1_000_000,
        protocols: Protocols::new().with("Link", 1, 1).with("Relay", 1, 2).with("Ntor", 1, 1),
        published,
        platform: None,
    }
}

fn parse_verify(text: &str) -> Result<RelayDescriptor, DocError> {
    RelayDescriptor::parse(text)?.verify()
}

/// The optional `platform` line: kept, signed over (it changes the digest), at most once,
/// printable and bounded.
#[test]
fn descriptor_platform_is_optional_signed_and_bounded() {
    let k = key(7);
    let mut d = desc(&k, "plat", 1_700_000_000);
    let without = d.digest();
    d.platform = Some("Allium 0.1.0".into());
    let text = d.encode_signed(&k);
    assert!(text.contains("\nplatform Allium 0.1.0\nsignature "), "{text}");
    assert_eq!(parse_verify(&text).unwrap(), d);
    assert_ne!(d.digest(), without);
    let unsigned = d.encode_unsigned();
    for bad in ["platform Allium 0.1.0\nplatform x\n".to_string(), format!("platform {}\n", "x".repeat(65)), "platform tab\there\n".into()] {
        let doctored = unsigned.replace("platform Allium 0.1.0\n", &bad);
        assert!(parse_verify(&sign_desc_text(&doctored, &k)).is_err(), "{bad:?} accepted");
    }
}

/// Signs an arbitrary descriptor signed part (lets tests add lines the encoder never writes).
fn sign_desc_text(unsigned: &str, k: &SigningKey) -> String {
    let sig = k.sign(&descriptor::signed_message(unsigned));
    format!("{unsigned}signature {}\n", enc64(&sig.to_bytes()))
}

/// Inserts `extra` (a full line) after the first line starting with `after`.
fn insert_after(text: &str, after: &str, extra: &str) -> String {
    let i = text.find(&format!("\n{after}")).expect("anchor line") + 1;
    let j = i + text[i..].find('\n').unwrap() + 1;
    format!("{}{}{}", &text[..j], extra, &text[j..])
}

fn unsigned_part(text: &str, sig_kw: &str) -> String {
    text[..text.find(&format!("\n{sig_kw} ")).unwrap() + 1].to_string()
}

// ---- relay descriptors ----

#[test]
fn descriptor_round_trip() {
    let k = key(1);
    let d = desc(&k, "relay1", 1_700_000_000);
    let text = d.encode_signed(&k);
    assert!(text.starts_with("allium-relay-descriptor 1\nnickname relay1\n"), "{text}");
    assert!(text.contains("\npolicy reject private:*\npolicy accept *:*\n"), "{text}");
    assert!(text.contains("\nprotocols Link=1 Ntor=1 Relay=1-2\n"), "{text}");
    let back = parse_verify(&text).unwrap();
    assert_eq!(back, d);
    assert_eq!(back.encode_signed(&k), text);
    use sha2::Digest as _;
    let signed: [u8; 32] = sha2::Sha256::digest(unsigned_part(&text, "signature").as_bytes()).into();
    assert_eq!(d.digest(), signed);
}

#[test]
fn descriptor_edge_values_round_trip() {
    let k = key(2);
    let mut d = desc(&k, "A", 0);
    d.family.clear();
    d.protocols = Protocols::new();
    d.policy = ExitPolicy::parse_rules::<&str>(&[]).unwrap();
    d.address = "[2001:db8::1]:443".parse().unwrap();
    d.bandwidth = u64::MAX;
    let text = d.encode_signed(&k);
    assert!(text.contains("\nfamily\n") && text.contains("\nprotocols\n"), "{text}");
    assert_eq!(parse_verify(&text).unwrap(), d);
}

#[test]
fn descriptor_one_byte_changed_is_rejected() {
    let k = key(3);
    let text = desc(&k, "relay3", 1_700_000_000).encode_signed(&k);
    // Targeted edits that keep the syntax valid: only the signature check can catch them.
    for (from, to) in [("nickname relay3", "nickname relay4"), ("bandwidth 1000000", "bandwidth 1000001"), (":9001", ":9002")] {
        let bad = text.replacen(from, to, 1);
        assert_ne!(bad, text);
        assert_eq!(parse_verify(&bad).unwrap_err(), DocError::BadSignature, "{from}");
    }
}

#[test]
fn descriptor_signed_by_another_key_is_rejected() {
    let (a, b) = (key(4), key(5));
    let d = desc(&a, "claimsA", 1_700_000_000);
    let text = d.encode_signed(&b);
    let u = RelayDescriptor::parse(&text).unwrap();
    assert_eq!(u.claimed_identity(), id(&a));
    assert_eq!(u.verify().unwrap_err(), DocError::BadSignature);
}

#[test]
fn descriptor_bad_link_cert_is_rejected() {
    let (a, b) = (key(6), key(7));
    let mut d = desc(&a, "relay6", 1_700_000_000);
    d.link_cert = certify_link_key(&b, &d.link_key);
    assert_eq!(parse_verify(&d.encode_signed(&a)).unwrap_err(), DocError::BadLinkCert);
    let mut d = desc(&a, "relay6", 1_700_000_000);
    d.link_cert = certify_link_key(&a, &[9; 32]);
    assert_eq!(parse_verify(&d.encode_signed(&a)).unwrap_err(), DocError::BadLinkCert);
    assert!(verify_link_cert(&id(&a), &[9; 32], &d.link_cert));
}

#[test]
fn unknown_keyword_ignored_critical_rejected() {
    let k = key(8);
    let d = desc(&k, "relay8", 1_700_000_000);
    let unsigned = d.encode_unsigned();
    let extended = insert_after(&unsigned, "address ", "future-field 1 2 3\n");
    assert_eq!(parse_verify(&sign_desc_text(&extended, &k)).unwrap(), d);
    let critical = insert_after(&unsigned, "address ", "critical-future 1\n");
    assert!(matches!(
        RelayDescriptor::parse(&sign_desc_text(&critical, &k)).unwrap_err(),
        DocError::UnknownCritical { line: 8, .. }
    ));
}

#[test]
fn order_duplicates_and_missing_fields_rejected() {
    let k = key(9);
    let unsigned = desc(&k, "relay9", 1_700_000_000).encode_unsigned();
    let dup = insert_after(&unsigned, "nickname ", "nickname again\n");
    assert!(matches!(RelayDescriptor::parse(&sign_desc_text(&dup, &k)).unwrap_err(), DocError::Duplicate { .. }));
    let late = insert_after(&unsigned, "published ", "nickname late\n");
    let late = late.replacen("nickname relay9\n", "", 1);
    assert!(matches!(RelayDescriptor::parse(&sign_desc_text(&late, &k)).unwrap_err(), DocError::OutOfOrder { .. }));
    let missing = unsigned.replacen(&format!("bandwidth {}\n", 1_000_000), "", 1);
    assert_eq!(
        RelayDescriptor::parse(&sign_desc_text(&missing, &k)).unwrap_err(),
        DocError::Missing { keyword: "bandwidth" }
    );
    // A keyword of another document type (a consensus-only line) is not "unknown" here.
    let foreign = insert_after(&unsigned, "address ", "descriptor-digest AAAA\n");
    assert!(RelayDescriptor::parse(&sign_desc_text(&foreign, &k)).is_ok(), "entry keywords are unknown to descriptors");
}

#[test]
fn byte_level_rules() {
    let k = key(10);
    let text = desc(&k, "relay10", 1_700_000_000).encode_signed(&k);
    assert_eq!(RelayDescriptor::parse(text.trim_end()).unwrap_err(), DocError::NoFinalNewline);
    assert!(matches!(RelayDescriptor::parse(&text.replacen('\n', "\r\n", 1)).unwrap_err(), DocError::BadByte { line: 1 }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen("nickname ", "nickname  ", 1)).unwrap_err(), DocError::BadSpacing { line: 2 }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen("\nnickname", "\n\nnickname", 1)).unwrap_err(), DocError::BadSpacing { line: 2 }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen("nickname", "Nickname", 1)).unwrap_err(), DocError::BadKeyword { line: 2 }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen("relay10", "relay\u{e9}", 1)).unwrap_err(), DocError::BadByte { line: 2 }));
    let big = insert_after(&text, "address ", &format!("padding {}\n", "x".repeat(MAX_DESCRIPTOR_LEN)));
    assert!(matches!(RelayDescriptor::parse(&big).unwrap_err(), DocError::TooLarge { .. }));
    let many_lines = insert_after(&text, "address ", &"x\n".repeat(MAX_DESCRIPTOR_LINES));
    assert!(matches!(RelayDescriptor::parse(&many_lines).unwrap_err(), DocError::TooMany { what: "lines", .. }));
    let fam = format!("family{}\n", " X".repeat(lines::MAX_ARGS + 1));
    let wide = text.replacen(&text[text.find("family").unwrap()..text.find("bandwidth").unwrap()], &fam, 1);
    assert!(matches!(RelayDescriptor::parse(&wide).unwrap_err(), DocError::BadValue { reason: "more than 256 arguments", .. }));
    let tall = format!("allium-consensus 1\n{}", "a\n".repeat(MAX_VOTE_LINES));
    assert!(matches!(Consensus::parse(&tall).unwrap_err(), DocError::TooMany { what: "lines", .. }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen(" 1\n", " 2\n", 1)).unwrap_err(), DocError::UnsupportedVersion { .. }));
    assert!(matches!(Vote::parse(&text).unwrap_err(), DocError::WrongDocumentType { .. }));
    // Non-canonical encodings.
    let lower = text.replacen(&id(&k).fingerprint(), &id(&k).fingerprint().to_lowercase(), 1);
    assert!(matches!(RelayDescriptor::parse(&lower).unwrap_err(), DocError::BadValue { .. }));
    assert!(matches!(RelayDescriptor::parse(&text.replacen("bandwidth 1", "bandwidth 01", 1)).unwrap_err(), DocError::BadValue { .. }));
    let padded = text.replacen(&format!("onion-key {}", enc64(&[10 ^ 0xaa; 32])), &format!("onion-key {}=", enc64(&[10 ^ 0xaa; 32])), 1);
    assert!(matches!(RelayDescriptor::parse(&padded).unwrap_err(), DocError::BadValue { .. }));
}

// ---- votes ----

fn vote<'a>(voter: &SigningKey, relays: impl IntoIterator<Item = &'a RelayDescriptor>, lifetime: Lifetime) -> Vote {
    Vote {
        lifetime,
        voter: id(voter),
        cert: *signer(voter).cert(),
        params: Default::default(),
        recommended_protocols: Protocols::new(),
        required_protocols: Protocols::new(),
        relays: relays.into_iter().map(RelayDescriptor::to_entry).collect(),
        srv: Default::default(),
    }
}

const LT: Lifetime = Lifetime { valid_after: 1_700_003_600, fresh_until: 1_700_007_200, valid_until: 1_700_014_400 };

#[test]
fn vote_round_trip_and_tampering() {
    let ka = key(20);
    let relays: Vec<RelayDescriptor> = (30..34).map(|s| desc(&key(s), &format!("r{s}"), 1_700_000_000 + s as u64)).collect();
    let v = vote(&ka, &relays, LT);
    let text = v.encode_signed(signer(&ka).key());
    let u = Vote::parse(&text).unwrap();
    assert_eq!(u.claimed_voter(), id(&ka));
    assert_eq!(u.claimed_lifetime(), LT);
    let back = u.verify(NOW).unwrap();
    // Entries come back sorted by identity.
    let mut sorted = v.clone();
    sorted.relays.sort_by_key(|r| r.identity);
    assert_eq!(back, sorted);
    assert_eq!(back.digest(), v.digest());
    let bad = text.replacen("bandwidth 1000000", "bandwidth 1000001", 1);
    assert_eq!(Vote::parse(&bad).unwrap().verify(NOW).unwrap_err(), DocError::BadSignature);
    let other = v.encode_signed(&key(21));
    assert_eq!(Vote::parse(&other).unwrap().verify(NOW).unwrap_err(), DocError::BadSignature);
}

#[test]
fn vote_entries_must_be_sorted_and_unique() {
    let ka = key(22);
    let relays: Vec<RelayDescriptor> = (40..43).map(|s| desc(&key(s), &format!("r{s}"), 1_700_000_000)).collect();
    let text = vote(&ka, &relays, LT).encode_unsigned();
    let first = text.find("\nrelay ").unwrap() + 1;
    let second = first + text[first..].find("\nrelay ").unwrap() + 1;
    let third = second + text[second..].find("\nrelay ").unwrap() + 1;
    // Swap the first two entries.
    let swapped = format!("{}{}{}{}", &text[..first], &text[second..third], &text[first..second], &text[third..]);
    let sign = |t: &str| format!("{t}vote-signature {}\n", enc64(&signer(&ka).key().sign(&vote::signed_message(t)).to_bytes()));
    assert!(matches!(Vote::parse(&sign(&swapped)).unwrap_err(), DocError::Unsorted { .. }));
    let dup = format!("{}{}{}", &text[..second], &text[first..second], &text[second..]);
    assert!(matches!(Vote::parse(&sign(&dup)).unwrap_err(), DocError::Unsorted { .. }));
    // Unknown lines inside an entry are ignored; critical ones are not.
    let ext = format!("{}future-flag Fast\n{}", &text[..second], &text[second..]);
    assert!(Vote::parse(&sign(&ext)).unwrap().verify(NOW).is_ok());
    let crit = format!("{}critical-flag Fast\n{}", &text[..second], &text[second..]);
    assert!(matches!(Vote::parse(&sign(&crit)).unwrap_err(), DocError::UnknownCritical { .. }));
}

// ---- consensus verification (THREATS A10) ----

struct Net {
    auths: Vec<SigningKey>,
    ids: Vec<RelayId>,
    consensus: Consensus,
}

fn net3() -> Net {
    let auths: Vec<SigningKey> = (50..53).map(key).collect();
    let ids = auths.iter().map(id).collect();
    let relays: Vec<RelayDescriptor> = (60..63).map(|s| desc(&key(s), &format!("r{s}"), 1_700_000_000)).collect();
    let votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, &relays, LT)).collect();
    let consensus = compute_consensus(&votes, 3, LT);
    assert_eq!(consensus.relays().len(), 3);
    assert_eq!(consensus.shared_random().current.map(|v| v.reveals), Some(3));
    assert!(consensus.shared_random().previous.is_some());
    Net { auths, ids, consensus }
}

/// The consensus text with an `authority-cert` and a `directory-signature` line per given
/// signature.
fn with_sigs(c: &Consensus, sigs: &[DirSignature]) -> String {
    let mut t = c.signed_text().to_string();
    for s in sigs {
        t.push_str(&s.cert.encode());
        t.push_str(&sig_line(s));
    }
    t
}

fn sig_line(s: &DirSignature) -> String {
    format!("directory-signature {} {}\n", s.identity().fingerprint(), enc64(&s.signature))
}

fn bad_sig(k: &SigningKey) -> DirSignature {
    DirSignature::sign(&signer(k), &[0u8; 32])
}

fn check(n: &Net, sigs: &[DirSignature], now: u64) -> Result<Consensus, ConsensusError> {
    Consensus::parse(&with_sigs(&n.consensus, sigs)).unwrap().verify(&n.ids, now)
}

const NOW: u64 = LT.valid_after + 10;

#[test]
fn a10_signed_by_one_of_three_rejected() {
    let n = net3();
    let err = check(&n, &[n.consensus.sign(&signer(&n.auths[0]))], NOW).unwrap_err();
    assert_eq!(err, ConsensusError::NotEnoughSignatures { valid: 1, required: 2, configured: 3, expired_certs: 0, invalid_certs: 0, bad_signatures: 0 });
    assert!(err.to_string().contains("1 of 3") && err.to_string().contains("2 required"), "{err}");
}

#[test]
fn a10_signed_by_two_of_three_accepted() {
    let n = net3();
    let c = check(&n, &[n.consensus.sign(&signer(&n.auths[2])), n.consensus.sign(&signer(&n.auths[0]))], NOW).unwrap();
    assert_eq!(c.signatures().len(), 2);
    assert_eq!(c.relays(), n.consensus.relays());
    assert_eq!(c.digest(), n.consensus.digest());
}

#[test]
fn a10_three_signatures_one_bad_accepted() {
    let n = net3();
    let sigs = [n.consensus.sign(&signer(&n.auths[0])), bad_sig(&n.auths[1]), n.consensus.sign(&signer(&n.auths[2]))];
    let c = check(&n, &sigs, NOW).unwrap();
    assert_eq!(c.signatures().iter().map(|s| s.identity()).collect::<Vec<_>>(), {
        let mut v = vec![n.ids[0], n.ids[2]];
        v.sort();
        v
    });
}

#[test]
fn a10_two_signatures_one_bad_rejected() {
    let n = net3();
    let sigs = [n.consensus.sign(&signer(&n.auths[0])), bad_sig(&n.auths[1])];
    assert_eq!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, required: 2, configured: 3, expired_certs: 0, invalid_certs: 0, bad_signatures: 1 });
}

#[test]
fn a10_signature_by_unknown_key_ignored() {
    let n = net3();
    let outsider = key(99);
    let sigs = [n.consensus.sign(&signer(&n.auths[0])), n.consensus.sign(&signer(&outsider))];
    assert!(matches!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, .. }));
    let sigs = [n.consensus.sign(&signer(&outsider)), n.consensus.sign(&signer(&n.auths[0])), n.consensus.sign(&signer(&n.auths[1]))];
    let c = check(&n, &sigs, NOW).unwrap();
    assert!(c.signatures().iter().all(|s| s.identity() != id(&outsider)));
}

#[test]
fn a10_duplicate_signature_counts_once() {
    let n = net3();
    let s = n.consensus.sign(&signer(&n.auths[1]));
    assert!(matches!(check(&n, &[s, s], NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, .. }));
    // A bad signature then a good one by the same authority: the good one counts.
    let c = check(&n, &[bad_sig(&n.auths[1]), s, n.consensus.sign(&signer(&n.auths[0]))], NOW).unwrap();
    assert_eq!(c.signatures().len(), 2);
}

#[test]
fn a10_validity_interval_enforced() {
    let n = net3();
    let sigs: Vec<DirSignature> = n.auths.iter().map(|a| n.consensus.sign(&signer(a))).collect();
    assert!(check(&n, &sigs, LT.valid_after).is_ok());
    assert!(check(&n, &sigs, LT.valid_until).is_ok());
    assert_eq!(
        check(&n, &sigs, LT.valid_after - 2 * 86400).unwrap_err(),
        ConsensusError::NotYetValid { valid_after: LT.valid_after, now: LT.valid_after - 2 * 86400 }
    );
    assert_eq!(check(&n, &sigs, LT.valid_until + 1).unwrap_err(), ConsensusError::Expired { valid_until: LT.valid_until, now: LT.valid_until + 1 });
    assert!(Consensus::parse(&with_sigs(&n.consensus, &sigs)).unwrap().dangerously_skip_time_check(&n.ids).is_ok());
}

#[test]
fn a10_changed_consensus_invalidates_signatures() {
    let n = net3();
    let sigs: Vec<DirSignature> = n.auths.iter().map(|a| n.consensus.sign(&signer(a))).collect();
    let orig = with_sigs(&n.consensus, &sigs);
    let text = orig.replacen(" 1000000\nmd ", " 9000000\nmd ", 1);
    assert_ne!(text, orig, "the test changed a relay's weight");
    let err = Consensus::parse(&text).unwrap().verify(&n.ids, NOW).unwrap_err();
    assert!(matches!(err, ConsensusError::NotEnoughSignatures { valid: 0, .. }));
}

#[test]
fn consensus_round_trip_and_growth() {
    let n = net3();
    let mut c = n.consensus.clone();
    for a in &n.auths {
        assert!(c.add_signature(c.sign(&signer(a))));
    }
    assert!(!c.add_signature(c.sign(&signer(&n.auths[0]))), "second signature by one authority");
    assert!(!c.add_signature(bad_sig(&key(98))));
    let text = c.encode();
    let back = Consensus::parse(&text).unwrap().verify(&n.ids, NOW).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.encode(), text);
    assert!(back.relay(&c.relays()[1].identity).is_some());
    assert!(back.relay(&RelayId([0; 32])).is_none());
    // A newer authority adds a header line and a footer line: old parsers still verify it.
    let body = insert_after(c.signed_text(), "valid-until ", "shared-rand-future 1000\n");
    let c2 = Consensus::parse(&body).unwrap().dangerously_assume_valid();
    let sigs: Vec<DirSignature> = n.auths.iter().map(|a| c2.sign(&signer(a))).collect();
    let text2 = format!("{}signing-key-cert xyz\n", with_sigs(&c2, &sigs));
    let v = Consensus::parse(&text2).unwrap().verify(&n.ids, NOW).unwrap();
    assert_eq!(v.signatures().len(), 3);
    assert_eq!(v.signed_text(), body);
    let crit = insert_after(c.signed_text(), "valid-until ", "critical-params x\n");
    assert!(matches!(Consensus::parse(&crit).unwrap_err(), DocError::UnknownCritical { .. }));
}

#[test]
fn detached_signature_round_trip() {
    let n = net3();
    let d = DetachedSignature::new(&n.consensus, &signer(&n.auths[0]));
    let text = d.encode();
    let back = DetachedSignature::parse(&text).unwrap();
    assert_eq!(back, d);
    assert_eq!(back.verify(NOW), Ok(()));
    let mut forged = back;
    forged.digest[0] ^= 1;
    assert_eq!(forged.verify(NOW), Err(DetachedError::BadSignature));
    assert!(DetachedSignature::parse(&text.replacen("valid-after", "fresh-until", 1)).is_err());
}

// ---- authority signing-key certificates (THREATS A8, A10) ----

/// A signature by authority `k`'s signing key under a certificate valid `from..=until`.
fn sig_with_cert(n: &Net, k: &SigningKey, from: u64, until: u64) -> DirSignature {
    n.consensus.sign(&signer_for(k, from, until))
}

#[test]
fn a10_signing_key_with_expired_certificate_rejected() {
    let n = net3();
    let expired = |k| sig_with_cert(&n, k, CERT_FROM, NOW - 1);
    let sigs = [expired(&n.auths[0]), expired(&n.auths[1]), n.consensus.sign(&signer(&n.auths[2]))];
    let err = check(&n, &sigs, NOW).unwrap_err();
    assert_eq!(
        err,
        ConsensusError::NotEnoughSignatures { valid: 1, required: 2, configured: 3, expired_certs: 2, invalid_certs: 0, bad_signatures: 0 }
    );
    assert!(err.to_string().contains("2 whose signing-key certificate is expired or not yet valid"), "{err}");
    // Every certificate expired: nothing counts.
    let all: Vec<DirSignature> = n.auths.iter().map(expired).collect();
    assert!(matches!(check(&n, &all, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 0, expired_certs: 3, .. }));
    // A certificate published further ahead than the skew allowance is not valid yet.
    let future = |k| sig_with_cert(&n, k, NOW + MAX_CERT_SKEW_SECS + 1, CERT_UNTIL);
    let sigs = [future(&n.auths[0]), future(&n.auths[1]), n.consensus.sign(&signer(&n.auths[2]))];
    assert!(matches!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, expired_certs: 2, .. }));
    let within = |k| sig_with_cert(&n, k, NOW + MAX_CERT_SKEW_SECS, CERT_UNTIL);
    assert!(check(&n, &[within(&n.auths[0]), within(&n.auths[1])], NOW).is_ok(), "within the skew allowance");
}

#[test]
fn a10_two_valid_and_one_expired_accepted() {
    let n = net3();
    let sigs = [n.consensus.sign(&signer(&n.auths[0])), sig_with_cert(&n, &n.auths[1], CERT_FROM, NOW - 1), n.consensus.sign(&signer(&n.auths[2]))];
    let c = check(&n, &sigs, NOW).unwrap();
    let mut want = vec![n.ids[0], n.ids[2]];
    want.sort();
    assert_eq!(c.signatures().iter().map(|s| s.identity()).collect::<Vec<_>>(), want);
    // What is kept re-encodes (certificate then signature, per authority) and verifies again.
    let again = Consensus::parse(&c.encode()).unwrap().verify(&n.ids, NOW).unwrap();
    assert_eq!(again, c);
    assert_eq!(c.encode().matches("\nauthority-cert ").count(), 2);
}

#[test]
fn a10_signed_by_non_authority_rejected() {
    let n = net3();
    // Outsiders with their own, perfectly valid certificates.
    let (x, y) = (key(97), key(96));
    let sigs = [n.consensus.sign(&signer(&x)), n.consensus.sign(&signer(&y)), n.consensus.sign(&signer(&n.auths[0]))];
    assert!(matches!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, invalid_certs: 0, .. }));
    // An outsider's signing key under a certificate that claims an authority's identity.
    let mut forged = n.consensus.sign(&signer(&x));
    forged.cert.identity = n.ids[1];
    let sigs = [forged, n.consensus.sign(&signer(&n.auths[0]))];
    assert!(matches!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 1, invalid_certs: 1, .. }));
}

#[test]
fn a8_certificate_signed_by_another_identity_rejected() {
    let n = net3();
    // The outsider certifies authority 1's real signing key, naming authority 1 as issuer.
    let good = signer(&n.auths[1]);
    let mut cert = AuthorityCert::sign(&key(95), &good.key().verifying_key(), CERT_FROM, CERT_UNTIL);
    cert.identity = n.ids[1];
    assert_eq!(cert.valid_at(NOW), Err(CertError::BadSignature));
    let s = DirSignature { cert, signature: n.consensus.sign(&good).signature };
    let err = check(&n, &[s, n.consensus.sign(&signer(&n.auths[0]))], NOW).unwrap_err();
    assert!(matches!(err, ConsensusError::NotEnoughSignatures { valid: 1, invalid_certs: 1, .. }), "{err}");
}

#[test]
fn a10_signature_without_certificate_not_counted() {
    let n = net3();
    let mut text = n.consensus.signed_text().to_string();
    for a in &n.auths {
        text.push_str(&sig_line(&n.consensus.sign(&signer(a))));
    }
    let err = Consensus::parse(&text).unwrap().verify(&n.ids, NOW).unwrap_err();
    assert_eq!(
        err,
        ConsensusError::NotEnoughSignatures { valid: 0, required: 2, configured: 3, expired_certs: 0, invalid_certs: 3, bad_signatures: 0 }
    );
    // A signature by the identity key itself (the format before signing keys) does not count
    // either, even beside a valid certificate.
    let by_identity = |k: &SigningKey| DirSignature { cert: *signer(k).cert(), signature: n.consensus.sign(&AuthoritySigner::certify(k, k.clone(), CERT_FROM, CERT_UNTIL)).signature };
    let sigs: Vec<DirSignature> = n.auths.iter().map(by_identity).collect();
    assert!(matches!(check(&n, &sigs, NOW).unwrap_err(), ConsensusError::NotEnoughSignatures { valid: 0, bad_signatures: 3, .. }));
}

#[test]
fn renewed_certificate_beside_an_expired_one_counts_and_footer_order_is_free() {
    let n = net3();
    let old = signer_for(&n.auths[0], CERT_FROM - 1000, NOW - 1);
    let new = signer(&n.auths[0]);
    let s1 = n.consensus.sign(&signer(&n.auths[1]));
    // Signature lines first, certificates after, an unknown line between: all accepted.
    let text = format!(
        "{}{}{}future-footer-line x\n{}{}{}",
        n.consensus.signed_text(),
        sig_line(&n.consensus.sign(&new)),
        sig_line(&s1),
        s1.cert.encode(),
        old.cert().encode(),
        new.cert().encode()
    );
    let c = Consensus::parse(&text).unwrap().verify(&n.ids, NOW).unwrap();
    assert_eq!(c.signatures().len(), 2);
    assert!(c.signatures().iter().any(|s| s.cert == *new.cert()));
    // Footer limits: at most 64 certificate lines.
    let many = format!("{}{}", n.consensus.signed_text(), new.cert().encode().repeat(MAX_SIGNATURES + 1));
    assert!(matches!(Consensus::parse(&many).unwrap_err(), DocError::TooMany { what: "authority certificates", .. }));
    let bad = format!("{}authority-cert x\n", n.consensus.signed_text());
    assert!(matches!(Consensus::parse(&bad).unwrap_err(), DocError::BadValue { .. }));
    let crit = format!("{}critical-x\n", with_sigs(&n.consensus, &[s1]));
    assert!(matches!(Consensus::parse(&crit).unwrap_err(), DocError::UnknownCritical { .. }));
}

#[test]
fn cached_consensus_checks_certificates_at_valid_after() {
    let n = net3();
    // Expired since the consensus was made: a cache may still load it.
    let later: Vec<DirSignature> = n.auths.iter().map(|a| sig_with_cert(&n, a, CERT_FROM, LT.valid_after + 5)).collect();
    assert!(Consensus::parse(&with_sigs(&n.consensus, &later)).unwrap().dangerously_skip_time_check(&n.ids).is_ok());
    assert!(check(&n, &later, NOW).is_err(), "but not as a fresh consensus at NOW");
    // Expired before it was made, or forged: refused even from the cache.
    let before: Vec<DirSignature> = n.auths.iter().map(|a| sig_with_cert(&n, a, CERT_FROM, LT.valid_after - 1)).collect();
    assert!(Consensus::parse(&with_sigs(&n.consensus, &before)).unwrap().dangerously_skip_time_check(&n.ids).is_err());
    let mut forged: Vec<DirSignature> = n.auths.iter().map(|a| n.consensus.sign(&signer(a))).collect();
    for f in &mut forged {
        f.cert.expires += 1;
    }
    assert!(matches!(
        Consensus::parse(&with_sigs(&n.consensus, &forged)).unwrap().dangerously_skip_time_check(&n.ids).unwrap_err(),
        ConsensusError::NotEnoughSignatures { invalid_certs: 3, .. }
    ));
}

#[test]
fn detached_signature_certificate_is_checked() {
    let n = net3();
    let d = DetachedSignature::new(&n.consensus, &signer_for(&n.auths[0], CERT_FROM, NOW - 1));
    let back = DetachedSignature::parse(&d.encode()).unwrap();
    assert_eq!(back.verify(NOW), Err(DetachedError::Cert(CertError::Expired { expires: NOW - 1, now: NOW })));
    // The signature line must name the certificate's authority.
    let text = DetachedSignature::new(&n.consensus, &signer(&n.auths[0])).encode();
    let other = text.replacen(&format!("directory-signature {}", n.ids[0].fingerprint()), &format!("directory-signature {}", n.ids[1].fingerprint()), 1);
    assert!(matches!(DetachedSignature::parse(&other).unwrap_err(), DocError::BadValue { .. }));
    let no_cert: String = text.lines().filter(|l| !l.starts_with("authority-cert ")).map(|l| format!("{l}\n")).collect();
    assert_eq!(DetachedSignature::parse(&no_cert).unwrap_err(), DocError::Missing { keyword: "authority-cert" });
    assert!(text.len() < MAX_SIGNATURE_DOC_LEN);
}

#[test]
fn vote_certificate_is_checked() {
    let ka = key(23);
    let mut v = vote(&ka, [], LT);
    let text = v.encode_signed(signer(&ka).key());
    let voter_line = text.find("\nvoter ").unwrap();
    assert!(text[voter_line + 1..].lines().nth(1).unwrap().starts_with("authority-cert "), "authority-cert follows voter");
    assert_eq!(Vote::parse(&text).unwrap().verify(NOW).unwrap(), v);
    // Signed by the identity key instead of the certified signing key.
    assert_eq!(Vote::parse(&v.encode_signed(&ka)).unwrap().verify(NOW).unwrap_err(), DocError::BadSignature);
    // Expired certificate.
    let old = signer_for(&ka, CERT_FROM, NOW - 1);
    v.cert = *old.cert();
    let err = Vote::parse(&v.encode_signed(old.key())).unwrap().verify(NOW).unwrap_err();
    assert_eq!(err, DocError::BadCert(CertError::Expired { expires: NOW - 1, now: NOW }));
    // A certificate from another authority than the voter.
    v.cert = *signer(&key(24)).cert();
    assert!(matches!(Vote::parse(&v.encode_signed(signer(&key(24)).key())).unwrap_err(), DocError::BadValue { .. }));
}

// ---- computing the consensus ----

fn ids_of(c: &Consensus) -> Vec<RelayId> {
    c.relays().iter().map(|r| r.identity).collect()
}

#[test]
fn majority_of_configured_authorities() {
    let auths: Vec<SigningKey> = (70..73).map(key).collect();
    let (x, y, z) = (desc(&key(80), "x", 100), desc(&key(81), "y", 100), desc(&key(82), "z", 100));
    let votes = vec![
        vote(&auths[0], [&x, &y, &z], LT),
        vote(&auths[1], [&x, &y], LT),
        vote(&auths[2], [&x], LT),
    ];
    // x in 3 of 3, y in 2 of 3, z in 1 of 3.
    let c = compute_consensus(&votes, 3, LT);
    let mut want = vec![x.identity, y.identity];
    want.sort();
    assert_eq!(ids_of(&c), want);
    assert_eq!(c.authorities().len(), 3);
    // Two votes received of three configured: a relay needs both.
    let c = compute_consensus(&votes[1..], 3, LT);
    assert_eq!(ids_of(&c), vec![x.identity]);
    assert_eq!(c.authorities().len(), 2);
    // Votes for another period do not count.
    let mut other = votes.clone();
    other[0].lifetime.valid_after -= 1;
    assert_eq!(ids_of(&compute_consensus(&other, 3, LT)), vec![x.identity]);
    // Four configured: 2 of 4 is not a majority.
    assert_eq!(ids_of(&compute_consensus(&votes, 4, LT)), vec![x.identity]);
}

#[test]
fn version_choice() {
    let auths: Vec<SigningKey> = (74..78).map(key).collect();
    let k = key(83);
    let old = desc(&k, "old", 100);
    let new = desc(&k, "new", 200);
    // 2 votes for the old one, 1 for the new one: the most-listed wins.
    let votes = vec![vote(&auths[0], [&old], LT), vote(&auths[1], [&old], LT), vote(&auths[2], [&new], LT)];
    assert_eq!(compute_consensus(&votes, 3, LT).relays()[0].nickname, "old");
    // A tie goes to the newer.
    let votes = vec![vote(&auths[0], [&old], LT), vote(&auths[1], [&old], LT), vote(&auths[2], [&new], LT), vote(&auths[3], [&new], LT)];
    assert_eq!(compute_consensus(&votes, 4, LT).relays()[0].nickname, "new");
    // Same published: the greater digest.
    let a = desc(&k, "aaa", 300);
    let b = desc(&k, "bbb", 300);
    let want = if a.digest() > b.digest() { "aaa" } else { "bbb" };
    let votes = vec![vote(&auths[0], [&a], LT), vote(&auths[1], [&b], LT)];
    assert_eq!(compute_consensus(&votes, 3, LT).relays()[0].nickname, want);
    let votes = vec![vote(&auths[1], [&b], LT), vote(&auths[0], [&a], LT)];
    assert_eq!(compute_consensus(&votes, 3, LT).relays()[0].nickname, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The consensus does not depend on the order of the votes (nor of entries in a vote).
    #[test]
    fn compute_consensus_is_order_independent(
        listing in proptest::collection::vec(proptest::collection::vec(0u8..6, 0..8), 1..5),
        seed in any::<u64>(),
    ) {
        // Voter i lists relay (r % 3) in version (r / 3): two versions per relay.
        let auths: Vec<SigningKey> = (0..listing.len() as u8).map(|i| key(100 + i)).collect();
        let relays: Vec<RelayDescriptor> = (0..6u8).map(|r| desc(&key(120 + r % 3), &format!("v{r}"), 100 + u64::from(r / 3))).collect();
        let votes: Vec<Vote> = listing.iter().zip(&auths).map(|(l, a)| {
            let picked: Vec<RelayDescriptor> = l.iter().map(|&r| relays[r as usize].clone()).collect();
            vote(a, &picked, LT)
        }).collect();
        let reference = compute_consensus(&votes, 4, LT);
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..4 {
            let mut shuffled = votes.clone();
            shuffled.shuffle(&mut rng);
            for v in &mut shuffled {
                v.relays.shuffle(&mut rng);
            }
            let c = compute_consensus(&shuffled, 4, LT);
            prop_assert_eq!(c.digest(), reference.digest());
        }
    }

    /// Random text never panics any parser.
    #[test]
    fn parsers_never_panic_on_random_text(s in "[ -~\n]{0,600}", raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = RelayDescriptor::parse(&s);
        let _ = Vote::parse(&s);
        let _ = Consensus::parse(&s);
        let _ = DetachedSignature::parse(&s);
        let lossy = String::from_utf8_lossy(&raw);
        let _ = RelayDescriptor::parse(&lossy);
        let _ = Consensus::parse(&lossy);
    }

    /// Mutated valid documents never panic a parser, and a mutated descriptor never verifies.
    #[test]
    fn mutated_documents_never_panic_or_verify(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, "[ -~\n]{0,12}"), 1..4),
    ) {
        let k = key(7);
        let d = desc(&k, "mut", 1_700_000_000);
        let n = net3();
        let mut c = n.consensus.clone();
        for a in &n.auths { c.add_signature(c.sign(&signer(a))); }
        let original = match which {
            0 => d.encode_signed(&k),
            1 => srv_vote(&n.auths[0], &n.auths, [&d], LT).encode_signed(signer(&n.auths[0]).key()),
            _ => c.encode(),
        };
        let mut t = original.clone().into_bytes();
        for (at, op, s) in &edits {
            let i = at.index(t.len() + 1);
            match op {
                0 => { if i < t.len() { t[i] = s.bytes().next().unwrap_or(b'x'); } }
                1 => { t.truncate(i); }
                2 => { t.splice(i..i, s.bytes()); }
                _ => { let line: Vec<u8> = t[i.min(t.len())..].iter().take_while(|&&b| b != b'\n').copied().collect(); t.splice(i..i, line); }
            }
        }
        let t = String::from_utf8_lossy(&t).into_owned();
        match which {
            0 => {
                let r = RelayDescriptor::parse(&t).and_then(|u| u.verify());
                // Any change breaks the syntax or the signature (A8: every bit flip fails).
                if t != original { prop_assert!(r.is_err(), "mutated descriptor verified:\n{}", t); }
            }
            1 => { let _ = Vote::parse(&t).map(|u| u.verify(NOW)); }
            _ => {
                if let Ok(u) = Consensus::parse(&t) {
                    if let Ok(v) = u.verify(&n.ids, NOW) {
                        // Whatever was accepted carries two valid signatures over its own text.
                        prop_assert!(v.signatures().len() >= 2);
                        prop_assert!(v.signatures().iter().all(|s| s.verify(&v.digest())));
                    }
                }
            }
        }
    }
}

#[test]
fn descriptor_address_forms() {
    let k = key(11);
    let text = desc(&k, "addr", 1).encode_signed(&k);
    for bad in ["192.0.2.7:0", "192.0.2.7", "192.0.2.007:9001", "[::ffff:1.2.3.4]:9001x"] {
        let t = text.replacen("192.0.2.7:9001", bad, 1);
        assert!(matches!(RelayDescriptor::parse(&t).unwrap_err(), DocError::BadValue { .. }), "{bad}");
    }
    let _: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
}

// ---- flags, weights, parameters and protocol versions ----

fn flagged(d: &RelayDescriptor, flags: RelayFlags, weight: u64) -> ConsensusRelay {
    let mut e = d.to_entry();
    e.flags = flags;
    e.weight = weight;
    e
}

#[test]
fn flags_take_the_majority_of_configured_authorities_and_weight_the_low_median() {
    let auths: Vec<SigningKey> = (70..73).map(key).collect();
    let x = desc(&key(84), "x", 100);
    let (r, g, e) = (RelayFlags::RUNNING | RelayFlags::VALID, RelayFlags::GUARD, RelayFlags::EXIT);
    let mut votes: Vec<Vote> = auths.iter().map(|a| vote(a, [], LT)).collect();
    votes[0].relays = vec![flagged(&x, r | g | e, 300)];
    votes[1].relays = vec![flagged(&x, r | g, 100)];
    votes[2].relays = vec![flagged(&x, r | e | RelayFlags::BAD_EXIT, 200)];
    let c = compute_consensus(&votes, 3, LT);
    let got = c.relays()[0].flags;
    assert_eq!(got, r | g | e, "Guard 2/3 and Exit 2/3 kept, BadExit 1/3 dropped: {got}");
    assert_eq!(c.relays()[0].weight, 200, "median of 100, 200, 300");
    // Only two votes of three configured: a flag needs both.
    let c = compute_consensus(&votes[..2], 3, LT);
    assert_eq!(c.relays()[0].flags, r | g);
    assert_eq!(c.relays()[0].weight, 100, "low median of 100 and 300");
    // Different flags do not make different versions: the relay is still listed.
    assert_eq!(c.relays().len(), 1);
    // Round trip of the new lines.
    let text = c.encode();
    let back = Consensus::parse(&text).unwrap().dangerously_assume_valid();
    assert_eq!(back.relays()[0].flags, r | g);
    assert_eq!(back.position_weights(), c.position_weights());
}

#[test]
fn parameters_take_the_low_median_of_a_majority() {
    let auths: Vec<SigningKey> = (70..73).map(key).collect();
    let mut votes: Vec<Vote> = auths.iter().map(|a| vote(a, [], LT)).collect();
    for (v, x) in votes.iter_mut().zip([500, 100, 300]) {
        v.params.insert("circuit-window".into(), x);
    }
    votes[0].params.insert("lonely".into(), 7);
    votes[0].params.insert("pair".into(), 10);
    votes[1].params.insert("pair".into(), 20);
    let c = compute_consensus(&votes, 3, LT);
    assert_eq!(c.params().get("circuit-window"), Some(&300));
    assert_eq!(c.params().get("lonely"), None, "one voter of three is not a majority");
    assert_eq!(c.params().get("pair"), Some(&10), "low median of two");
    let back = Consensus::parse(&c.encode()).unwrap().dangerously_assume_valid();
    assert_eq!(back.params(), c.params());
    // Order of votes does not matter.
    votes.reverse();
    assert_eq!(compute_consensus(&votes, 3, LT).digest(), c.digest());
}

#[test]
fn relays_lacking_a_required_protocol_are_not_listed() {
    let auths: Vec<SigningKey> = (70..73).map(key).collect();
    let good = desc(&key(85), "good", 100); // Link=1 Ntor=1 Relay=1-2
    let mut old = desc(&key(86), "old", 100);
    old.protocols = Protocols::new().with("Link", 1, 1).with("Relay", 1, 1);
    let req = Protocols::new().with("Link", 1, 1).with("Ntor", 1, 1);
    let mut votes: Vec<Vote> = auths.iter().map(|a| vote(a, [&good, &old], LT)).collect();
    for v in votes.iter_mut().take(2) {
        v.required_protocols = req.clone();
        v.recommended_protocols = req.clone().with("Relay", 2, 2);
    }
    let c = compute_consensus(&votes, 3, LT);
    assert_eq!(c.meta().required_protocols, req, "voted by 2 of 3");
    assert_eq!(ids_of(&c), vec![good.identity]);
    // Required by only one authority: not required, both listed.
    let c = compute_consensus(&votes[1..], 4, LT);
    assert!(c.meta().required_protocols.is_empty());
    assert_eq!(c.relays().len(), 0, "2 of 4 voters is no majority for the relays either");
    let c = compute_consensus(&[votes[0].clone(), votes[2].clone()], 3, LT);
    assert!(c.meta().required_protocols.is_empty());
    assert_eq!(c.relays().len(), 2);
}

// ---- shared random value ----

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

/// The reveal authority `a` draws for `period` (deterministic, for tests).
fn reveal_of(a: &SigningKey, period: u64) -> [u8; 32] {
    Sha256::digest([&id(a).0[..], &period.to_be_bytes()].concat()).into()
}

fn prev_period(lt: Lifetime) -> u64 {
    lt.valid_after - (lt.fresh_until - lt.valid_after)
}

/// `a`'s honest SRV lines for `lt` when every one of `auths` committed in the previous period.
fn srv_part(a: &SigningKey, auths: &[SigningKey], lt: Lifetime) -> VoteSrv {
    let prev = prev_period(lt);
    VoteSrv {
        commit: Some(srv_commit(lt.valid_after, &id(a), &reveal_of(a, lt.valid_after))),
        reveal: Some(reveal_of(a, prev)),
        seen_commits: auths.iter().map(|x| (id(x), srv_commit(prev, &id(x), &reveal_of(x, prev)))).collect(),
        previous: Some(SrvValue { reveals: 3, value: [9; 32] }),
        period_srvs: Vec::new(),
    }
}

fn srv_vote<'a>(a: &SigningKey, auths: &[SigningKey], relays: impl IntoIterator<Item = &'a RelayDescriptor>, lt: Lifetime) -> Vote {
    let mut v = vote(a, relays, lt);
    v.srv = srv_part(a, auths, lt);
    v
}

fn srv_of(votes: &[Vote], n: usize, lt: Lifetime) -> SharedRandom {
    compute_shared_random(&votes.iter().collect::<Vec<_>>(), n, lt)
}

fn three_auths() -> Vec<SigningKey> {
    (70..73).map(key).collect()
}

#[test]
fn srv_three_honest_authorities_make_the_documented_value() {
    let auths = three_auths();
    let votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    let sr = srv_of(&votes, 3, LT);
    let prev = prev_period(LT);
    let reveals: BTreeMap<RelayId, [u8; 32]> = auths.iter().map(|a| (id(a), reveal_of(a, prev))).collect();
    let previous = SrvValue { reveals: 3, value: [9; 32] };
    assert_eq!(sr.previous, Some(previous));
    assert_eq!(sr.current, Some(SrvValue { reveals: 3, value: srv_value(LT.valid_after, Some(&previous), &reveals) }));
    // The value as specified, written out by hand.
    let mut h = Sha256::new();
    h.update(b"allium-srv-v1");
    h.update(LT.valid_after.to_be_bytes());
    h.update([9u8; 32]);
    for (i, r) in &reveals {
        h.update(i.0);
        h.update(r);
    }
    assert_eq!(sr.current.unwrap().value, <[u8; 32]>::from(h.finalize()));
    let mut h = Sha256::new();
    h.update(b"allium-srv-commit-v1");
    h.update(prev.to_be_bytes());
    h.update(id(&auths[0]).0);
    h.update(reveal_of(&auths[0], prev));
    assert_eq!(srv_commit(prev, &id(&auths[0]), &reveal_of(&auths[0], prev)), <[u8; 32]>::from(h.finalize()));
}

#[test]
fn srv_reveal_not_matching_its_commitment_is_ignored() {
    let auths = three_auths();
    let mut votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    let honest = srv_of(&votes, 3, LT).current.unwrap();
    // Authority 2 reveals something else than it committed to.
    votes[2].srv.reveal = Some([0xee; 32]);
    let sr = srv_of(&votes, 3, LT);
    let cur = sr.current.expect("two valid reveals of three configured still make a value");
    assert_eq!(cur.reveals, 2);
    assert_ne!(cur.value, honest.value);
    let two: BTreeMap<RelayId, [u8; 32]> = auths[..2].iter().map(|a| (id(a), reveal_of(a, prev_period(LT)))).collect();
    assert_eq!(cur.value, srv_value(LT.valid_after, sr.previous.as_ref(), &two));
    // A reveal bound to another period or another authority does not match either.
    votes[2].srv.reveal = Some(reveal_of(&auths[2], LT.valid_after));
    assert_eq!(srv_of(&votes, 3, LT).current.unwrap().reveals, 2);
    votes[2].srv.reveal = Some(reveal_of(&auths[1], prev_period(LT)));
    assert_eq!(srv_of(&votes, 3, LT).current.unwrap().reveals, 2);
    // A second bad reveal: only one valid, not a majority of three: no value.
    votes[1].srv.reveal = Some([0xee; 32]);
    assert_eq!(srv_of(&votes, 3, LT).current, None);
}

#[test]
fn srv_commitment_is_what_a_majority_saw() {
    let auths = three_auths();
    let mut votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    // Authority 2 claims, alone, that authority 0 committed to its own choice: outvoted.
    let forged = [0x55; 32];
    votes[2].srv.seen_commits.insert(id(&auths[0]), forged);
    assert_eq!(srv_of(&votes, 3, LT).current.unwrap().reveals, 3);
    // With a second voter agreeing, authority 0's real reveal no longer matches.
    votes[1].srv.seen_commits.insert(id(&auths[0]), forged);
    assert_eq!(srv_of(&votes, 3, LT).current.unwrap().reveals, 2);
}

#[test]
fn srv_two_authorities_alone_still_produce_a_value() {
    let auths = three_auths();
    // Authority 2 is down for both periods: nobody saw a commitment from it, and it does not vote.
    let votes: Vec<Vote> = auths[..2].iter().map(|a| srv_vote(a, &auths[..2], [], LT)).collect();
    let cur = srv_of(&votes, 3, LT).current.expect("value");
    assert_eq!(cur.reveals, 2);
    // One alone is not enough.
    assert_eq!(srv_of(&votes[..1], 3, LT).current, None);
}

#[test]
fn srv_commit_without_reveal_does_not_stop_the_others() {
    let auths = three_auths();
    let mut votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    votes[0].srv.reveal = None;
    let cur = srv_of(&votes, 3, LT).current.expect("value");
    assert_eq!(cur.reveals, 2);
}

#[test]
fn srv_changes_every_period_and_is_chained() {
    let auths = three_auths();
    let mut prev_value: Option<SrvValue> = None;
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..5u64 {
        let lt = Lifetime { valid_after: LT.valid_after + k * 3600, fresh_until: LT.fresh_until + k * 3600, valid_until: LT.valid_until + k * 3600 };
        let votes: Vec<Vote> = auths
            .iter()
            .map(|a| {
                let mut v = srv_vote(a, &auths, [], lt);
                v.srv.previous = prev_value;
                v
            })
            .collect();
        let sr = srv_of(&votes, 3, lt);
        assert_eq!(sr.previous, prev_value);
        let cur = sr.current.expect("value");
        assert!(seen.insert(cur.value), "value repeated in period {k}");
        prev_value = Some(cur);
    }
    // Same reveals, another period: another value.
    let reveals: BTreeMap<RelayId, [u8; 32]> = [(id(&auths[0]), [1; 32])].into();
    assert_ne!(srv_value(1, None, &reveals), srv_value(2, None, &reveals));
}

#[test]
fn srv_previous_needs_a_majority() {
    let auths = three_auths();
    let mut votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    votes[0].srv.previous = Some(SrvValue { reveals: 2, value: [1; 32] });
    votes[1].srv.previous = None;
    assert_eq!(srv_of(&votes, 3, LT).previous, None);
    votes[1].srv.previous = votes[0].srv.previous;
    assert_eq!(srv_of(&votes, 3, LT).previous, votes[0].srv.previous);
}

#[test]
fn srv_lines_round_trip_and_are_checked() {
    let auths = three_auths();
    let v = srv_vote(&auths[0], &auths, [], LT);
    let text = v.encode_signed(signer(&auths[0]).key());
    assert!(text.contains("\nshared-rand-commit ") && text.contains("\nshared-rand-reveal "));
    assert_eq!(text.matches("\nshared-rand-seen-commit ").count(), 3);
    assert_eq!(Vote::parse(&text).unwrap().verify(NOW).unwrap(), v);
    // A vote without SRV lines is still a vote (older authorities).
    let plain = vote(&auths[0], [], LT);
    assert_eq!(Vote::parse(&plain.encode_signed(signer(&auths[0]).key())).unwrap().verify(NOW).unwrap(), plain);
    let resign = |t: &str| {
        let u = unsigned_part(t, "vote-signature");
        format!("{u}vote-signature {}\n", enc64(&signer(&auths[0]).key().sign(&super::vote::signed_message(&u)).to_bytes()))
    };
    let commit_line = text.lines().find(|l| l.starts_with("shared-rand-commit ")).unwrap();
    let dup = insert_after(&text, commit_line, commit_line);
    assert!(matches!(Vote::parse(&resign(&dup)).unwrap_err(), DocError::Duplicate { .. }));
    let seen: Vec<&str> = text.lines().filter(|l| l.starts_with("shared-rand-seen-commit ")).collect();
    let swapped = text.replacen(seen[0], "@SWAP@", 1).replacen(seen[1], seen[0], 1).replacen("@SWAP@", seen[1], 1);
    assert!(matches!(Vote::parse(&resign(&swapped)).unwrap_err(), DocError::Unsorted { .. }));
    let bad = text.replacen("shared-rand-previous 3 ", "shared-rand-previous 03 ", 1);
    assert!(matches!(Vote::parse(&resign(&bad)).unwrap_err(), DocError::BadValue { .. }));

    // Consensus: both lines, after bandwidth-weights, round trip.
    let n = net3();
    let t = n.consensus.signed_text();
    let bw = t.find("\nbandwidth-weights ").unwrap();
    let prev = t.find("\nshared-rand-previous ").unwrap();
    let cur = t.find("\nshared-rand-current 3 ").unwrap();
    let auth = t.find("\nauthority ").unwrap();
    assert!(bw < prev && prev < cur && cur < auth);
    let back = Consensus::parse(t).unwrap().dangerously_assume_valid();
    assert_eq!(back.shared_random(), n.consensus.shared_random());
    assert_eq!(back.digest(), n.consensus.digest());
    let cur_line = t.lines().find(|l| l.starts_with("shared-rand-current ")).unwrap();
    assert!(matches!(Consensus::parse(&insert_after(t, cur_line, cur_line)).unwrap_err(), DocError::Duplicate { .. }));
    let moved = t.replacen(&format!("{cur_line}\n"), "", 1);
    let moved = insert_after(&moved, t.lines().find(|l| l.starts_with("authority ")).unwrap(), cur_line);
    assert!(Consensus::parse(&moved).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The shared random value depends only on the set of votes, and equals the value computed
    /// from exactly the valid reveals.
    #[test]
    fn srv_is_order_independent(
        revealing in proptest::collection::vec(0u8..3, 0..5),
        present in proptest::collection::vec(any::<bool>(), 4),
        seed in any::<u64>(),
    ) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        // revealing[i]: 0 honest reveal, 1 wrong reveal, 2 no reveal.
        let auths: Vec<SigningKey> = (0..revealing.len() as u8).map(|i| key(80 + i)).collect();
        let mut votes: Vec<Vote> = Vec::new();
        for (i, (a, how)) in auths.iter().zip(&revealing).enumerate() {
            if !present[i % 4] && i > 0 { continue; }
            let mut v = srv_vote(a, &auths, [], LT);
            match how { 0 => {}, 1 => v.srv.reveal = Some([i as u8; 32]), _ => v.srv.reveal = None }
            votes.push(v);
        }
        let reference = srv_of(&votes, auths.len().max(1), LT);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..4 {
            let mut shuffled = votes.clone();
            shuffled.shuffle(&mut rng);
            prop_assert_eq!(srv_of(&shuffled, auths.len().max(1), LT), reference);
            let c1 = compute_consensus(&shuffled, auths.len().max(1), LT);
            prop_assert_eq!(c1.shared_random(), reference);
        }
        if let Some(cur) = reference.current {
            let good: BTreeMap<RelayId, [u8; 32]> = votes.iter()
                .filter(|v| auths.iter().any(|a| id(a) == v.voter && v.srv.reveal == Some(reveal_of(a, prev_period(LT)))))
                .map(|v| (v.voter, v.srv.reveal.unwrap()))
                .collect();
            prop_assert_eq!(cur.reveals as usize, good.len());
            prop_assert_eq!(cur.value, srv_value(LT.valid_after, reference.previous.as_ref(), &good));
        }
    }
}

/// A synthetic network of `n` relays shaped like a real one: distinct identities and keys,
/// IPv4 addresses, 9-character nicknames, 7-digit weights, every flag, a reject-most policy.
pub(crate) fn synthetic_network(n: usize) -> Vec<ConsensusRelay> {
    (0..n)
        .map(|i| {
            let h = |tag: &str| -> [u8; 32] { Sha256::digest(format!("{tag}{i}").as_bytes()).into() };
            let mut r = ConsensusRelay::synthetic(1);
            r.nickname = format!("relay{i:04}");
            r.identity = RelayId(h("id"));
            r.onion_key = h("onion");
            r.link_key = h("link");
            r.address = SocketAddr::from(([198, 51, (i / 250) as u8, (i % 250) as u8 + 1], 9001));
            r.weight = 1_000_000 + i as u64 * 7919;
            r.flags = RelayFlags::RUNNING | RelayFlags::VALID | RelayFlags::FAST | RelayFlags::GUARD | RelayFlags::STABLE | RelayFlags::HSDIR | RelayFlags::EXIT;
            r.policy = ExitPolicy::parse_rules(&["accept *:80", "accept *:443", "reject *:*"]).unwrap();
            r
        })
        .collect()
}

/// The target: at most 200 bytes per relay in the consensus (its header and footer
/// spread over 1,000 relays count too). Prints the figure for the closing note.
#[test]
fn compact_consensus_is_at_most_200_bytes_per_relay() {
    let relays = synthetic_network(1000);
    let n = net3();
    let mut c = Consensus::new(LT, n.ids.clone(), relays);
    for a in &n.auths {
        c.add_signature(c.sign(&signer(a)));
    }
    let text = c.encode();
    let per_relay = text.len() as f64 / 1000.0;
    let md: usize = c.microdescs().iter().map(|m| m.encode().len()).sum();
    eprintln!("synthetic 1,000-relay consensus: {} bytes, {per_relay:.1} bytes per relay; microdescriptors {:.1} bytes each", text.len(), md as f64 / 1000.0);
    assert!(per_relay <= 200.0, "{per_relay} bytes per relay");
    let back = Consensus::parse(&text).unwrap().verify(&n.ids, NOW).unwrap();
    assert_eq!(back.relays().len(), 1000);
}

/// `hs-period-srv` (docs/PROTOCOL.md, "Ring value of a period"): votes state the lines of the
/// consensus their voter held; the consensus writes its period's and the next one's, by
/// majority of the configured authorities, and parses back to the same values.
#[test]
fn period_srv_lines_in_votes_and_consensus() {
    use crate::hs::period::{fallback_srv, read_carried, PeriodSrv, DEFAULT_PERIOD_SECS as L, KEYWORD};
    let auths = three_auths();
    let p = LT.valid_after / L;
    assert_ne!(LT.valid_after % L, 0, "LT is no anchor: the values come from the votes");
    let stated = |x: u8| vec![PeriodSrv { number: p, length_secs: L, value: [x; 32] }, PeriodSrv { number: p + 1, length_secs: L, value: [x + 1; 32] }];
    let mut votes: Vec<Vote> = auths.iter().map(|a| srv_vote(a, &auths, [], LT)).collect();
    votes[0].srv.period_srvs = stated(1);
    votes[1].srv.period_srvs = stated(1);
    votes[2].srv.period_srvs = stated(5);

    // A vote's lines come after shared-rand-previous and round-trip.
    let text = votes[0].encode_signed(signer(&auths[0]).key());
    let (prev, line) = (text.find("\nshared-rand-previous ").unwrap(), text.find(&format!("\n{KEYWORD} ")).unwrap());
    assert!(prev < line && line < text.find("\nvote-signature ").unwrap());
    assert_eq!(Vote::parse(&text).unwrap().verify(NOW).unwrap(), votes[0]);
    let resign = |t: &str| {
        let u = unsigned_part(t, "vote-signature");
        format!("{u}vote-signature {}\n", enc64(&signer(&auths[0]).key().sign(&super::vote::signed_message(&u)).to_bytes()))
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(KEYWORD)).collect();
    let swapped = text.replacen(lines[0], "@SWAP@", 1).replacen(lines[1], lines[0], 1).replacen("@SWAP@", lines[1], 1);
    assert!(matches!(Vote::parse(&resign(&swapped)).unwrap_err(), DocError::Unsorted { .. }));
    let third = format!("{KEYWORD} {} {L} {}\n", p + 2, enc64(&[0; 32]));
    assert!(matches!(Vote::parse(&resign(&insert_after(&text, lines[1], &third))).unwrap_err(), DocError::TooMany { .. }));

    // Two of three state 1: the consensus carries 1 (and 2 for the next period).
    let c = compute_consensus(&votes, 3, LT);
    assert_eq!(c.meta().period_srvs, stated(1));
    let t = c.signed_text();
    let (cur, line, auth) = (t.find("\nshared-rand-current ").unwrap(), t.find(&format!("\n{KEYWORD} ")).unwrap(), t.find("\nauthority ").unwrap());
    assert!(cur < line && line < auth, "after shared-rand-current, before the authority lines");
    let back = Consensus::parse(t).unwrap().dangerously_assume_valid();
    assert_eq!(back.meta().period_srvs, stated(1));
    assert_eq!(back.digest(), c.digest());
    assert_eq!(read_carried(t).unwrap(), stated(1));
    // One voter listing both values (two votes) counts once, with its smallest.
    let mut twice = votes.clone();
    let mut extra = twice[2].clone();
    extra.srv.period_srvs = stated(0);
    twice.push(extra);
    let c2 = compute_consensus(&twice, 3, LT);
    assert_eq!(c2.meta().period_srvs, stated(1), "2 voters for 1 against 1 voter for 0");
    // Three different values: no majority, the fallback for both periods.
    votes[1].srv.period_srvs = stated(3);
    let c = compute_consensus(&votes, 3, LT);
    let fb = |n: u64| fallback_srv(crate::hs::TimePeriod { number: n, length_secs: L });
    assert_eq!(c.meta().period_srvs.iter().map(|l| (l.number, l.value)).collect::<Vec<_>>(), vec![(p, fb(p)), (p + 1, fb(p + 1))]);
    // The consensus does not depend on the order of the votes.
    votes.reverse();
    assert_eq!(compute_consensus(&votes, 3, LT).digest(), c.digest());
}
