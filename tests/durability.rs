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

#[test]
fn sigkill_during_writes_never_tears_a_file_and_temp_files_are_cleaned() {
    const KILLS: usize = 100;
    let d = TempDir::new("dur-kill");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let mut sent = 0usize;
    for round in 0..KILLS {
        let s = TestServer::start(&state, &[], &[]);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|sc| {
            let writers: Vec<_> = (0..3)
                .map(|w| {
                    let (s, stop) = (&s, &stop);
                    sc.spawn(move || {
                        let mut n = 0;
                        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                            let body = json!({"leaderKey": format!("r{round}-w{w}-n{n}"), "repoOrder": [round, w, n]});
                            // The connection may die with the server: that is the point.
                            let _ = s.try_call("PATCH", "/api/internal/settings", Some(&body.to_string()));
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
            for w in writers {
                sent += w.join().unwrap();
            }
        });
        drop(s);
        // Whatever moment the kill hit, the file is one complete version.
        let disk = settings_on_disk(&state);
        let p = &disk["users"]["default"]["preferences"];
        if !p.is_null() {
            let lk = p["leaderKey"].as_str().unwrap();
            let order = p["repoOrder"].as_array().unwrap();
            assert_eq!(
                lk,
                format!("r{}-w{}-n{}", order[0], order[1], order[2]),
                "a mixed version"
            );
        }
    }
    assert!(sent > KILLS, "the writers got through: {sent}");
    // The next start removes temp files a killed writer left.
    let s = TestServer::start(&state, &[], &[]);
    let leftovers: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
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
    // A loosened token file is tightened again at the next start.
    std::fs::set_permissions(
        state.join("internal-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(
        state.join("repos/assistant/.opencode/internal-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
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
    assert!(wait_until(Duration::from_secs(5), || s
        .log_text()
        .contains("GET /api/internal/nope 404")));
    let log = s.log_text();
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
