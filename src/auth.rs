//! Bearer/Basic token auth (contract §4). The expected token lives in `state/internal-token`
//! (or `ASSISTANTD_TOKEN`); `token rotate` in another process replaces the file, and the running
//! server notices by the file's identity (inode, mtime, size) on the next request, so a rotated
//! token works at once and the old one stops working.

use base64::Engine;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Length of a token: 32 random bytes as lowercase hex.
pub const TOKEN_LEN: usize = 64;
/// Longest `Authorization` header we bother decoding.
pub const MAX_AUTH_HEADER: usize = 4096;

/// A fresh random token.
pub fn generate_token() -> String {
    crate::util::hex(&crate::util::random_bytes::<32>())
}

/// True for exactly 64 lowercase hex characters.
pub fn is_valid_token(t: &str) -> bool {
    t.len() == TOKEN_LEN
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a token file: trimmed content, which must be a valid token.
pub fn read_token_file(path: &Path) -> io::Result<String> {
    let raw = fs::read_to_string(path)?;
    let t = raw.trim();
    if is_valid_token(t) {
        Ok(t.to_string())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not hold a 64-char lowercase hex token",
                path.display()
            ),
        ))
    }
}

/// Constant-time equality. Lengths are compared without an early return too: every byte of the
/// longer input is visited, so timing reveals nothing about the token's content.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The credential a request presented, extracted from `Authorization`.
pub fn presented_secret(header: &str) -> Option<String> {
    if header.len() > MAX_AUTH_HEADER {
        return None;
    }
    let (scheme, rest) = header.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_user, password) = text.split_once(':')?;
        (!password.is_empty()).then(|| password.to_string())
    } else {
        None
    }
}

/// Where the expected token comes from.
#[derive(Debug)]
enum Source {
    Fixed,
    File {
        path: PathBuf,
        stamp: RwLock<(Stamp, String)>,
    },
}

type Stamp = (u64, i64, i64, u64);

fn stamp(path: &Path) -> io::Result<Stamp> {
    let m = fs::metadata(path)?;
    Ok((m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// Called with the new token after the token file changed and was re-read.
pub type OnChange = Box<dyn Fn(&str) + Send + Sync>;

/// The expected token, re-read when the token file changes.
pub struct TokenStore {
    fixed: Option<String>,
    source: Source,
    on_change: Option<OnChange>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("fixed", &self.fixed.as_ref().map(|_| "[redacted]"))
            .field("on_change", &self.on_change.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// A token given by the environment; the file is ignored.
    pub fn fixed(token: String) -> Self {
        TokenStore {
            fixed: Some(token),
            source: Source::Fixed,
            on_change: None,
        }
    }

    /// The token in `path`, followed across rotations.
    pub fn from_file(path: PathBuf) -> io::Result<Self> {
        let st = stamp(&path)?;
        let token = read_token_file(&path)?;
        Ok(TokenStore {
            fixed: None,
            source: Source::File {
                path,
                stamp: RwLock::new((st, token)),
            },
            on_change: None,
        })
    }

    /// Runs `f` with the new token whenever a rotation is noticed (the server keeps its own
    /// workspace copy in step with it, whatever paths the rotating command was given).
    pub fn on_change(mut self, f: OnChange) -> Self {
        self.on_change = Some(f);
        self
    }

    /// The current expected token.
    pub fn current(&self) -> String {
        match (&self.fixed, &self.source) {
            (Some(t), _) => t.clone(),
            (None, Source::File { path, stamp: cell }) => {
                let now = stamp(path).ok();
                {
                    let g = cell.read().unwrap_or_else(|p| p.into_inner());
                    if now.is_none() || now == Some(g.0) {
                        return g.1.clone();
                    }
                }
                // The file changed: re-read it. A half-rotated or broken file keeps the old
                // token (rotation writes atomically, so this is only a hand-edit mistake).
                let (token, changed) = {
                    let mut g = cell.write().unwrap_or_else(|p| p.into_inner());
                    let mut changed = false;
                    if let (Some(st), Ok(t)) = (now, read_token_file(path)) {
                        changed = t != g.1;
                        *g = (st, t);
                    }
                    (g.1.clone(), changed)
                };
                // Outside the lock (the hook writes a file): only the thread that swapped the
                // token in saw it change, so the hook still runs once per new token.
                if let (true, Some(f)) = (changed, &self.on_change) {
                    f(&token);
                }
                token
            }
            (None, Source::Fixed) => String::new(),
        }
    }

    /// Checks an `Authorization` header value. Returns the token on success (the rate-limit key).
    pub fn check(&self, header: Option<&str>) -> Option<String> {
        let presented = presented_secret(header?)?;
        match (&self.fixed, &self.source) {
            (Some(t), _) => ct_eq(presented.as_bytes(), t.as_bytes()).then(|| t.clone()),
            (None, Source::File { path, stamp: cell }) => {
                // The common case compares under the read lock, without copying the token.
                let now = stamp(path).ok();
                {
                    let g = cell.read().unwrap_or_else(|p| p.into_inner());
                    if now.is_none() || now == Some(g.0) {
                        let ok = !g.1.is_empty() && ct_eq(presented.as_bytes(), g.1.as_bytes());
                        return ok.then(|| g.1.clone());
                    }
                }
                let expected = self.current();
                (!expected.is_empty() && ct_eq(presented.as_bytes(), expected.as_bytes()))
                    .then_some(expected)
            }
            (None, Source::Fixed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn schemes() {
        let s = TokenStore::fixed(T.into());
        assert!(s.check(Some(&format!("Bearer {T}"))).is_some());
        assert!(s.check(Some(&format!("bearer {T}"))).is_some());
        assert!(s.check(Some(&format!("BEARER {T}"))).is_some());
        assert!(s.check(Some(&basic(&format!("opencode:{T}")))).is_some());
        assert!(s.check(Some(&basic(&format!("anyone:{T}")))).is_some());
        assert!(s.check(Some(&basic(&format!(":{T}")))).is_some());
        assert!(s.check(None).is_none());
        assert!(s.check(Some("")).is_none());
        assert!(s.check(Some("Bearer ")).is_none());
        assert!(s.check(Some(&format!("Bearer {T}x"))).is_none());
        assert!(s.check(Some("Bearer short")).is_none());
        assert!(s.check(Some(&format!("Digest {T}"))).is_none());
        assert!(s.check(Some(&format!("Token {T}"))).is_none());
        assert!(s.check(Some(&basic("opencode:wrong"))).is_none());
        assert!(s.check(Some(&basic("opencode:"))).is_none());
        assert!(s.check(Some(&basic(T))).is_none());
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn token_format() {
        assert!(is_valid_token(T));
        assert!(is_valid_token(&generate_token()));
        assert!(!is_valid_token(&T.to_uppercase()));
        assert!(!is_valid_token(&T[1..]));
    }

    /// A fresh `<tmp>/assistantd-auth-<tag>-<pid>/internal-token` holding `T`.
    fn token_file(tag: &str) -> (PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("assistantd-auth-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("internal-token");
        fs::write(&p, T).unwrap();
        (dir, p)
    }

    #[test]
    fn file_rotation_is_seen() {
        let (_dir, p) = token_file("rotation");
        let s = TokenStore::from_file(p.clone()).unwrap();
        assert_eq!(s.current(), T);
        let t2 = generate_token();
        crate::store::write_atomic(&p, t2.as_bytes(), 0o600).unwrap();
        assert_eq!(s.current(), t2);
        assert!(s.check(Some(&format!("Bearer {T}"))).is_none());
    }

    #[test]
    fn a_noticed_rotation_runs_the_hook_once_per_new_token() {
        let (dir, p) = token_file("hook");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        let s = TokenStore::from_file(p.clone())
            .unwrap()
            .on_change(Box::new(move |t| log.lock().unwrap().push(t.to_string())));
        assert!(s.check(Some(&format!("Bearer {T}"))).is_some());
        assert!(seen.lock().unwrap().is_empty(), "no change, no call");
        let t2 = generate_token();
        crate::store::write_atomic(&p, t2.as_bytes(), 0o600).unwrap();
        assert!(s.check(Some(&format!("Bearer {t2}"))).is_some());
        assert!(s.check(Some(&format!("Bearer {t2}"))).is_some());
        // Same bytes rewritten (new inode): re-read, but not a new token.
        crate::store::write_atomic(&p, t2.as_bytes(), 0o600).unwrap();
        assert!(s.check(Some(&format!("Bearer {t2}"))).is_some());
        assert_eq!(*seen.lock().unwrap(), vec![t2]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
