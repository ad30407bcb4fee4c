//! Notifications and devices over HTTP: the real server, a real (Python) push receiver that
//! decrypts independently, and every input rule of contract §8/§9.

use crate::push_interop::{plaintext, Receiver, EVERY_STATUS};
use crate::util::*;
use serde_json::{json, Value};

fn start(tag: &str, args: &[&str]) -> (TempDir, TestServer) {
    let d = TempDir::new(tag);
    let state = d.join("state");
    let (code, _, err) = run_cli(&["init", "--state", state.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    let s = TestServer::start(&state, args, &[]);
    (d, s)
}

fn subscribe(s: &TestServer, body: &Value) -> Resp {
    s.call(
        "POST",
        "/api/notifications/subscribe",
        Some(&body.to_string()),
    )
}

#[test]
fn send_without_vapid_is_503_after_auth_and_before_validation() {
    let d = TempDir::new("push-503");
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // An existing fixture without vapid.json: serve adds only the token.
    let s = TestServer::start(&state, &[], &[]);
    assert!(!state.join("vapid.json").exists());
    let r = http(
        "POST",
        &s.url("/api/internal/notifications/send"),
        &[],
        Some(b"{}"),
    );
    assert_eq!(r.status, 401);
    for body in ["{}", "not json", r#"{"title":"t","body":"b"}"#] {
        let r = s.call("POST", "/api/internal/notifications/send", Some(body));
        assert_eq!(r.status, 503);
        assert_eq!(
            r.json(),
            json!({"error": "Push notifications are not configured (missing VAPID env)"})
        );
    }
    let r = s.call("GET", "/api/notifications/vapid-public-key", None);
    assert_eq!(
        (r.status, r.json()),
        (
            503,
            json!({"error": "Push notifications are not configured"})
        )
    );
}

#[test]
fn init_creates_vapid_keys_0600_and_public_key_is_served() {
    let (_d, s) = start("push-key", &[]);
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(s.state.join("vapid.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let file: Value =
        serde_json::from_slice(&std::fs::read(s.state.join("vapid.json")).unwrap()).unwrap();
    let r = s.call("GET", "/api/notifications/vapid-public-key", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"publicKey": file["publicKey"]}));
    assert_eq!(file["publicKey"].as_str().unwrap().len(), 87);
}

#[test]
fn vapid_generate_prints_a_pair_and_bad_env_keys_refuse_to_start() {
    let (code, out, _) = run_cli(&["vapid", "generate"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("VAPID_PUBLIC_KEY=") && lines[0].len() == 17 + 87,
        "{out}"
    );
    assert!(lines[1].starts_with("VAPID_PRIVATE_KEY="), "{out}");
    let public = lines[0].trim_start_matches("VAPID_PUBLIC_KEY=");
    let private = lines[1].trim_start_matches("VAPID_PRIVATE_KEY=");
    let (_, other_out, _) = run_cli(&["vapid", "generate"], &[]);
    let other_public = other_out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("VAPID_PUBLIC_KEY=");
    let d = TempDir::new("push-env");
    let bad = [
        (other_public, private, "mailto:ops@example.com"),
        (public, private, "ops@example.com"),
        (public, private, "mailto:mailto:ops@example.com"),
        (public, private, "http://example.com"),
    ];
    for (pubk, privk, sub) in bad {
        let env = [
            ("VAPID_PUBLIC_KEY", pubk),
            ("VAPID_PRIVATE_KEY", privk),
            ("VAPID_SUBJECT", sub),
        ];
        let e = TestServer::try_start(&d.join("state"), &[], &env)
            .err()
            .expect("must refuse to start");
        assert!(e.contains("VAPID"), "{e}");
    }
    let env = [
        ("VAPID_PUBLIC_KEY", public),
        ("VAPID_PRIVATE_KEY", private),
        ("VAPID_SUBJECT", " https://ops.example.com "),
    ];
    let s = TestServer::start(&d.join("state"), &[], &env);
    let r = s.call("GET", "/api/notifications/vapid-public-key", None);
    assert_eq!(r.json(), json!({"publicKey": public}));
}

#[test]
fn send_delivers_to_every_device_and_the_receiver_decrypts_it() {
    let rx = Receiver::start();
    let (_d, s) = start("push-send", &["--allow-private-push-endpoints"]);
    let ok = rx.device("ok", "status=201");
    let gone = rx.device("gone", "status=410");
    let bad = rx.device("bad", "status=500");
    for b in [&ok, &gone, &bad] {
        assert_eq!(subscribe(&s, b).status, 200);
    }
    let r = s.call(
        "POST",
        "/api/internal/notifications/send",
        Some(r#"{"title":"Done 😀","body":"All green","url":"/sessions/1","tag":"t1","priority":"high"}"#),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"delivered": 1, "expired": 1, "failed": 1, "noSubscriptions": false})
    );
    let msgs = rx.received("ok");
    assert_eq!(msgs.len(), 1);
    let payload: Value = serde_json::from_slice(&plaintext(&msgs[0])).unwrap();
    assert_eq!(
        payload,
        json!({"title": "Done 😀", "body": "All green", "tag": "t1",
               "data": {"eventType": "assistant.message", "url": "/sessions/1", "priority": "high"}})
    );
    assert_eq!(msgs[0]["headers"]["urgency"], "high");
    assert_eq!(msgs[0]["headers"]["topic"].as_str().unwrap().len(), 32);
    assert_eq!(msgs[0]["vapid"]["ok"], true);
    // Stored and sent byte for byte: the query's escapes are untouched.
    assert!(ok["endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/push/ok?k=%2Fx%3d&y=%7E1"));
    assert_eq!(
        format!("{}{}", rx.origin, msgs[0]["path"].as_str().unwrap()),
        ok["endpoint"].as_str().unwrap()
    );
    // The 410 device was removed, the 500 one kept.
    let subs = s
        .call("GET", "/api/notifications/subscriptions", None)
        .json();
    let endpoints: Vec<&str> = subs["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.contains(&ok["endpoint"].as_str().unwrap()));
    assert!(endpoints.contains(&bad["endpoint"].as_str().unwrap()));
    assert!(!endpoints.contains(&gone["endpoint"].as_str().unwrap()));
    // Defaults: tag assistant-<ms>, url "/", priority normal, no Topic.
    let r = s.call(
        "POST",
        "/api/internal/notifications/send",
        Some(r#"{"title":"t","body":"b"}"#),
    );
    assert_eq!(r.json()["delivered"], 1);
    let msgs = rx.received("ok");
    let p: Value = serde_json::from_slice(&plaintext(&msgs[1])).unwrap();
    assert!(p["tag"].as_str().unwrap().starts_with("assistant-"));
    assert_eq!(
        p["data"],
        json!({"eventType": "assistant.message", "url": "/", "priority": "normal"})
    );
    assert_eq!(msgs[1]["headers"]["urgency"], "normal");
    assert!(msgs[1]["headers"].get("topic").is_none() || msgs[1]["headers"]["topic"].is_null());
    // No subscriptions for another user.
    let r = s.call(
        "POST",
        "/api/internal/notifications/send?userId=nobody",
        Some(r#"{"title":"t","body":"b"}"#),
    );
    assert_eq!(
        r.json(),
        json!({"delivered": 0, "expired": 0, "failed": 0, "noSubscriptions": true})
    );
}

#[test]
fn send_validation_boundaries_and_rate_limit() {
    let (_d, s) = start("push-valid", &[]);
    let send = |b: &Value| {
        s.call(
            "POST",
            "/api/internal/notifications/send",
            Some(&b.to_string()),
        )
    };
    let e60 = "😀".repeat(60);
    let e61 = "😀".repeat(61);
    let bad = [
        json!({"title": e61, "body": "b"}),
        json!({"title": "", "body": "b"}),
        json!({"title": "t"}),
        json!({"title": null, "body": "b"}),
        json!({"title": 1, "body": "b"}),
        json!({"title": "t", "body": "b", "url": "javascript:alert(1)"}),
        json!({"title": "t", "body": "b", "url": "//evil.example"}),
        json!({"title": "t", "body": "b", "priority": "urgent"}),
        json!({"title": "t", "body": "b", "tag": "x".repeat(81)}),
        json!({"title": "t", "body": "x".repeat(501)}),
        json!([]),
    ];
    // Bad bodies cost nothing: more than 10 of them, then 10 good sends still pass.
    for _ in 0..2 {
        for b in &bad {
            let r = send(b);
            assert_eq!(r.status, 400, "{b}");
            assert_eq!(r.json()["error"], "Invalid request body", "{b}");
        }
    }
    let r = s.call("POST", "/api/internal/notifications/send", Some("{oops"));
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "Invalid JSON"}))
    );
    for i in 0..10 {
        let b = if i == 0 {
            json!({"title": e60, "body": "b", "url": "https://example.com/x?y=1"})
        } else {
            json!({"title": "t", "body": "b"})
        };
        let r = send(&b);
        assert_eq!(
            r.status,
            200,
            "send {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = send(&json!({"title": "t", "body": "b"}));
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error": "Rate limit exceeded"}));
    assert_eq!(r.header("Retry-After"), Some("6"));
    // Validation still comes before the limiter.
    assert_eq!(send(&bad[0]).status, 400);
}

#[test]
fn subscription_inputs_are_checked() {
    use base64::Engine;
    let rx = Receiver::start();
    let (_d, s) = start("push-subs", &[]);
    let dev = rx.device("x", "status=201");
    let p = dev["keys"]["p256dh"].as_str().unwrap().to_string();
    let a = dev["keys"]["auth"].as_str().unwrap().to_string();
    let raw_p = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&p)
        .unwrap();
    let raw_a = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&a)
        .unwrap();
    let std_p = base64::engine::general_purpose::STANDARD.encode(&raw_p);
    let std_a = base64::engine::general_purpose::STANDARD.encode(&raw_a);
    let padded_p = base64::engine::general_purpose::URL_SAFE.encode(&raw_p);
    let mut off = raw_p.clone();
    off[64] ^= 1;
    let off_p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&off);
    let a15 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw_a[..15]);
    let ep = "https://push.example.com/wpush/v2/abc?x=%2F";
    let body =
        |ep: &str, p: &str, a: &str| json!({"endpoint": ep, "keys": {"p256dh": p, "auth": a}});
    // Accepted, stored canonical (unpadded base64url).
    for (pp, aa) in [(&padded_p, &a), (&std_p, &std_a), (&p, &a)] {
        let r = subscribe(&s, &body(ep, pp, aa));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let sub = &r.json()["subscription"];
        assert_eq!(
            (
                sub["p256dh"].as_str().unwrap(),
                sub["auth"].as_str().unwrap()
            ),
            (p.as_str(), a.as_str())
        );
        assert_eq!(sub["endpoint"], ep);
        assert_eq!(sub["id"], 1, "upsert by endpoint keeps the id");
        assert_eq!(sub["deviceName"], Value::Null);
    }
    let long = format!("https://push.example.com/{}", "a".repeat(3000));
    let rejected = [
        body(ep, &off_p, &a),
        body(ep, &p, &a15),
        body(ep, &a, &p),
        body("http://push.example.com/x", &p, &a),
        body("https://127.0.0.1/x", &p, &a),
        body("https://169.254.169.254/latest", &p, &a),
        body("https://user:pw@push.example.com/x", &p, &a),
        body("https://localhost/x", &p, &a),
        body(&long, &p, &a),
    ];
    for b in &rejected {
        let r = subscribe(&s, b);
        assert_eq!(r.status, 400, "{b}");
        assert_eq!(r.json()["error"], "Invalid subscription data", "{b}");
    }
    let r = s.call("POST", "/api/notifications/subscribe", Some("{nope"));
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "Invalid JSON"}))
    );
    // 100 per user; the 101st is refused.
    for i in 2..=100 {
        assert_eq!(
            subscribe(&s, &body(&format!("https://push.example.com/d{i}"), &p, &a)).status,
            200
        );
    }
    let r = subscribe(&s, &body("https://push.example.com/d101", &p, &a));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "Too many push subscriptions for this user (limit 100); remove one first"
    );
    // Delete by id (strict), unsubscribe by endpoint.
    let r = s.call("DELETE", "/api/notifications/subscriptions/1x", None);
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "Invalid subscription ID"}))
    );
    let r = s.call("DELETE", "/api/notifications/subscriptions/1", None);
    assert_eq!(r.json(), json!({"success": true}));
    let r = s.call("DELETE", "/api/notifications/subscriptions/1", None);
    assert_eq!(r.json(), json!({"success": false}));
    let r = s.call(
        "DELETE",
        "/api/notifications/subscribe",
        Some(&json!({"endpoint": "https://push.example.com/d2"}).to_string()),
    );
    assert_eq!(r.json(), json!({"success": true}));
    let n = s
        .call("GET", "/api/notifications/subscriptions", None)
        .json()["subscriptions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 98);
    // POST /test with no subscriptions for a user.
    let r = s.call("POST", "/api/notifications/test?userId=nobody", None);
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"error": "No push subscriptions registered"}))
    );
}

/// SLOW (about 10 s: the production per-push deadline). Every scripted answer, through the
/// binary: counts, which subscriptions remain (only 404/410 go), `lastUsedAt` set on the
/// delivered ones only, every push decrypted and its JWT verified by the receiver, and a
/// hanging push service costing no more than its own deadline.
#[test]
fn send_every_status_through_the_binary_slow() {
    let rx = Receiver::start();
    let (_d, s) = start("push-matrix", &["--allow-private-push-endpoints"]);
    let scripts = EVERY_STATUS;
    let mut endpoints = std::collections::HashMap::new();
    for (name, script) in scripts {
        let dev = rx.device(name, script);
        assert_eq!(subscribe(&s, &dev).status, 200, "{name}");
        endpoints.insert(name, dev["endpoint"].as_str().unwrap().to_string());
    }
    let used = |s: &TestServer| -> Vec<(String, u64)> {
        let subs = s
            .call("GET", "/api/notifications/subscriptions", None)
            .json();
        let mut v: Vec<(String, u64)> = subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                let e = x["endpoint"].as_str().unwrap();
                let name = e.split("/push/").nth(1).unwrap().split('?').next().unwrap();
                (name.to_string(), x["lastUsedAt"].as_u64().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before: std::collections::HashMap<String, u64> = used(&s).into_iter().collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let body = r#"{"title":"Matrix","body":"every status","tag":"matrix"}"#;
    let t0 = std::time::Instant::now();
    let r = s.call("POST", "/api/internal/notifications/send", Some(body));
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"delivered": 3, "expired": 2, "failed": 6, "noSubscriptions": false})
    );
    // The hang costs its own 10 s deadline, not more.
    assert!(took < std::time::Duration::from_secs(13), "{took:?}");
    let vapid: Value =
        serde_json::from_slice(&std::fs::read(s.state.join("vapid.json")).unwrap()).unwrap();
    for (name, _) in scripts {
        let got = rx.received(name);
        assert_eq!(got.len(), 1, "{name} got {} pushes", got.len());
        let m = &got[0];
        let payload: Value = serde_json::from_slice(&plaintext(m)).unwrap();
        assert_eq!(payload["title"], "Matrix", "{name}");
        assert_eq!(m["records"], 1, "{name}: one aes128gcm record");
        let h = &m["headers"];
        assert_eq!(h["content-encoding"], "aes128gcm", "{name}");
        assert_eq!(h["content-type"], "application/octet-stream", "{name}");
        assert_eq!(h["ttl"], "86400", "{name}");
        assert_eq!(h["urgency"], "normal", "{name}");
        assert_eq!(h["topic"].as_str().unwrap().len(), 32, "{name}");
        assert_eq!(m["vapid"]["ok"], true, "{name}: {}", m["vapid"]);
        assert_eq!(m["vapid"]["claims"]["aud"], rx.origin.as_str());
        assert_eq!(m["vapid"]["claims"]["sub"], vapid["subject"]);
        assert_eq!(m["vapid"]["k"], vapid["publicKey"]);
        assert_eq!(
            format!("{}{}", rx.origin, m["path"].as_str().unwrap()),
            endpoints[name]
        );
    }
    // Failures are logged with the service's reason (WNS puts it in headers, 429 its wait).
    let log = s.log_text();
    assert!(log.contains("Invalid VAPID token"), "{log}");
    assert!(log.contains("Retry-After: 30"), "{log}");
    assert_eq!(log.matches("push: subscription ").count(), 6, "{log}");
    // Only 404/410 are gone; lastUsedAt moved on the delivered ones only.
    let left: Vec<(String, bool)> = used(&s)
        .into_iter()
        .map(|(name, at)| {
            let moved = at > before[&name];
            (name, moved)
        })
        .collect();
    let want: Vec<(String, bool)> = [
        ("hang", false),
        ("s200", true),
        ("s201", true),
        ("s202", true),
        ("s400", false),
        ("s403", false),
        ("s413", false),
        ("s429", false),
        ("s500", false),
    ]
    .iter()
    .map(|(n, used)| (n.to_string(), *used))
    .collect();
    assert_eq!(left, want);
}
