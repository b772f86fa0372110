//! A node's long-term keys on disk: created on first start, reused after; and the onion key's
//! rotation schedule.
//!
//! Files in the data directory, each mode 0600:
//! - `identity_ed25519.key`: the ed25519 identity (signs descriptors, certifies the link key);
//!   32 raw secret bytes;
//! - `link_x25519.key`: the x25519 static key of the Noise link handshake; 32 raw secret bytes;
//! - `onion_x25519.key`: the current x25519 onion key used by the circuit handshake (ntor);
//! - `onion_x25519.previous.key`: the onion key it replaced, kept for a grace period after a
//!   rotation (see [`OnionKeys`]), then deleted.
//!
//! The onion key files use a versioned format: `0x01 || T || secret`, 41 bytes, where `T` is a
//! big-endian u64 of Unix seconds: in `onion_x25519.key` the key's creation time, in
//! `onion_x25519.previous.key` the time it stopped being current (the rotation time). A 32-byte
//! `onion_x25519.key` (the format before rotation existed) is still read, as a key created at the
//! file's modification time.
//!
//! A key file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written key; a file of the wrong size or version is an error, never silently replaced.
//!
//! Permissions (as Tor): an existing key file readable or writable by its group or by others
//! is refused ([`KeyError::LoosePermissions`]: the operator must `chmod 600` it, since the key
//! may have leaked); a data directory open to its group or others is fixed to 0700
//! ([`secure_dir`] returns the mode it had, for a warning).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use allium_proto::crypto::ntor::OnionKeyPair;
use allium_proto::ids::RelayId;
use rand::rngs::OsRng;
use rand::RngCore;

/// The identity key's file name.
pub const IDENTITY_FILE: &str = "identity_ed25519.key";
/// The link key's file name.
pub const LINK_FILE: &str = "link_x25519.key";
/// The current onion key's file name.
pub const ONION_FILE: &str = "onion_x25519.key";
/// The previous onion key's file name (present only during a rotation's grace period).
pub const PREVIOUS_ONION_FILE: &str = "onion_x25519.previous.key";
/// The onion key file format's version byte.
const ONION_FORMAT_V1: u8 = 1;
const ONION_FILE_LEN: usize = 1 + 8 + 32;

/// The keys a node holds.
pub struct NodeKeys {
    pub identity: ed25519_dalek::SigningKey,
    /// The onion key current when the keys were loaded; a relay that rotates keeps its live set
    /// in an [`OnionKeys`].
    pub onion: x25519_dalek::StaticSecret,
    pub link: x25519_dalek::StaticSecret,
}

impl NodeKeys {
    pub fn relay_id(&self) -> RelayId {
        RelayId(self.identity.verifying_key().to_bytes())
    }
    pub fn onion_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.onion).to_bytes()
    }
    pub fn link_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.link).to_bytes()
    }
}

/// Errors reading or creating key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("key file {path} is corrupt: expected 32 bytes, found {len}")]
    BadLength { path: PathBuf, len: usize },
    #[error("onion key file {path} is corrupt: {reason}")]
    BadOnionFile { path: PathBuf, reason: String },
    #[error(
        "key file {} has permissions {mode:04o}; keys must be readable only by their owner (chmod 600 {})",
        path.display(), path.display()
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
}

/// Refuses a key file that its group or others may read or write.
pub fn check_key_permissions(path: &Path) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|err| KeyError::Io { path: path.to_path_buf(), err })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// Makes an existing directory private to its owner: a directory its group or others may
/// read, write or enter is set to 0700. Returns the mode it had when it changed it (the caller
/// warns); `None` when it was private already.
pub fn secure_dir(dir: &Path) -> Result<Option<u32>, KeyError> {
    let io = |err| KeyError::Io { path: dir.to_path_buf(), err };
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    Ok(Some(mode))
}

/// Loads the node's keys from `dir`, creating any that are missing.
pub fn load_or_create(dir: &Path) -> Result<NodeKeys, KeyError> {
    ensure_dir(dir)?;
    let identity = ed25519_dalek::SigningKey::from_bytes(&secret(dir, IDENTITY_FILE)?);
    let onion = current_onion(dir, unix_now())?.0;
    let link = x25519_dalek::StaticSecret::from(secret(dir, LINK_FILE)?);
    Ok(NodeKeys { identity, onion, link })
}

/// Creates `dir` (mode 0700) if it does not exist; an existing one open to its group or others
/// is set to 0700, with a warning ([`secure_dir`]).
pub fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    let io = |err| KeyError::Io { path: dir.to_path_buf(), err };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    } else if let Some(old) = secure_dir(dir)? {
        tracing::warn!("data directory {} had permissions {old:04o}; set them to 0700 (readable only by its owner)", dir.display());
    }
    Ok(())
}

/// Seconds since the Unix epoch by the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reads the 32-byte secret key file `dir/name`, creating it (random, mode 0600) if missing.
pub fn secret(dir: &Path, name: &str) -> Result<[u8; 32], KeyError> {
    match read_secret(dir, name)? {
        Some(key) => Ok(key),
        None => {
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            write_atomic(dir, name, &key)?;
            Ok(key)
        }
    }
}

/// Reads a 32-byte secret key file `dir/name`: `None` if it does not exist, an error if it has
/// another size. Never creates anything.
pub fn read_secret(dir: &Path, name: &str) -> Result<Option<[u8; 32]>, KeyError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => {
            check_key_permissions(&path)?;
            let len = bytes.len();
            bytes.try_into().map(Some).map_err(|_| KeyError::BadLength { path: path.clone(), len })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::Io { path, err: e }),
    }
}

/// Writes `bytes` to `dir/name` (mode 0600) through a temporary file and a rename, so a crash
/// never leaves a half-written file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |err| KeyError::Io { path: path.clone(), err };
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    // `mode` applies only when the file is created; a stale temporary file may have another.
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn encode_onion(secret: &x25519_dalek::StaticSecret, time: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ONION_FILE_LEN);
    out.push(ONION_FORMAT_V1);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&secret.to_bytes());
    out
}

/// Reads an onion key file: `None` if it does not exist. `legacy_ok` accepts the 32-byte format
/// (time = the file's modification time).
fn read_onion(path: &Path, legacy_ok: bool) -> Result<Option<(x25519_dalek::StaticSecret, u64)>, KeyError> {
    let io = |err| KeyError::Io { path: path.to_path_buf(), err };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    check_key_permissions(path)?;
    let bad = |reason: String| KeyError::BadOnionFile { path: path.to_path_buf(), reason };
    if bytes.len() == 32 && legacy_ok {
        let mtime = fs::metadata(path).and_then(|m| m.modified()).map_err(io)?;
        let t = mtime.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad("unreadable".into()))?;
        return Ok(Some((x25519_dalek::StaticSecret::from(key), t)));
    }
    if bytes.len() != ONION_FILE_LEN {
        return Err(bad(format!("expected {ONION_FILE_LEN} bytes{}, found {}", if legacy_ok { " (or 32)" } else { "" }, bytes.len())));
    }
    if bytes[0] != ONION_FORMAT_V1 {
        return Err(bad(format!("unknown format version {}", bytes[0])));
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes[1..9]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[9..]);
    Ok(Some((x25519_dalek::StaticSecret::from(key), u64::from_be_bytes(t))))
}

/// The current onion key and its creation time, created (at `now`) if missing.
fn current_onion(dir: &Path, now: u64) -> Result<(x25519_dalek::StaticSecret, u64), KeyError> {
    if let Some(k) = read_onion(&dir.join(ONION_FILE), true)? {
        return Ok(k);
    }
    let secret = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    write_atomic(dir, ONION_FILE, &encode_onion(&secret, now))?;
    Ok((secret, now))
}

/// When a relay's onion key is replaced and how long the replaced one is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// A key older than this (seconds) is replaced.
    pub lifetime: u64,
    /// A replaced key is still accepted for this long (seconds) after its replacement. Only one
    /// previous key is kept, so the effective grace is at most `lifetime`.
    pub grace: u64,
}

impl RotationPolicy {
    /// The default onion-key lifetime: 28 days.
    pub const DEFAULT_LIFETIME: u64 = 28 * 24 * 3600;
    /// The default grace for a replaced key: 7 days.
    pub const DEFAULT_GRACE: u64 = 7 * 24 * 3600;
    /// The smallest lifetime allowed outside a test network: 1 day.
    pub const MIN_LIFETIME: u64 = 24 * 3600;

    /// The policy for a configured lifetime: the grace is 7 days, or the lifetime if shorter.
    pub fn with_lifetime(lifetime: u64) -> Self {
        RotationPolicy { lifetime, grace: Self::DEFAULT_GRACE.min(lifetime) }
    }
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self::with_lifetime(Self::DEFAULT_LIFETIME)
    }
}

/// What the rotation schedule says to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationDecision {
    /// Replace the current key (it becomes the previous one).
    pub rotate: bool,
    /// Forget the previous key (its grace is over). Never set together with `rotate`, which
    /// replaces the previous key anyway.
    pub drop_previous: bool,
}

/// The rotation decision for a current key created at `created` and a previous key retired at
/// `previous_retired`, at time `now` (all Unix seconds). A time in the future (clock stepped
/// back) counts as age zero.
pub fn decide(policy: &RotationPolicy, created: u64, previous_retired: Option<u64>, now: u64) -> RotationDecision {
    let rotate = now.saturating_sub(created) >= policy.lifetime;
    let expired = previous_retired.is_some_and(|r| now.saturating_sub(r) >= policy.grace);
    RotationDecision { rotate, drop_previous: expired && !rotate }
}

/// When (Unix seconds) the schedule next has something to do.
pub fn next_event(policy: &RotationPolicy, created: u64, previous_retired: Option<u64>) -> u64 {
    let rotate_at = created.saturating_add(policy.lifetime);
    match previous_retired {
        Some(r) => rotate_at.min(r.saturating_add(policy.grace)),
        None => rotate_at,
    }
}

/// A replaced onion key during its grace period.
#[derive(Clone)]
pub struct PreviousOnionKey {
    pub secret: x25519_dalek::StaticSecret,
    /// When it stopped being current (Unix seconds).
    pub retired: u64,
}

/// A relay's live onion keys: the current one and, during a grace period, the previous one.
#[derive(Clone)]
pub struct OnionKeys {
    pub current: x25519_dalek::StaticSecret,
    /// When the current key was created (Unix seconds).
    pub created: u64,
    pub previous: Option<PreviousOnionKey>,
}

impl OnionKeys {
    /// Loads the onion keys from `dir`, creating a current key (at `now`) if there is none.
    pub fn load_or_create(dir: &Path, now: u64) -> Result<Self, KeyError> {
        ensure_dir(dir)?;
        let (current, created) = current_onion(dir, now)?;
        let previous = Self::read_previous(dir)?;
        Ok(OnionKeys { current, created, previous })
    }

    /// Reads the onion keys from `dir` without creating anything: `None` if there is no current key.
    pub fn load(dir: &Path) -> Result<Option<Self>, KeyError> {
        let Some((current, created)) = read_onion(&dir.join(ONION_FILE), true)? else { return Ok(None) };
        let previous = Self::read_previous(dir)?;
        Ok(Some(OnionKeys { current, created, previous }))
    }

    fn read_previous(dir: &Path) -> Result<Option<PreviousOnionKey>, KeyError> {
        Ok(read_onion(&dir.join(PREVIOUS_ONION_FILE), false)?.map(|(secret, retired)| PreviousOnionKey { secret, retired }))
    }

    /// The current key's public half (`B` in the descriptor).
    pub fn current_public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.current).to_bytes()
    }

    /// The previous key's public half, if one is kept.
    pub fn previous_public(&self) -> Option<[u8; 32]> {
        self.previous.as_ref().map(|p| x25519_dalek::PublicKey::from(&p.secret).to_bytes())
    }

    /// The keys a CREATE may use: current first, then the previous one.
    pub fn pairs(&self) -> Vec<OnionKeyPair<'_>> {
        let mut v = vec![OnionKeyPair::from_secret(&self.current)];
        if let Some(p) = &self.previous {
            v.push(OnionKeyPair::from_secret(&p.secret));
        }
        v
    }

    /// Applies the schedule at `now`: rotates and/or forgets the previous key, on disk in `dir`
    /// and in `self`. Returns what it did. On an error, `self` is unchanged (the files may hold
    /// the next state already, which the next load picks up).
    ///
    /// A rotation first writes the old key as the previous one, then the new current key: a
    /// crash in between leaves the old key current, which the next check rotates again.
    pub fn apply_schedule(&mut self, dir: &Path, policy: &RotationPolicy, now: u64) -> Result<RotationDecision, KeyError> {
        let d = decide(policy, self.created, self.previous.as_ref().map(|p| p.retired), now);
        if d.rotate {
            let fresh = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            write_atomic(dir, PREVIOUS_ONION_FILE, &encode_onion(&self.current, now))?;
            write_atomic(dir, ONION_FILE, &encode_onion(&fresh, now))?;
            let old = std::mem::replace(&mut self.current, fresh);
            self.created = now;
            self.previous = Some(PreviousOnionKey { secret: old, retired: now });
        } else if d.drop_previous {
            let path = dir.join(PREVIOUS_ONION_FILE);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(KeyError::Io { path, err }),
            }
            self.previous = None;
        }
        Ok(d)
    }

    /// When (Unix seconds) [`OnionKeys::apply_schedule`] next has something to do.
    pub fn next_event(&self, policy: &RotationPolicy) -> u64 {
        next_event(policy, self.created, self.previous.as_ref().map(|p| p.retired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("allium-keys-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_created_private_and_reused() {
        let dir = tmp("basic");
        let a = load_or_create(&dir).unwrap();
        for f in ["identity_ed25519.key", ONION_FILE, "link_x25519.key"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(fs::read(dir.join(ONION_FILE)).unwrap().len(), ONION_FILE_LEN);
        assert_eq!(mode(&dir), 0o700, "a new data directory is private");
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.relay_id(), b.relay_id());
        assert_eq!(a.onion_public(), b.onion_public());
        assert_eq!(a.link_public(), b.link_public());
        fs::write(dir.join("link_x25519.key"), b"short").unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyError::BadLength { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Tor's rule: a key file its group or others can read is refused, naming the file and its
    /// mode; a data directory open to others is made private.
    #[test]
    fn loose_key_permissions_are_refused_and_open_dirs_fixed() {
        let dir = tmp("perms");
        load_or_create(&dir).unwrap();
        for (name, loose) in [(IDENTITY_FILE, 0o666), (LINK_FILE, 0o640), (ONION_FILE, 0o604), (IDENTITY_FILE, 0o620)] {
            let path = dir.join(name);
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).unwrap();
            let e = load_or_create(&dir).err().unwrap_or_else(|| panic!("{name} at {loose:o} accepted"));
            assert!(matches!(e, KeyError::LoosePermissions { mode, .. } if mode == loose), "{e}");
            let text = e.to_string();
            assert!(text.contains("permissions") && text.contains(&format!("{loose:04o}")) && text.contains(&path.display().to_string()), "{text}");
            assert_eq!(mode(&path), loose, "a refused key is left as it is");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Owner-only modes are fine (0400 too).
        fs::set_permissions(dir.join(IDENTITY_FILE), fs::Permissions::from_mode(0o400)).unwrap();
        load_or_create(&dir).unwrap();
        // The previous onion key is checked too.
        write_atomic(&dir, PREVIOUS_ONION_FILE, &encode_onion(&x25519_dalek::StaticSecret::from([3; 32]), 5)).unwrap();
        fs::set_permissions(dir.join(PREVIOUS_ONION_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(OnionKeys::load(&dir), Err(KeyError::LoosePermissions { .. })));
        fs::remove_file(dir.join(PREVIOUS_ONION_FILE)).unwrap();
        // A world-writable data directory is set to 0700 and reported; a private one is left.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(secure_dir(&dir).unwrap(), Some(0o777));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(secure_dir(&dir).unwrap(), None);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        load_or_create(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "ensure_dir fixes an existing directory");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_onion_files_are_errors_and_kept() {
        let dir = tmp("corrupt");
        load_or_create(&dir).unwrap();
        fs::write(dir.join(ONION_FILE), b"short").unwrap();
        assert!(matches!(load_or_create(&dir), Err(KeyError::BadOnionFile { .. })));
        assert!(matches!(OnionKeys::load_or_create(&dir, 0), Err(KeyError::BadOnionFile { .. })));
        assert_eq!(fs::read(dir.join(ONION_FILE)).unwrap(), b"short", "never silently replaced");
        let mut v2 = vec![2u8];
        v2.extend_from_slice(&[0; 40]);
        fs::write(dir.join(ONION_FILE), &v2).unwrap();
        assert!(matches!(OnionKeys::load(&dir), Err(KeyError::BadOnionFile { .. })));
        // The previous key has no legacy format.
        let ok = OnionKeys { current: x25519_dalek::StaticSecret::from([1; 32]), created: 5, previous: None };
        write_atomic(&dir, ONION_FILE, &encode_onion(&ok.current, 5)).unwrap();
        fs::write(dir.join(PREVIOUS_ONION_FILE), [7u8; 32]).unwrap();
        fs::set_permissions(dir.join(PREVIOUS_ONION_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(OnionKeys::load(&dir), Err(KeyError::BadOnionFile { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn legacy_32_byte_onion_key_reads_as_created_at_mtime() {
        let dir = tmp("legacy");
        ensure_dir(&dir).unwrap();
        fs::write(dir.join(ONION_FILE), [9u8; 32]).unwrap();
        fs::set_permissions(dir.join(ONION_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        let mtime = fs::metadata(dir.join(ONION_FILE)).unwrap().modified().unwrap();
        let mtime = mtime.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let k = OnionKeys::load_or_create(&dir, mtime + 1000).unwrap();
        assert_eq!(k.current.to_bytes(), [9u8; 32]);
        assert_eq!(k.created, mtime);
        assert!(k.previous.is_none());
        assert_eq!(load_or_create(&dir).unwrap().onion.to_bytes(), [9u8; 32]);
        // Rotating it writes both files in the new format.
        let mut k = k;
        let policy = RotationPolicy::with_lifetime(100);
        assert!(k.apply_schedule(&dir, &policy, mtime + 1000).unwrap().rotate);
        assert_eq!(fs::read(dir.join(ONION_FILE)).unwrap().len(), ONION_FILE_LEN);
        assert_eq!(fs::read(dir.join(PREVIOUS_ONION_FILE)).unwrap().len(), ONION_FILE_LEN);
        assert_eq!(k.previous.unwrap().secret.to_bytes(), [9u8; 32]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decision_follows_lifetime_and_grace() {
        let p = RotationPolicy { lifetime: 100, grace: 30 };
        let none = RotationDecision::default();
        assert_eq!(decide(&p, 1000, None, 1000), none);
        assert_eq!(decide(&p, 1000, None, 1099), none);
        assert_eq!(decide(&p, 1000, None, 1100), RotationDecision { rotate: true, drop_previous: false });
        // Previous key: kept during the grace, dropped after.
        assert_eq!(decide(&p, 1000, Some(1000), 1029), none);
        assert_eq!(decide(&p, 1000, Some(1000), 1030), RotationDecision { rotate: false, drop_previous: true });
        // A rotation replaces the previous key; it does not also drop it.
        assert_eq!(decide(&p, 1000, Some(900), 1200), RotationDecision { rotate: true, drop_previous: false });
        // A clock stepped back counts as age zero: no rotation, no drop.
        assert_eq!(decide(&p, 5000, Some(5000), 10), none);
        assert_eq!(next_event(&p, 1000, None), 1100);
        assert_eq!(next_event(&p, 1000, Some(1000)), 1030);
        assert_eq!(next_event(&p, 1000, Some(u64::MAX)), 1100);
    }

    #[test]
    fn default_policy_and_grace_bounded_by_lifetime() {
        let d = RotationPolicy::default();
        assert_eq!(d.lifetime, 28 * 86400);
        assert_eq!(d.grace, 7 * 86400);
        assert_eq!(RotationPolicy::with_lifetime(10), RotationPolicy { lifetime: 10, grace: 10 });
    }

    #[test]
    fn rotation_persists_keeps_previous_then_deletes_it() {
        let dir = tmp("rotate");
        let policy = RotationPolicy { lifetime: 100, grace: 30 };
        let mut k = OnionKeys::load_or_create(&dir, 1000).unwrap();
        let first = k.current_public();
        assert_eq!(k.created, 1000);
        assert_eq!(k.pairs().len(), 1);
        // Not due yet: nothing changes on disk.
        assert_eq!(k.apply_schedule(&dir, &policy, 1050).unwrap(), RotationDecision::default());
        assert!(!dir.join(PREVIOUS_ONION_FILE).exists());

        // Due: a new current key, the old one kept as previous, both 0600.
        assert!(k.apply_schedule(&dir, &policy, 1100).unwrap().rotate);
        let second = k.current_public();
        assert_ne!(first, second);
        assert_eq!(k.previous_public(), Some(first));
        assert_eq!(k.pairs().iter().map(|p| p.public).collect::<Vec<_>>(), vec![second, first]);
        assert_eq!(mode(&dir.join(ONION_FILE)), 0o600);
        assert_eq!(mode(&dir.join(PREVIOUS_ONION_FILE)), 0o600);
        assert!(!dir.join(format!(".{ONION_FILE}.tmp")).exists());

        // A restart keeps both, with their times.
        let r = OnionKeys::load_or_create(&dir, 1110).unwrap();
        assert_eq!(r.current_public(), second);
        assert_eq!(r.created, 1100);
        assert_eq!(r.previous_public(), Some(first));
        assert_eq!(r.previous.as_ref().unwrap().retired, 1100);
        assert_eq!(load_or_create(&dir).unwrap().onion_public(), second);
        assert_eq!(k.next_event(&policy), 1130);

        // Still in the grace: kept.
        assert_eq!(k.apply_schedule(&dir, &policy, 1129).unwrap(), RotationDecision::default());
        assert!(dir.join(PREVIOUS_ONION_FILE).exists());
        // Grace over: deleted, on disk too.
        assert!(k.apply_schedule(&dir, &policy, 1130).unwrap().drop_previous);
        assert!(k.previous.is_none());
        assert!(!dir.join(PREVIOUS_ONION_FILE).exists());
        let r = OnionKeys::load(&dir).unwrap().unwrap();
        assert_eq!(r.current_public(), second);
        assert!(r.previous.is_none());
        assert_eq!(k.next_event(&policy), 1200);
        fs::remove_dir_all(&dir).unwrap();
    }
}
