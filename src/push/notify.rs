//! Sending a notification to every device of a user (contract §8, reference §4–§5).
//!
//! The pieces, in the order a request meets them:
//!
//! 1. [`validate_send_body`]: the `POST /api/internal/notifications/send` body → the exact
//!    payload bytes and the push options, or 400 with details. A payload that cannot fit one
//!    `aes128gcm` record is refused here, before any network call.
//! 2. [`build_push_request`] (pure): encrypts for one subscription and sets the RFC 8030/8292
//!    headers. [`classify_push_response`] (pure): status + headers + body → [`PushOutcome`].
//! 3. [`send_all`]: the thin I/O between them, for all subscriptions in parallel on at most
//!    [`MAX_PARALLEL_SENDS`] scoped threads, through one shared [`PushClient`] (ureq agent: no
//!    redirects, no proxy, HTTP errors as responses, [`CONNECT_TIMEOUT`] and [`SEND_TIMEOUT`]
//!    deadlines, response bodies capped at [`MAX_RESPONSE_BODY`]).
//! 4. [`deliver`] / [`send_test`]: read the subscriptions (shared lock, released), send, then
//!    in one locked write remove the expired ones (same id and endpoint) and set `lastUsedAt`
//!    of the delivered ones. No lock is held during network I/O.

use super::crypto::{self, MAX_PLAINTEXT};
use super::subscriptions::{self, expected, Subscription};
use super::vapid::{audience, VapidKeys};
use super::{decode_b64_lenient, DeviceError, PushError};
use crate::error::Detail;
use crate::path;
use crate::store::Store;
use crate::util::utf16_len;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `title`: 1..=120 UTF-16 code units.
pub const MAX_TITLE_LEN: usize = 120;
/// `body`: 1..=500 UTF-16 code units.
pub const MAX_BODY_LEN: usize = 500;
/// `url`: 1..=500 UTF-16 code units.
pub const MAX_URL_LEN: usize = 500;
/// `tag`: 0..=80 UTF-16 code units.
pub const MAX_TAG_LEN: usize = 80;
/// `TTL` header in seconds: how long the push service keeps an undelivered message (1 day;
/// the reference used 4 weeks).
pub const DEFAULT_TTL_SECS: u32 = 86_400;
/// `data.eventType` of agent notifications.
pub const EVENT_TYPE: &str = "assistant.message";
/// `data.url` when none is given.
pub const DEFAULT_URL: &str = "/";
/// Default tag prefix: `assistant-<epoch ms>`.
pub const DEFAULT_TAG_PREFIX: &str = "assistant-";
/// `Topic` header length: RFC 8030 §5.4 allows at most 32 base64url characters.
pub const TOPIC_LEN: usize = 32;
/// TCP connect deadline per push.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for a whole push (resolve, connect, TLS, send, response, body): a stuck push
/// service costs at most this long, and only its own subscription.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from a push service's response body (we only log a snippet of it).
pub const MAX_RESPONSE_BODY: u64 = 64 * 1024;
/// Characters of a response body kept in a failure reason.
pub const REASON_SNIPPET_CHARS: usize = 200;
/// Characters of a `Retry-After` value kept (seconds or an HTTP date fit easily).
pub const RETRY_AFTER_CHARS: usize = 64;
/// Most pushes in flight at once for one fan-out (threads per call).
pub const MAX_PARALLEL_SENDS: usize = 16;
/// Deadline of a whole fan-out, as a multiple of the per-push deadline: with more stuck push
/// services than [`MAX_PARALLEL_SENDS`], the pushes queued behind them get what is left, and
/// one send call never takes longer than this (20 s in production), whatever the devices do.
pub const FANOUT_DEADLINE_FACTOR: u32 = 2;
/// A push is not started with less time left than this (or half the per-push deadline, if
/// that is shorter): it fails as not sent instead of being cut off halfway.
pub const MIN_PUSH_TIME: Duration = Duration::from_secs(1);

/// `priority` of a notification → the `Urgency` header (RFC 8030 §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Urgency {
    #[default]
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// Per-message push options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOptions {
    /// `TTL` header, seconds; defaults to [`DEFAULT_TTL_SECS`].
    pub ttl: u32,
    pub urgency: Urgency,
    /// `Topic` header (already [`TOPIC_LEN`] base64url chars), only for an explicit tag.
    pub topic: Option<String>,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            ttl: DEFAULT_TTL_SECS,
            urgency: Urgency::Normal,
            topic: None,
        }
    }
}

/// A send body that passed validation: the exact bytes to encrypt and how to send them.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedNotification {
    /// The JSON payload (`{title, body, tag, data: {eventType, url, priority}}`), at most
    /// [`MAX_PLAINTEXT`] bytes.
    pub payload: Vec<u8>,
    pub options: SendOptions,
}

/// A push about to be sent: POST `url` (the stored endpoint, byte for byte) with `headers`
/// and `body`.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// What became of one push.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// 2xx: accepted by the push service.
    Delivered,
    /// 404/410: the subscription is gone; remove it.
    Expired,
    /// Anything else; the subscription is kept. `status` is `None` when no response came
    /// (timeout, refused, TLS, bad stored keys). `reason` is for the log, never the client.
    Failed {
        status: Option<u16>,
        retry_after: Option<String>,
        reason: String,
    },
}

/// The outcome for one subscription of a fan-out.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: u64,
    pub endpoint: String,
    pub outcome: PushOutcome,
}

/// The `POST /notifications/send` response: `{delivered, expired, failed, noSubscriptions}`,
/// with `delivered + expired + failed` = the number of subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryReport {
    pub delivered: usize,
    pub expired: usize,
    pub failed: usize,
    pub no_subscriptions: bool,
    /// Per subscription, for logs and tests; not serialised.
    #[serde(skip)]
    pub deliveries: Vec<Delivery>,
}

/// The `POST /api/notifications/test` response, as the reference: `{success: true,
/// devicesNotified: <number of subscriptions>}`. The counts are for logs only.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    pub success: bool,
    pub devices_notified: usize,
    #[serde(skip)]
    pub report: DeliveryReport,
}

// ---------------------------------------------------------------------------------------------
// 1. Validation and payload

fn too_small(key: &str, min: usize) -> Detail {
    Detail::new(
        path![key],
        "too_small",
        format!("Too small: expected string to have >={min} characters"),
    )
}

fn too_big(key: &str, max: usize) -> Detail {
    Detail::new(
        path![key],
        "too_big",
        format!("Too big: expected string to have <={max} characters"),
    )
}

/// A string field with a UTF-16 length range; records problems in `details`.
fn string_field(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    required: bool,
    (min, max): (usize, usize),
    details: &mut Vec<Detail>,
) -> Option<String> {
    match obj.get(key) {
        None if !required => None,
        Some(Value::String(s)) => {
            let len = utf16_len(s);
            if len < min {
                details.push(too_small(key, min));
                None
            } else if len > max {
                details.push(too_big(key, max));
                None
            } else {
                Some(s.clone())
            }
        }
        other => {
            details.push(expected(path![key], "string", other));
            None
        }
    }
}

/// `url` must be a same-site path (one leading `/`, not `//` or `/\`, which browsers treat as
/// another host) or an absolute `http(s)` URL. No whitespace or control characters anywhere
/// (URL parsers drop tabs and newlines, so `/\n/evil` would become `//evil`).
pub fn is_allowed_click_url(url: &str) -> bool {
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if let Some(rest) = url.strip_prefix('/') {
        return !rest.starts_with('/') && !rest.starts_with('\\');
    }
    matches!(url::Url::parse(url), Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// The `Topic` for an explicit tag: base64url of the first 24 bytes of SHA-256(tag), exactly
/// [`TOPIC_LEN`] characters, so the same tag always replaces the same pending message.
pub fn topic_for_tag(tag: &str) -> String {
    let digest = Sha256::digest(tag.as_bytes());
    super::b64url(&digest[..TOPIC_LEN / 4 * 3])
}

/// Validates a send body (reference §4.1, contract §8) and builds the payload. Unknown keys
/// are ignored; `null` is a type error; lengths count UTF-16 units. `now_ms` makes the default
/// tag `assistant-<now_ms>`. Errors: [`PushError::Validation`] (all problems at once) or
/// [`PushError::PayloadTooLarge`].
pub fn validate_send_body(body: &Value, now_ms: i64) -> Result<ValidatedNotification, PushError> {
    let Some(obj) = body.as_object() else {
        return Err(PushError::Validation(vec![expected(
            path![],
            "object",
            Some(body),
        )]));
    };
    let mut details = Vec::new();
    let title = string_field(obj, "title", true, (1, MAX_TITLE_LEN), &mut details);
    let text = string_field(obj, "body", true, (1, MAX_BODY_LEN), &mut details);
    let url = string_field(obj, "url", false, (1, MAX_URL_LEN), &mut details);
    if let Some(u) = &url {
        if !is_allowed_click_url(u) {
            details.push(Detail::new(
                path!["url"],
                "invalid_format",
                "url must be a path starting with a single / or an absolute http(s) URL",
            ));
        }
    }
    let tag = string_field(obj, "tag", false, (0, MAX_TAG_LEN), &mut details);
    let urgency = match obj.get("priority") {
        None => Urgency::Normal,
        Some(Value::String(s)) if s == "normal" => Urgency::Normal,
        Some(Value::String(s)) if s == "high" => Urgency::High,
        Some(Value::String(_)) => {
            details.push(Detail::new(
                path!["priority"],
                "invalid_value",
                "Invalid option: expected one of \"normal\"|\"high\"",
            ));
            Urgency::Normal
        }
        other => {
            details.push(expected(path!["priority"], "string", other));
            Urgency::Normal
        }
    };
    let (Some(title), Some(text)) = (title, text) else {
        return Err(PushError::Validation(details));
    };
    if !details.is_empty() {
        return Err(PushError::Validation(details));
    }
    // An empty tag is kept (as the reference) but means "no grouping", so no Topic.
    let topic = tag.as_deref().filter(|t| !t.is_empty()).map(topic_for_tag);
    let payload = json!({
        "title": title,
        "body": text,
        "tag": tag.unwrap_or_else(|| format!("{DEFAULT_TAG_PREFIX}{now_ms}")),
        "data": {
            "eventType": EVENT_TYPE,
            "url": url.as_deref().unwrap_or(DEFAULT_URL),
            "priority": urgency.as_str(),
        },
    });
    let payload = payload_bytes(&payload)?;
    Ok(ValidatedNotification {
        payload,
        options: SendOptions {
            ttl: DEFAULT_TTL_SECS,
            urgency,
            topic,
        },
    })
}

/// Serialises a payload and checks that it fits one record.
fn payload_bytes(payload: &Value) -> Result<Vec<u8>, PushError> {
    let bytes = payload.to_string().into_bytes();
    if bytes.len() > MAX_PLAINTEXT {
        return Err(PushError::PayloadTooLarge {
            size: bytes.len(),
            max: MAX_PLAINTEXT,
        });
    }
    Ok(bytes)
}

/// The fixed payload of `POST /api/notifications/test` (reference §5).
pub fn test_payload() -> Vec<u8> {
    json!({
        "title": "Test Notification",
        "body": "Push notifications are working correctly",
        "tag": "test",
        "data": {"eventType": "test", "url": "/"},
    })
    .to_string()
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// 2. Sans-IO request and response

/// Builds the push for one subscription: encrypts `payload` to its keys (one record) and sets
/// `TTL`, `Urgency`, `Topic` (when given), `Content-Encoding: aes128gcm`,
/// `Content-Type: application/octet-stream` and `Authorization: vapid t=…, k=…` (token for the
/// endpoint's origin, from the cache). The URL is the stored endpoint, untouched.
pub fn build_push_request(
    sub: &Subscription,
    payload: &[u8],
    vapid: &VapidKeys,
    opts: &SendOptions,
) -> Result<PushRequest, PushError> {
    let p256dh: [u8; crypto::POINT_LEN] = decode_b64_lenient(&sub.p256dh)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            PushError::InvalidKey(format!(
                "stored p256dh is not a {}-byte key",
                crypto::POINT_LEN
            ))
        })?;
    let auth: [u8; crypto::AUTH_LEN] = decode_b64_lenient(&sub.auth)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            PushError::InvalidKey(format!("stored auth is not {} bytes", crypto::AUTH_LEN))
        })?;
    let aud = audience(&sub.endpoint)
        .ok_or_else(|| PushError::InvalidKey("stored endpoint is not an http(s) URL".into()))?;
    let body = crypto::encrypt_single_record(&p256dh, &auth, payload)?;
    let mut headers = vec![
        ("TTL", opts.ttl.to_string()),
        ("Urgency", opts.urgency.as_str().to_string()),
    ];
    if let Some(topic) = &opts.topic {
        headers.push(("Topic", topic.clone()));
    }
    headers.push(("Content-Encoding", "aes128gcm".to_string()));
    headers.push(("Content-Type", "application/octet-stream".to_string()));
    headers.push(("Authorization", vapid.authorization(&aud)));
    Ok(PushRequest {
        url: sub.endpoint.clone(),
        headers,
        body,
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// At most `max` characters of `s`, control characters and runs of whitespace collapsed to
/// one space, so a reason stays one log line.
fn snippet(s: &str, max: usize) -> String {
    let mut out = String::new();
    for word in s.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= max {
            let cut: String = out.chars().take(max).collect();
            return format!("{cut}…");
        }
    }
    out
}

/// Classifies a push service's answer: 2xx delivered; 404/410 expired; anything else failed,
/// with a reason naming the likely cause and the service's own words (`Retry-After`, WNS's
/// `X-WNS-Status` / `X-WNS-Error-Description` headers, a snippet of the body).
pub fn classify_push_response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> PushOutcome {
    match status {
        200..=299 => return PushOutcome::Delivered,
        404 | 410 => return PushOutcome::Expired,
        _ => {}
    }
    let what = match status {
        300..=399 => "redirect not followed (push endpoints must answer directly)",
        400 => "bad request (malformed push or VAPID token)",
        401 | 403 => "VAPID authorization rejected (key or token not accepted)",
        413 => "payload too large for the push service",
        429 => "rate limited by the push service",
        500..=599 => "push service error",
        _ => "unexpected status",
    };
    let retry_after = header(headers, "retry-after").map(|v| snippet(v, RETRY_AFTER_CHARS));
    let mut reason = format!("HTTP {status}: {what}");
    if let Some(r) = &retry_after {
        reason.push_str(&format!("; Retry-After: {r}"));
    }
    for name in ["X-WNS-Status", "X-WNS-Error-Description", "X-WNS-Msg-ID"] {
        if let Some(v) = header(headers, name) {
            reason.push_str(&format!("; {name}: {}", snippet(v, REASON_SNIPPET_CHARS)));
        }
    }
    let text = snippet(&String::from_utf8_lossy(body), REASON_SNIPPET_CHARS);
    if !text.is_empty() {
        reason.push_str(&format!("; body: {text}"));
    }
    PushOutcome::Failed {
        status: Some(status),
        retry_after,
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The I/O: one shared agent, a bounded parallel fan-out

/// The HTTP client for push services. Build one at start and share it (`&PushClient`).
///
/// Configuration, on purpose: HTTP statuses are responses, not errors (so 410 bodies and
/// `Retry-After` arrive); no redirects (a push service answers directly; following one would
/// re-send the message elsewhere); no proxy (the environment's `HTTP(S)_PROXY` is ignored:
/// push traffic goes straight to the push service, and a proxy meant for other tools must not
/// silently see it); rustls with the webpki roots; [`CONNECT_TIMEOUT`] and an overall deadline
/// ([`SEND_TIMEOUT`] by default) per push, and [`FANOUT_DEADLINE_FACTOR`] times that for a
/// whole fan-out.
#[derive(Debug, Clone)]
pub struct PushClient {
    agent: ureq::Agent,
    per_push: Duration,
}

impl Default for PushClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PushClient {
    /// The production client: [`SEND_TIMEOUT`] per push.
    pub fn new() -> Self {
        Self::with_deadline(SEND_TIMEOUT)
    }

    /// A client whose pushes each take at most `deadline` (tests use a short one).
    pub fn with_deadline(deadline: Duration) -> Self {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::WebPki)
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT.min(deadline)))
            .timeout_global(Some(deadline))
            .user_agent(concat!("assistantd/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        PushClient {
            agent,
            per_push: deadline,
        }
    }

    /// How long one whole fan-out may take.
    pub fn fanout_deadline(&self) -> Duration {
        self.per_push * FANOUT_DEADLINE_FACTOR
    }

    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }
}

/// POSTs one push within `timeout` and classifies the answer.
fn send_one(agent: &ureq::Agent, req: &PushRequest, timeout: Duration) -> PushOutcome {
    let mut builder = agent
        .post(req.url.as_str())
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (name, value) in &req.headers {
        builder = builder.header(*name, value.as_str());
    }
    let mut resp = match builder.send(&req.body[..]) {
        Ok(r) => r,
        Err(e) => {
            return PushOutcome::Failed {
                status: None,
                retry_after: None,
                reason: format!("no response: {e}"),
            }
        }
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    // The body only feeds a log snippet: a failed or cut-short read still leaves the status.
    let _ = resp
        .body_mut()
        .as_reader()
        .take(MAX_RESPONSE_BODY)
        .read_to_end(&mut body);
    classify_push_response(status, &headers, &body)
}

/// Builds and sends one push before `deadline` (the fan-out's); local failures (bad stored
/// keys) and a deadline too close to start become failed outcomes.
fn push_to(
    client: &PushClient,
    deadline: Instant,
    vapid: &VapidKeys,
    sub: &Subscription,
    payload: &[u8],
    opts: &SendOptions,
) -> Delivery {
    let left = deadline.saturating_duration_since(Instant::now());
    let outcome = match build_push_request(sub, payload, vapid, opts) {
        Ok(_) if left < MIN_PUSH_TIME.min(client.per_push / 2) => PushOutcome::Failed {
            status: None,
            retry_after: None,
            reason: "not sent: the send's overall deadline passed while other push services \
                     were not answering"
                .into(),
        },
        Ok(req) => send_one(&client.agent, &req, left.min(client.per_push)),
        Err(e) => PushOutcome::Failed {
            status: None,
            retry_after: None,
            reason: format!("not sent: {e}"),
        },
    };
    Delivery {
        id: sub.id,
        endpoint: sub.endpoint.clone(),
        outcome,
    }
}

/// Sends `payload` to every subscription in parallel (at most [`MAX_PARALLEL_SENDS`] at a
/// time) and waits for all. One [`Delivery`] per subscription, in the order given. Each push
/// is bounded by the client's per-push deadline and the whole call by
/// [`PushClient::fanout_deadline`].
pub fn send_all(
    client: &PushClient,
    vapid: &VapidKeys,
    subs: &[Subscription],
    payload: &[u8],
    opts: &SendOptions,
) -> Vec<Delivery> {
    crypto::init();
    let deadline = Instant::now() + client.fanout_deadline();
    let next = AtomicUsize::new(0);
    let workers = subs.len().min(MAX_PARALLEL_SENDS);
    let mut slots: Vec<Option<Delivery>> = vec![None; subs.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(sub) = subs.get(i) else { break };
                        done.push((i, push_to(client, deadline, vapid, sub, payload, opts)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            // A panicking worker loses only its own results; they are filled in below.
            if let Ok(done) = h.join() {
                for (i, d) in done {
                    slots[i] = Some(d);
                }
            }
        }
    });
    slots
        .into_iter()
        .zip(subs)
        .map(|(slot, sub)| {
            slot.unwrap_or_else(|| Delivery {
                id: sub.id,
                endpoint: sub.endpoint.clone(),
                outcome: PushOutcome::Failed {
                    status: None,
                    retry_after: None,
                    reason: "sender thread panicked".into(),
                },
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 4. The whole flow

/// Sends to `subs` and does the bookkeeping; shared by [`deliver`] and [`send_test`].
fn fan_out(
    store: &Store,
    client: &PushClient,
    vapid: &VapidKeys,
    subs: &[Subscription],
    payload: &[u8],
    opts: &SendOptions,
) -> DeliveryReport {
    let deliveries = send_all(client, vapid, subs, payload, opts);
    let mut gone = Vec::new();
    let mut used = Vec::new();
    let mut failed = 0;
    for d in &deliveries {
        match &d.outcome {
            PushOutcome::Delivered => used.push(d.id),
            PushOutcome::Expired => gone.push((d.id, d.endpoint.clone())),
            PushOutcome::Failed { reason, .. } => {
                failed += 1;
                // The endpoint's path is a capability; the log gets its origin only.
                let origin = audience(&d.endpoint).unwrap_or_else(|| "?".into());
                eprintln!("push: subscription {} at {origin} failed: {reason}", d.id);
            }
        }
    }
    // The messages are out; a failed bookkeeping write must not turn into a retry (and so a
    // duplicate) by the caller, so it is logged rather than returned.
    if let Err(e) = subscriptions::apply_outcomes(store, &gone, &used, crate::util::now_ms()) {
        eprintln!(
            "push: could not update {}: {e}",
            subscriptions::SUBSCRIPTIONS_FILE
        );
    }
    DeliveryReport {
        delivered: used.len(),
        expired: gone.len(),
        failed,
        no_subscriptions: subs.is_empty(),
        deliveries,
    }
}

/// `POST /api/internal/notifications/send` after validation: sends `n` to every subscription
/// of `user`, removes expired ones, marks delivered ones used. The store is read before and
/// written after the network calls, never locked during them.
pub fn deliver(
    store: &Store,
    client: &PushClient,
    vapid: &VapidKeys,
    user: &str,
    n: &ValidatedNotification,
) -> Result<DeliveryReport, PushError> {
    let subs = subscriptions::list(store, user)?;
    Ok(fan_out(store, client, vapid, &subs, &n.payload, &n.options))
}

/// `POST /api/notifications/test`: the reference's fixed test message to every device of
/// `user` (tag `test`, so also Topic-keyed). 404 when the user has none.
pub fn send_test(
    store: &Store,
    client: &PushClient,
    vapid: &VapidKeys,
    user: &str,
) -> Result<TestReport, DeviceError> {
    let subs = subscriptions::list(store, user)?;
    if subs.is_empty() {
        return Err(DeviceError::NoSubscriptions);
    }
    let opts = SendOptions {
        topic: Some(topic_for_tag("test")),
        ..SendOptions::default()
    };
    let report = fan_out(store, client, vapid, &subs, &test_payload(), &opts);
    Ok(TestReport {
        success: true,
        devices_notified: subs.len(),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::subscriptions::tests::browser_keys;
    use crate::push::vapid::KeySource;

    fn details(r: Result<ValidatedNotification, PushError>) -> Vec<Detail> {
        match r {
            Err(PushError::Validation(d)) => d,
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    fn ok(v: Value) -> ValidatedNotification {
        validate_send_body(&v, 1234).unwrap()
    }

    #[test]
    fn payload_shape_and_defaults() {
        let n = ok(json!({"title": "T", "body": "B", "extra": 1}));
        assert_eq!(
            String::from_utf8(n.payload).unwrap(),
            r#"{"title":"T","body":"B","tag":"assistant-1234","data":{"eventType":"assistant.message","url":"/","priority":"normal"}}"#
        );
        assert_eq!(n.options, SendOptions::default());
        let n =
            ok(json!({"title": "T", "body": "B", "url": "/s/1", "tag": "t1", "priority": "high"}));
        let v: Value = serde_json::from_slice(&n.payload).unwrap();
        assert_eq!(v["tag"], "t1");
        assert_eq!(
            v["data"],
            json!({"eventType": "assistant.message", "url": "/s/1", "priority": "high"})
        );
        assert_eq!(n.options.urgency, Urgency::High);
        assert_eq!(
            n.options.topic.as_deref(),
            Some(topic_for_tag("t1").as_str())
        );
        // An explicit empty tag is kept but gives no Topic.
        let n = ok(json!({"title": "T", "body": "B", "tag": ""}));
        assert_eq!(
            serde_json::from_slice::<Value>(&n.payload).unwrap()["tag"],
            ""
        );
        assert_eq!(n.options.topic, None);
    }

    #[test]
    fn topic_is_32_base64url_chars_and_stable() {
        let t = topic_for_tag("session-42");
        assert_eq!(t.len(), TOPIC_LEN);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(t, topic_for_tag("session-42"));
        assert_ne!(t, topic_for_tag("session-43"));
    }

    #[test]
    fn lengths_count_utf16_units() {
        assert!(validate_send_body(&json!({"title": "😀".repeat(60), "body": "b"}), 0).is_ok());
        let d = details(validate_send_body(
            &json!({"title": "😀".repeat(61), "body": "b"}),
            0,
        ));
        assert_eq!((d[0].path.clone(), d[0].code), (path!["title"], "too_big"));
        assert!(validate_send_body(&json!({"title": "t", "body": "é".repeat(500)}), 0).is_ok());
        assert!(validate_send_body(&json!({"title": "t", "body": "é".repeat(501)}), 0).is_err());
        assert!(validate_send_body(
            &json!({"title": "t", "body": "b", "tag": "x".repeat(80)}),
            0
        )
        .is_ok());
        assert!(validate_send_body(
            &json!({"title": "t", "body": "b", "tag": "x".repeat(81)}),
            0
        )
        .is_err());
        let url = format!("/{}", "x".repeat(499));
        assert!(validate_send_body(&json!({"title": "t", "body": "b", "url": url}), 0).is_ok());
        let url = format!("/{}", "x".repeat(500));
        assert!(validate_send_body(&json!({"title": "t", "body": "b", "url": url}), 0).is_err());
    }

    #[test]
    fn types_nulls_and_shapes() {
        for v in [json!([]), json!("x"), json!(null), json!(1)] {
            let d = details(validate_send_body(&v, 0));
            assert_eq!((d[0].path.clone(), d[0].code), (path![], "invalid_type"));
        }
        let d = details(validate_send_body(
            &json!({"title": null, "body": "", "tag": 3, "priority": "urgent", "url": null}),
            0,
        ));
        let got: Vec<_> = d
            .iter()
            .map(|d| (d.path[0].as_str().unwrap().to_string(), d.code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("title".into(), "invalid_type"),
                ("body".into(), "too_small"),
                ("url".into(), "invalid_type"),
                ("tag".into(), "invalid_type"),
                ("priority".into(), "invalid_value"),
            ]
        );
        assert_eq!(
            d[0].message,
            "Invalid input: expected string, received null"
        );
        let d = details(validate_send_body(
            &json!({"body": "b", "priority": null}),
            0,
        ));
        assert_eq!(
            d[0].message,
            "Invalid input: expected string, received undefined"
        );
        assert_eq!(d[1].code, "invalid_type");
        // Whitespace-only strings pass, as in the reference.
        assert!(validate_send_body(&json!({"title": " ", "body": " "}), 0).is_ok());
    }

    #[test]
    fn click_urls() {
        for u in [
            "/",
            "/sessions/1?x=y#z",
            "https://example.com/a",
            "http://example.com",
            "HTTPS://EXAMPLE.COM/",
        ] {
            assert!(is_allowed_click_url(u), "{u}");
        }
        for u in [
            "javascript:alert(1)",
            "//evil.example/x",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            " /x",
            "data:text/html,hi",
            "relative/path",
            "https://",
            "mailto:a@b.c",
            "",
        ] {
            assert!(!is_allowed_click_url(u), "{u:?}");
        }
        let d = details(validate_send_body(
            &json!({"title": "t", "body": "b", "url": "javascript:alert(1)"}),
            0,
        ));
        assert_eq!(
            (d[0].path.clone(), d[0].code),
            (path!["url"], "invalid_format")
        );
    }

    /// The largest body that fits is accepted; one more byte is refused before any I/O.
    #[test]
    fn payload_must_fit_one_record() {
        // Control characters are escaped as \u00XX: 6 payload bytes per UTF-16 unit.
        let base = |n: usize, m: usize| {
            json!({"title": "\u{1}".repeat(120), "tag": "\u{1}".repeat(80), "url": format!("/{}", "u".repeat(499)),
                   "body": format!("{}{}", "\u{1}".repeat(n), "b".repeat(m))})
        };
        let size = |v: &Value| validate_send_body(v, 0).map(|n| n.payload.len());
        let empty = match size(&base(0, 1)) {
            Ok(s) => s - 1,
            Err(e) => panic!("{e}"),
        };
        let need = MAX_PLAINTEXT - empty;
        let (n, m) = (need / 6, need % 6);
        assert!(n + m <= MAX_BODY_LEN);
        assert_eq!(size(&base(n, m)).unwrap(), MAX_PLAINTEXT);
        match validate_send_body(&base(n, m + 1), 0) {
            Err(PushError::PayloadTooLarge { size, max }) => {
                assert_eq!((size, max), (MAX_PLAINTEXT + 1, MAX_PLAINTEXT))
            }
            other => panic!("{other:?}"),
        }
    }

    fn sub(endpoint: &str) -> Subscription {
        let (p256dh, auth) = browser_keys();
        Subscription {
            id: 7,
            user_id: "u".into(),
            endpoint: endpoint.into(),
            p256dh,
            auth,
            device_name: None,
            created_at: 0,
            last_used_at: None,
        }
    }

    fn vapid() -> VapidKeys {
        VapidKeys::generate("mailto:ops@example.com").unwrap()
    }

    #[test]
    fn request_has_every_header_and_the_url_untouched() {
        let v = vapid();
        let s = sub("https://push.example.com:8443/w/A%2fb?t=%3D%3d&x");
        let opts = SendOptions {
            ttl: 60,
            urgency: Urgency::High,
            topic: Some(topic_for_tag("x")),
        };
        let r = build_push_request(&s, b"{}", &v, &opts).unwrap();
        assert_eq!(r.url, s.endpoint);
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "TTL",
                "Urgency",
                "Topic",
                "Content-Encoding",
                "Content-Type",
                "Authorization"
            ]
        );
        let get = |n: &str| r.headers.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        assert_eq!(get("TTL"), "60");
        assert_eq!(get("Urgency"), "high");
        assert_eq!(get("Content-Encoding"), "aes128gcm");
        assert_eq!(get("Content-Type"), "application/octet-stream");
        assert_eq!(
            get("Authorization"),
            v.authorization("https://push.example.com:8443")
        );
        assert!(r.body.len() <= crypto::MAX_RECORD_SIZE);
        let r = build_push_request(&s, b"{}", &v, &SendOptions::default()).unwrap();
        assert!(!r.headers.iter().any(|(k, _)| *k == "Topic"));
        assert!(r.headers.contains(&("TTL", "86400".into())));
        assert!(r.headers.contains(&("Urgency", "normal".into())));
    }

    #[test]
    fn bad_stored_keys_are_a_local_failure() {
        let mut s = sub("https://push.example.com/x");
        s.auth = "AAAA".into();
        assert!(matches!(
            build_push_request(&s, b"{}", &vapid(), &SendOptions::default()),
            Err(PushError::InvalidKey(_))
        ));
    }

    #[test]
    fn classification_status_by_status() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        for s in [200, 201, 202, 204] {
            assert_eq!(classify_push_response(s, &[], b""), PushOutcome::Delivered);
        }
        for s in [404, 410] {
            assert_eq!(
                classify_push_response(s, &[], b"gone"),
                PushOutcome::Expired
            );
        }
        let failed = |s, headers: &[(String, String)], body: &[u8]| match classify_push_response(
            s, headers, body,
        ) {
            PushOutcome::Failed {
                status,
                retry_after,
                reason,
            } => {
                assert_eq!(status, Some(s));
                (retry_after, reason)
            }
            other => panic!("{s}: {other:?}"),
        };
        let (ra, reason) = failed(429, &h(&[("retry-after", "30")]), b"slow down");
        assert_eq!(ra.as_deref(), Some("30"));
        assert_eq!(
            reason,
            "HTTP 429: rate limited by the push service; Retry-After: 30; body: slow down"
        );
        let (_, reason) = failed(
            403,
            &h(&[
                ("X-WNS-Status", "dropped"),
                ("X-WNS-Error-Description", "Invalid\r\nJWT"),
            ]),
            b"",
        );
        assert!(reason.contains("VAPID authorization rejected"));
        assert!(
            reason.contains("X-WNS-Status: dropped; X-WNS-Error-Description: Invalid JWT"),
            "{reason}"
        );
        let (_, reason) = failed(413, &[], &[b'x'; 1000]);
        assert!(reason.contains("too large"));
        assert!(reason.chars().count() < 300);
        for s in [301, 400, 401, 500, 502, 503, 418] {
            failed(s, &[], b"");
        }
    }

    #[test]
    fn stuck_services_cannot_hold_a_fan_out_past_its_deadline() {
        // A listener that never accepts: connects succeed (the kernel's backlog), answers never
        // come. 100 devices behind it with a 200 ms per-push deadline: without a fan-out bound
        // that is 7 rounds of 16 (1.4 s); with it, two rounds and the rest failed unsent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let subs: Vec<Subscription> = (0..100)
            .map(|i| sub(&format!("http://127.0.0.1:{port}/d{i}")))
            .collect();
        let client = PushClient::with_deadline(Duration::from_millis(200));
        assert_eq!(client.fanout_deadline(), Duration::from_millis(400));
        let started = Instant::now();
        let out = send_all(&client, &vapid(), &subs, b"{}", &SendOptions::default());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert_eq!(out.len(), 100);
        let reason = |d: &Delivery| match &d.outcome {
            PushOutcome::Failed { reason, .. } => reason.clone(),
            other => panic!("{other:?}"),
        };
        let unsent = out
            .iter()
            .filter(|d| reason(d).starts_with("not sent: the send's overall deadline"))
            .count();
        let timed_out = out
            .iter()
            .filter(|d| reason(d).starts_with("no response"))
            .count();
        assert_eq!(unsent + timed_out, 100);
        assert!(timed_out >= MAX_PARALLEL_SENDS, "{timed_out}");
        assert!(unsent >= 100 - 3 * MAX_PARALLEL_SENDS, "{unsent}");
        drop(listener);
    }

    #[test]
    fn unreachable_service_fails_fast_and_is_counted() {
        // A port on loopback nobody listens on: connection refused, no retry.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let v = VapidKeys::from_parts(
            &vapid().public_b64,
            &vapid().private_b64(),
            "mailto:a@example.com",
            KeySource::Env,
        );
        assert!(v.is_err(), "two different generated keys must not match");
        let v = vapid();
        let subs = vec![sub(&format!("http://127.0.0.1:{port}/x"))];
        let client = PushClient::with_deadline(Duration::from_secs(2));
        let out = send_all(&client, &v, &subs, b"{}", &SendOptions::default());
        assert_eq!(out.len(), 1);
        assert!(
            matches!(&out[0].outcome, PushOutcome::Failed { status: None, .. }),
            "{out:?}"
        );
    }
}
