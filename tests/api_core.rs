//! Core HTTP behaviour: startup line, health, auth, 404/405, body cap, reload against a stub
//! OpenCode, rate limits, repos, token rotation, graceful stop.

use crate::util::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn basic(user_pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

#[test]
fn health_needs_no_auth_and_reports_version() {
    let d = TempDir::new("health");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let r = http("GET", &s.url("/health"), &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );
    assert!(s.base.starts_with("http://127.0.0.1:"));
    assert_ne!(s.port, 0);
}

#[test]
fn auth_failures_are_401_with_the_exact_body() {
    let d = TempDir::new("auth");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let t = s.token();
    assert_eq!(t.len(), 64);
    let url = s.url("/api/internal/repos");
    let bad: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("Authorization", String::new())],
        vec![("Authorization", "Bearer ".into())],
        vec![("Authorization", format!("Bearer {t}x"))],
        vec![("Authorization", format!("Bearer {}", &t[..63]))],
        vec![("Authorization", "Bearer short".into())],
        vec![("Authorization", format!("Digest {t}"))],
        vec![("Authorization", format!("Token {t}"))],
        vec![("Authorization", basic("opencode:wrong"))],
        vec![("Authorization", basic("opencode:"))],
        vec![("Authorization", basic(&t))],
    ];
    for hs in bad {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http("GET", &url, &hs, None);
        assert_eq!(r.status, 401, "{hs:?}");
        assert_eq!(r.body, br#"{"error":"Unauthorized"}"#);
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some(r#"Bearer realm="assistantd", Basic realm="assistantd""#)
        );
    }
    for good in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER {t}"),
        basic(&format!("opencode:{t}")),
        basic(&format!("anybody:{t}")),
    ] {
        let r = http("GET", &url, &[("Authorization", &good)], None);
        assert_eq!(r.status, 200, "{good}");
    }
    // Auth comes before 404 and 405.
    assert_eq!(http("GET", &s.url("/api/nope"), &[], None).status, 401);
    assert_eq!(http("DELETE", &url, &[], None).status, 401);
}

#[test]
fn unknown_paths_404_and_wrong_methods_405_with_allow() {
    let d = TempDir::new("routing");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let r = s.call("GET", "/api/internal/nope", None);
    assert_eq!((r.status, r.json()), (404, json!({"error": "Not found"})));
    let r = s.call("GET", "/api/internal/schedules/other", None);
    assert_eq!(r.status, 404);
    let r = http("GET", &s.url("/not-api"), &[], None);
    assert_eq!(r.status, 404);
    let r = s.call("DELETE", "/api/internal/repos", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    assert_eq!(r.json(), json!({"error": "Method not allowed"}));
    let r = s.call("GET", "/api/internal/assistant/reload", None);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let r = http("POST", &s.url("/health"), &[], Some(b"{}"));
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));
}

#[test]
fn no_cors_headers() {
    let d = TempDir::new("cors");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let auth = format!("Bearer {}", s.token());
    let r = http(
        "GET",
        &s.url("/api/internal/repos"),
        &[("Authorization", &auth), ("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .iter()
        .all(|(k, _)| !k.to_ascii_lowercase().starts_with("access-control")));
    let r = http(
        "OPTIONS",
        &s.url("/api/internal/repos"),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(r.status, 401);
}

#[test]
fn body_over_one_mib_is_413_without_reading_it() {
    let d = TempDir::new("bodycap");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let t = s.token();
    // Declared length over the cap, body never sent: the answer still comes at once.
    let mut c = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "POST /api/internal/assistant/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        1024 * 1024 + 1
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    let r = parse_response(&buf[..n]);
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json(),
        json!({"error": "Request body too large (limit 1048576 bytes)"})
    );
}

/// A scripted stand-in for OpenCode for the cases the real server cannot produce.
struct Stub {
    port: u16,
}

#[derive(Clone, Copy)]
enum StubMode {
    Json200,
    Status500,
    Html200,
    Hang,
}

impl Stub {
    fn start(mode: StubMode) -> Stub {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let reply: &[u8] = match mode {
                        StubMode::Json200 => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\ntrue",
                        StubMode::Status500 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom",
                        StubMode::Html200 => b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\nConnection: close\r\n\r\n<html></html>\r\n",
                        StubMode::Hang => {
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                    };
                    let _ = c.write_all(reply);
                });
            }
        });
        Stub { port }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[test]
fn reload_maps_every_upstream_failure_to_502_with_detail() {
    let d = TempDir::new("reload");
    let cases = [
        (StubMode::Status500, "OpenCode answered HTTP 500"),
        (
            StubMode::Html200,
            "OpenCode answered HTTP 200 with text/html, not JSON",
        ),
    ];
    for (mode, detail) in cases {
        let stub = Stub::start(mode);
        let s = TestServer::start(&d.join("state"), &["--opencode-url", &stub.url()], &[]);
        let r = s.call("POST", "/api/internal/assistant/reload", None);
        assert_eq!(r.status, 502);
        assert_eq!(
            r.json(),
            json!({"error": "Failed to reload assistant workspace", "detail": detail})
        );
    }
    // Refused: nothing listens on port 9.
    let s = TestServer::start(
        &d.join("state"),
        &["--opencode-url", "http://127.0.0.1:9"],
        &[],
    );
    let r = s.call("POST", "/api/internal/assistant/reload", None);
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["detail"],
        "OpenCode unreachable: connection refused"
    );
    drop(s);
    // A server that never answers: the 10 s deadline.
    let stub = Stub::start(StubMode::Hang);
    let s = TestServer::start(&d.join("state"), &["--opencode-url", &stub.url()], &[]);
    let t0 = Instant::now();
    let r = s.call("POST", "/api/internal/assistant/reload", None);
    let took = t0.elapsed();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["detail"], "OpenCode did not answer within 10 s");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "{took:?}"
    );
}

#[test]
fn reload_succeeds_then_sixth_call_is_429() {
    let d = TempDir::new("reload429");
    let stub = Stub::start(StubMode::Json200);
    let s = TestServer::start(&d.join("state"), &["--opencode-url", &stub.url()], &[]);
    for _ in 0..5 {
        let r = s.call("POST", "/api/internal/assistant/reload", None);
        assert_eq!((r.status, r.json()), (200, json!({"success": true})));
    }
    let r = s.call("POST", "/api/internal/assistant/reload", None);
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error": "Rate limit exceeded"}));
    assert_eq!(r.header("Retry-After"), Some("12"));
    // Auth still comes first.
    let r = http("POST", &s.url("/api/internal/assistant/reload"), &[], None);
    assert_eq!(r.status, 401);
    // The send bucket is a separate one: still full.
    let r = s.call(
        "POST",
        "/api/internal/notifications/send",
        Some(r#"{"title":"t","body":"b"}"#),
    );
    assert_eq!(
        (r.status, r.json()),
        (
            200,
            json!({"delivered": 0, "expired": 0, "failed": 0, "noSubscriptions": true})
        )
    );
}

#[test]
fn sigint_stops_like_sigterm() {
    let d = TempDir::new("sigint");
    let mut s = TestServer::start(&d.join("state"), &[], &[]);
    assert_eq!(s.call("GET", "/api/internal/settings", None).status, 200);
    let status = std::process::Command::new("kill")
        .args(["-INT", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut code = None;
    assert!(wait_until(Duration::from_secs(10), || {
        code = s.child.try_wait().unwrap().map(|st| st.code());
        code.is_some()
    }));
    assert_eq!(code, Some(Some(0)));
}

fn write_repos(state: &std::path::Path, repos: Value) {
    std::fs::write(
        state.join("repos.json"),
        serde_json::to_vec_pretty(&json!({"repos": repos})).unwrap(),
    )
    .unwrap();
}

#[test]
fn repos_are_ordered_by_repo_order_then_name_with_repo_zero() {
    let d = TempDir::new("repos");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    write_repos(
        &state,
        json!([
            {"id": 1, "name": "beta", "localPath": "beta", "cloneStatus": "ready", "clonedAt": 10, "repoUrl": "https://x/beta.git"},
            {"id": 2, "localPath": "Alpha", "cloneStatus": "ready", "clonedAt": 11, "isLocal": true, "isWorktree": false},
            {"id": 3, "name": "zeta", "localPath": "z", "sourcePath": "/src/zeta", "cloneStatus": "error", "clonedAt": 12, "branch": "dev"},
            {"id": 4, "localPath": "nested/gamma", "cloneStatus": "cloning", "clonedAt": 13},
        ]),
    );
    let s = TestServer::start(&state, &[], &[]);
    let ids = |v: &Value| -> Vec<i64> {
        v["repos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let r = s.call("GET", "/api/internal/repos", None);
    assert_eq!(r.status, 200);
    let body = r.json();
    // No repoOrder: display names alpha, assistant, beta, gamma, zeta.
    assert_eq!(ids(&body), vec![2, 0, 1, 4, 3]);
    let root = state.join("repos");
    assert_eq!(
        body["repos"][0],
        json!({"id": 2, "localPath": "Alpha", "fullPath": root.join("Alpha").to_str().unwrap(),
               "cloneStatus": "ready", "clonedAt": 11, "isLocal": true})
    );
    assert_eq!(body["repos"][4]["fullPath"], "/src/zeta");
    let zero = &body["repos"][1];
    assert_eq!(zero["localPath"], "assistant");
    assert_eq!(zero["fullPath"], root.join("assistant").to_str().unwrap());
    assert_eq!(zero["defaultBranch"], "main");
    assert_eq!(zero["cloneStatus"], "ready");
    assert!(zero.get("repoUrl").is_none() && zero.get("name").is_none());
    // repoOrder of one user: repeated id takes its last position, unknown ids are ignored.
    let settings =
        json!({"users": {"alice": {"preferences": {"repoOrder": [3, 99, 0, 3]}, "updatedAt": 1}}});
    std::fs::write(state.join("settings.json"), settings.to_string()).unwrap();
    let r = s.call("GET", "/api/internal/repos?userId=alice", None);
    assert_eq!(ids(&r.json()), vec![0, 3, 2, 1, 4]);
    // Another user keeps the name order.
    let r = s.call("GET", "/api/internal/repos?userId=bob", None);
    assert_eq!(ids(&r.json()), vec![2, 0, 1, 4, 3]);
    let r = s.call("GET", "/api/internal/repos?userId=..%2Fx", None);
    assert_eq!(
        (r.status, r.json()),
        (400, json!({"error": "Invalid userId"}))
    );
}

#[test]
fn corrupt_repos_file_is_500_naming_it_and_left_alone() {
    let d = TempDir::new("repos-corrupt");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let s = TestServer::start(&state, &[], &[]);
    for bad in [
        &b"{\"repos\": ["[..],
        b"",
        b"\xff\xfe",
        br#"{"repos":[{"id":"x"}]}"#,
        br#"{"repos":[{"id":0,"localPath":"a","cloneStatus":"ready","clonedAt":1}]}"#,
    ] {
        std::fs::write(state.join("repos.json"), bad).unwrap();
        let r = s.call("GET", "/api/internal/repos", None);
        assert_eq!(r.status, 500);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with("State file repos.json "), "{msg}");
        assert_eq!(std::fs::read(state.join("repos.json")).unwrap(), bad);
    }
}

#[test]
fn token_rotation_takes_effect_without_restart() {
    let d = TempDir::new("rotate");
    let state = d.join("state");
    let s = TestServer::start(&state, &[], &[]);
    let old = s.token();
    let ws_token = state.join("repos/assistant/.opencode/internal-token");
    assert_eq!(std::fs::read_to_string(&ws_token).unwrap(), old);
    let (code, out, _) = run_cli(
        &["token", "rotate", "--state", state.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0);
    let new = out.trim().to_string();
    assert_eq!(new.len(), 64);
    assert_ne!(new, old);
    let url = s.url("/api/internal/repos");
    assert_eq!(
        http(
            "GET",
            &url,
            &[("Authorization", &format!("Bearer {old}"))],
            None
        )
        .status,
        401
    );
    assert_eq!(
        http(
            "GET",
            &url,
            &[("Authorization", &format!("Bearer {new}"))],
            None
        )
        .status,
        200
    );
    assert_eq!(std::fs::read_to_string(&ws_token).unwrap(), new);
    use std::os::unix::fs::PermissionsExt;
    for p in [state.join("internal-token"), ws_token] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{p:?}"
        );
    }
    let (code, out, _) = run_cli(&["token", "show", "--state", state.to_str().unwrap()], &[]);
    assert_eq!((code, out.trim()), (0, new.as_str()));
}

#[test]
fn rotation_updates_the_servers_own_workspace_copy() {
    // The server runs with its own --workspace; `token rotate` is given only --state, so it
    // writes the copy in the default workspace. The server's agent must not be locked out.
    let d = TempDir::new("rotate-ws");
    let state = d.join("state");
    let ws = d.join("elsewhere/assistant");
    let s = TestServer::start(&state, &["--workspace", ws.to_str().unwrap()], &[]);
    let ws_token = ws.join(".opencode/internal-token");
    assert_eq!(std::fs::read_to_string(&ws_token).unwrap(), s.token());
    let (code, out, _) = run_cli(
        &["token", "rotate", "--state", state.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0);
    let new = out.trim().to_string();
    assert_ne!(std::fs::read_to_string(&ws_token).unwrap(), new);
    // The first request after the rotation is what the server notices it by.
    let auth = format!("Bearer {new}");
    let r = http(
        "GET",
        &s.url("/api/internal/repos"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(std::fs::read_to_string(&ws_token).unwrap(), new);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&ws_token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    s.await_log("token rotated; workspace copy updated");
}

#[test]
fn fixed_token_from_env() {
    let d = TempDir::new("fixed");
    let state = d.join("state");
    let s = TestServer::start(&state, &[], &[("ASSISTANTD_TOKEN", FIXED_TOKEN)]);
    let url = s.url("/api/internal/repos");
    assert_eq!(
        http(
            "GET",
            &url,
            &[("Authorization", &format!("Bearer {FIXED_TOKEN}"))],
            None
        )
        .status,
        200
    );
    let ws =
        std::fs::read_to_string(state.join("repos/assistant/.opencode/internal-token")).unwrap();
    assert_eq!(ws, FIXED_TOKEN);
}

#[test]
fn sigterm_stops_with_exit_zero_and_one_log_line_per_request() {
    let d = TempDir::new("sigterm");
    let s = TestServer::start(&d.join("state"), &[], &[]);
    let t = s.token();
    let _ = s.call("GET", "/api/internal/repos?userId=x", None);
    let _ = http("GET", &s.url("/api/internal/nope"), &[], None);
    let log = s.await_log("GET /api/internal/nope 401 ");
    assert!(log.contains("GET /api/internal/repos 200 "), "{log}");
    assert!(log.contains("GET /api/internal/nope 401 "), "{log}");
    assert!(!log.contains(&t), "the token must never be logged");
    assert!(!log.contains("userId=x"), "no query strings in the log");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn cli_help_version_and_errors() {
    let (code, out, _) = run_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("assistantd serve"));
    let (code, out, _) = run_cli(&["--version"], &[]);
    assert_eq!(
        (code, out.trim().to_string()),
        (0, format!("assistantd {}", env!("CARGO_PKG_VERSION")))
    );
    let (code, _, err) = run_cli(&["frobnicate"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown command"), "{err}");
}

#[test]
fn an_edited_skill_is_kept_across_restart_and_rewritten_by_init_force() {
    let d = TempDir::new("skills-edit");
    let state = d.join("state");
    let skill = state.join("repos/assistant/.opencode/skills/notifications/SKILL.md");
    let s = TestServer::start(&state, &[], &[]);
    let generated = std::fs::read_to_string(&skill).unwrap();
    assert!(generated.contains(&format!("http://localhost:{}/api/internal", s.port)));
    drop(s);
    // An unedited skill follows the port of the next start.
    let s = TestServer::start(&state, &[], &[]);
    let regenerated = std::fs::read_to_string(&skill).unwrap();
    assert!(regenerated.contains(&format!("http://localhost:{}/api/internal", s.port)));
    drop(s);
    let edited = format!("{regenerated}\n## My own notes\nPing me only for failures.\n");
    std::fs::write(&skill, &edited).unwrap();
    let s = TestServer::start(&state, &[], &[]);
    assert_eq!(
        std::fs::read_to_string(&skill).unwrap(),
        edited,
        "an edited skill is kept"
    );
    s.await_log("notifications/SKILL.md");
    drop(s);
    let (code, _, err) = run_cli(
        &["init", "--force", "--state", state.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let forced = std::fs::read_to_string(&skill).unwrap();
    assert!(!forced.contains("My own notes"));
    assert!(
        forced.contains("http://localhost:5003/api/internal"),
        "init documents the configured port"
    );
}
