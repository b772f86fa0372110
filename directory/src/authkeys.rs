//! An authority's keys on disk, arranged so the long-term identity key can stay offline.
//!
//! Files in the authority's data directory (each mode 0600, written atomically):
//! - `identity_ed25519.key`: the identity secret. **Optional at run time**: without it the
//!   authority runs on the files below and cannot renew them itself;
//! - `authority_signing_ed25519.key`: the signing key's 32 secret bytes (signs votes and
//!   consensuses);
//! - `authority_signing.cert`: its certificate from the identity, one `authority-cert` line;
//! - `link_x25519.key`: the link key (reachability tests dial relays with it);
//! - `link_x25519.cert`: the identity's link-key certificate, one line
//!   `<identity fingerprint> <signature as 128 hex digits>`.
//!
//! [`AuthorityKeys::load`] uses them; when the identity secret is present it creates what is
//! missing and renews a signing key whose certificate is within a quarter of its lifetime of
//! expiring. [`certify_into`] is `allium keygen --authority` (and what `allium testnet` uses):
//! certify a fresh signing key and the link key with an identity kept elsewhere.

use std::path::{Path, PathBuf};

use allium_net::keys::{ensure_dir, read_secret, write_atomic, KeyError, IDENTITY_FILE, LINK_FILE};
use allium_net::link::RelayCredentials;
use allium_proto::doc::{certify_link_key, verify_link_cert, AuthorityCert, AuthoritySigner};
use allium_proto::ids::RelayId;
use allium_proto::link::InitiatorCert;
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use rand::RngCore;

/// The signing key's file name.
pub const SIGNING_KEY_FILE: &str = "authority_signing_ed25519.key";
/// The signing key certificate's file name.
pub const SIGNING_CERT_FILE: &str = "authority_signing.cert";
/// The link-key certificate's file name.
pub const LINK_CERT_FILE: &str = "link_x25519.cert";
/// Default lifetime of a signing-key certificate: 90 days.
pub const DEFAULT_SIGNING_KEY_LIFETIME_SECS: u64 = 90 * 86_400;
/// Without the identity, warn when the certificate expires within this (7 days).
pub const EXPIRY_WARNING_SECS: u64 = 7 * 86_400;

/// Why the authority's keys are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthKeyError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// A file the authority needs and cannot make without the identity secret.
    #[error(
        "{}: {reason}, and the identity key is not in {} to fix it: run `allium keygen --authority --data-dir <identity dir> --out {}` \
         where the identity key is kept, then copy {SIGNING_KEY_FILE}, {SIGNING_CERT_FILE}, {LINK_FILE} and {LINK_CERT_FILE} here",
        path.display(), dir.display(), dir.display()
    )]
    NeedsIdentity { path: PathBuf, dir: PathBuf, reason: String },
}

/// Something loading or maintaining the keys did or noticed, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNote {
    Info(String),
    Warn(String),
}

/// The keys an authority runs with.
pub struct AuthorityKeys {
    /// The identity secret, when it is in the data directory.
    pub identity: Option<SigningKey>,
    /// The signing key and its certificate.
    pub signer: AuthoritySigner,
    pub link: x25519_dalek::StaticSecret,
    /// The identity's certificate for the link key.
    pub link_cert: [u8; 64],
    /// What loading did or noticed (a key created or renewed, an expiry coming), for the log.
    pub notes: Vec<KeyNote>,
}

impl AuthorityKeys {
    /// The authority's identity.
    pub fn relay_id(&self) -> RelayId {
        self.signer.identity()
    }

    pub fn link_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.link).to_bytes()
    }

    /// What the authority dials relays with.
    pub fn credentials(&self) -> RelayCredentials {
        RelayCredentials { link_secret: self.link.to_bytes(), cert: InitiatorCert { identity: self.relay_id(), sig: self.link_cert } }
    }

    /// Loads the keys from `dir` at `now` (unix seconds). With the identity secret present
    /// (or no keys at all yet: a fresh identity is made), missing or expiring files are
    /// (re)made. Without it, every other file must be there and valid.
    pub fn load(dir: &Path, now: u64) -> Result<Self, AuthKeyError> {
        ensure_dir(dir)?;
        let mut notes = Vec::new();
        let mut identity = read_secret(dir, IDENTITY_FILE)?.map(|b| SigningKey::from_bytes(&b));
        if identity.is_none() && !dir.join(SIGNING_CERT_FILE).exists() {
            let mut b = [0u8; 32];
            OsRng.fill_bytes(&mut b);
            write_atomic(dir, IDENTITY_FILE, &b)?;
            notes.push(KeyNote::Info(format!("created a new identity key in {}", dir.join(IDENTITY_FILE).display())));
            identity = Some(SigningKey::from_bytes(&b));
        }
        let keys = match identity {
            Some(id) => {
                let (signer, link, link_cert) = certify_files(&id, dir, DEFAULT_SIGNING_KEY_LIFETIME_SECS, now, false, &mut notes)?;
                AuthorityKeys { identity: Some(id), signer, link, link_cert, notes: Vec::new() }
            }
            None => Self::load_offline(dir, now, &mut notes)?,
        };
        Ok(AuthorityKeys { notes, ..keys })
    }

    /// Without the identity: everything must be present and valid.
    fn load_offline(dir: &Path, now: u64, notes: &mut Vec<KeyNote>) -> Result<Self, AuthKeyError> {
        let need = |name: &str, reason: String| AuthKeyError::NeedsIdentity { path: dir.join(name), dir: dir.to_path_buf(), reason };
        let signer = read_signer(dir)?.ok_or_else(|| need(SIGNING_KEY_FILE, "missing".into()))?;
        signer.cert().valid_at(now).map_err(|e| need(SIGNING_CERT_FILE, e.to_string()))?;
        let link = read_secret(dir, LINK_FILE)?.ok_or_else(|| need(LINK_FILE, "missing".into()))?;
        let link = x25519_dalek::StaticSecret::from(link);
        let public = x25519_dalek::PublicKey::from(&link).to_bytes();
        let link_cert = read_link_cert(dir, &signer.identity())?.ok_or_else(|| need(LINK_CERT_FILE, "missing".into()))?;
        if !verify_link_cert(&signer.identity(), &public, &link_cert) {
            return Err(need(LINK_CERT_FILE, "does not certify this link key".into()));
        }
        let keys = AuthorityKeys { identity: None, signer, link, link_cert, notes: Vec::new() };
        notes.extend(keys.expiry_warning(now));
        Ok(keys)
    }

    fn expiry_warning(&self, now: u64) -> Option<KeyNote> {
        let left = self.signer.cert().expires.saturating_sub(now);
        (self.identity.is_none() && left < EXPIRY_WARNING_SECS).then(|| {
            KeyNote::Warn(format!(
                "the authority signing-key certificate expires in {} h (at {}); run `allium keygen --authority` where the identity key is and copy the new files here",
                left / 3600,
                allium_proto::time::Utc(self.signer.cert().expires)
            ))
        })
    }

    /// The periodic check at `now`: with the identity, renews the signing key when due (and
    /// returns `true`: the caller starts signing with the new one); without it, warns when the
    /// certificate expires soon, and reports when it has expired.
    pub fn maintain(&mut self, dir: &Path, now: u64) -> Result<(bool, Vec<KeyNote>), AuthKeyError> {
        let mut notes = Vec::new();
        match &self.identity {
            Some(id) => {
                if !needs_renewal(self.signer.cert(), now) {
                    return Ok((false, notes));
                }
                let (signer, _, _) = certify_files(id, dir, DEFAULT_SIGNING_KEY_LIFETIME_SECS, now, false, &mut notes)?;
                self.signer = signer;
                Ok((true, notes))
            }
            None => {
                if let Err(e) = self.signer.cert().valid_at(now) {
                    notes.push(KeyNote::Warn(format!("{e}: this authority's votes and signatures no longer count; renew it with `allium keygen --authority`")));
                } else {
                    notes.extend(self.expiry_warning(now));
                }
                Ok((false, notes))
            }
        }
    }
}

/// Whether a certificate should be replaced at `now`: it is not valid, or less than a quarter
/// of its lifetime is left.
pub fn needs_renewal(cert: &AuthorityCert, now: u64) -> bool {
    let lifetime = cert.expires.saturating_sub(cert.published);
    cert.valid_at(now).is_err() || cert.expires.saturating_sub(now) < lifetime / 4
}

/// `allium keygen --authority`: with the identity in `identity_dir` (created if missing),
/// certifies a fresh signing key for `lifetime_secs` from `now`, and the link key in `out_dir`
/// (created if missing), writing the signing key, its certificate and the link-key
/// certificate into `out_dir`. Returns the identity and the new certificate.
pub fn certify_into(identity_dir: &Path, out_dir: &Path, lifetime_secs: u64, now: u64) -> Result<(RelayId, AuthorityCert), AuthKeyError> {
    let id = allium_net::keys::load_or_create(identity_dir)?.identity;
    ensure_dir(out_dir)?;
    let (signer, _, _) = certify_files(&id, out_dir, lifetime_secs, now, true, &mut Vec::new())?;
    Ok((signer.identity(), *signer.cert()))
}

/// With the identity `id`: makes sure `dir` holds a link key with a valid certificate and a
/// signing key with a certificate not due for renewal (`fresh`: always a new signing key).
fn certify_files(
    id: &SigningKey,
    dir: &Path,
    lifetime_secs: u64,
    now: u64,
    fresh: bool,
    notes: &mut Vec<KeyNote>,
) -> Result<(AuthoritySigner, x25519_dalek::StaticSecret, [u8; 64]), AuthKeyError> {
    let me = RelayId(id.verifying_key().to_bytes());
    let link = match read_secret(dir, LINK_FILE)? {
        Some(b) => b,
        None => {
            let mut b = [0u8; 32];
            OsRng.fill_bytes(&mut b);
            write_atomic(dir, LINK_FILE, &b)?;
            b
        }
    };
    let link = x25519_dalek::StaticSecret::from(link);
    let public = x25519_dalek::PublicKey::from(&link).to_bytes();
    // A malformed certificate, or one for another identity, is simply replaced: the identity is here.
    let link_cert = match read_link_cert(dir, &me).ok().flatten() {
        Some(sig) if verify_link_cert(&me, &public, &sig) => sig,
        _ => {
            let sig = certify_link_key(id, &public);
            write_atomic(dir, LINK_CERT_FILE, format!("{} {}\n", me.fingerprint(), hex::encode_upper(sig)).as_bytes())?;
            notes.push(KeyNote::Info(format!("certified the link key in {}", dir.join(LINK_CERT_FILE).display())));
            sig
        }
    };
    let held = if fresh { None } else { read_signer(dir).ok().flatten() };
    let signer = match held {
        Some(s) if s.identity() == me && !needs_renewal(s.cert(), now) => s,
        old => {
            let mut b = [0u8; 32];
            OsRng.fill_bytes(&mut b);
            let signer = AuthoritySigner::certify(id, SigningKey::from_bytes(&b), now, now.saturating_add(lifetime_secs));
            // The key first: a crash in between leaves a mismatched pair, which is renewed again.
            write_atomic(dir, SIGNING_KEY_FILE, &b)?;
            write_atomic(dir, SIGNING_CERT_FILE, signer.cert().encode().as_bytes())?;
            let verb = if old.is_some() { "renewed" } else { "created" };
            notes.push(KeyNote::Info(format!(
                "{verb} the authority signing key in {}, certified until {}",
                dir.join(SIGNING_KEY_FILE).display(),
                allium_proto::time::Utc(signer.cert().expires)
            )));
            signer
        }
    };
    Ok((signer, link, link_cert))
}

/// Reads the signing key and its certificate: `None` if either file is missing; an error if
/// one is malformed or they do not match. The certificate is not checked.
fn read_signer(dir: &Path) -> Result<Option<AuthoritySigner>, AuthKeyError> {
    let Some(key) = read_secret(dir, SIGNING_KEY_FILE)? else { return Ok(None) };
    let Some(text) = read_text(dir, SIGNING_CERT_FILE)? else { return Ok(None) };
    let bad = |reason: String| AuthKeyError::BadFile { path: dir.join(SIGNING_CERT_FILE), reason };
    let cert = AuthorityCert::parse(&text).map_err(|e| bad(e.to_string()))?;
    AuthoritySigner::new(SigningKey::from_bytes(&key), cert).map(Some).map_err(|e| bad(e.to_string()))
}

/// Reads the link-key certificate file: `None` if missing; an error if malformed or for
/// another identity than `me`.
fn read_link_cert(dir: &Path, me: &RelayId) -> Result<Option<[u8; 64]>, AuthKeyError> {
    let Some(text) = read_text(dir, LINK_CERT_FILE)? else { return Ok(None) };
    let bad = |reason: &str| AuthKeyError::BadFile { path: dir.join(LINK_CERT_FILE), reason: reason.into() };
    let line = text.strip_suffix('\n').ok_or_else(|| bad("does not end with a newline"))?;
    let (fp, sig) = line.split_once(' ').ok_or_else(|| bad("expected '<fingerprint> <signature hex>'"))?;
    if fp != me.fingerprint() {
        return Err(bad("is for another identity than the signing-key certificate"));
    }
    let mut out = [0u8; 64];
    if sig.len() != 128 || sig.bytes().any(|b| b.is_ascii_lowercase()) || hex::decode_to_slice(sig, &mut out).is_err() {
        return Err(bad("signature is not 128 uppercase hex digits"));
    }
    Ok(Some(out))
}

fn read_text(dir: &Path, name: &str) -> Result<Option<String>, AuthKeyError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(KeyError::Io { path, err }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("allium-authkeys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    #[test]
    fn identity_present_creates_then_reuses_then_renews() {
        let dir = tmp("renew");
        let a = AuthorityKeys::load(&dir, NOW).unwrap();
        let notes = &a.notes;
        assert!(a.identity.is_some());
        assert_eq!(a.signer.cert().expires, NOW + DEFAULT_SIGNING_KEY_LIFETIME_SECS);
        assert!(notes.iter().any(|n| matches!(n, KeyNote::Info(m) if m.contains("created the authority signing key"))), "{notes:?}");
        for f in [IDENTITY_FILE, SIGNING_KEY_FILE, SIGNING_CERT_FILE, LINK_FILE, LINK_CERT_FILE] {
            assert_eq!(std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
        // Reused while more than a quarter of the lifetime is left.
        let b = AuthorityKeys::load(&dir, NOW + 60 * DAY).unwrap();
        let notes = &b.notes;
        assert_eq!(b.signer.cert(), a.signer.cert());
        assert!(notes.is_empty(), "{notes:?}");
        // Renewed (new key) with less than a quarter left.
        let c = AuthorityKeys::load(&dir, NOW + 70 * DAY).unwrap();
        let notes = &c.notes;
        assert_ne!(c.signer.cert().signing_key, a.signer.cert().signing_key);
        assert!(notes.iter().any(|n| matches!(n, KeyNote::Info(m) if m.contains("renewed"))), "{notes:?}");
        assert_eq!(c.relay_id(), a.relay_id());
        // The periodic check does the same.
        let mut d = c;
        assert!(!d.maintain(&dir, NOW + 71 * DAY).unwrap().0);
        assert!(d.maintain(&dir, NOW + 140 * DAY).unwrap().0);
        assert_eq!(d.signer.cert().published, NOW + 140 * DAY);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn offline_identity_runs_on_certified_files_and_refuses_an_expired_cert() {
        let (offline, auth) = (tmp("offline-id"), tmp("offline-auth"));
        let (id, cert) = certify_into(&offline, &auth, 30 * DAY, NOW).unwrap();
        assert!(!auth.join(IDENTITY_FILE).exists(), "the identity stays where it was");
        let k = AuthorityKeys::load(&auth, NOW + DAY).unwrap();
        let notes = &k.notes;
        assert!(k.identity.is_none() && notes.is_empty(), "{notes:?}");
        assert_eq!((k.relay_id(), *k.signer.cert()), (id, cert));
        assert!(verify_link_cert(&id, &k.link_public(), &k.credentials().cert.sig));
        // A week before expiry: a warning.
        let notes = AuthorityKeys::load(&auth, NOW + 25 * DAY).unwrap().notes;
        assert!(matches!(&notes[..], [KeyNote::Warn(m)] if m.contains("expires in")), "{notes:?}");
        // Expired: a one-line error saying how to fix it.
        let err = AuthorityKeys::load(&auth, NOW + 31 * DAY).err().unwrap().to_string();
        assert!(err.contains("expired") && err.contains("allium keygen --authority") && !err.contains('\n'), "{err}");
        // Missing link-key certificate: refused, never made up.
        std::fs::remove_file(auth.join(LINK_CERT_FILE)).unwrap();
        let err = AuthorityKeys::load(&auth, NOW + DAY).err().unwrap().to_string();
        assert!(err.contains(LINK_CERT_FILE) && err.contains("missing"), "{err}");
        // Certified again where the identity is: usable again.
        certify_into(&offline, &auth, 30 * DAY, NOW + 31 * DAY).unwrap();
        assert!(AuthorityKeys::load(&auth, NOW + 32 * DAY).is_ok());
        for d in [offline, auth] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn keygen_replaces_files_of_another_identity() {
        let (a, b, out) = (tmp("other-a"), tmp("other-b"), tmp("other-out"));
        certify_into(&a, &out, DAY, NOW).unwrap();
        let (id_b, cert_b) = certify_into(&b, &out, DAY, NOW).unwrap();
        let k = AuthorityKeys::load(&out, NOW).unwrap();
        assert_eq!((k.relay_id(), *k.signer.cert()), (id_b, cert_b));
        assert!(verify_link_cert(&id_b, &k.link_public(), &k.link_cert));
        for d in [a, b, out] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn corrupt_files_are_errors() {
        let dir = tmp("corrupt");
        AuthorityKeys::load(&dir, NOW).unwrap();
        std::fs::remove_file(dir.join(IDENTITY_FILE)).unwrap();
        std::fs::write(dir.join(SIGNING_CERT_FILE), "authority-cert x\n").unwrap();
        assert!(matches!(AuthorityKeys::load(&dir, NOW), Err(AuthKeyError::BadFile { .. })));
        std::fs::write(dir.join(SIGNING_KEY_FILE), b"short").unwrap();
        assert!(matches!(AuthorityKeys::load(&dir, NOW), Err(AuthKeyError::Key(KeyError::BadLength { .. }))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
