//! Web Push: everything between "notify this user" and the push services (RFC 8030 delivery,
//! RFC 8291 message encryption, RFC 8292 VAPID), plus the devices API's domain logic.
//!
//! * [`crypto`]: `aes128gcm` single-record encryption on `p256`/`aes-gcm`/`hkdf`/`sha2`, and the
//!   `ece` cryptographer built on them.
//! * [`vapid`]: the server's VAPID key pair (env or `state/vapid.json`), ES256 JWTs cached per
//!   origin.
//! * [`subscriptions`]: `state/subscriptions.json` and the validation of what browsers send.
//! * [`notify`]: the send body, the payload, the sans-IO request builder and response
//!   classifier, the parallel fan-out with ureq, and [`notify::deliver`].
//!
//! No HTTP server code lives here; the routes call these functions and turn the errors below
//! into responses through `From<…> for ApiError` in `error.rs`.

pub mod crypto;
pub mod notify;
pub mod subscriptions;
pub mod vapid;

pub use notify::{
    build_push_request, classify_push_response, deliver, send_all, send_test, validate_send_body,
    Delivery, DeliveryReport, PushClient, PushOutcome, PushRequest, SendOptions, TestReport,
    Urgency, ValidatedNotification,
};
pub use subscriptions::Subscription;
pub use vapid::{VapidError, VapidKeys};

use crate::error::Detail;
use crate::store::StoreError;
use std::fmt;

/// What `POST /api/internal/notifications/send` and the encryption can fail with.
#[derive(Debug)]
pub enum PushError {
    /// The send body failed validation: 400 `Invalid request body` with details.
    Validation(Vec<Detail>),
    /// The payload does not fit one `aes128gcm` record (`size` > `max` bytes of plaintext).
    /// Detected before any network call; 400.
    PayloadTooLarge { size: usize, max: usize },
    /// A subscription key cannot be used (not a P-256 point, wrong length). Only reaches a
    /// client if a caller encrypts directly; during delivery it becomes a failed outcome.
    InvalidKey(String),
    /// A cryptographic primitive failed (should not happen with valid lengths).
    Crypto(&'static str),
    /// No VAPID keys configured: 503.
    NotConfigured,
    /// Reading or writing `subscriptions.json` failed.
    Store(StoreError),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Validation(d) => write!(f, "invalid request body ({} issues)", d.len()),
            PushError::PayloadTooLarge { size, max } => write!(
                f,
                "notification payload is {size} bytes; at most {max} bytes fit one Web Push record"
            ),
            PushError::InvalidKey(m) => write!(f, "invalid subscription key: {m}"),
            PushError::Crypto(m) => write!(f, "encryption failed: {m}"),
            PushError::NotConfigured => write!(f, "push notifications are not configured"),
            PushError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PushError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for PushError {
    fn from(e: StoreError) -> Self {
        PushError::Store(e)
    }
}

/// What the devices API (`/api/notifications/*`) can fail with.
#[derive(Debug)]
pub enum DeviceError {
    /// `POST /subscribe` body invalid: 400 `Invalid subscription data` with details.
    InvalidSubscription(Vec<Detail>),
    /// `DELETE /subscribe` body invalid: 400 `Valid endpoint URL is required` with details.
    InvalidEndpoint(Vec<Detail>),
    /// The user already has [`subscriptions::MAX_SUBSCRIPTIONS_PER_USER`] subscriptions and
    /// this endpoint is new to them: 400.
    TooManySubscriptions { limit: usize },
    /// `DELETE /subscriptions/:id` with an id that is not plain decimal digits: 400.
    InvalidId,
    /// `POST /test` for a user without subscriptions: 404.
    NoSubscriptions,
    /// No VAPID keys: 503 `Push notifications are not configured`.
    NotConfigured,
    /// Reading or writing `subscriptions.json` failed.
    Store(StoreError),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::InvalidSubscription(d) => {
                write!(f, "invalid subscription data ({} issues)", d.len())
            }
            DeviceError::InvalidEndpoint(d) => write!(f, "invalid endpoint ({} issues)", d.len()),
            DeviceError::TooManySubscriptions { limit } => write!(
                f,
                "too many push subscriptions for this user (limit {limit}); remove one first"
            ),
            DeviceError::InvalidId => write!(f, "invalid subscription id"),
            DeviceError::NoSubscriptions => write!(f, "no push subscriptions registered"),
            DeviceError::NotConfigured => write!(f, "push notifications are not configured"),
            DeviceError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for DeviceError {
    fn from(e: StoreError) -> Self {
        DeviceError::Store(e)
    }
}

/// Decodes a key sent by a browser or written by a person: base64url or standard base64,
/// padded or not (RFC 4648 §4/§5). Whitespace, misplaced `=` and non-canonical trailing bits
/// are refused. Returns `None` on any error.
pub(crate) fn decode_b64_lenient(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let trimmed = s
        .strip_suffix("==")
        .or_else(|| s.strip_suffix('='))
        .unwrap_or(s);
    if trimmed.contains('=') || (!s.len().is_multiple_of(4) && trimmed.len() != s.len()) {
        return None;
    }
    let normalised: String = trimmed
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalised)
        .ok()
}

/// Unpadded base64url, the canonical form we store and send (RFC 8292 §3.2 for `k`).
pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_base64_accepts_both_alphabets_padded_or_not() {
        let bytes: Vec<u8> = vec![0xfb, 0xff, 0xbf, 0x01];
        for s in ["-_-_AQ", "-_-_AQ==", "+/+/AQ", "+/+/AQ=="] {
            assert_eq!(decode_b64_lenient(s), Some(bytes.clone()), "{s}");
        }
        for s in [
            "-_-_AQ=",
            "-_-_A=Q",
            " -_-_AQ",
            "-_-_AR",
            "-_-_A",
            "-_-_AQ===",
        ] {
            assert_eq!(decode_b64_lenient(s), None, "{s}");
        }
        assert_eq!(b64url(&bytes), "-_-_AQ");
    }

    #[test]
    fn errors_map_to_the_contracts_responses() {
        use crate::error::ApiError;
        use serde_json::json;
        let d = || vec![Detail::new(crate::path!["title"], "too_big", "x")];
        let cases: Vec<(ApiError, u16, serde_json::Value)> = vec![
            (
                PushError::Validation(d()).into(),
                400,
                json!({"error": "Invalid request body", "details": [{"path": ["title"], "code": "too_big", "message": "x"}]}),
            ),
            (
                PushError::NotConfigured.into(),
                503,
                json!({"error": "Push notifications are not configured (missing VAPID env)"}),
            ),
            (
                DeviceError::InvalidSubscription(d()).into(),
                400,
                json!({"error": "Invalid subscription data", "details": [{"path": ["title"], "code": "too_big", "message": "x"}]}),
            ),
            (
                DeviceError::InvalidEndpoint(vec![]).into(),
                400,
                json!({"error": "Valid endpoint URL is required", "details": []}),
            ),
            (
                DeviceError::InvalidId.into(),
                400,
                json!({"error": "Invalid subscription ID"}),
            ),
            (
                DeviceError::NoSubscriptions.into(),
                404,
                json!({"error": "No push subscriptions registered"}),
            ),
            (
                DeviceError::NotConfigured.into(),
                503,
                json!({"error": "Push notifications are not configured"}),
            ),
            (
                DeviceError::TooManySubscriptions { limit: 100 }.into(),
                400,
                json!({"error": "Too many push subscriptions for this user (limit 100); remove one first"}),
            ),
            (
                PushError::Store(StoreError::invalid("subscriptions.json", "bad")).into(),
                500,
                json!({"error": "State file subscriptions.json is invalid: bad"}),
            ),
        ];
        for (e, status, body) in cases {
            assert_eq!((e.status(), e.body()), (status, body));
        }
        let e: ApiError = PushError::PayloadTooLarge {
            size: 3994,
            max: 3993,
        }
        .into();
        assert_eq!(e.status(), 400);
        assert_eq!(e.body()["error"], "Invalid request body");
        assert_eq!(e.body()["details"][0]["code"], "too_big");
    }
}
