//! State durability (issue 4): concurrent writers in two processes lose nothing, SIGKILL in
//! the middle of writes never leaves a torn file, no network call ever holds a state lock,
//! secret files stay 0600, and odd state-dir paths work.

use crate::util::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn settings_on_disk(state: &std::path::Path) -> Value {
    let bytes = std::fs::read(state.join("settings.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "torn settings.json ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

#[test]
fn two_processes_and_threads_patching_different_keys_lose_no_update() {
    const ROUNDS: usize = 200;
    let d = TempDir::new("dur-2proc");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let a = TestServer::start(&state, &[], &[]);
    let b = TestServer::start(&state, &[], &[]);
    let keys = [
        "defaultModel",
        "defaultAgent",
        "leaderKey",
        "customCommands",
    ];
    std::thread::scope(|sc| {
        for (i, key) in keys.iter().enumerate() {
            let server = if i % 2 == 0 { &a } else { &b };
            sc.spawn(move || {
                for n in 0..ROUNDS {
                    let v = format!("{key}-{n}");
                    let val = if *key == "customCommands" {
                        json!([{"name": v, "description": "d", "promptTemplate": "p"}])
                    } else {
                        json!(v)
                    };
                    let r = server.call(
                        "PATCH",
                        "/api/internal/settings",
                        Some(&json!({ *key: val }).to_string()),
                    );
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                }
            });
        }
    });
    let last = ROUNDS - 1;
    for s in [&a, &b] {
        let p = s.call("GET", "/api/internal/settings", None).json()["preferences"].clone();
        assert_eq!(p["defaultModel"], format!("defaultModel-{last}"));
        assert_eq!(p["defaultAgent"], format!("defaultAgent-{last}"));
        assert_eq!(p["leaderKey"], format!("leaderKey-{last}"));
        assert_eq!(
            p["customCommands"][0]["name"],
            format!("customCommands-{last}")
        );
    }
    let disk = settings_on_disk(&state);
    assert_eq!(
        disk["users"]["default"]["preferences"]["leaderKey"],
        format!("leaderKey-{last}")
    );
}

/// The state files a server writes or reads; each must parse as plain JSON at any moment.
const STATE_FILES: [&str; 5] = [
    "settings.json",
    "repos.json",
    "subscriptions.json",
    "schedules.json",
    "vapid.json",
];

/// Every state file parses as the plain JSON the server writes, and each written file holds
/// one complete version of what the writers of the SIGKILL loop send.
fn check_every_state_file(state: &std::path::Path) {
    let token = std::fs::read_to_string(state.join("internal-token")).unwrap();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "torn internal-token {token:?}"
    );
    let files: Vec<Value> = STATE_FILES
        .iter()
        .map(|f| {
            let bytes = std::fs::read(state.join(f)).unwrap();
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("torn {f} ({e}): {:?}", String::from_utf8_lossy(&bytes)))
        })
        .collect();
    let p = &files[0]["users"]["default"]["preferences"];
    if !p.is_null() {
        let lk = p["leaderKey"].as_str().unwrap();
        let order = p["repoOrder"].as_array().unwrap();
        assert_eq!(
            lk,
            format!("r{}-w{}-n{}", order[0], order[1], order[2]),
            "a mixed version of settings.json"
        );
    }
    assert_eq!(files[1], json!({"repos": []}));
    let subs = files[2]["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert!(subs[0]["deviceName"].as_str().unwrap().starts_with('r'));
    let jobs = files[3]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0]["name"], jobs[0]["prompt"],
        "a mixed version of schedules.json"
    );
    assert!(files[4]["privateKey"].is_string());
}

/// Temp files in `state` (named `.<file>.tmp.<pid>.<n>` by src/store.rs).
fn temp_files(state: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    names.sort();
    names
}

#[test]
fn sigkill_during_writes_never_tears_a_file_and_temp_files_are_cleaned() {
    const KILLS: usize = 100;
    let d = TempDir::new("dur-kill");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    {
        let s = TestServer::start(&state, &[], &[]);
        let body = json!({"name": "r-start", "prompt": "r-start", "scheduleMode": "interval", "intervalMinutes": 60});
        let r = s.call(
            "POST",
            "/api/internal/repos/0/schedules",
            Some(&body.to_string()),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            s.call("POST", "/api/notifications/subscribe", Some(SUB_BODY))
                .status,
            200
        );
    }
    let mut sent = [0usize; 4];
    let mut last_pid = 0;
    for round in 0..KILLS {
        let s = TestServer::start(&state, &[], &[]);
        last_pid = s.child.id();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            // Two writers of settings.json, one of schedules.json, one of subscriptions.json.
            let writers: Vec<_> = (0..4)
                .map(|w| {
                    let (s, stop) = (&s, &stop);
                    sc.spawn(move || {
                        let mut n = 0;
                        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                            let v = format!("r{round}-w{w}-n{n}");
                            let (m, path, body) = match w {
                                0 | 1 => (
                                    "PATCH",
                                    "/api/internal/settings".to_string(),
                                    json!({"leaderKey": v, "repoOrder": [round, w, n]}),
                                ),
                                2 => (
                                    "PATCH",
                                    "/api/internal/repos/0/schedules/1".to_string(),
                                    json!({"name": v, "prompt": v}),
                                ),
                                _ => {
                                    let mut b: Value = serde_json::from_str(SUB_BODY).unwrap();
                                    b["deviceName"] = json!(v);
                                    ("POST", "/api/notifications/subscribe".to_string(), b)
                                }
                            };
                            // The connection may die with the server: that is the point.
                            if let Some(r) = s.try_call(m, &path, Some(&body.to_string())) {
                                assert_eq!(
                                    r.status,
                                    200,
                                    "{m} {path}: {}",
                                    String::from_utf8_lossy(&r.body)
                                );
                            }
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(15 + (round as u64 * 7) % 40));
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(s.child.id().to_string())
                .status();
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            for (i, w) in writers.into_iter().enumerate() {
                sent[i] += w.join().unwrap();
            }
        });
        drop(s);
        // Whatever moment the kill hit, every file is one complete version.
        check_every_state_file(&state);
    }
    assert!(
        sent.iter().all(|&n| n > KILLS),
        "the writers got through: {sent:?}"
    );
    // Plant the temp files a writer killed mid-write leaves (src/store.rs names them
    // `.<file>.tmp.<pid>.<n>`), of a writer that is gone, plus one of a live process (this
    // test), which another server sharing the dir could be writing: only the dead are removed.
    assert!(!std::path::Path::new(&format!("/proc/{last_pid}")).exists());
    let dead = [
        format!(".settings.json.tmp.{last_pid}.7"),
        format!(".schedules.json.tmp.{last_pid}.0"),
        format!(".subscriptions.json.tmp.{last_pid}.12"),
    ];
    for f in &dead {
        std::fs::write(state.join(f), b"{\"half\": ").unwrap();
    }
    let live = format!(".settings.json.tmp.{}.0", std::process::id());
    std::fs::write(state.join(&live), b"{").unwrap();
    let before = temp_files(&state);
    assert!(before.contains(&live) && dead.iter().all(|f| before.contains(f)));
    let s = TestServer::start(&state, &[], &[]);
    assert_eq!(temp_files(&state), vec![live.clone()]);
    assert!(
        s.log_text().contains(&format!(
            "removed {} temp file(s) left by an interrupted write",
            before.len() - 1
        )),
        "{}",
        s.log_text()
    );
    std::fs::remove_file(state.join(&live)).unwrap();
    check_every_state_file(&state);
    assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
    assert_eq!(
        s.call("GET", "/api/internal/repos/0/schedules/1", None)
            .status,
        200
    );
    assert_eq!(
        s.call("GET", "/api/notifications/subscriptions", None)
            .status,
        200
    );
}

#[test]
fn a_stuck_push_service_or_opencode_never_blocks_a_settings_write() {
    use std::io::Read;
    use std::net::TcpListener;
    // A peer that accepts and never answers, for both push and OpenCode.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            let mut c2 = c.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while matches!(c2.read(&mut buf), Ok(n) if n > 0) {}
            });
            held.push(c);
        }
    });
    let d = TempDir::new("dur-nolock");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let s = TestServer::start(
        &state,
        &[
            "--allow-private-push-endpoints",
            "--opencode-url",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[],
    );
    // A device whose push service hangs.
    let (code, out, _) = run_cli(&["vapid", "generate"], &[]);
    assert_eq!(code, 0);
    let p256dh = {
        // A valid point: the VAPID public key is one.
        out.lines()
            .next()
            .unwrap()
            .trim_start_matches("VAPID_PUBLIC_KEY=")
            .to_string()
    };
    let sub = json!({"endpoint": format!("http://127.0.0.1:{port}/push/1"), "keys": {"p256dh": p256dh, "auth": "AAAAAAAAAAAAAAAAAAAAAA"}});
    assert_eq!(
        s.call(
            "POST",
            "/api/notifications/subscribe",
            Some(&sub.to_string())
        )
        .status,
        200
    );
    std::thread::scope(|sc| {
        let send = sc.spawn(|| {
            s.call(
                "POST",
                "/api/internal/notifications/send",
                Some(r#"{"title":"t","body":"b"}"#),
            )
        });
        let reload = sc.spawn(|| s.call("POST", "/api/internal/assistant/reload", None));
        std::thread::sleep(Duration::from_millis(300));
        for n in 0..5 {
            let t0 = Instant::now();
            let r = s.call(
                "PATCH",
                "/api/internal/settings",
                Some(&json!({"leaderKey": format!("k{n}")}).to_string()),
            );
            assert_eq!(r.status, 200);
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "a write waited {:?} behind network I/O",
                t0.elapsed()
            );
            let t0 = Instant::now();
            let r = s.call("DELETE", "/api/notifications/subscriptions/999", None);
            assert_eq!(r.status, 200);
            assert!(t0.elapsed() < Duration::from_secs(1));
        }
        let r = send.join().unwrap();
        assert_eq!(
            r.json(),
            json!({"delivered": 0, "expired": 0, "failed": 1, "noSubscriptions": false})
        );
        assert_eq!(reload.join().unwrap().status, 502);
    });
}

#[test]
fn secret_files_stay_0600_across_init_rotation_and_restart() {
    use std::os::unix::fs::PermissionsExt;
    let d = TempDir::new("dur-perms");
    let state = d.join("state");
    let mode = |p: &str| {
        std::fs::metadata(state.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let files = [
        "internal-token",
        "vapid.json",
        "repos/assistant/.opencode/internal-token",
    ];
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    for f in files {
        assert_eq!(mode(f), 0o600, "{f} after init");
    }
    assert_eq!(
        run_cli(
            &["token", "rotate", "--state", state.to_str().unwrap()],
            &[]
        )
        .0,
        0
    );
    for f in files {
        assert_eq!(mode(f), 0o600, "{f} after rotation");
    }
    // Every loosened secret file is tightened again at the next start.
    for f in files {
        std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(mode(f), 0o644);
    }
    let s = TestServer::start(&state, &[], &[]);
    for f in files {
        assert_eq!(mode(f), 0o600, "{f} after restart");
    }
    assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
}

#[test]
fn state_dir_with_spaces_and_a_missing_one_work() {
    let d = TempDir::new("dur-paths");
    let state = d.join("my state dir/with spaces");
    let s = TestServer::start(&state, &[], &[]);
    assert!(state.join("internal-token").exists());
    assert!(
        state.join("vapid.json").exists(),
        "a new state dir is made as by init"
    );
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"theme":"system"}"#),
    );
    assert_eq!(r.status, 200);
    let r = s.call("GET", "/api/internal/repos", None);
    assert_eq!(
        r.json()["repos"][0]["fullPath"],
        state.join("repos/assistant").to_str().unwrap()
    );
}

#[test]
fn no_token_or_secret_reaches_the_log() {
    let d = TempDir::new("dur-log");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let secret = "sk-very-SECRET-value";
    std::fs::write(
        state.join("settings.json"),
        json!({"users": {"default": {"preferences": {"tts": {"apiKey": secret}}, "updatedAt": 1}}})
            .to_string(),
    )
    .unwrap();
    let s = TestServer::start(&state, &[], &[("OPENCODE_SERVER_PASSWORD", "oc-SECRET-pw")]);
    let t = s.token();
    let vapid: Value =
        serde_json::from_slice(&std::fs::read(state.join("vapid.json")).unwrap()).unwrap();
    let _ = s.call("GET", "/api/internal/settings?userId=x", None);
    let _ = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(&json!({"leaderKey": "body-SECRET"}).to_string()),
    );
    let _ = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(&json!({"tts": {"voice": "v"}}).to_string()),
    );
    let _ = s.call("POST", "/api/internal/assistant/reload", None);
    let _ = http(
        "GET",
        &s.url("/api/internal/settings"),
        &[("Authorization", &format!("Bearer {t}x"))],
        None,
    );
    let _ = s.call("GET", "/api/internal/nope", None);
    let log = s.await_log("GET /api/internal/nope 404");
    for needle in [
        t.as_str(),
        secret,
        "oc-SECRET-pw",
        "body-SECRET",
        vapid["privateKey"].as_str().unwrap(),
    ] {
        assert!(
            !log.contains(needle),
            "{needle} leaked into the log:\n{log}"
        );
    }
}

// ------------------------------------------------------------- broken state files

/// Line and column where serde_json reports an error at the end of `text` (it counts columns
/// in bytes from 1; at the start of a line the column is 0).
fn eof_position(text: &[u8]) -> (usize, usize) {
    let line = 1 + text.iter().filter(|&&b| b == b'\n').count();
    let col = text.len() - text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    (line, col)
}

/// A file's broken versions and the exact message each gives: truncated, empty, non-UTF-8,
/// not JSON, and JSON of the wrong shape. `valid` is a version the server wrote itself; `cut`
/// is where the truncated one ends (inside a string).
fn broken_versions(file: &str, key: &str, valid: &[u8], cut: usize) -> Vec<(Vec<u8>, String)> {
    let truncated = valid[..cut].to_vec();
    let (line, col) = eof_position(&truncated);
    let mut non_utf8 = valid.to_vec();
    non_utf8.insert(cut, 0xff);
    vec![
        (
            truncated,
            format!("State file {file} is not valid JSON: EOF while parsing a string at line {line} column {col}"),
        ),
        (
            Vec::new(),
            format!("State file {file} is not valid JSON: EOF while parsing a value at line 1 column 0"),
        ),
        (
            non_utf8,
            format!("State file {file} is not valid JSON: not UTF-8: invalid utf-8 sequence of 1 bytes from index {cut}"),
        ),
        (
            b"{ this is not json".to_vec(),
            format!("State file {file} is not valid JSON: key must be a string at line 1 column 3"),
        ),
        (
            format!("{{\"{key}\": {{}}}}").into_bytes(),
            format!("State file {file} is invalid: invalid type: map, expected a sequence at line 1 column {}", key.len() + 5),
        ),
    ]
}

/// Every request in `reqs` is a 500 with exactly `msg`, and `file` keeps exactly `bytes`.
fn all_fail_naming(
    s: &TestServer,
    file: &str,
    bytes: &[u8],
    msg: &str,
    reqs: &[(&str, &str, Option<&str>)],
) {
    for (m, p, body) in reqs {
        let r = s.call(m, p, *body);
        assert_eq!(
            (r.status, r.json()),
            (500, json!({ "error": msg })),
            "{m} {p} with {file} = {:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(
            std::fs::read(s.state.join(file)).unwrap(),
            bytes,
            "{file} changed by {m} {p}"
        );
    }
}

/// The domains that do not use the broken file keep working, reads and writes.
/// Writes each broken version of `file` in turn: every request of its domain fails naming it
/// (bytes unchanged), the other domains and `also` keep working, and the log names the problem.
#[allow(clippy::too_many_arguments)]
fn every_broken_version_fails_alone(
    s: &TestServer,
    state: &std::path::Path,
    file: &str,
    key: &str,
    valid: &[u8],
    cut: usize,
    reqs: &[(&str, &str, Option<&str>)],
    also: &str,
) {
    for (n, (bytes, msg)) in broken_versions(file, key, valid, cut)
        .into_iter()
        .enumerate()
    {
        std::fs::write(state.join(file), &bytes).unwrap();
        all_fail_naming(s, file, &bytes, &msg, reqs);
        other_domains_work(s, n, also);
        assert!(
            s.log_text().contains(&msg),
            "the log names the problem: {msg}"
        );
    }
}

fn other_domains_work(s: &TestServer, n: usize, also: &str) {
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(&json!({"leaderKey": format!("k{n}")}).to_string()),
    );
    assert_eq!(
        (r.status, r.json()["preferences"]["leaderKey"].clone()),
        (200, json!(format!("k{n}")))
    );
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(
        (r.status, r.json()["preferences"]["leaderKey"].clone()),
        (200, json!(format!("k{n}")))
    );
    let r = s.call("GET", "/api/internal/repos", None);
    assert_eq!(
        (r.status, r.json()["repos"][0]["id"].clone()),
        (200, json!(0))
    );
    assert_eq!(s.call("GET", also, None).status, 200, "GET {also}");
}

const SUB_BODY: &str = r#"{"endpoint": "https://push.example.com/x", "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"}, "deviceName": "phone"}"#;
const JOB_BODY: &str =
    r#"{"name": "nightly", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 60}"#;

#[test]
fn broken_subscriptions_json_is_500_naming_it_bytes_stay_and_the_rest_works() {
    let d = TempDir::new("dur-subs-broken");
    let state = d.join("state");
    let s = TestServer::start(&state, &[], &[]);
    assert_eq!(
        s.call("POST", "/api/notifications/subscribe", Some(SUB_BODY))
            .status,
        200
    );
    let valid = std::fs::read(state.join("subscriptions.json")).unwrap();
    let cut = valid.windows(5).position(|w| w == b"https").unwrap() + 3;
    let reqs: [(&str, &str, Option<&str>); 5] = [
        ("GET", "/api/notifications/subscriptions", None),
        ("POST", "/api/notifications/subscribe", Some(SUB_BODY)),
        (
            "DELETE",
            "/api/notifications/subscribe",
            Some(r#"{"endpoint": "https://push.example.com/x"}"#),
        ),
        ("DELETE", "/api/notifications/subscriptions/1", None),
        (
            "POST",
            "/api/internal/notifications/send",
            Some(r#"{"title": "t", "body": "b"}"#),
        ),
    ];
    every_broken_version_fails_alone(
        &s,
        &state,
        "subscriptions.json",
        "subscriptions",
        &valid,
        cut,
        &reqs,
        "/api/internal/repos/0/schedules",
    );
    // Put back, the file works again (errors are never cached).
    std::fs::write(state.join("subscriptions.json"), &valid).unwrap();
    let r = s.call("GET", "/api/notifications/subscriptions", None);
    assert_eq!(
        (r.status, r.json()["subscriptions"][0]["id"].clone()),
        (200, json!(1))
    );
    // A server started on a broken file serves it as it is, reports it and leaves it alone.
    drop(s);
    std::fs::write(state.join("subscriptions.json"), b"").unwrap();
    let s = TestServer::start(&state, &[], &[]);
    all_fail_naming(
        &s,
        "subscriptions.json",
        b"",
        "State file subscriptions.json is not valid JSON: EOF while parsing a value at line 1 column 0",
        &reqs[..2],
    );
    other_domains_work(&s, 99, "/api/internal/schedules/all");
}

#[test]
fn broken_schedules_json_is_500_naming_it_bytes_stay_and_the_rest_works() {
    let d = TempDir::new("dur-sched-broken");
    let state = d.join("state");
    let s = TestServer::start(&state, &[], &[]);
    let r = s.call("POST", "/api/internal/repos/0/schedules", Some(JOB_BODY));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let valid = std::fs::read(state.join("schedules.json")).unwrap();
    let cut = valid.windows(7).position(|w| w == b"nightly").unwrap() + 3;
    let reqs: [(&str, &str, Option<&str>); 7] = [
        ("GET", "/api/internal/repos/0/schedules", None),
        ("GET", "/api/internal/schedules/all", None),
        ("GET", "/api/internal/schedules/all/runs", None),
        ("GET", "/api/internal/repos/0/schedules/1", None),
        ("POST", "/api/internal/repos/0/schedules", Some(JOB_BODY)),
        (
            "PATCH",
            "/api/internal/repos/0/schedules/1",
            Some(r#"{"enabled": false}"#),
        ),
        ("DELETE", "/api/internal/repos/0/schedules/1", None),
    ];
    every_broken_version_fails_alone(
        &s,
        &state,
        "schedules.json",
        "jobs",
        &valid,
        cut,
        &reqs,
        "/api/notifications/subscriptions",
    );
    std::fs::write(state.join("schedules.json"), &valid).unwrap();
    let r = s.call("GET", "/api/internal/repos/0/schedules/1", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The scheduler reads the file at start: a broken one is reported, not replaced.
    drop(s);
    let broken = b"{\"jobs\": [], \"runs\": [".to_vec();
    std::fs::write(state.join("schedules.json"), &broken).unwrap();
    let s = TestServer::start(&state, &[], &[]);
    let (line, col) = eof_position(&broken);
    all_fail_naming(
        &s,
        "schedules.json",
        &broken,
        &format!("State file schedules.json is not valid JSON: EOF while parsing a list at line {line} column {col}"),
        &reqs[..5],
    );
    other_domains_work(&s, 99, "/api/notifications/subscriptions");
}

/// Runs `serve` on `state`, expecting it to refuse to start: (exit code, stdout, stderr).
/// Panics if it is still running after 10 s.
fn serve_refusing(state: &std::path::Path) -> (Option<i32>, String, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .env_remove("ASSISTANTD_TOKEN")
        .env_remove("VAPID_PUBLIC_KEY")
        .env_remove("VAPID_PRIVATE_KEY")
        .env_remove("VAPID_SUBJECT")
        .env("OPENCODE_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve started on a broken vapid.json");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_vapid_json_makes_serve_refuse_to_start_and_is_left_alone() {
    let d = TempDir::new("dur-vapid-broken");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let valid = std::fs::read(state.join("vapid.json")).unwrap();
    let v: Value = serde_json::from_slice(&valid).unwrap();
    let private = v["privateKey"].as_str().unwrap().to_string();
    let (_, other, _) = run_cli(&["vapid", "generate"], &[]);
    let other_public = other
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("VAPID_PUBLIC_KEY=");
    let cut = valid.windows(10).position(|w| w == b"privateKey").unwrap() + 3;
    let mut cases = broken_versions("vapid.json", "publicKey", &valid, cut)
        .into_iter()
        .map(|(b, m)| (b, format!("assistantd: VAPID: {m}\n")))
        .collect::<Vec<_>>();
    // The wrong-shape case of `broken_versions` is a sequence check; vapid.json wants strings.
    cases[4].1 = format!(
        "assistantd: VAPID: State file vapid.json is invalid: invalid type: map, expected a string at line 1 column {}\n",
        "publicKey".len() + 5
    );
    let mut mismatched = v.clone();
    mismatched["publicKey"] = json!(other_public);
    cases.push((
        serde_json::to_vec_pretty(&mismatched).unwrap(),
        "assistantd: VAPID: VAPID public key from state/vapid.json does not belong to the private key\n".into(),
    ));
    for (bytes, msg) in cases {
        std::fs::write(state.join("vapid.json"), &bytes).unwrap();
        let (code, out, err) = serve_refusing(&state);
        assert_eq!(code, Some(1), "{err}");
        assert!(!out.contains("listening"), "{out}");
        assert!(err.ends_with(&msg), "stderr {err:?}, wanted {msg:?}");
        assert!(!err.contains(&private), "the private key is in the message");
        assert_eq!(std::fs::read(state.join("vapid.json")).unwrap(), bytes);
    }
    // The good file back: it starts.
    std::fs::write(state.join("vapid.json"), &valid).unwrap();
    let s = TestServer::start(&state, &[], &[]);
    assert_eq!(
        s.call("GET", "/api/notifications/vapid-public-key", None)
            .json()["publicKey"],
        v["publicKey"]
    );
}

/// The log check every `TestServer` runs on drop (tests/util.rs) is not vacuous: a planted log
/// line with the token, the VAPID private key, a stored API key (found through
/// `settings::redact`, not a fixture list) or a fixture secret fails the drop.
#[test]
fn the_log_check_of_every_test_server_catches_a_leak() {
    let d = TempDir::new("dur-logcheck");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let api_key = "sk-stored-only-here-42";
    std::fs::write(
        state.join("settings.json"),
        json!({"users": {"alice": {"preferences": {"stt": {"apiKey": api_key}}, "updatedAt": 1}}})
            .to_string(),
    )
    .unwrap();
    let vapid: Value =
        serde_json::from_slice(&std::fs::read(state.join("vapid.json")).unwrap()).unwrap();
    let token = std::fs::read_to_string(state.join("internal-token")).unwrap();
    for leak in [
        token.trim(),
        vapid["privateKey"].as_str().unwrap(),
        api_key,
        "ghp_SECRET",
    ] {
        let s = TestServer::start(&state, &[], &[]);
        assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&s.log)
            .unwrap();
        std::io::Write::write_all(&mut log, format!("GET /x/{leak} 200 0\n").as_bytes()).unwrap();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(s)));
        let msg = dropped
            .expect_err("a leak passed the log check")
            .downcast::<String>()
            .unwrap();
        assert!(
            msg.starts_with("secrets in the log of the server on ") && msg.contains(leak),
            "{msg}"
        );
    }
    // Without the planted line the same server drops cleanly.
    let s = TestServer::start(&state, &[], &[]);
    assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
}
