//! Bounded random fuzzing (issue 4) of the request-body parsers and validators (settings patch,
//! notification, subscription, schedules) and the state-file readers, through the real route
//! table without a socket: no panic, and every rejection is a 4xx with a JSON `error`; a 500
//! (naming the file) only in the cases that break a state file on purpose. Structure-aware: it mutates valid bodies as well as
//! generating random JSON and bytes. `FUZZ_ITERS` (default 2000) or `FUZZ_SECS` bound the run;
//! `make fuzz` runs it for longer. Seeded from `FUZZ_SEED` (printed) so a failure can be replayed.

use crate::util::*;
use assistantd::http::{Body, Request};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WEIRD_STRINGS: &[&str] = &[
    "",
    " ",
    "a",
    "😀",
    "\u{0}",
    "\u{202e}",
    "../../etc/passwd",
    "javascript:alert(1)",
    "/",
    "//x",
    "https://127.0.0.1/x",
    "http://[::1]/",
    "mailto:x",
    "0x10",
    "-1",
    "1e400",
    "null",
    "\\",
    "\"",
    "dark",
    "light",
    "normal",
    "high",
    "interval",
    "cron",
    "*/5 * * * *",
    "@hourly",
    "Mars/Phobos",
    "Europe/Berlin",
    "America/New_York",
    "60",
    "0 0 31 2 *",
];

fn random_string(r: &mut Rng) -> String {
    match r.below(4) {
        0 => WEIRD_STRINGS[r.below(WEIRD_STRINGS.len())].to_string(),
        1 => "x".repeat(r.below(600)),
        2 => "😀".repeat(r.below(300)),
        _ => (0..r.below(20))
            .map(|_| char::from_u32(r.below(0x3000) as u32).unwrap_or('?'))
            .collect(),
    }
}

fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(r.chance(50)),
        2 => match r.below(5) {
            0 => json!(r.next() as i64),
            1 => json!(r.below(200) as i64 - 50),
            2 => json!(0.25),
            3 => json!(4.01),
            _ => json!(1e300),
        },
        3 | 4 => json!(random_string(r)),
        5 => Value::Array(
            (0..r.below(5))
                .map(|_| random_value(r, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..r.below(6) {
                m.insert(random_string(r), random_value(r, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Replaces, removes or adds one key somewhere in `v`.
fn mutate(r: &mut Rng, v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) if !m.is_empty() && r.chance(70) => {
            let k = m.keys().nth(r.below(m.len())).unwrap().clone();
            match r.below(4) {
                0 => {
                    m.remove(&k);
                }
                1 => mutate(r, m.get_mut(&k).unwrap(), keys),
                _ => {
                    m.insert(k, random_value(r, 2));
                }
            }
        }
        Value::Object(m) => {
            let k = if r.chance(70) {
                keys[r.below(keys.len())].to_string()
            } else {
                random_string(r)
            };
            m.insert(k, random_value(r, 2));
        }
        Value::Array(a) if !a.is_empty() => {
            let i = r.below(a.len());
            mutate(r, &mut a[i], keys);
        }
        other => *other = random_value(r, 2),
    }
}

fn seeds() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "PATCH",
            "/api/internal/settings",
            json!({"theme": "light", "tts": {"speed": 1.5}, "notifications": {"enabled": true, "events": {"permissionAsked": true, "questionAsked": true, "sessionError": true, "sessionIdle": false}}, "customCommands": [{"name": "n", "description": "d", "promptTemplate": "p"}], "keyboardShortcuts": {"submit": "Enter"}, "repoOrder": [1, 2]}),
        ),
        (
            "POST",
            "/api/internal/notifications/send",
            json!({"title": "t", "body": "b", "url": "/x", "tag": "g", "priority": "high"}),
        ),
        (
            "POST",
            "/api/notifications/subscribe",
            json!({"endpoint": "https://push.example.com/x", "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"}, "deviceName": "d"}),
        ),
        (
            "DELETE",
            "/api/notifications/subscribe",
            json!({"endpoint": "https://push.example.com/x"}),
        ),
        (
            "POST",
            "/api/internal/repos/0/schedules",
            json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": "*/5 * * * *", "timezone": "Europe/Berlin", "skillMetadata": {"skillSlugs": ["a"], "notes": "n"}, "permissionConfig": {"allowExternalDirectory": false, "allowQuestions": false, "bashDenyPatterns": ["rm *"]}}),
        ),
        (
            "POST",
            "/api/internal/repos/0/schedules",
            json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        ),
        (
            "PATCH",
            "/api/internal/repos/0/schedules/1",
            json!({"enabled": false, "intervalMinutes": 10080, "timezone": null}),
        ),
    ]
}

const PATHS: &[&str] = &[
    "/api/internal/settings?userId=",
    "/api/internal/repos?userId=a.b",
    "/api/internal/schedules/all/runs?limit=0&offset=-1&repoId=x",
    "/api/internal/repos/0/schedules/1/runs?limit=101",
    "/api/internal/repos/x/schedules",
    "/api/internal/repos/0/schedules/1/runs/1",
    "/api/notifications/subscriptions/1x",
    "/api/internal/repos/00/schedules/0x1",
    "/api/internal/settings?userId=..%2F",
];

/// Runs `req` through the route table: no panic, a JSON body, and every rejection a 4xx with a
/// JSON `error`. The one 5xx allowed is a 500 naming `broken`, the state file the case broke
/// on purpose (`None`: every file is intact, so no 5xx at all).
fn check(app: &assistantd::app::App, req: &Request, what: &str, broken: Option<&str>) {
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assistantd::routes::handle(app, req)
    }))
    .unwrap_or_else(|_| panic!("handler panicked on {what}"));
    let resp = out.response;
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|_| {
        panic!(
            "{what}: status {}, body is not JSON: {:?}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        )
    });
    match resp.status {
        200 | 201 => {}
        400 | 404 | 405 | 409 | 413 | 429 => {
            assert!(body["error"].is_string(), "{what}: {} {body}", resp.status)
        }
        500 if broken.is_some() => {
            let prefix = format!("State file {} ", broken.unwrap());
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(&prefix)),
                "{what}: a 500 not naming the broken file: {body}"
            );
        }
        other => panic!("{what}: status {other} {body}"),
    }
}

#[test]
fn fuzz_parsers_validators_and_state_readers() {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let iters: usize = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let secs: Option<u64> = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok());
    eprintln!("fuzz: FUZZ_SEED={seed}");
    let d = TempDir::new("fuzz");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let (_, cfg) = assistantd::cli::parse(
        &[
            "--state".into(),
            state.clone().into_os_string(),
            "--opencode-url".into(),
            "http://127.0.0.1:9".into(),
        ],
        &|_| None,
    )
    .unwrap();
    let app = assistantd::app::App::open(cfg, 5003).unwrap();
    let token = std::fs::read_to_string(state.join("internal-token")).unwrap();
    let auth = format!("Bearer {token}");
    let keys = [
        "theme",
        "tts",
        "stt",
        "title",
        "body",
        "url",
        "endpoint",
        "keys",
        "p256dh",
        "auth",
        "name",
        "prompt",
        "scheduleMode",
        "intervalMinutes",
        "cronExpression",
        "timezone",
        "enabled",
        "priority",
        "tag",
    ];
    let seeds = seeds();
    let mut r = Rng(seed);
    let deadline = secs.map(|s| Instant::now() + Duration::from_secs(s));
    let state_files = [
        "settings.json",
        "repos.json",
        "subscriptions.json",
        "schedules.json",
    ];
    let originals: Vec<Vec<u8>> = state_files
        .iter()
        .map(|f| std::fs::read(state.join(f)).unwrap())
        .collect();
    let mut n = 0usize;
    loop {
        n += 1;
        if deadline.map_or(n > iters, |d| Instant::now() > d) {
            break;
        }
        let (method, path, body) = match r.below(10) {
            // A broken state file, then a read of each domain.
            0 => {
                let i = r.below(state_files.len());
                let mut bytes = originals[i].clone();
                for _ in 0..1 + r.below(4) {
                    if bytes.is_empty() || r.chance(30) {
                        bytes.push(r.below(256) as u8);
                    } else {
                        let at = r.below(bytes.len());
                        match r.below(3) {
                            0 => bytes[at] = r.below(256) as u8,
                            1 => bytes.truncate(at),
                            _ => bytes.insert(at, b"{}[],:\"\\/*"[r.below(10)]),
                        }
                    }
                }
                if r.chance(30) {
                    bytes = serde_json::to_vec(&random_value(&mut r, 0)).unwrap();
                }
                std::fs::write(state.join(state_files[i]), &bytes).unwrap();
                for p in [
                    "/api/internal/settings",
                    "/api/internal/repos",
                    "/api/notifications/subscriptions",
                    "/api/internal/schedules/all",
                    "/api/internal/schedules/all/runs",
                    "/api/internal/repos/0/schedules",
                ] {
                    check(
                        &app,
                        &Request::new("GET", p, &[("authorization", &auth)], b""),
                        &format!("GET {p} with broken {}", state_files[i]),
                        Some(state_files[i]),
                    );
                }
                std::fs::write(state.join(state_files[i]), &originals[i]).unwrap();
                continue;
            }
            1 => {
                let bytes: Vec<u8> = (0..r.below(64)).map(|_| r.below(256) as u8).collect();
                let (m, p, _) = &seeds[r.below(seeds.len())];
                let _ = assistantd::util::parse_jsonc(&bytes);
                (m.to_string(), p.to_string(), bytes)
            }
            2 => {
                let (m, _, b) = &seeds[r.below(seeds.len())];
                (
                    m.to_string(),
                    PATHS[r.below(PATHS.len())].to_string(),
                    serde_json::to_vec(b).unwrap(),
                )
            }
            _ => {
                let (m, p, b) = &seeds[r.below(seeds.len())];
                let mut b = b.clone();
                for _ in 0..1 + r.below(3) {
                    mutate(&mut r, &mut b, &keys);
                }
                (
                    m.to_string(),
                    p.to_string(),
                    serde_json::to_vec(&b).unwrap(),
                )
            }
        };
        let mut req = Request::new(&method, &path, &[("authorization", &auth)], b"");
        req.body = if body.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(body.clone())
        };
        check(
            &app,
            &req,
            &format!("{method} {path} {}", String::from_utf8_lossy(&body)),
            None,
        );
    }
    eprintln!("fuzz: {n} cases, seed {seed}");
}
