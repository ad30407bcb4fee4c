//! Web Push against an implementation we did not write (issue 3): `tests/push_receiver.py`
//! decrypts every push with PyPI `http_ece` and checks the VAPID JWT with `cryptography`.
//! The receiver answers scripted statuses per device, so outcome classification, expiry
//! bookkeeping and the per-push deadline are tested over real HTTP.
//!
//! Needs `python3` with `pip install http-ece cryptography` (`.ci/run` installs them). A missing
//! module fails the test with that instruction; it is never skipped.

use assistantd::push::notify::{
    send_all, send_test, validate_send_body, PushClient, PushOutcome, DEFAULT_TTL_SECS,
    MAX_PARALLEL_SENDS, SEND_TIMEOUT,
};
use assistantd::push::subscriptions::{self, Subscription};
use assistantd::push::{crypto, deliver, notify, PushError, VapidKeys};
use assistantd::store::Store;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUBJECT: &str = "mailto:interop@example.com";

/// The Python receiver as a child process; killed on drop (and it exits by itself when our
/// stdin pipe closes or after its lifetime).
pub(crate) struct Receiver {
    child: Child,
    pub(crate) origin: String,
    http: ureq::Agent,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/push_receiver.py");
        let check = Command::new("python3")
            .args(["-c", "import http_ece, cryptography"])
            .output()
            .expect("python3 is needed for the Web Push interop test");
        assert!(
            check.status.success(),
            "the Web Push interop test needs Python modules: pip install http-ece cryptography\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut child = Command::new("python3")
            .args([
                script,
                "--port",
                "0",
                "--lifetime",
                "300",
                "--exit-on-stdin-eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/push_receiver.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("receiver printed {line:?} instead of its port"));
        let http = ureq::Agent::config_builder()
            .proxy(None)
            .build()
            .new_agent();
        Receiver {
            child,
            origin: format!("http://127.0.0.1:{port}"),
            http,
        }
    }

    fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.origin))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// A new device answering with `script` (`status=…&retry_after=…&hang_secs=…`); returns
    /// the subscription JSON a browser would POST to `/subscribe`.
    pub(crate) fn device(&self, name: &str, script: &str) -> Value {
        let keys = self.get(&format!("/keys/{name}?{script}"));
        json!({"endpoint": keys["endpoint"], "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}})
    }

    pub(crate) fn received(&self, name: &str) -> Vec<Value> {
        self.get(&format!("/received/{name}"))["messages"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_store(name: &str) -> Store {
    let d = std::env::temp_dir().join(format!("assistantd-interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Store::new(d)
}

pub(crate) fn plaintext(message: &Value) -> Vec<u8> {
    assert_eq!(message["decrypt_error"], Value::Null, "{message}");
    base64::engine::general_purpose::STANDARD
        .decode(message["plaintext_b64"].as_str().unwrap())
        .unwrap()
}

/// Everything the receiver checked independently about one push.
fn assert_valid_push(rx: &Receiver, message: &Value, vapid: &VapidKeys, payload: &[u8]) {
    assert_eq!(plaintext(message), payload);
    assert_eq!(message["records"], 1, "one aes128gcm record: {message}");
    assert_eq!(message["rs"], crypto::MAX_RECORD_SIZE);
    assert!(message["length"].as_u64().unwrap() <= crypto::MAX_RECORD_SIZE as u64);
    let v = &message["vapid"];
    assert_eq!(v["ok"], true, "JWT rejected by the receiver: {v}");
    assert_eq!(v["claims"]["aud"], rx.origin.as_str());
    assert_eq!(v["claims"]["sub"], vapid.subject.as_str());
    assert_eq!(v["k"], vapid.public_b64.as_str());
    let h = &message["headers"];
    assert_eq!(h["content-encoding"], "aes128gcm");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["ttl"], DEFAULT_TTL_SECS.to_string());
}

/// One device per answer issue 3 lists, `(name, receiver script)`: three successes, the two
/// that expire a subscription, five failures (429 with a `Retry-After` of 30) and a hang.
pub(crate) const EVERY_STATUS: [(&str, &str); 11] = [
    ("s201", "status=201"),
    ("s202", "status=202"),
    ("s200", "status=200"),
    ("s404", "status=404"),
    ("s410", "status=410"),
    ("s400", "status=400"),
    ("s403", "status=403"),
    ("s413", "status=413"),
    ("s429", "status=429&retry_after=30"),
    ("s500", "status=500"),
    ("hang", "status=201&hang_secs=60"),
];

/// Every scripted status, through `send_all` with the production client: the right outcome
/// for each, everything decrypted and verified by the receiver, and a hanging push service
/// costing no more than the deadline.
#[test]
fn issue_3_interop_every_status_decrypts_and_verifies() {
    let rx = Receiver::start();
    let store = temp_store("statuses");
    let vapid = VapidKeys::generate(SUBJECT).unwrap();
    let script = EVERY_STATUS;
    let mut subs: Vec<Subscription> = Vec::new();
    for (i, (name, s)) in script.iter().enumerate() {
        let body = rx.device(name, s);
        // Through the real validation, with --allow-private-push-endpoints semantics.
        assert!(subscriptions::subscribe(&store, "u", &body, false, 0).is_err());
        subs.push(subscriptions::subscribe(&store, "u", &body, true, i as i64).unwrap());
    }
    let n = validate_send_body(
        &json!({"title": "Build finished 😀", "body": "All green\n✓", "url": "/sessions/1",
                "tag": "interop", "priority": "high"}),
        0,
    )
    .unwrap();

    let client = PushClient::new();
    let started = Instant::now();
    let out = send_all(&client, &vapid, &subs, &n.payload, &n.options);
    let elapsed = started.elapsed();
    assert!(
        elapsed < SEND_TIMEOUT + Duration::from_secs(3),
        "a hanging push service must cost at most the deadline; took {elapsed:?}"
    );
    assert!(
        elapsed >= SEND_TIMEOUT - Duration::from_secs(1),
        "{elapsed:?}"
    );

    for (d, (name, _)) in out.iter().zip(script) {
        let sub = subs.iter().find(|s| s.id == d.id).unwrap();
        assert_eq!(d.endpoint, sub.endpoint);
        match (name, &d.outcome) {
            ("s201" | "s202" | "s200", PushOutcome::Delivered) => {}
            ("s404" | "s410", PushOutcome::Expired) => {}
            (
                "hang",
                PushOutcome::Failed {
                    status: None,
                    reason,
                    ..
                },
            ) => {
                assert!(reason.contains("no response"), "{reason}")
            }
            (
                _,
                PushOutcome::Failed {
                    status: Some(s),
                    retry_after,
                    reason,
                },
            ) => {
                assert_eq!(format!("s{s}"), name, "{reason}");
                match *s {
                    429 => {
                        assert_eq!(retry_after.as_deref(), Some("30"));
                        assert!(reason.contains("Too many messages"), "{reason}");
                    }
                    403 => assert!(
                        reason.contains("X-WNS-Error-Description: Invalid VAPID token"),
                        "{reason}"
                    ),
                    400 => assert!(reason.contains("Invalid payload"), "{reason}"),
                    _ => {}
                }
            }
            (name, other) => panic!("{name}: unexpected {other:?}"),
        }
        let got = rx.received(name);
        assert_eq!(got.len(), 1, "{name} got {} pushes", got.len());
        assert_valid_push(&rx, &got[0], &vapid, &n.payload);
        let h = &got[0]["headers"];
        assert_eq!(h["urgency"], "high");
        assert_eq!(h["topic"], notify::topic_for_tag("interop").as_str());
        // The endpoint went out byte for byte.
        assert_eq!(
            format!("{}{}", rx.origin, got[0]["path"].as_str().unwrap()),
            sub.endpoint
        );
    }
}

/// `deliver` end to end: counts, expired subscriptions removed (same id and endpoint),
/// delivered ones marked used, failed ones kept; the largest payload that fits one record is
/// delivered and decrypts, one byte more is refused before anything is sent.
#[test]
fn issue_3_deliver_bookkeeping_and_payload_boundary() {
    let rx = Receiver::start();
    let store = temp_store("deliver");
    let vapid = VapidKeys::generate(SUBJECT).unwrap();
    let mut ids = std::collections::HashMap::new();
    for (name, s) in [
        ("ok", "status=201"),
        ("gone", "status=410"),
        ("missing", "status=404"),
        ("broken", "status=500"),
    ] {
        let sub = subscriptions::subscribe(&store, "alice", &rx.device(name, s), true, 5).unwrap();
        ids.insert(name, sub.id);
    }
    let bob =
        subscriptions::subscribe(&store, "bob", &rx.device("bob", "status=201"), true, 5).unwrap();

    // The largest payload that fits: control characters cost 6 bytes each once escaped.
    let body_of = |n: usize, m: usize| {
        json!({"title": "\u{1}".repeat(120), "tag": "\u{1}".repeat(80),
               "url": format!("/{}", "u".repeat(499)),
               "body": format!("{}{}", "\u{1}".repeat(n), "b".repeat(m))})
    };
    let base = validate_send_body(&body_of(0, 1), 0).unwrap().payload.len() - 1;
    let need = crypto::MAX_PLAINTEXT - base;
    let (n, m) = (need / 6, need % 6);
    let biggest = validate_send_body(&body_of(n, m), 0).unwrap();
    assert_eq!(biggest.payload.len(), crypto::MAX_PLAINTEXT);
    match validate_send_body(&body_of(n, m + 1), 0) {
        Err(PushError::PayloadTooLarge { size, .. }) => assert_eq!(size, crypto::MAX_PLAINTEXT + 1),
        other => panic!("{other:?}"),
    }

    let client = PushClient::new();
    let report = deliver(&store, &client, &vapid, "alice", &biggest).unwrap();
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        json!({"delivered": 1, "expired": 2, "failed": 1, "noSubscriptions": false})
    );
    let got = rx.received("ok");
    assert_eq!(got.len(), 1);
    assert_valid_push(&rx, &got[0], &vapid, &biggest.payload);
    assert_eq!(got[0]["length"], crypto::MAX_RECORD_SIZE);
    assert_eq!(got[0]["headers"]["urgency"], "normal");
    assert!(
        rx.received("bob").is_empty(),
        "only alice's devices are notified"
    );

    let left = subscriptions::list(&store, "alice").unwrap();
    let left_ids: Vec<u64> = left.iter().map(|s| s.id).collect();
    assert_eq!(left_ids.len(), 2);
    assert!(left_ids.contains(&ids["ok"]) && left_ids.contains(&ids["broken"]));
    let ok = left.iter().find(|s| s.id == ids["ok"]).unwrap();
    let broken = left.iter().find(|s| s.id == ids["broken"]).unwrap();
    assert!(ok.last_used_at.unwrap() > 5, "delivered → lastUsedAt set");
    assert_eq!(broken.last_used_at, Some(5), "failed → untouched");
    assert_eq!(subscriptions::list(&store, "bob").unwrap(), vec![bob]);

    // No subscriptions: nothing sent, flagged.
    let none = deliver(&store, &client, &vapid, "carol", &biggest).unwrap();
    assert_eq!(
        serde_json::to_value(&none).unwrap(),
        json!({"delivered": 0, "expired": 0, "failed": 0, "noSubscriptions": true})
    );

    // The /test route's message, as the reference sends it.
    let t = send_test(&store, &client, &vapid, "alice").unwrap();
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        json!({"success": true, "devicesNotified": 2})
    );
    let got = rx.received("ok");
    assert_eq!(got.len(), 2);
    assert_valid_push(&rx, &got[1], &vapid, &notify::test_payload());
    assert!(send_test(&store, &client, &vapid, "carol").is_err());
}

/// 100 devices behind a receiver that takes 50 ms per push: all delivered, in parallel.
/// Prints the time (issue 3 asks for it): `cargo test --test integration issue_3_hundred -- --nocapture`.
#[test]
fn issue_3_hundred_devices_behind_a_50ms_receiver() {
    let rx = Receiver::start();
    let vapid = VapidKeys::generate(SUBJECT).unwrap();
    let subs: Vec<Subscription> = (0..100)
        .map(|i| {
            let d = rx.device(&format!("d{i}"), "status=201&delay_ms=50");
            Subscription {
                id: i + 1,
                user_id: "u".into(),
                endpoint: d["endpoint"].as_str().unwrap().into(),
                p256dh: d["keys"]["p256dh"].as_str().unwrap().into(),
                auth: d["keys"]["auth"].as_str().unwrap().into(),
                device_name: None,
                created_at: 0,
                last_used_at: None,
            }
        })
        .collect();
    let n = validate_send_body(&json!({"title": "t", "body": "b"}), 0).unwrap();
    let client = PushClient::new();
    let started = Instant::now();
    let out = send_all(&client, &vapid, &subs, &n.payload, &n.options);
    let elapsed = started.elapsed();
    let delivered = out
        .iter()
        .filter(|d| d.outcome == PushOutcome::Delivered)
        .count();
    eprintln!(
        "issue 3: 100 devices behind a 50 ms receiver: {delivered} delivered in {} ms \
         ({MAX_PARALLEL_SENDS} in parallel)",
        elapsed.as_millis()
    );
    assert_eq!(delivered, 100, "{out:?}");
    // One at a time would take ≥ 5 s; ⌈100 / 16⌉ = 7 rounds of 50 ms is 350 ms plus crypto
    // (measured: ~400 ms optimised, ~1.2 s in a debug build where p256 is slow).
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    for i in [0, 57, 99] {
        let got = rx.received(&format!("d{i}"));
        assert_eq!(got.len(), 1);
        assert_valid_push(&rx, &got[0], &vapid, &n.payload);
    }
}
