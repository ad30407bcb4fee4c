//! The server's VAPID identity (RFC 8292): one P-256 key pair and a contact `subject`.
//!
//! Where it comes from ([`load`]): `VAPID_PUBLIC_KEY` + `VAPID_PRIVATE_KEY` from the environment
//! win when both are set; otherwise `state/vapid.json` (`{"publicKey","privateKey","subject"}`,
//! mode 0600, written by `init` through [`VapidKeys::save`]). Neither → `Ok(None)`, and the
//! server answers 503 on push routes. `VAPID_SUBJECT`, when set, overrides the file's subject.
//! Everything is checked up front, so a bad configuration stops the server at start with a
//! message saying what is wrong and where ([`VapidError`]):
//!
//! * only one of the two env keys set → error (never a silent fall-back to the file);
//! * the public key must be the private key's (65-byte uncompressed point, base64url or
//!   standard base64, padded or not; the private key is the 32-byte scalar);
//! * the subject, trimmed, must be `mailto:` + one address (`name@domain.tld`, never a second
//!   `mailto:`) or an `https://` URL with a host. A missing subject is an error, not a silent
//!   default (push services use it to contact the operator; Apple rejects some placeholders).
//!   `init` writes [`INIT_DEFAULT_SUBJECT`] unless `VAPID_SUBJECT` is set, and
//!   [`VapidKeys::subject_is_placeholder`] lets the server warn about it at every start.
//!
//! Tokens: ES256 JWT `{"typ":"JWT","alg":"ES256"}.{"aud","exp","sub"}` with the raw 64-byte
//! `r || s` signature, `aud` = the endpoint's origin, `exp` = now + [`TOKEN_LIFETIME_SECS`].
//! Signed tokens are cached per origin and re-signed when less than [`TOKEN_RENEW_BEFORE_SECS`]
//! of their life is left; the cache holds at most [`MAX_CACHED_ORIGINS`] origins.

use super::crypto::SCALAR_LEN;
use super::{b64url, decode_b64_lenient};
use crate::store::{Store, StoreError};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// The state file holding the key pair.
pub const VAPID_FILE: &str = "vapid.json";
/// Mode of [`VAPID_FILE`]: it holds a private key.
pub const VAPID_FILE_MODE: u32 = 0o600;
/// Lifetime of a signed token. RFC 8292 §2 allows at most 24 h; 12 h is what web-push and
/// autopush use, and leaves room for clock skew.
pub const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
/// A cached token is replaced once less than this much of its lifetime is left.
pub const TOKEN_RENEW_BEFORE_SECS: u64 = 3600;
/// Most origins whose tokens are cached (there are a handful of push services; the bound only
/// matters if subscriptions name many distinct hosts).
pub const MAX_CACHED_ORIGINS: usize = 256;
/// The subject `init` writes when `VAPID_SUBJECT` is not set. It is a syntactically valid
/// contact, not a real one; operators should replace it (see the module docs).
pub const INIT_DEFAULT_SUBJECT: &str = "mailto:assistantd@example.com";
/// Length of the unpadded base64url public key (65 bytes).
pub const PUBLIC_KEY_B64_LEN: usize = 87;
/// Longest subject accepted.
pub const MAX_SUBJECT_LEN: usize = 512;

/// `state/vapid.json` as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VapidFile {
    public_key: Option<String>,
    private_key: Option<String>,
    subject: Option<String>,
}

/// Where a bad value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File,
    Generated,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Env => "VAPID_PUBLIC_KEY/VAPID_PRIVATE_KEY",
            KeySource::File => "state/vapid.json",
            KeySource::Generated => "generated keys",
        })
    }
}

/// Why the VAPID configuration cannot be used. The server refuses to start with this message.
#[derive(Debug)]
pub enum VapidError {
    /// One of `VAPID_PUBLIC_KEY` / `VAPID_PRIVATE_KEY` is set, the other is not.
    OnlyOneEnvKey {
        set: &'static str,
        unset: &'static str,
    },
    /// `vapid.json` exists but lacks a field.
    MissingField {
        field: &'static str,
    },
    /// No subject anywhere.
    MissingSubject {
        source: KeySource,
    },
    InvalidPublicKey {
        source: KeySource,
        reason: String,
    },
    InvalidPrivateKey {
        source: KeySource,
        reason: String,
    },
    /// Both keys are valid but do not belong together.
    KeyMismatch {
        source: KeySource,
    },
    InvalidSubject {
        reason: String,
    },
    /// `vapid.json` could not be read or parsed.
    File(StoreError),
}

impl fmt::Display for VapidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VapidError::OnlyOneEnvKey { set, unset } => write!(
                f,
                "{set} is set but {unset} is not: set both (or neither, to use state/vapid.json)"
            ),
            VapidError::MissingField { field } => write!(
                f,
                "state/vapid.json has no \"{field}\" (run `assistantd vapid generate` for a new pair)"
            ),
            VapidError::MissingSubject { source } => write!(
                f,
                "no VAPID subject for the keys from {source}: set VAPID_SUBJECT (or \"subject\" in \
                 state/vapid.json) to mailto:you@your.domain or an https:// URL"
            ),
            VapidError::InvalidPublicKey { source, reason } => {
                write!(f, "VAPID public key from {source} is invalid: {reason}")
            }
            VapidError::InvalidPrivateKey { source, reason } => {
                write!(f, "VAPID private key from {source} is invalid: {reason}")
            }
            VapidError::KeyMismatch { source } => write!(
                f,
                "VAPID public key from {source} does not belong to the private key"
            ),
            VapidError::InvalidSubject { reason } => write!(f, "VAPID subject is invalid: {reason}"),
            VapidError::File(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VapidError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VapidError::File(e) => Some(e),
            _ => None,
        }
    }
}

struct CachedToken {
    header: String,
    exp: u64,
}

/// The server's VAPID identity and its token cache. Share it (`Arc<VapidKeys>` or a field of
/// the app); all methods take `&self`.
pub struct VapidKeys {
    /// Unpadded base64url of the 65-byte uncompressed public key (87 chars): what
    /// `GET /vapid-public-key` returns and what goes into `k=`.
    pub public_b64: String,
    /// The validated, trimmed subject.
    pub subject: String,
    signing: SigningKey,
    cache: Mutex<HashMap<String, CachedToken>>,
}

impl fmt::Debug for VapidKeys {
    // Never print the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKeys")
            .field("public_b64", &self.public_b64)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Reads `VAPID_PUBLIC_KEY`, `VAPID_PRIVATE_KEY`, `VAPID_SUBJECT` from the process
/// environment and calls [`load`]. Empty values count as unset (as in the reference).
pub fn load_from_env(store: &Store) -> Result<Option<VapidKeys>, VapidError> {
    let var = |name| std::env::var(name).ok();
    load(
        var("VAPID_PUBLIC_KEY").as_deref(),
        var("VAPID_PRIVATE_KEY").as_deref(),
        var("VAPID_SUBJECT").as_deref(),
        store,
    )
}

/// The VAPID configuration: env keys (both set) win, else `state/vapid.json`, else `None`.
/// Empty or whitespace-only env values count as unset. See the module docs for the rules.
pub fn load(
    env_public: Option<&str>,
    env_private: Option<&str>,
    env_subject: Option<&str>,
    store: &Store,
) -> Result<Option<VapidKeys>, VapidError> {
    let (env_public, env_private, env_subject) = (
        nonempty(env_public),
        nonempty(env_private),
        nonempty(env_subject),
    );
    match (env_public, env_private) {
        (Some(public), Some(private)) => {
            let subject = env_subject.ok_or(VapidError::MissingSubject {
                source: KeySource::Env,
            })?;
            VapidKeys::from_parts(public, private, subject, KeySource::Env).map(Some)
        }
        (Some(_), None) => Err(VapidError::OnlyOneEnvKey {
            set: "VAPID_PUBLIC_KEY",
            unset: "VAPID_PRIVATE_KEY",
        }),
        (None, Some(_)) => Err(VapidError::OnlyOneEnvKey {
            set: "VAPID_PRIVATE_KEY",
            unset: "VAPID_PUBLIC_KEY",
        }),
        (None, None) => {
            if !store.path(VAPID_FILE).exists() {
                return Ok(None);
            }
            let file: VapidFile = store.load(VAPID_FILE).map_err(VapidError::File)?;
            let public = nonempty(file.public_key.as_deref())
                .ok_or(VapidError::MissingField { field: "publicKey" })?;
            let private =
                nonempty(file.private_key.as_deref()).ok_or(VapidError::MissingField {
                    field: "privateKey",
                })?;
            let subject = env_subject.or(nonempty(file.subject.as_deref())).ok_or(
                VapidError::MissingSubject {
                    source: KeySource::File,
                },
            )?;
            VapidKeys::from_parts(public, private, subject, KeySource::File).map(Some)
        }
    }
}

/// `Some(trimmed)` unless absent, empty or whitespace only.
fn nonempty(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// Checks a subject and returns it trimmed (and with a lowercase `mailto:`), or says why not.
pub fn validate_subject(subject: &str) -> Result<String, VapidError> {
    let bad = |reason: String| Err(VapidError::InvalidSubject { reason });
    let s = subject.trim();
    if s.len() > MAX_SUBJECT_LEN {
        return bad(format!("longer than {MAX_SUBJECT_LEN} bytes"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad(format!("{s:?} contains whitespace or control characters"));
    }
    let lower = s.to_ascii_lowercase();
    if let Some(addr) = lower.strip_prefix("mailto:").map(|_| &s["mailto:".len()..]) {
        if addr.to_ascii_lowercase().contains("mailto:") {
            return bad(format!("{s:?} has more than one \"mailto:\""));
        }
        if !is_plain_address(addr) {
            return bad(format!(
                "{s:?} is not mailto: followed by one address like name@example.com"
            ));
        }
        return Ok(format!("mailto:{addr}"));
    }
    if lower.starts_with("https://") {
        return match url::Url::parse(s) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()) => {
                Ok(s.to_string())
            }
            _ => bad(format!("{s:?} is not a valid https:// URL")),
        };
    }
    bad(format!(
        "{s:?} must be mailto:<address> or an https:// URL (push services use it to reach you)"
    ))
}

/// `local@domain.tld`: one `@`, a non-empty local part without separators, and a domain of
/// dotted labels (letters, digits, hyphens; at least two labels, so never bare `localhost`,
/// which Apple's push service rejects).
fn is_plain_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && !local
            .chars()
            .any(|c| matches!(c, '@' | '<' | '>' | ',' | ';' | ':' | '?' | '&' | '/' | '"'));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

impl VapidKeys {
    /// Builds and checks a key pair from encoded parts (see the module docs).
    pub fn from_parts(
        public: &str,
        private: &str,
        subject: &str,
        source: KeySource,
    ) -> Result<VapidKeys, VapidError> {
        let private_bytes =
            decode_b64_lenient(private).ok_or_else(|| VapidError::InvalidPrivateKey {
                source,
                reason: "not base64url or base64".into(),
            })?;
        if private_bytes.len() != SCALAR_LEN {
            return Err(VapidError::InvalidPrivateKey {
                source,
                reason: format!(
                    "decodes to {} bytes, expected {SCALAR_LEN}",
                    private_bytes.len()
                ),
            });
        }
        let signing =
            SigningKey::from_slice(&private_bytes).map_err(|_| VapidError::InvalidPrivateKey {
                source,
                reason: "not a valid P-256 scalar".into(),
            })?;
        let public_bytes =
            decode_b64_lenient(public).ok_or_else(|| VapidError::InvalidPublicKey {
                source,
                reason: "not base64url or base64".into(),
            })?;
        super::crypto::import_point(&public_bytes).map_err(|e| VapidError::InvalidPublicKey {
            source,
            reason: e.to_string(),
        })?;
        let keys = Self::with_signing_key(signing, validate_subject(subject)?);
        if super::decode_b64_lenient(&keys.public_b64).as_deref() != Some(&public_bytes[..]) {
            return Err(VapidError::KeyMismatch { source });
        }
        Ok(keys)
    }

    fn with_signing_key(signing: SigningKey, subject: String) -> VapidKeys {
        let point = signing.verifying_key().to_encoded_point(false);
        VapidKeys {
            public_b64: b64url(point.as_bytes()),
            subject,
            signing,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh key pair with `subject` (validated). For `init` and `assistantd vapid generate`.
    pub fn generate(subject: &str) -> Result<VapidKeys, VapidError> {
        let secret = super::crypto::random_secret_key();
        Ok(Self::with_signing_key(
            SigningKey::from(&secret),
            validate_subject(subject)?,
        ))
    }

    /// Unpadded base64url of the 32-byte private scalar (web-push's format).
    pub fn private_b64(&self) -> String {
        b64url(&self.signing.to_bytes())
    }

    /// True when the subject is the placeholder `init` writes; the server should warn.
    pub fn subject_is_placeholder(&self) -> bool {
        self.subject == INIT_DEFAULT_SUBJECT
    }

    /// `{"publicKey","privateKey","subject"}` as stored in `state/vapid.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "publicKey": self.public_b64,
            "privateKey": self.private_b64(),
            "subject": self.subject,
        })
    }

    /// `VAPID_PUBLIC_KEY=…` and `VAPID_PRIVATE_KEY=…` lines, for `assistantd vapid generate`.
    pub fn env_lines(&self) -> String {
        format!(
            "VAPID_PUBLIC_KEY={}\nVAPID_PRIVATE_KEY={}\n",
            self.public_b64,
            self.private_b64()
        )
    }

    /// Writes `state/vapid.json` atomically with mode 0600 (also tightening an existing file).
    pub fn save(&self, store: &Store) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = store.path(VAPID_FILE);
        let mut bytes =
            serde_json::to_vec_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        crate::store::write_atomic(&path, &bytes, VAPID_FILE_MODE)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(VAPID_FILE_MODE))
    }

    /// A freshly signed JWT for `aud` (an origin) expiring at `exp` (Unix seconds). No cache.
    pub fn sign_jwt(&self, aud: &str, exp: u64) -> String {
        let header = b64url(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": aud, "exp": exp, "sub": self.subject });
        let claims = b64url(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{claims}");
        // ES256 = ECDSA P-256 over SHA-256 (RFC 7518 §3.4): the raw 64-byte r || s, never DER.
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64url(&signature.to_bytes()))
    }

    /// The `Authorization` header value for a push to `origin` at `now_secs`:
    /// `vapid t=<jwt>, k=<public key>`, from the cache while the token has more than
    /// [`TOKEN_RENEW_BEFORE_SECS`] left.
    pub fn authorization_at(&self, origin: &str, now_secs: u64) -> String {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // a valid cache, so recover it instead of failing every later push.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(origin) {
            if t.exp > now_secs + TOKEN_RENEW_BEFORE_SECS {
                return t.header.clone();
            }
        }
        let exp = now_secs + TOKEN_LIFETIME_SECS;
        let header = format!(
            "vapid t={}, k={}",
            self.sign_jwt(origin, exp),
            self.public_b64
        );
        if cache.len() >= MAX_CACHED_ORIGINS && !cache.contains_key(origin) {
            cache.retain(|_, t| t.exp > now_secs + TOKEN_RENEW_BEFORE_SECS);
            if cache.len() >= MAX_CACHED_ORIGINS {
                cache.clear();
            }
        }
        cache.insert(
            origin.to_string(),
            CachedToken {
                header: header.clone(),
                exp,
            },
        );
        header
    }

    /// [`Self::authorization_at`] with the current time.
    pub fn authorization(&self, origin: &str) -> String {
        self.authorization_at(origin, (crate::util::now_ms() / 1000).max(0) as u64)
    }

    /// Number of cached tokens (for tests and diagnostics).
    pub fn cached_origins(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The JWT audience for an endpoint: its origin, `scheme://host` plus `:port` only when the
/// port is not the scheme's default; no path, no trailing slash; IDN hosts in punycode. `None`
/// for URLs without a tuple origin (not http/https).
pub fn audience(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    /// A fixed key pair (made once with Python `cryptography`, an independent implementation).
    const PUBLIC: &str =
        "BPzjIh5VPy8H3aowinwVEcWcZr4oO03l8ujRZsKvJbYg58nng64g2f7SBr1VnRyTSVIS7B3XN_LQ7zGGq4-_tPc";
    const PRIVATE: &str = "nuK54IhBwp4Q--1UG0Ap9piQ-94yG1RK0rGYLcjh2OU";

    const KNOWN_GOOD_JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.\
        eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5jb20iLCJleHAiOjE3MDAwMDAwMDAsInN1YiI6Im1haWx0bzpvcHNAZXhhbXBsZS5vcmcifQ.\
        0df_gxtose0pXM0nnfiPJPu9zo5QgARORKuU4rX3ablDlKG4OhH64Alug9_lmc_LIWyK8TSKUPrJZvUvMbvfIQ";

    fn temp_store(name: &str) -> Store {
        let d =
            std::env::temp_dir().join(format!("assistantd-vapid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Store::new(d)
    }

    fn fixture() -> VapidKeys {
        VapidKeys::from_parts(PUBLIC, PRIVATE, "mailto:ops@example.org", KeySource::Env).unwrap()
    }

    fn b64d(s: &str) -> Vec<u8> {
        decode_b64_lenient(s).unwrap()
    }

    #[test]
    fn fixture_pair_matches() {
        let k = fixture();
        assert_eq!(k.public_b64, PUBLIC);
        assert_eq!(k.public_b64.len(), PUBLIC_KEY_B64_LEN);
        assert_eq!(k.private_b64(), PRIVATE);
    }

    #[test]
    fn generated_keys_round_trip_through_the_file() {
        let store = temp_store("roundtrip");
        let k = VapidKeys::generate("mailto:me@example.net").unwrap();
        k.save(&store).unwrap();
        let mode = std::fs::metadata(store.path(VAPID_FILE))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let back = load(None, None, None, &store).unwrap().unwrap();
        assert_eq!(back.public_b64, k.public_b64);
        assert_eq!(back.subject, "mailto:me@example.net");
        assert!(k.env_lines().starts_with("VAPID_PUBLIC_KEY=B"));
    }

    #[test]
    fn env_wins_and_file_absent_is_none() {
        let store = temp_store("env");
        assert!(load(None, None, Some("mailto:a@b.cd"), &store)
            .unwrap()
            .is_none());
        assert!(load(Some(""), Some("  "), None, &store).unwrap().is_none());
        VapidKeys::generate("mailto:file@example.com")
            .unwrap()
            .save(&store)
            .unwrap();
        let k = load(
            Some(PUBLIC),
            Some(PRIVATE),
            Some(" https://example.com/contact "),
            &store,
        )
        .unwrap()
        .unwrap();
        assert_eq!(k.public_b64, PUBLIC);
        assert_eq!(k.subject, "https://example.com/contact");
        // The env subject also overrides the file's.
        let k = load(None, None, Some("mailto:env@example.com"), &store)
            .unwrap()
            .unwrap();
        assert_eq!(k.subject, "mailto:env@example.com");
    }

    #[test]
    fn bad_configurations_are_refused_with_reasons() {
        let store = temp_store("bad");
        let err = |r: Result<Option<VapidKeys>, VapidError>| r.unwrap_err().to_string();
        assert!(err(load(Some(PUBLIC), None, None, &store)).contains("VAPID_PRIVATE_KEY is not"));
        assert!(err(load(Some(PUBLIC), Some(PRIVATE), None, &store)).contains("VAPID_SUBJECT"));
        let other = VapidKeys::generate("mailto:x@example.com").unwrap();
        assert!(err(load(
            Some(&other.public_b64),
            Some(PRIVATE),
            Some("mailto:a@example.com"),
            &store
        ))
        .contains("does not belong"));
        assert!(err(load(
            Some(PUBLIC),
            Some("AAAA"),
            Some("mailto:a@example.com"),
            &store
        ))
        .contains("expected 32"));
        let mut off_curve = b64d(PUBLIC);
        off_curve[64] ^= 1;
        assert!(err(load(
            Some(&b64url(&off_curve)),
            Some(PRIVATE),
            Some("mailto:a@example.com"),
            &store
        ))
        .contains("public key"));
        std::fs::write(store.path(VAPID_FILE), b"{\"publicKey\": \"x\"}").unwrap();
        assert!(err(load(None, None, None, &store)).contains("privateKey"));
        std::fs::write(store.path(VAPID_FILE), b"{").unwrap();
        assert!(err(load(None, None, None, &store)).contains("vapid.json"));
    }

    #[test]
    fn keys_in_standard_base64_with_padding_are_accepted() {
        use base64::Engine;
        let std = base64::engine::general_purpose::STANDARD;
        let k = VapidKeys::from_parts(
            &std.encode(b64d(PUBLIC)),
            &std.encode(b64d(PRIVATE)),
            "mailto:a@example.com",
            KeySource::Env,
        )
        .unwrap();
        assert_eq!(k.public_b64, PUBLIC);
    }

    #[test]
    fn subjects() {
        for (input, want) in [
            ("mailto:ops@example.com", "mailto:ops@example.com"),
            ("  MAILTO:ops@example.com \n", "mailto:ops@example.com"),
            ("https://example.com", "https://example.com"),
            ("https://example.com/contact", "https://example.com/contact"),
        ] {
            assert_eq!(validate_subject(input).unwrap(), want, "{input}");
        }
        for input in [
            "",
            "ops@example.com",
            "mailto:",
            "mailto:mailto:ops@example.com",
            "mailto:ops@localhost",
            "mailto:ops@example.com, other@example.com",
            "mailto:<ops@example.com>",
            "mailto:opsexample.com",
            "http://example.com",
            "https://",
            "https:// example.com",
            "example.com",
        ] {
            assert!(validate_subject(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn audience_is_the_origin() {
        for (endpoint, aud) in [
            (
                "https://fcm.googleapis.com/fcm/send/abc",
                "https://fcm.googleapis.com",
            ),
            (
                "https://push.example.com:443/x?y=1",
                "https://push.example.com",
            ),
            (
                "https://push.example.com:8443/x",
                "https://push.example.com:8443",
            ),
            ("http://127.0.0.1:8080/a/b", "http://127.0.0.1:8080"),
            ("http://example.com:80/", "http://example.com"),
            ("https://PUSH.Example.com/", "https://push.example.com"),
            ("https://[::1]:9000/x", "https://[::1]:9000"),
            ("https://bücher.example/x", "https://xn--bcher-kva.example"),
        ] {
            assert_eq!(audience(endpoint).as_deref(), Some(aud), "{endpoint}");
        }
        assert_eq!(audience("mailto:x@y.z"), None);
        assert_eq!(audience("not a url"), None);
    }

    #[test]
    fn jwt_is_es256_raw_and_verifies() {
        let k = fixture();
        let jwt = k.sign_jwt("https://push.example.com", 1_700_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(b64d(parts[0]), br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims: serde_json::Value = serde_json::from_slice(&b64d(parts[1])).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"aud": "https://push.example.com", "exp": 1_700_000_000u64, "sub": "mailto:ops@example.org"})
        );
        let sig = b64d(parts[2]);
        assert_eq!(sig.len(), 64);
        let vk = VerifyingKey::from_sec1_bytes(&b64d(PUBLIC)).unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        // RFC 6979 signatures are deterministic, so this is a known-good token: the same
        // bytes come out of Python `cryptography` (`ECDSA(SHA256(), deterministic_signing=True)`)
        // for the fixture key and these claims.
        assert_eq!(jwt, KNOWN_GOOD_JWT);
    }

    #[test]
    fn tokens_are_cached_per_origin_and_renewed_early() {
        let k = fixture();
        let now = 1_700_000_000;
        let a = k.authorization_at("https://a.example", now);
        assert!(a.starts_with("vapid t="));
        assert!(a.ends_with(&format!(", k={PUBLIC}")));
        assert_eq!(k.authorization_at("https://a.example", now + 3600), a);
        let b = k.authorization_at("https://b.example", now);
        assert_ne!(a, b);
        // With less than an hour left the token is re-signed with a later exp.
        let later = now + TOKEN_LIFETIME_SECS - TOKEN_RENEW_BEFORE_SECS;
        let a2 = k.authorization_at("https://a.example", later);
        assert_ne!(a2, a);
        let jwt = a2.trim_start_matches("vapid t=").split(',').next().unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64d(jwt.split('.').nth(1).unwrap())).unwrap();
        assert_eq!(claims["exp"], later + TOKEN_LIFETIME_SECS);
    }

    #[test]
    fn cache_is_bounded() {
        let k = fixture();
        for i in 0..MAX_CACHED_ORIGINS + 10 {
            k.authorization_at(&format!("https://h{i}.example"), 1_700_000_000);
        }
        assert!(k.cached_origins() <= MAX_CACHED_ORIGINS);
    }
}
