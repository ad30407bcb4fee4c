//! assistantd against the real OpenCode server (npm `opencode-linux-x64`, offline, with a fake
//! OpenAI-compatible model): reload disposes the workspace's instance, a wrong password is a
//! 502, and every curl example of the four workspace skills works against the live server.

use crate::schedules_opencode::{FakeModel, OpenCode, MODE_ENDLESS, PASSWORD};
use crate::util::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn basic(user_pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// Follows OpenCode's `/global/event` stream and sends every `data:` JSON frame.
fn global_events(oc_url: &str) -> mpsc::Receiver<Value> {
    let hostport = oc_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = TcpStream::connect(&hostport).unwrap();
    let req = format!(
        "GET /global/event HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: {}\r\nAccept: text/event-stream\r\n\r\n",
        basic(&format!("opencode:{PASSWORD}"))
    );
    s.write_all(req.as_bytes()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn wait_for_event(
    rx: &mpsc::Receiver<Value>,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = std::time::Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if pred(&v) => return Some(v),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn reload_disposes_the_workspace_on_the_real_opencode_server() {
    let d = TempDir::new("oc-reload");
    let model = FakeModel::start();
    let oc = OpenCode::start(model.port, d.path());
    let events = global_events(&oc.url);
    // The stream says hello first; after that, every event is ours to watch.
    assert!(
        wait_for_event(&events, Duration::from_secs(20), |v| v["payload"]["type"]
            == "server.connected")
        .is_some()
    );
    let state = d.join("state");
    let s = TestServer::start(
        &state,
        &["--opencode-url", &oc.url],
        &[("OPENCODE_SERVER_PASSWORD", PASSWORD)],
    );
    let ws = state.join("repos/assistant");
    let r = s.call("POST", "/api/internal/assistant/reload", None);
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"success": true}))
    );
    let want = ws.to_str().unwrap().to_string();
    let ev = wait_for_event(&events, Duration::from_secs(20), |v| {
        v["payload"]["type"] == "server.instance.disposed"
            && v["payload"]["properties"]["directory"] == want.as_str()
    });
    assert!(ev.is_some(), "no server.instance.disposed for {want}");
    drop(s);
    // A wrong password: OpenCode answers 401, we answer 502 with the reason.
    let s = TestServer::start(
        &state,
        &["--opencode-url", &oc.url],
        &[("OPENCODE_SERVER_PASSWORD", "wrong")],
    );
    let r = s.call("POST", "/api/internal/assistant/reload", None);
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "Failed to reload assistant workspace", "detail": "OpenCode answered HTTP 401"})
    );
    assert!(!s.log_text().contains(PASSWORD));
}

/// Runs every `sh` block of the generated skills, in order, from the workspace dir, through a
/// `curl` wrapper that appends the HTTP status; every example must answer 2xx.
#[test]
fn every_skill_curl_example_works_against_the_live_server() {
    let d = TempDir::new("oc-skills");
    let model = FakeModel::start();
    // The schedule examples cancel run 1 right after starting it: keep the model talking.
    model.set_mode(MODE_ENDLESS);
    let oc = OpenCode::start(model.port, d.path());
    let state = d.join("state");
    let s = TestServer::start(
        &state,
        &["--opencode-url", &oc.url],
        &[("OPENCODE_SERVER_PASSWORD", PASSWORD)],
    );
    let ws = state.join("repos/assistant");
    let real_curl = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v curl"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let real_curl = real_curl.trim();
    assert!(
        !real_curl.is_empty(),
        "curl is needed (apt-get install curl)"
    );
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("curl");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {real_curl} -w '\\n__HTTP_STATUS__%{{http_code}}' \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let examples = assistantd::workspace::skill_curl_examples(&ws);
    let per_skill = |name: &str| examples.iter().filter(|(s, _)| s == name).count();
    assert_eq!(
        (
            per_skill("schedule-management"),
            per_skill("notifications"),
            per_skill("manager-settings"),
            per_skill("repo-management")
        ),
        (16, 2, 5, 2)
    );
    for (skill, cmd) in &examples {
        assert!(
            cmd.contains(&format!("http://localhost:{}/api/internal", s.port)),
            "{cmd}"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&ws)
            .env("PATH", &path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{skill}: `{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = stdout
            .rsplit_once("__HTTP_STATUS__")
            .unwrap_or_else(|| panic!("{skill}: no status in {stdout}"));
        let status: u16 = status.trim().parse().unwrap();
        assert!(
            (200..300).contains(&status),
            "{skill}: `{cmd}` answered {status}: {body}"
        );
        if cmd.contains("/run\"") || cmd.contains("/run ") {
            // The run is live on OpenCode: wait until its session exists before cancelling.
            let v: Value = serde_json::from_str(body.trim()).unwrap();
            assert_eq!(v["run"]["status"], "running", "{body}");
        }
    }
    // What the examples left behind: job 1 deleted, job 2 kept, run 1 cancelled then removed.
    let r = s.call("GET", "/api/internal/repos/0/schedules", None);
    let jobs = r.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], 2);
    assert_eq!(jobs[0]["intervalMinutes"], 120);
}
