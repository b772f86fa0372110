//! Checks the hex test vectors in `docs/PROTOCOL.md` against the code.
//!
//! A vector is a fenced code block whose info string is `vector NAME` and whose content is hex
//! (whitespace and newlines ignored). Inputs are read from the document as vectors too, so the
//! document is the single source of truth: change the code and these tests fail until the
//! document is updated (`cargo test -p allium-proto --test protocol_vectors -- --ignored
//! --nocapture print_` prints regenerated blocks).

use allium_proto::crypto::cell_crypto::{ClientCrypto, Recognized, RelayCrypto};
use allium_proto::crypto::kdf::{derive_hop_keys, HopKeys};
use allium_proto::crypto::ntor::{
    client_start_with_secret, server_respond_with_secret, OnionKeyPair,
};
use allium_proto::crypto::{RELAY_BODY_LEN, RELAY_PLAINTEXT_LEN};
use allium_proto::ids::RelayId;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use x25519_dalek::{PublicKey, StaticSecret};

const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");

/// Every vector in the document, by name (parsed once). Panics if the document cannot be read,
/// on a malformed block, or on a duplicate name.
fn all_vectors() -> &'static BTreeMap<String, Vec<u8>> {
    static VECTORS: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    VECTORS.get_or_init(|| {
        let text = std::fs::read_to_string(PROTOCOL_MD)
            .unwrap_or_else(|e| panic!("cannot read {PROTOCOL_MD}: {e}"));
        parse_vectors(&text)
    })
}

fn parse_vectors(text: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((lineno, line)) = lines.next() {
        let Some(info) = line.trim().strip_prefix("```vector") else {
            continue;
        };
        let name = info.trim();
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "docs/PROTOCOL.md line {}: a vector block needs exactly one name: {line:?}",
            lineno + 1
        );
        let mut hex_text = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            hex_text.extend(l.chars().filter(|c| !c.is_whitespace()));
        }
        assert!(
            closed,
            "docs/PROTOCOL.md: vector `{name}` is not closed with ```"
        );
        let bytes = hex::decode(&hex_text).unwrap_or_else(|e| {
            panic!(
                "docs/PROTOCOL.md: vector `{name}` (line {}) is not valid hex: {e}",
                lineno + 1
            )
        });
        assert!(
            out.insert(name.to_string(), bytes).is_none(),
            "docs/PROTOCOL.md: vector `{name}` appears twice"
        );
    }
    out
}

/// The bytes of the vector `name` in docs/PROTOCOL.md. Panics if it is missing.
fn vector(name: &str) -> Vec<u8> {
    all_vectors().get(name).cloned().unwrap_or_else(|| {
        panic!("docs/PROTOCOL.md has no ```vector {name}``` block (add it, or fix the name)")
    })
}

/// The vector `name`, which must be exactly `N` bytes long.
fn vector_n<const N: usize>(name: &str) -> [u8; N] {
    let v = vector(name);
    v.as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("vector `{name}` is {} bytes, expected {N}", v.len()))
}

/// Asserts that `got` equals the vector `name`, printing both in hex on mismatch.
fn assert_vector(name: &str, got: &[u8]) {
    let want = vector(name);
    assert!(
        want == got,
        "vector `{name}` does not match the code\n  document: {}\n  code:     {}",
        hex::encode(&want),
        hex::encode(got)
    );
}

/// Formats a vector block as it appears in the document (32 bytes per line).
fn format_vector(name: &str, bytes: &[u8]) -> String {
    let mut s = format!("```vector {name}\n");
    for chunk in bytes.chunks(32) {
        s.push_str(&hex::encode(chunk));
        s.push('\n');
    }
    s.push_str("```\n");
    s
}

#[test]
fn vectors_parse_and_names_are_unique() {
    assert!(!all_vectors().is_empty());
}

#[test]
fn parser_handles_whitespace_and_rejects_duplicates() {
    let doc = "text\n```vector a\n00 01\n  0203\n```\n```rust\nfn x() {}\n```\n```vector b\n```\n";
    let v = parse_vectors(doc);
    assert_eq!(v["a"], [0, 1, 2, 3]);
    assert_eq!(v["b"], Vec::<u8>::new());
    assert_eq!(v.len(), 2);
    let dup = "```vector a\n00\n```\n```vector a\n00\n```\n";
    assert!(std::panic::catch_unwind(|| parse_vectors(dup)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Circuit handshake (ntor) and key derivation.

struct NtorRun {
    client_message: Vec<u8>,
    server_reply: Vec<u8>,
    server_keys: HopKeys,
    client_keys: HopKeys,
}

fn ntor_run() -> NtorRun {
    let id = RelayId(vector_n("ntor-relay-id"));
    let b = StaticSecret::from(vector_n::<32>("ntor-onion-secret-b"));
    let onion_key = PublicKey::from(&b).to_bytes();
    let cext = vector("ntor-client-ext");
    let sext = vector("ntor-server-ext");
    let (client, client_message) =
        client_start_with_secret(vector_n("ntor-client-secret-x"), &id, &onion_key, &cext);
    let out = server_respond_with_secret(
        vector_n("ntor-server-secret-y"),
        &id,
        &[OnionKeyPair::from_secret(&b)],
        &client_message,
        &sext,
    )
    .expect("relay accepts the vector's client message");
    assert_eq!(out.client_ext, cext);
    let (client_keys, got_sext) = client.finish(&out.reply).expect("client accepts the reply");
    assert_eq!(got_sext, sext);
    NtorRun {
        client_message,
        server_reply: out.reply,
        server_keys: out.keys,
        client_keys,
    }
}

fn hop_key_parts(k: &HopKeys) -> [(&'static str, [u8; 32]); 4] {
    [
        ("kf-layer", k.kf_layer),
        ("kf-auth", k.kf_auth),
        ("kb-layer", k.kb_layer),
        ("kb-auth", k.kb_auth),
    ]
}

#[test]
fn ntor_relay_id_is_the_documented_ed25519_key() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let id = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    assert_vector("ntor-relay-id", id.as_bytes());
}

#[test]
fn ntor_onion_key() {
    let b = StaticSecret::from(vector_n::<32>("ntor-onion-secret-b"));
    assert_vector("ntor-onion-key-B", PublicKey::from(&b).as_bytes());
}

#[test]
fn ntor_messages() {
    let run = ntor_run();
    assert_vector("ntor-client-message", &run.client_message);
    assert_vector("ntor-server-reply", &run.server_reply);
}

#[test]
fn ntor_hop_keys() {
    let run = ntor_run();
    for ((name, server), (_, client)) in hop_key_parts(&run.server_keys)
        .into_iter()
        .zip(hop_key_parts(&run.client_keys))
    {
        assert_eq!(server, client, "{name}: client and relay disagree");
        assert_vector(&format!("ntor-{name}"), &server);
    }
}

#[test]
fn kdf_hop_keys() {
    let keys = derive_hop_keys(&vector("kdf-key-seed"));
    for (name, key) in hop_key_parts(&keys) {
        assert_vector(&format!("kdf-{name}"), &key);
    }
}

// ---------------------------------------------------------------------------------------------
// Relay-cell crypto.

fn cell_hop_keys() -> Vec<HopKeys> {
    (0..3)
        .map(|i| derive_hop_keys(&vector(&format!("cell-hop{i}-key-seed"))))
        .collect()
}

fn cell_counter() -> u64 {
    u64::from_be_bytes(vector_n("cell-counter"))
}

fn body_with(plaintext: &[u8]) -> [u8; RELAY_BODY_LEN] {
    assert_eq!(
        plaintext.len(),
        RELAY_PLAINTEXT_LEN,
        "a cell plaintext is 493 bytes"
    );
    let mut body = [0u8; RELAY_BODY_LEN];
    body[..RELAY_PLAINTEXT_LEN].copy_from_slice(plaintext);
    body
}

fn outbound_cell() -> [u8; RELAY_BODY_LEN] {
    let mut client = ClientCrypto::new();
    for k in &cell_hop_keys() {
        client.add_hop(k);
    }
    client.dangerous_set_counters(cell_counter());
    let mut body = body_with(&vector("cell-outbound-plaintext"));
    client.encrypt_outbound(2, &mut body).unwrap();
    body
}

fn inbound_cell() -> [u8; RELAY_BODY_LEN] {
    let mut relays: Vec<RelayCrypto> = cell_hop_keys().iter().map(RelayCrypto::new).collect();
    for r in &mut relays {
        r.dangerous_set_counters(cell_counter());
    }
    let mut body = body_with(&vector("cell-inbound-plaintext"));
    relays[2].originate_inbound(&mut body).unwrap();
    relays[1].forward_inbound(&mut body).unwrap();
    relays[0].forward_inbound(&mut body).unwrap();
    body
}

#[test]
fn cell_outbound_to_hop2() {
    let body = outbound_cell();
    assert_vector("cell-outbound-to-hop2", &body);

    // The relays, in order, recover the plaintext at hop 2 from the documented bytes.
    let mut body: [u8; RELAY_BODY_LEN] = vector_n("cell-outbound-to-hop2");
    for (i, k) in cell_hop_keys().iter().enumerate() {
        let mut r = RelayCrypto::new(k);
        r.dangerous_set_counters(cell_counter());
        let want = if i == 2 {
            Recognized::ForUs
        } else {
            Recognized::NotForUs
        };
        assert_eq!(r.decrypt_outbound(&mut body).unwrap(), want, "hop {i}");
    }
    assert_eq!(
        &body[..RELAY_PLAINTEXT_LEN],
        &vector("cell-outbound-plaintext")[..]
    );
}

#[test]
fn cell_inbound_from_hop2() {
    let body = inbound_cell();
    assert_vector("cell-inbound-from-hop2", &body);

    // The client recovers the plaintext from the documented bytes and attributes it to hop 2.
    let mut client = ClientCrypto::new();
    for k in &cell_hop_keys() {
        client.add_hop(k);
    }
    client.dangerous_set_counters(cell_counter());
    let mut body: [u8; RELAY_BODY_LEN] = vector_n("cell-inbound-from-hop2");
    assert_eq!(client.decrypt_inbound(&mut body).unwrap(), 2);
    assert_eq!(
        &body[..RELAY_PLAINTEXT_LEN],
        &vector("cell-inbound-plaintext")[..]
    );
}

/// Prints the computed crypto vectors in the document's format, from the inputs in the document.
/// Run with `-- --ignored --nocapture print_crypto_vectors` after a deliberate change.
#[test]
#[ignore]
fn print_crypto_vectors() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let id = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    print!("{}", format_vector("ntor-relay-id", id.as_bytes()));
    let b = StaticSecret::from(vector_n::<32>("ntor-onion-secret-b"));
    print!(
        "{}",
        format_vector("ntor-onion-key-B", PublicKey::from(&b).as_bytes())
    );
    let run = ntor_run();
    print!(
        "{}",
        format_vector("ntor-client-message", &run.client_message)
    );
    print!("{}", format_vector("ntor-server-reply", &run.server_reply));
    for (name, key) in hop_key_parts(&run.server_keys) {
        print!("{}", format_vector(&format!("ntor-{name}"), &key));
    }
    let keys = derive_hop_keys(&vector("kdf-key-seed"));
    for (name, key) in hop_key_parts(&keys) {
        print!("{}", format_vector(&format!("kdf-{name}"), &key));
    }
    print!(
        "{}",
        format_vector("cell-outbound-to-hop2", &outbound_cell())
    );
    print!(
        "{}",
        format_vector("cell-inbound-from-hop2", &inbound_cell())
    );
}

// ---- Cells, relay messages and link payloads -------------------------------------------------

use allium_proto::cell::{create_cells, Cell, CellCmd, DestroyReason};
use allium_proto::ext::Extensions;
use allium_proto::link::Hello;
use allium_proto::relay_msg::{encode_plaintexts, ExtendTarget, RelayMsg};

fn wire(c: &Cell) -> Vec<u8> {
    let mut v = Vec::new();
    c.encode_to(&mut v);
    v
}

fn framing_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let msg = vector("ntor-client-message");
    let create = create_cells(0x8000_0001, 1, &msg);
    assert_eq!(create.len(), 1);
    let begin = RelayMsg::Begin { host: "localhost".into(), port: 8000, ext: Extensions::none() };
    let extend = RelayMsg::Extend {
        target: ExtendTarget { addr: "127.3.0.1:5000".parse().unwrap(), identity: [0x11; 32], link_key: [0x22; 32] },
        htype: 1,
        hdata: msg.clone(),
        ext: Extensions::none(),
    };
    vec![
        ("link-hello", Hello::ours().encode()),
        ("cell-create", wire(&create[0])),
        ("cell-destroy", wire(&Cell::destroy(0x8000_0001, DestroyReason::Protocol))),
        ("relay-begin-plaintext", encode_plaintexts(7, &begin)[0].to_vec()),
        ("relay-extend-body", extend.encode_body()),
        ("relay-sendme-plaintext", encode_plaintexts(0, &RelayMsg::Sendme { token: Some([0x5a; 16]) })[0].to_vec()),
    ]
}

#[test]
fn cells_relay_messages_and_link_payloads() {
    for (name, got) in framing_vectors() {
        assert_vector(name, &got);
    }
    // The documented bytes also decode back.
    let c = Cell::decode(&vector("cell-create")).unwrap();
    assert_eq!(c.cmd, CellCmd::Create);
    assert_eq!(Hello::decode(&vector("link-hello")).unwrap(), Hello::ours());
}

#[test]
#[ignore]
fn print_framing_vectors() {
    for (name, got) in framing_vectors() {
        println!("{}", format_vector(name, &got));
    }
}

// ---- authority signing-key certificate ----

/// The certificate the document's inputs make, and the message as the document defines it.
fn authority_cert_run() -> (allium_proto::doc::AuthorityCert, Vec<u8>) {
    let id = ed25519_dalek::SigningKey::from_bytes(&vector_n("authority-cert-identity-secret"));
    let sk = ed25519_dalek::SigningKey::from_bytes(&vector_n("authority-cert-signing-secret"));
    let published = u64::from_be_bytes(vector_n("authority-cert-published"));
    let expires = u64::from_be_bytes(vector_n("authority-cert-expires"));
    let cert = allium_proto::doc::AuthorityCert::sign(&id, &sk.verifying_key(), published, expires);
    let mut msg = b"allium-authority-cert-v1\0".to_vec();
    msg.extend_from_slice(&id.verifying_key().to_bytes());
    msg.extend_from_slice(&sk.verifying_key().to_bytes());
    msg.extend_from_slice(&published.to_be_bytes());
    msg.extend_from_slice(&expires.to_be_bytes());
    (cert, msg)
}

#[test]
fn authority_cert_message_and_signature() {
    let (cert, msg) = authority_cert_run();
    assert_eq!(msg.len(), 105);
    assert_vector("authority-cert-message", &msg);
    assert_vector("authority-cert-signature", &cert.signature);
    // The signature is over exactly the documented message, and the certificate verifies.
    let id = cert.identity.verifying_key().unwrap();
    assert!(id.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&cert.signature)).is_ok());
    assert!(cert.valid_at(cert.published).is_ok());
}

// ---- onion services ----

use allium_proto::hs::inner::{client_entry_keys, desc_key_nonce, DescBinding};
use allium_proto::hs::period::fallback_srv;
use allium_proto::hs::ring::{hs_index, hsdir_index};
use allium_proto::hs::{blind_public, BlindedKey, OnionAddress, TimePeriod};

/// The period of the onion-service vectors.
const HS_PERIOD: TimePeriod = TimePeriod { number: 20_000, length_secs: 86_400 };
/// The revision of the onion-service vectors.
const HS_REVISION: u64 = 3;

fn hs_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let id = ed25519_dalek::SigningKey::from_bytes(&vector_n("hs-identity-seed"));
    let identity = id.verifying_key().to_bytes();
    let blinded = blind_public(&identity, HS_PERIOD).expect("usable identity");
    assert_eq!(BlindedKey::derive(&id, HS_PERIOD).public(), blinded);
    let b = DescBinding { blinded_key: &blinded, period: HS_PERIOD, revision: HS_REVISION };
    let salt: [u8; 16] = vector_n("hs-desc-salt");
    let cookie: [u8; 32] = vector_n("hs-desc-cookie");
    let kn = |c: Option<&[u8; 32]>| {
        let (k, n) = desc_key_nonce(&identity, &b, &salt, c);
        [&k[..], &n[..]].concat()
    };
    let client = StaticSecret::from(vector_n::<32>("hs-client-secret"));
    let eph = StaticSecret::from(vector_n::<32>("hs-ephemeral-secret"));
    let (client_pub, eph_pub) = (PublicKey::from(&client), PublicKey::from(&eph));
    let dh = eph.diffie_hellman(&client_pub);
    assert_eq!(dh.as_bytes(), client.diffie_hellman(&eph_pub).as_bytes());
    let (cid, ckey, cnonce) =
        client_entry_keys(dh.as_bytes(), eph_pub.as_bytes(), client_pub.as_bytes(), &identity, &blinded, &salt);
    let srv: [u8; 32] = vector_n("hs-ring-srv");
    let relay = RelayId(vector_n("hs-relay-id"));
    vec![
        ("hs-identity", identity.to_vec()),
        ("hs-address", OnionAddress::from_identity(identity).unwrap().to_host().into_bytes()),
        ("hs-blinded-key", blinded.to_vec()),
        ("hs-desc-key-nonce", kn(None)),
        ("hs-desc-key-nonce-cookie", kn(Some(&cookie))),
        ("hs-client-entry-keys", [&cid[..], &ckey[..], &cnonce[..]].concat()),
        ("hs-hsdir-index", hsdir_index(&relay, &srv, HS_PERIOD).to_vec()),
        ("hs-index-replica-1", hs_index(&blinded, 1, HS_PERIOD).to_vec()),
        ("hs-index-replica-2", hs_index(&blinded, 2, HS_PERIOD).to_vec()),
        ("hs-srv-fallback", fallback_srv(HS_PERIOD).to_vec()),
    ]
}

#[test]
fn onion_service_vectors() {
    for (name, got) in hs_vectors() {
        assert_vector(name, &got);
    }
}

#[test]
#[ignore]
fn print_authority_cert_vectors() {
    let (cert, msg) = authority_cert_run();
    println!("{}", format_vector("authority-cert-message", &msg));
    println!("{}", format_vector("authority-cert-signature", &cert.signature));
}

#[test]
#[ignore]
fn print_hs_vectors() {
    for (name, got) in hs_vectors() {
        println!("{}", format_vector(name, &got));
    }
}

// ---- introduction and rendezvous ----

use allium_proto::hs::establish::circuit_binding;
use allium_proto::hs::introduce::{encrypt_with_secret, intro_key_nonce, IntroduceContent};
use allium_proto::hs::rendezvous::{client_start_with_secret as rend_client_start, service_respond_with_secret, HTYPE_REND};
use allium_proto::hs::replay::replay_digest;

/// The rendezvous point named in the INTRODUCE vectors (see docs/PROTOCOL.md).
fn vector_rendezvous_point() -> (ExtendTarget, [u8; 32]) {
    (ExtendTarget { addr: "192.0.2.1:9001".parse().unwrap(), identity: [0x11; 32], link_key: [0x22; 32] }, [0x33; 32])
}

fn intro_rend_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let identity = ed25519_dalek::SigningKey::from_bytes(&vector_n("hs-identity-seed")).verifying_key().to_bytes();
    let auth = ed25519_dalek::SigningKey::from_bytes(&vector_n("hs-intro-auth-seed"));
    let auth_key = auth.verifying_key().to_bytes();
    let b = StaticSecret::from(vector_n::<32>("hs-intro-enc-secret"));
    let enc_key = PublicKey::from(&b).to_bytes();
    // ESTABLISH_INTRO on the circuit whose intro-point hop has the kdf-key-seed keys.
    let hop = derive_hop_keys(&vector("kdf-key-seed"));
    let establish = allium_proto::hs::establish::make(&auth, &hop, Extensions::none());
    assert_eq!(allium_proto::hs::establish::verify(&establish, &hop), Ok(auth_key));
    // INTRODUCE1.
    let (rend, x) = rend_client_start(vector_n("hs-rend-client-secret"), &auth_key, &enc_key);
    let (rp, rp_onion) = vector_rendezvous_point();
    let content = IntroduceContent {
        cookie: vector_n("hs-rend-cookie"),
        rendezvous: rp,
        rendezvous_onion_key: rp_onion,
        htype: HTYPE_REND,
        hdata: x.to_vec(),
        ext: Extensions::none(),
    };
    let e = vector_n::<32>("hs-intro-ephemeral-secret");
    let body = encrypt_with_secret(e, &identity, &auth_key, &enc_key, Extensions::none(), &content).unwrap();
    let e_pub = PublicKey::from(&StaticSecret::from(e));
    let dh = b.diffie_hellman(&e_pub);
    let (k, n) = intro_key_nonce(dh.as_bytes(), e_pub.as_bytes(), &enc_key, &auth_key, &identity);
    let introduce = RelayMsg::Introduce1(body.clone());
    assert_eq!(allium_proto::hs::introduce::decrypt(&identity, &auth_key, &b, &body), Ok(content.clone()));
    // The end-to-end handshake.
    let out = service_respond_with_secret(vector_n("hs-rend-service-secret"), &auth_key, &b, HTYPE_REND, &x).unwrap();
    let keys = rend.finish(&out.reply).unwrap();
    let all = |k: &HopKeys| [k.kf_layer, k.kf_auth, k.kb_layer, k.kb_auth].concat();
    assert_eq!(all(&keys), all(&out.keys));
    vec![
        ("hs-intro-auth-key", auth_key.to_vec()),
        ("hs-intro-enc-key", enc_key.to_vec()),
        ("hs-circuit-binding", circuit_binding(&hop).to_vec()),
        ("hs-establish-intro-body", establish.encode_body()),
        ("hs-rend-client-key", x.to_vec()),
        ("hs-introduce-plaintext", content.encode()),
        ("hs-introduce-key-nonce", [&k[..], &n[..]].concat()),
        ("hs-introduce1-body", introduce.encode_body()),
        ("hs-replay-digest", replay_digest(&body.encrypted).to_vec()),
        ("hs-rend-reply", out.reply.to_vec()),
        ("hs-rend-hop-keys", all(&keys)),
    ]
}

#[test]
fn introduction_and_rendezvous_vectors() {
    for (name, got) in intro_rend_vectors() {
        assert_vector(name, &got);
    }
}

#[test]
#[ignore]
fn print_intro_rend_vectors() {
    for (name, got) in intro_rend_vectors() {
        println!("{}", format_vector(name, &got));
    }
}

/// Recomputes the introduction and rendezvous vectors from the document's formulas with the
/// primitives directly (not through `allium_proto::hs`), so the text and the code agree.
#[test]
fn introduction_and_rendezvous_formulas() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let hmac = |key: &[u8], parts: &[&[u8]]| -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        parts.iter().for_each(|p| m.update(p));
        m.finalize().into_bytes().to_vec()
    };
    let identity = vector("hs-identity");
    let auth_key = vector("hs-intro-auth-key");
    let b = StaticSecret::from(vector_n::<32>("hs-intro-enc-secret"));
    let big_b = PublicKey::from(&b).to_bytes();
    assert_vector("hs-intro-enc-key", &big_b);
    // Circuit binding and ESTABLISH_INTRO signature.
    let hop = derive_hop_keys(&vector("kdf-key-seed"));
    let binding = hmac(b"allium-hs-circuit-binding-v1", &[&hop.kf_layer, &hop.kf_auth, &hop.kb_layer, &hop.kb_auth]);
    assert_vector("hs-circuit-binding", &binding);
    let est = vector("hs-establish-intro-body");
    assert_eq!((&est[..32], est[32], est.len()), (&auth_key[..], 0, 97));
    let signed = [&b"allium-hs-establish-intro-v1\0"[..], &binding, &auth_key, &[0]].concat();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&auth_key.clone().try_into().unwrap()).unwrap();
    vk.verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&est[33..].try_into().unwrap())).unwrap();
    // INTRODUCE1: auth key | 00 | E | ciphertext | tag.
    let body = vector("hs-introduce1-body");
    let e = StaticSecret::from(vector_n::<32>("hs-intro-ephemeral-secret"));
    let big_e = PublicKey::from(&e).to_bytes();
    assert_eq!((&body[..32], body[32], &body[33..65]), (&auth_key[..], 0, &big_e[..]));
    let dh = e.diffie_hellman(&PublicKey::from(big_b));
    let ikm = [dh.as_bytes(), &big_e[..], &big_b[..], &auth_key, &identity].concat();
    let mut kn = [0u8; 44];
    hkdf::Hkdf::<Sha256>::new(Some(b"allium-hs-intro-v1"), &ikm).expand(b"allium-hs-intro-v1:key-nonce", &mut kn).unwrap();
    assert_vector("hs-introduce-key-nonce", &kn);
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(&kn[..32]).unwrap();
    let pt = gcm.decrypt(aes_gcm::Nonce::from_slice(&kn[32..]), Payload { msg: &body[65..], aad: &body[..65] }).unwrap();
    assert_vector("hs-introduce-plaintext", &pt);
    let x = vector("hs-rend-client-key");
    let cookie = vector("hs-rend-cookie");
    assert_eq!(pt.len(), 400);
    assert_eq!(&pt[..20], &cookie[..]);
    assert_eq!(&pt[20..97], &hex::decode(format!("0300 06 c0000201 2329 0220 {} 0320 {}", "11".repeat(32), "22".repeat(32)).replace(' ', "")).unwrap()[..]);
    assert_eq!(&pt[97..129], &[0x33; 32]);
    assert_eq!(&pt[129..133], &[0, 1, 0, 32]);
    assert_eq!(&pt[133..165], &x[..]);
    assert!(pt[165..].iter().all(|&z| z == 0), "empty extension field, then zero padding");
    let digest = Sha256::new().chain_update(b"allium-hs-replay-v1").chain_update(&body[65 - 32..]).finalize();
    assert_vector("hs-replay-digest", &digest);
    // The end-to-end handshake.
    let xs = StaticSecret::from(vector_n::<32>("hs-rend-client-secret"));
    assert_eq!(PublicKey::from(&xs).to_bytes().to_vec(), x);
    let reply = vector("hs-rend-reply");
    let y = &reply[..32];
    let ys = StaticSecret::from(vector_n::<32>("hs-rend-service-secret"));
    assert_eq!(PublicKey::from(&ys).to_bytes(), y);
    let dh_y = xs.diffie_hellman(&PublicKey::from(<[u8; 32]>::try_from(y).unwrap()));
    let dh_b = xs.diffie_hellman(&PublicKey::from(big_b));
    let si: Vec<&[u8]> = vec![dh_y.as_bytes(), dh_b.as_bytes(), &auth_key, &big_b, &x, y, b"allium-hs-rend-v1"];
    let key_seed = hmac(b"allium-hs-rend-v1:key_seed", &si);
    let verify = hmac(b"allium-hs-rend-v1:verify", &si);
    let auth = hmac(b"allium-hs-rend-v1:auth", &[&verify, &auth_key, &big_b, y, &x, b"allium-hs-rend-v1", b"Service"]);
    assert_eq!(&reply[32..], &auth[..]);
    let k = derive_hop_keys(&key_seed);
    assert_vector("hs-rend-hop-keys", &[k.kf_layer, k.kf_auth, k.kb_layer, k.kb_auth].concat());
}
