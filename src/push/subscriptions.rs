//! Push subscriptions: `state/subscriptions.json`
//! (`{"subscriptions":[{id,userId,endpoint,p256dh,auth,deviceName,createdAt,lastUsedAt}]}`)
//! and the validation of what a browser's `PushManager.subscribe()` hands us.
//!
//! Invariants this module keeps: endpoints are unique across users (upsert by endpoint, as the
//! reference's `UNIQUE` column); keys are stored canonical (unpadded base64url) and valid (a
//! 65-byte point on P-256, a 16-byte auth secret); at most [`MAX_SUBSCRIPTIONS_PER_USER`] per
//! user; ids are positive integers, a new one is one more than the largest stored (so an id is
//! reused only if the newest subscription was deleted before the next one arrives).
//! All writes go through [`Store::update`] (exclusive lock, atomic replace); nothing here does
//! network I/O.
//!
//! Endpoint rules ([`check_endpoint`]): an `https` URL of at most [`MAX_ENDPOINT_LEN`] bytes,
//! ASCII without whitespace, no userinfo, no fragment, whose host — judged from the URL alone,
//! parsed as WHATWG URL does (so `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.1` are all
//! 127.0.0.1) — is a public name or address. The URL must also parse identically as an HTTP
//! request target (the `http` crate ureq uses), so the host we judged is the host we connect
//! to. `allow_private` (`--allow-private-push-endpoints`) lifts the host rule and allows `http`.

use super::{b64url, decode_b64_lenient, DeviceError};
use crate::error::Detail;
use crate::path;
use crate::store::{Store, StoreError};
use crate::util::utf16_len;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The state file.
pub const SUBSCRIPTIONS_FILE: &str = "subscriptions.json";
/// Most subscriptions one user may have; the next new endpoint is refused.
pub const MAX_SUBSCRIPTIONS_PER_USER: usize = 100;
/// Longest endpoint URL, in bytes (endpoints are ASCII). Real ones are under 600.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// Longest `deviceName`, in UTF-16 code units (our choice; the reference has no limit).
pub const MAX_DEVICE_NAME_LEN: usize = 100;
/// Decoded length of `keys.p256dh` (uncompressed P-256 point).
pub const P256DH_LEN: usize = super::crypto::POINT_LEN;
/// Decoded length of `keys.auth`.
pub const AUTH_LEN: usize = super::crypto::AUTH_LEN;

/// One stored subscription, exactly as in the file and on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: u64,
    pub user_id: String,
    pub endpoint: String,
    /// Unpadded base64url of the 65-byte point.
    pub p256dh: String,
    /// Unpadded base64url of the 16-byte secret.
    pub auth: String,
    /// `null` when the browser sent none.
    #[serde(default)]
    pub device_name: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch: set on subscribe and on every delivered push.
    #[serde(default)]
    pub last_used_at: Option<i64>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriptionsFile {
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// A validated `POST /subscribe` body, keys already canonical.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub device_name: Option<String>,
}

/// zod's name for a JSON value's type (`undefined` when absent).
pub(crate) fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

pub(crate) fn expected(path: Vec<Value>, want: &str, got: Option<&Value>) -> Detail {
    Detail::new(
        path,
        "invalid_type",
        format!(
            "Invalid input: expected {want}, received {}",
            type_name(got)
        ),
    )
}

/// Validates a subscribe body: `{endpoint, keys: {p256dh, auth}, deviceName?}`. Unknown keys
/// are ignored (as the reference). Every problem is reported, not just the first.
pub fn validate_subscribe_body(
    body: &Value,
    allow_private: bool,
) -> Result<NewSubscription, DeviceError> {
    let Some(obj) = body.as_object() else {
        return Err(DeviceError::InvalidSubscription(vec![expected(
            path![],
            "object",
            Some(body),
        )]));
    };
    let mut details = Vec::new();

    let endpoint = match obj.get("endpoint") {
        Some(Value::String(s)) => match check_endpoint(s, allow_private) {
            Ok(()) => Some(s.clone()),
            Err((code, msg)) => {
                details.push(Detail::new(path!["endpoint"], code, msg));
                None
            }
        },
        other => {
            details.push(expected(path!["endpoint"], "string", other));
            None
        }
    };

    let (mut p256dh, mut auth) = (None, None);
    match obj.get("keys") {
        Some(Value::Object(keys)) => {
            p256dh = key_field(keys, "p256dh", &mut details, |b| {
                if b.len() != P256DH_LEN || b[0] != 0x04 {
                    Err(format!(
                        "p256dh must decode to a {P256DH_LEN}-byte uncompressed P-256 point, got {} bytes",
                        b.len()
                    ))
                } else if super::crypto::import_point(b).is_err() {
                    Err("p256dh is not a point on the P-256 curve".into())
                } else {
                    Ok(())
                }
            });
            auth = key_field(keys, "auth", &mut details, |b| {
                if b.len() == AUTH_LEN {
                    Ok(())
                } else {
                    Err(format!(
                        "auth must decode to {AUTH_LEN} bytes, got {}",
                        b.len()
                    ))
                }
            });
        }
        other => details.push(expected(path!["keys"], "object", other)),
    }

    let device_name = match obj.get("deviceName") {
        None => None,
        Some(Value::String(s)) if utf16_len(s) > MAX_DEVICE_NAME_LEN => {
            details.push(Detail::new(
                path!["deviceName"],
                "too_big",
                format!("Too big: expected string to have <={MAX_DEVICE_NAME_LEN} characters"),
            ));
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        other => {
            details.push(expected(path!["deviceName"], "string", other));
            None
        }
    };

    match (endpoint, p256dh, auth) {
        (Some(endpoint), Some(p256dh), Some(auth)) if details.is_empty() => Ok(NewSubscription {
            endpoint,
            p256dh,
            auth,
            device_name,
        }),
        _ => Err(DeviceError::InvalidSubscription(details)),
    }
}

/// Decodes and checks `keys.<name>`; returns it canonical.
fn key_field(
    keys: &serde_json::Map<String, Value>,
    name: &str,
    details: &mut Vec<Detail>,
    check: impl Fn(&[u8]) -> Result<(), String>,
) -> Option<String> {
    let p = path!["keys", name];
    match keys.get(name) {
        Some(Value::String(s)) => match decode_b64_lenient(s) {
            None => {
                details.push(Detail::new(
                    p,
                    "invalid_format",
                    format!("{name} must be base64url or base64"),
                ));
                None
            }
            Some(bytes) => match check(&bytes) {
                Ok(()) => Some(b64url(&bytes)),
                Err(msg) => {
                    details.push(Detail::new(p, "invalid_format", msg));
                    None
                }
            },
        },
        other => {
            details.push(expected(p, "string", other));
            None
        }
    }
}

/// Checks an endpoint URL (see the module docs). The error is a zod-like `(code, message)`.
pub fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<(), (&'static str, String)> {
    let fmt = |m: &str| Err(("invalid_format", m.to_string()));
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err((
            "too_big",
            format!("Too big: endpoint must be at most {MAX_ENDPOINT_LEN} characters"),
        ));
    }
    if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
        return fmt("Endpoint must be a URL without spaces, control or non-ASCII characters");
    }
    if endpoint.contains('#') {
        return fmt("Endpoint must not contain a fragment");
    }
    let Ok(url) = url::Url::parse(endpoint) else {
        return fmt("Invalid URL");
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return fmt("Endpoint must be an https URL"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return fmt("Endpoint must not contain a user name or password");
    }
    // The request target ureq will use: it must name the same host and port.
    let Ok(uri) = endpoint.parse::<ureq::http::Uri>() else {
        return fmt("Invalid URL");
    };
    let same_target = uri.scheme_str() == Some(url.scheme())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri
            .host()
            .zip(url.host_str())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
        && uri.port_u16().or(url.port_or_known_default()) == url.port_or_known_default();
    if !same_target {
        return fmt("Endpoint host must be written in canonical form");
    }
    if !allow_private {
        if let Some(reason) = internal_host_reason(&url) {
            return Err((
                "invalid_format",
                format!("Endpoint host is not allowed: {reason}"),
            ));
        }
    }
    Ok(())
}

/// Why a URL's host is internal (not a public push service), or `None` when it is public.
/// Judged from the parsed URL only; no DNS lookup.
pub fn internal_host_reason(url: &url::Url) -> Option<&'static str> {
    match url.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                Some("localhost")
            } else if !d.contains('.') {
                Some("single-label (intranet) host name")
            } else if [".local", ".internal", ".localdomain", ".home.arpa", ".lan"]
                .iter()
                .any(|s| d.ends_with(s))
            {
                Some("local network domain")
            } else {
                None
            }
        }
        url::Host::Ipv4(ip) => ipv4_reason(ip),
        url::Host::Ipv6(ip) => ipv6_reason(ip),
    }
}

fn ipv4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let reason = match o {
        [0, ..] => "\"this network\" address (0.0.0.0/8)",
        [127, ..] => "loopback address",
        [10, ..] => "private address",
        [172, b, ..] if (16..32).contains(&b) => "private address",
        [192, 168, ..] => "private address",
        [169, 254, ..] => "link-local address",
        [100, b, ..] if (64..128).contains(&b) => "shared (CGNAT) address",
        [192, 0, 0, _] => "IETF protocol address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation address",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking address",
        [255, 255, 255, 255] => "broadcast address",
        [224..=239, ..] => "multicast address",
        [240..=255, ..] => "reserved address",
        _ => return None,
    };
    Some(reason)
}

fn ipv6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let reason = if ip.is_unspecified() {
        "unspecified address"
    } else if ip.is_loopback() {
        "loopback address"
    } else if ip.to_ipv4_mapped().is_some() {
        "IPv4-mapped address"
    } else if s[..6] == [0; 6] {
        "IPv4-compatible address"
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        "NAT64 address"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "unique-local address"
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        "link-local address"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast address"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation address"
    } else if s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0) {
        "6to4/Teredo address"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "discard address"
    } else {
        return None;
    };
    Some(reason)
}

/// Parses the `:id` of `DELETE /subscriptions/:id`: decimal digits only (no sign, no spaces,
/// no `0x`, no fraction), fitting `u64`.
pub fn parse_subscription_id(s: &str) -> Result<u64, DeviceError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DeviceError::InvalidId);
    }
    s.parse().map_err(|_| DeviceError::InvalidId)
}

/// Validates a `DELETE /subscribe` body `{endpoint}`: any absolute URL of at most
/// [`MAX_ENDPOINT_LEN`] bytes (lenient on purpose, so endpoints stored under older rules can
/// still be removed). Errors become 400 `Valid endpoint URL is required`.
pub fn validate_unsubscribe_body(body: &Value) -> Result<String, DeviceError> {
    let detail = match body.as_object().map(|o| o.get("endpoint")) {
        None => expected(path![], "object", Some(body)),
        Some(Some(Value::String(s))) if s.len() > MAX_ENDPOINT_LEN => Detail::new(
            path!["endpoint"],
            "too_big",
            format!("Too big: endpoint must be at most {MAX_ENDPOINT_LEN} characters"),
        ),
        Some(Some(Value::String(s))) if url::Url::parse(s).is_ok() => return Ok(s.clone()),
        Some(Some(Value::String(_))) => {
            Detail::new(path!["endpoint"], "invalid_format", "Invalid URL")
        }
        Some(other) => expected(path!["endpoint"], "string", other),
    };
    Err(DeviceError::InvalidEndpoint(vec![detail]))
}

/// `POST /subscribe`: validates `body` and upserts by endpoint. An existing endpoint keeps its
/// `id` and `createdAt` and takes the new user, keys, device name and `lastUsedAt = now`; a new
/// one gets the next id and `createdAt = lastUsedAt = now`, unless the user already has
/// [`MAX_SUBSCRIPTIONS_PER_USER`].
pub fn subscribe(
    store: &Store,
    user: &str,
    body: &Value,
    allow_private: bool,
    now_ms: i64,
) -> Result<Subscription, DeviceError> {
    let new = validate_subscribe_body(body, allow_private)?;
    store.update(SUBSCRIPTIONS_FILE, |f: &mut SubscriptionsFile| {
        let subs = &mut f.subscriptions;
        if let Some(i) = subs.iter().position(|s| s.endpoint == new.endpoint) {
            if subs[i].user_id != user && count_for(subs, user) >= MAX_SUBSCRIPTIONS_PER_USER {
                return Err(DeviceError::TooManySubscriptions {
                    limit: MAX_SUBSCRIPTIONS_PER_USER,
                });
            }
            let s = &mut subs[i];
            s.user_id = user.to_string();
            s.p256dh = new.p256dh;
            s.auth = new.auth;
            s.device_name = new.device_name;
            s.last_used_at = Some(now_ms);
            return Ok(s.clone());
        }
        if count_for(subs, user) >= MAX_SUBSCRIPTIONS_PER_USER {
            return Err(DeviceError::TooManySubscriptions {
                limit: MAX_SUBSCRIPTIONS_PER_USER,
            });
        }
        let sub = Subscription {
            id: subs.iter().map(|s| s.id).max().unwrap_or(0) + 1,
            user_id: user.to_string(),
            endpoint: new.endpoint,
            p256dh: new.p256dh,
            auth: new.auth,
            device_name: new.device_name,
            created_at: now_ms,
            last_used_at: Some(now_ms),
        };
        subs.push(sub.clone());
        Ok(sub)
    })
}

fn count_for(subs: &[Subscription], user: &str) -> usize {
    subs.iter().filter(|s| s.user_id == user).count()
}

/// `DELETE /subscribe`: removes `user`'s subscription with this exact endpoint. True if one was.
pub fn unsubscribe(store: &Store, user: &str, endpoint: &str) -> Result<bool, StoreError> {
    remove_where(store, |s| s.user_id == user && s.endpoint == endpoint).map(|n| n > 0)
}

/// `DELETE /subscriptions/:id`: removes `user`'s subscription `id`. True if one was.
pub fn delete_by_id(store: &Store, user: &str, id: u64) -> Result<bool, StoreError> {
    remove_where(store, |s| s.user_id == user && s.id == id).map(|n| n > 0)
}

/// `user`'s subscriptions, newest first (ties: higher id first).
pub fn list(store: &Store, user: &str) -> Result<Vec<Subscription>, StoreError> {
    let f: SubscriptionsFile = store.load(SUBSCRIPTIONS_FILE)?;
    let mut subs: Vec<Subscription> = f
        .subscriptions
        .into_iter()
        .filter(|s| s.user_id == user)
        .collect();
    subs.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
    Ok(subs)
}

/// Removes subscriptions the push service reported gone, each matched by id AND endpoint (so
/// a row re-registered meanwhile under the same id is kept). Returns how many were removed.
pub fn remove_expired(store: &Store, gone: &[(u64, String)]) -> Result<usize, StoreError> {
    apply_outcomes(store, gone, &[], 0).map(|(removed, _)| removed)
}

/// Sets `lastUsedAt = now_ms` on the given subscription ids. Returns how many were found.
pub fn mark_used(store: &Store, ids: &[u64], now_ms: i64) -> Result<usize, StoreError> {
    apply_outcomes(store, &[], ids, now_ms).map(|(_, marked)| marked)
}

/// Both bookkeeping steps after a fan-out in one locked write: remove `gone` (id and endpoint)
/// and mark `used` ids. Does nothing (no lock, no write) when both are empty.
pub fn apply_outcomes(
    store: &Store,
    gone: &[(u64, String)],
    used: &[u64],
    now_ms: i64,
) -> Result<(usize, usize), StoreError> {
    if gone.is_empty() && used.is_empty() {
        return Ok((0, 0));
    }
    store.update(SUBSCRIPTIONS_FILE, |f: &mut SubscriptionsFile| {
        let before = f.subscriptions.len();
        f.subscriptions
            .retain(|s| !gone.iter().any(|(id, ep)| *id == s.id && *ep == s.endpoint));
        let removed = before - f.subscriptions.len();
        let mut marked = 0;
        for s in f.subscriptions.iter_mut().filter(|s| used.contains(&s.id)) {
            s.last_used_at = Some(now_ms);
            marked += 1;
        }
        Ok::<_, StoreError>((removed, marked))
    })
}

fn remove_where(store: &Store, pred: impl Fn(&Subscription) -> bool) -> Result<usize, StoreError> {
    store.update(SUBSCRIPTIONS_FILE, |f: &mut SubscriptionsFile| {
        let before = f.subscriptions.len();
        f.subscriptions.retain(|s| !pred(s));
        Ok::<_, StoreError>(before - f.subscriptions.len())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn temp_store(name: &str) -> Store {
        let d = std::env::temp_dir().join(format!("assistantd-subs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Store::new(d)
    }

    /// A valid key pair as a browser would send it (base64url, unpadded).
    pub(crate) fn browser_keys() -> (String, String) {
        let secret = super::super::crypto::random_secret_key();
        let point = super::super::crypto::point_bytes(&secret.public_key());
        (b64url(&point), b64url(&crate::util::random_bytes::<16>()))
    }

    fn body(endpoint: &str) -> Value {
        let (p, a) = browser_keys();
        json!({"endpoint": endpoint, "keys": {"p256dh": p, "auth": a}})
    }

    fn endpoint_ok(e: &str) -> bool {
        check_endpoint(e, false).is_ok()
    }

    #[test]
    fn public_https_endpoints_are_accepted() {
        for e in [
            "https://fcm.googleapis.com/fcm/send/dGVzdA:APA91b",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAA?x=%2F",
            "https://web.push.apple.com/QGx2",
            "https://wns2-par02p.notify.windows.com/w/?token=BQYAAA%3d%3d",
            "https://push.example.com:8443/x",
            "HTTPS://Push.Example.com:443/x",
            "https://8.8.8.8/push",
            "https://[2606:4700::1111]/push",
        ] {
            assert!(
                endpoint_ok(e),
                "{e} refused: {:?}",
                check_endpoint(e, false)
            );
        }
    }

    #[test]
    fn internal_or_malformed_endpoints_are_refused() {
        let long = format!("https://push.example.com/{}", "a".repeat(3000));
        for e in [
            "http://push.example.com/x",
            "ftp://push.example.com/x",
            "https://user:pw@push.example.com/x",
            "https://user@push.example.com/x",
            "https://@push.example.com/x",
            "https://localhost/x",
            "https://LOCALHOST./x",
            "https://a.b.localhost/x",
            "https://printer.local/x",
            "https://intranet/x",
            "https://127.0.0.1/x",
            "https://127.1/x",
            "https://2130706433/x",
            "https://0x7f.1/x",
            "https://0x7f000001/x",
            "https://0177.0.0.1/x",
            "https://%31%32%37.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://172.31.255.255/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://224.0.0.1/x",
            "https://255.255.255.255/x",
            "https://[::1]/x",
            "https://[::]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[::ffff:8.8.8.8]/x",
            "https://[fe80::1]/x",
            "https://[fd00::1]/x",
            "https://[fc00::1]/x",
            "https://[ff02::1]/x",
            "https://8.8.8.8#frag",
            "https://push.example.com/a b",
            "https://push.example.com\\@127.0.0.1/x",
            "https://push.example.com/\u{e9}",
            "https://134744072/x",
            "not a url",
            "/relative",
            &long,
        ] {
            assert!(!endpoint_ok(e), "{e} accepted");
        }
        assert_eq!(check_endpoint(&long, false).unwrap_err().0, "too_big");
    }

    #[test]
    fn allow_private_lifts_host_rules_and_allows_http() {
        for e in [
            "http://127.0.0.1:8080/push/a",
            "https://localhost/x",
            "https://[::1]:9/x",
        ] {
            assert!(check_endpoint(e, true).is_ok(), "{e}");
        }
        assert!(check_endpoint("http://u:p@127.0.0.1/x", true).is_err());
        assert!(check_endpoint("ftp://127.0.0.1/x", true).is_err());
    }

    #[test]
    fn keys_any_base64_flavour_stored_canonical() {
        use base64::Engine;
        let (p, a) = browser_keys();
        let std = base64::engine::general_purpose::STANDARD;
        let p_std = std.encode(decode_b64_lenient(&p).unwrap());
        let a_std = std.encode(decode_b64_lenient(&a).unwrap());
        assert!(p_std.ends_with('=') && a_std.ends_with("=="));
        let v = validate_subscribe_body(
            &json!({"endpoint": "https://push.example.com/1", "keys": {"p256dh": p_std, "auth": a_std}, "deviceName": "Phone"}),
            false,
        )
        .unwrap();
        assert_eq!(
            (v.p256dh.as_str(), v.auth.as_str()),
            (p.as_str(), a.as_str())
        );
        assert_eq!(v.device_name.as_deref(), Some("Phone"));
    }

    fn details(r: Result<NewSubscription, DeviceError>) -> Vec<Detail> {
        match r {
            Err(DeviceError::InvalidSubscription(d)) => d,
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        let (p, a) = browser_keys();
        let mut off_curve = decode_b64_lenient(&p).unwrap();
        off_curve[64] ^= 1;
        let off_curve = b64url(&off_curve);
        let short_auth = b64url(&[1u8; 15]);
        for (p256dh, auth, bad_path) in [
            (off_curve.as_str(), a.as_str(), "p256dh"),
            (p.as_str(), short_auth.as_str(), "auth"),
            (a.as_str(), p.as_str(), "p256dh"), // swapped: both wrong
            ("not base64!", a.as_str(), "p256dh"),
        ] {
            let d = details(validate_subscribe_body(
                &json!({"endpoint": "https://push.example.com/1", "keys": {"p256dh": p256dh, "auth": auth}}),
                false,
            ));
            assert_eq!(d[0].path, path!["keys", bad_path], "{d:?}");
        }
        let swapped = details(validate_subscribe_body(
            &json!({"endpoint": "https://push.example.com/1", "keys": {"p256dh": a, "auth": p}}),
            false,
        ));
        assert_eq!(swapped.len(), 2);
    }

    #[test]
    fn shapes_and_types_are_reported_zod_style() {
        let d = details(validate_subscribe_body(&json!([]), false));
        assert_eq!(d[0].code, "invalid_type");
        assert_eq!(
            d[0].message,
            "Invalid input: expected object, received array"
        );
        let d = details(validate_subscribe_body(
            &json!({"keys": null, "deviceName": 5}),
            false,
        ));
        let paths: Vec<_> = d.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            vec![path!["endpoint"], path!["keys"], path!["deviceName"]]
        );
        assert!(d[0].message.ends_with("received undefined"));
        assert!(d[1].message.ends_with("received null"));
        let mut b = body("https://push.example.com/1");
        b["deviceName"] = json!("😀".repeat(51));
        assert_eq!(
            details(validate_subscribe_body(&b, false))[0].code,
            "too_big"
        );
        b["deviceName"] = json!("😀".repeat(50));
        assert!(validate_subscribe_body(&b, false).is_ok());
    }

    #[test]
    fn subscribe_upserts_by_endpoint() {
        let store = temp_store("upsert");
        let a = subscribe(
            &store,
            "alice",
            &body("https://push.example.com/1"),
            false,
            1000,
        )
        .unwrap();
        assert_eq!((a.id, a.created_at, a.last_used_at), (1, 1000, Some(1000)));
        assert_eq!(a.device_name, None);
        let b = subscribe(
            &store,
            "alice",
            &body("https://push.example.com/2"),
            false,
            2000,
        )
        .unwrap();
        assert_eq!(b.id, 2);
        let mut again = body("https://push.example.com/1");
        again["deviceName"] = json!("Laptop");
        let a2 = subscribe(&store, "bob", &again, false, 3000).unwrap();
        assert_eq!(
            (a2.id, a2.created_at, a2.last_used_at),
            (1, 1000, Some(3000))
        );
        assert_eq!(a2.user_id, "bob");
        assert_ne!(a2.p256dh, a.p256dh);
        assert_eq!(list(&store, "alice").unwrap(), vec![b.clone()]);
        assert_eq!(list(&store, "bob").unwrap(), vec![a2.clone()]);
        // The file is exactly the documented shape.
        let raw: Value =
            serde_json::from_slice(&std::fs::read(store.path(SUBSCRIPTIONS_FILE)).unwrap())
                .unwrap();
        assert_eq!(
            raw["subscriptions"][1],
            json!({"id": 2, "userId": "alice", "endpoint": "https://push.example.com/2",
                   "p256dh": b.p256dh, "auth": b.auth, "deviceName": null,
                   "createdAt": 2000, "lastUsedAt": 2000})
        );
    }

    #[test]
    fn list_is_newest_first_and_deletes_are_per_user() {
        let store = temp_store("list");
        for (i, t) in [(1, 500), (2, 900), (3, 700)] {
            subscribe(
                &store,
                "u",
                &body(&format!("https://push.example.com/{i}")),
                false,
                t,
            )
            .unwrap();
        }
        let ids: Vec<u64> = list(&store, "u").unwrap().iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![2, 3, 1]);
        assert!(!delete_by_id(&store, "other", 2).unwrap());
        assert!(delete_by_id(&store, "u", 2).unwrap());
        assert!(!delete_by_id(&store, "u", 2).unwrap());
        assert!(!unsubscribe(&store, "other", "https://push.example.com/1").unwrap());
        assert!(unsubscribe(&store, "u", "https://push.example.com/1").unwrap());
        assert_eq!(list(&store, "u").unwrap().len(), 1);
    }

    #[test]
    fn at_most_100_per_user() {
        let store = temp_store("cap");
        let (p, a) = browser_keys();
        let mk = |i: usize| json!({"endpoint": format!("https://push.example.com/{i}"), "keys": {"p256dh": p, "auth": a}});
        for i in 0..MAX_SUBSCRIPTIONS_PER_USER {
            subscribe(&store, "u", &mk(i), false, i as i64).unwrap();
        }
        let err = subscribe(&store, "u", &mk(1000), false, 0).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::TooManySubscriptions { limit: 100 }
        ));
        // Re-registering an existing endpoint is still fine; other users are unaffected.
        subscribe(&store, "u", &mk(5), false, 0).unwrap();
        subscribe(&store, "v", &mk(1000), false, 0).unwrap();
        // Moving a device from another user into a full one counts as new.
        assert!(subscribe(&store, "u", &mk(1000), false, 0).is_err());
        assert_eq!(list(&store, "u").unwrap().len(), MAX_SUBSCRIPTIONS_PER_USER);
    }

    #[test]
    fn expired_needs_id_and_endpoint_and_used_sets_last_used() {
        let store = temp_store("expire");
        let a = subscribe(&store, "u", &body("https://push.example.com/a"), false, 1).unwrap();
        let b = subscribe(&store, "u", &body("https://push.example.com/b"), false, 2).unwrap();
        assert_eq!(
            remove_expired(&store, &[(a.id, "https://push.example.com/other".into())]).unwrap(),
            0
        );
        assert_eq!(
            remove_expired(&store, &[(a.id, a.endpoint.clone())]).unwrap(),
            1
        );
        assert_eq!(mark_used(&store, &[b.id, 99], 777).unwrap(), 1);
        assert_eq!(list(&store, "u").unwrap()[0].last_used_at, Some(777));
    }

    #[test]
    fn ids_are_strict_digits() {
        assert_eq!(parse_subscription_id("42").unwrap(), 42);
        assert_eq!(parse_subscription_id("007").unwrap(), 7);
        for s in [
            "",
            "-1",
            "+1",
            "1.0",
            "0x1",
            "12abc",
            " 1",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(parse_subscription_id(s), Err(DeviceError::InvalidId)),
                "{s}"
            );
        }
    }

    #[test]
    fn unsubscribe_body() {
        assert_eq!(
            validate_unsubscribe_body(&json!({"endpoint": "http://legacy.example/x"})).unwrap(),
            "http://legacy.example/x"
        );
        for b in [
            json!({}),
            json!({"endpoint": "nope"}),
            json!("x"),
            json!({"endpoint": 1}),
        ] {
            assert!(matches!(
                validate_unsubscribe_body(&b),
                Err(DeviceError::InvalidEndpoint(_))
            ));
        }
    }
}
