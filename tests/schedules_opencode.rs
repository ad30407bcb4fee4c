//! Schedules against the real OpenCode server (issue 6), offline: OpenCode runs with a
//! custom OpenAI-compatible provider that points at a fake model served from this test
//! (../shared/spec/opencode-server.md §7). The test drives the schedules service directly
//! on a temp state dir: manual run to completion, a scheduled run, cancel during a slow
//! answer, and a restart in the middle of a run (recovery).
//!
//! The OpenCode binary comes from `$OPENCODE_BIN` or
//! `.ci/opencode/node_modules/opencode-linux-x64/bin/opencode` (CI installs it); without it
//! the test fails and says how to install it.

use assistantd::opencode;
use assistantd::schedules::{
    self, Clock, ManualClock, RepoInfo, RepoLookup, Schedules, SchedulesDeps, SystemClock, Timing,
};
use assistantd::store::{Store, StoreError};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long OpenCode may take to print its `listening on` line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long one run may take to reach the state a step waits for.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const PASSWORD: &str = "schedules-test-pw";

pub(crate) const FAST_TEXT: &str = "Fake answer: all good";
pub(crate) const SLOW_TEXT: &str = "Slow answer: done";

// ---------------------------------------------------------------------------------------------
// A fake OpenAI-compatible model: `POST /v1/chat/completions` answered with SSE chunks.

pub(crate) const MODE_FAST: u8 = 0;
/// Streams one chunk every 250 ms for ~4 s, then finishes (restart test).
pub(crate) const MODE_SLOW: u8 = 1;
/// Streams one chunk every 250 ms until the client goes away or 60 s pass (cancel test).
pub(crate) const MODE_ENDLESS: u8 = 2;

pub(crate) struct FakeModel {
    pub(crate) port: u16,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicUsize>,
}

impl FakeModel {
    pub(crate) fn start() -> FakeModel {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake model");
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(MODE_FAST));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, r) = (mode.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (m, r) = (m.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve_model(conn, &m, &r);
                });
            }
        });
        FakeModel {
            port,
            mode,
            requests,
        }
    }

    pub(crate) fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn chunk(content: Option<&str>, finish: bool) -> String {
    let delta = match content {
        Some(c) => json!({"role": "assistant", "content": c}),
        None => json!({}),
    };
    let mut v = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": if finish { json!("stop") } else { Value::Null }}]
    });
    if finish {
        v["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    }
    format!("data: {v}\n\n")
}

/// Reads one HTTP request (headers and a Content-Length or chunked body).
fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    let mut content_length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        head.push_str(&line);
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut buf = vec![0; n + 2];
            reader.read_exact(&mut buf)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
    } else {
        body.resize(content_length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok((head, body))
}

fn serve_model(
    mut conn: TcpStream,
    mode: &AtomicU8,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    let (head, _body) = read_request(&mut conn)?;
    let request_line = head.lines().next().unwrap_or("");
    if !request_line.starts_with("POST") || !request_line.contains("/chat/completions") {
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    requests.fetch_add(1, Ordering::SeqCst);
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
    )?;
    match mode.load(Ordering::SeqCst) {
        MODE_FAST => {
            for c in ["<think>pondering</think>", "Fake answer: ", "all good"] {
                conn.write_all(chunk(Some(c), false).as_bytes())?;
            }
        }
        MODE_SLOW => {
            conn.write_all(chunk(Some("Slow answer: "), false).as_bytes())?;
            for _ in 0..16 {
                std::thread::sleep(Duration::from_millis(250));
                conn.write_all(chunk(Some(""), false).as_bytes())?;
                conn.flush()?;
            }
            conn.write_all(chunk(Some("done"), false).as_bytes())?;
        }
        _ => {
            conn.write_all(chunk(Some("Still thinking"), false).as_bytes())?;
            for _ in 0..240 {
                std::thread::sleep(Duration::from_millis(250));
                // Fails once OpenCode aborts and closes the connection.
                conn.write_all(chunk(Some("."), false).as_bytes())?;
                conn.flush()?;
            }
        }
    }
    conn.write_all(chunk(None, true).as_bytes())?;
    conn.write_all(b"data: [DONE]\n\n")?;
    conn.flush()
}

// ---------------------------------------------------------------------------------------------
// The real OpenCode server, offline.

fn opencode_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENCODE_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "OPENCODE_BIN={} is not a file", p.display());
        return p;
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".ci/opencode/node_modules/opencode-linux-x64/bin/opencode");
    assert!(
        p.is_file(),
        "the OpenCode binary is missing at {}: install it with \
         `mkdir -p .ci/opencode && cd .ci/opencode && npm init -y && npm i opencode-linux-x64` \
         or point OPENCODE_BIN at it",
        p.display()
    );
    p
}

pub(crate) struct OpenCode {
    child: Child,
    pub(crate) url: String,
    pub(crate) dir: PathBuf,
}

impl OpenCode {
    pub(crate) fn start(model_port: u16, dir: &Path) -> OpenCode {
        let bin = opencode_bin();
        let t = dir.join("opencode");
        for sub in ["home", "config", "data", "cache", "state", "tmp"] {
            std::fs::create_dir_all(t.join(sub)).unwrap();
        }
        let config = json!({
            "model": "fake/m", "small_model": "fake/m", "enabled_providers": ["fake"],
            "share": "disabled", "autoupdate": false,
            "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Fake",
                "options": {"baseURL": format!("http://127.0.0.1:{model_port}/v1"), "apiKey": "x"},
                "models": {"m": {"name": "Fake model"}}}}
        });
        let mut child = Command::new(&bin)
            .args(["serve", "--hostname", "127.0.0.1", "--port", "0"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", t.join("home"))
            .env("XDG_CONFIG_HOME", t.join("config"))
            .env("XDG_DATA_HOME", t.join("data"))
            .env("XDG_CACHE_HOME", t.join("cache"))
            .env("XDG_STATE_HOME", t.join("state"))
            .env("TMPDIR", t.join("tmp"))
            .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
            .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
            .env("OPENCODE_DISABLE_SHARE", "1")
            .env("OPENCODE_DISABLE_LSP_DOWNLOAD", "1")
            .env("npm_config_registry", "http://127.0.0.1:9/")
            .env("OPENCODE_SERVER_PASSWORD", PASSWORD)
            .env("OPENCODE_CONFIG_CONTENT", config.to_string())
            .current_dir(&t)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        // Connecting while the port opens can hang for good (startup race): wait for the line.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on ") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                }
            }
        });
        let mut oc = OpenCode {
            child,
            url: String::new(),
            dir: t,
        };
        match rx.recv_timeout(STARTUP_DEADLINE) {
            Ok(url) => oc.url = url,
            Err(_) => panic!(
                "OpenCode did not print `listening on` within {STARTUP_DEADLINE:?}; log dir {}",
                oc.dir.display()
            ),
        }
        oc
    }

    pub(crate) fn client(&self) -> opencode::Client {
        opencode::Client::new(&self.url, opencode::DEFAULT_USERNAME, Some(PASSWORD))
    }
}

impl Drop for OpenCode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The schedules service on a temp state dir.

struct NoRepos;

impl RepoLookup for NoRepos {
    fn repo(&self, _id: i64) -> Result<Option<RepoInfo>, StoreError> {
        Ok(None)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("assistantd-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn service(state: &Path, workspace: &Path, oc: &OpenCode, clock: Arc<dyn Clock>) -> Schedules {
    let timing = Timing {
        poll: Duration::from_millis(500),
        ..Timing::default()
    };
    Schedules::with_timing(
        SchedulesDeps {
            store: Arc::new(Store::new(state)),
            opencode: oc.client(),
            repos: Arc::new(NoRepos),
            workspace: workspace.to_path_buf(),
            clock,
        },
        timing,
    )
}

fn get_run(s: &Schedules, job: i64, run: i64) -> Value {
    s.get_run(0, job, run).unwrap()["run"].clone()
}

/// Polls the run until `pred` holds; panics with the run after [`STEP_DEADLINE`].
fn wait_run(s: &Schedules, job: i64, run: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        let r = get_run(s, job, run);
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} never became {what}: {r:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finished(r: &Value) -> bool {
    r["status"] != "running"
}

fn create_job(s: &Schedules, name: &str) -> i64 {
    let body = json!({"name": name, "prompt": "Say something.", "scheduleMode": "interval",
                      "intervalMinutes": 60, "skillMetadata": {"skillSlugs": ["customize-opencode"]}});
    let (status, v) = s.create_job(0, &body).unwrap();
    assert_eq!(status, 201);
    v["job"]["id"].as_i64().unwrap()
}

#[test]
fn schedules_run_on_real_opencode() {
    let started = Instant::now();
    let root = temp_dir("schedules-oc");
    let (state, workspace) = (root.join("state"), root.join("workspace"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&workspace).unwrap();
    let model = FakeModel::start();
    let oc = OpenCode::start(model.port, &root);
    eprintln!("opencode up at {} after {:?}", oc.url, started.elapsed());

    // 1. Manual run to completion: the fake model's text, think block removed.
    let s = service(&state, &workspace, &oc, Arc::new(SystemClock));
    let handle = schedules::start(&s);
    let job = create_job(&s, "Fast job");
    let run = s.run_job(0, job).unwrap()["run"].clone();
    assert_eq!(run["status"], "running");
    assert_eq!(run["triggerSource"], "manual");
    let session = run["sessionId"].as_str().unwrap().to_string();
    assert!(session.starts_with("ses"), "{run}");
    assert_eq!(run["sessionTitle"], "Scheduled: Fast job");
    assert!(run["logText"]
        .as_str()
        .unwrap()
        .ends_with("Run started. Waiting for assistant response..."));
    let run_id = run["id"].as_i64().unwrap();
    let done = wait_run(&s, job, run_id, "finished", finished);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["responseText"], FAST_TEXT);
    assert!(done["errorText"].is_null());
    let log = done["logText"].as_str().unwrap();
    assert!(
        log.contains("Job: Fast job\nTrigger: manual\nFinished: "),
        "{log}"
    );
    assert!(
        log.ends_with(&format!("Assistant output:\n{FAST_TEXT}")),
        "{log}"
    );
    assert!(s.get_job(0, job).unwrap()["job"]["lastRunAt"].is_i64());
    // The session really is in OpenCode, in the workspace directory, with our ruleset.
    let client = oc.client();
    let msgs = client.session_messages(&workspace, &session, 50).unwrap();
    assert!(msgs.as_array().unwrap().len() >= 2, "{msgs}");
    // The prompt went out with the requested skill loaded from OpenCode's `/skill`.
    let prompt = msgs[0]["parts"][0]["text"].as_str().unwrap_or_default();
    assert!(prompt.starts_with("Say something."), "{prompt}");
    assert!(
        prompt.contains("The following skills have been loaded for this task:")
            && prompt.contains("<skill_content name=\"customize-opencode\">"),
        "{prompt}"
    );
    // `limit` keeps the newest messages (the runner relies on it to find the last answer).
    let tail = client.session_messages(&workspace, &session, 1).unwrap();
    assert_eq!(tail.as_array().unwrap().len(), 1, "{tail}");
    assert_eq!(tail[0]["info"]["role"], "assistant", "{tail}");
    let sessions = client
        .call_json("GET", "/session", Some(&workspace), None)
        .unwrap();
    let ours = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == session.as_str())
        .unwrap();
    assert_eq!(
        ours["permission"][0],
        json!({"permission": "*", "pattern": "*", "action": "allow"})
    );
    eprintln!("manual run done after {:?}", started.elapsed());

    // 2. Slow model, cancel while the session is busy.
    model.set_mode(MODE_ENDLESS);
    let before = model.requests();
    let run = s.run_job(0, job).unwrap()["run"].clone();
    let run_id = run["id"].as_i64().unwrap();
    // A second run of the same job is refused while this one runs.
    assert_eq!(
        s.run_job(0, job).unwrap_err().to_string(),
        "Schedule is already running"
    );
    wait_until("the model to be asked", || model.requests() > before);
    let cancelled = s.cancel_run(0, job, run_id).unwrap()["run"].clone();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["errorText"], "Run cancelled by user.");
    // OpenCode really stopped: the session goes idle with an aborted answer.
    let session = cancelled["sessionId"].as_str().unwrap().to_string();
    wait_until("the session to go idle", || {
        !client
            .session_status(&workspace)
            .unwrap()
            .contains_key(&session)
    });
    assert_eq!(get_run(&s, job, run_id)["status"], "cancelled");
    eprintln!("cancel done after {:?}", started.elapsed());
    // The job is free again at once, and the next run is unaffected by the aborted one.
    model.set_mode(MODE_FAST);
    let run = s.run_job(0, job).unwrap()["run"].clone();
    let done = wait_run(&s, job, run["id"].as_i64().unwrap(), "finished", finished);
    assert_eq!(done["responseText"], FAST_TEXT, "{done:#}");

    // 3. A scheduled run (trigger "schedule") through the scheduler thread.
    handle.shutdown();
    drop(s);
    let clock = Arc::new(ManualClock::new(assistantd::util::now_ms()));
    let s = service(&state, &workspace, &oc, clock.clone());
    let handle = schedules::start(&s);
    let next = s.get_job(0, job).unwrap()["job"]["nextRunAt"]
        .as_i64()
        .unwrap();
    clock.set(next);
    handle.notify_changed();
    let deadline = Instant::now() + STEP_DEADLINE;
    let scheduled = loop {
        let runs = s.list_runs(0, job, None).unwrap()["runs"].clone();
        let r = runs[0].clone();
        if r["triggerSource"] == "schedule" && finished(&r) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled run did not finish: {runs:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = get_run(&s, job, scheduled["id"].as_i64().unwrap());
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["responseText"], FAST_TEXT);
    // Interval jobs continue on their grid from nextRunAt.
    assert_eq!(
        s.get_job(0, job).unwrap()["job"]["nextRunAt"]
            .as_i64()
            .unwrap(),
        next + 60 * 60_000
    );
    eprintln!("scheduled run done after {:?}", started.elapsed());

    // 4. Restart in the middle of a run: the new service recovers and completes it.
    model.set_mode(MODE_SLOW);
    let before = model.requests();
    let run = s.run_job(0, job).unwrap()["run"].clone();
    let run_id = run["id"].as_i64().unwrap();
    wait_until("the model to be asked", || model.requests() > before);
    handle.shutdown();
    drop(s);
    assert_eq!(
        Store::new(&state).load::<Value>("schedules.json").unwrap()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == run_id)
            .unwrap()["status"],
        "running",
        "shutdown must leave the run for recovery"
    );
    let s = service(&state, &workspace, &oc, Arc::new(SystemClock));
    let handle = schedules::start(&s);
    let done = wait_run(&s, job, run_id, "finished", finished);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["responseText"], SLOW_TEXT);
    handle.shutdown();
    eprintln!("restart recovery done after {:?}", started.elapsed());

    drop(oc);
    let _ = std::fs::remove_dir_all(&root);
}
