//! `make bench` (issue 5): builds nothing, runs everything, prints one table.
//!
//! ```sh
//! make bench                       # = bench/run.sh: release build, then this binary
//! BENCH_SECS=3 BENCH_RUNS=1 make bench
//! ```
//!
//! What it does, all on 127.0.0.1, everything in a fresh directory under `BENCH_DIR`
//! (default `target/bench-tmp`, on the checkout's file system so an fsync costs what it costs
//! there, not tmpfs' nothing), removed at the end unless `BENCH_KEEP=1`:
//!
//! 1. Starts `push_sink` (answers 201 at once), then a fixture: `assistantd init`, a
//!    `settings.json` with every field set, `repos.json` with 100 repos, and 100 subscriptions
//!    of the `default` user pointing at the sink.
//! 2. Starts `assistantd serve` on it (stderr, the request log, to a file) and two `floor`s (a
//!    bare tiny_http server with as many workers), one answering our GET settings bytes, one
//!    our GET repos bytes.
//! 3. `BENCH_RUNS` (3) times, for `BENCH_SECS` (10) each, with `BENCH_CONNS` (32) keep-alive
//!    connections of `loadgen`: floor, GET settings, repos floor, GET repos, 401 (wrong
//!    token), PATCH settings (client *i* patches its own keys, alternating two values; every
//!    write fsync'd). `settings.json` is restored before each run, so every run reads the same
//!    bytes. Medians of the valid runs; a run where a connection starved or stalled is INVALID
//!    (shown in the runs column, counted in the verdict, left out of the median).
//! 4. RSS (VmRSS idle; VmHWM after the first run's GET load), exec → first 200 on /health
//!    (`BENCH_STARTS`, 20, fresh processes on one port, after one unmeasured start that
//!    writes the skills with that port), stripped binary size, notification send to 1, 10
//!    and 100 devices on sinks answering after 0 and 50 ms (each group on a freshly started
//!    server, so the 10 sends/min bucket is full: 1 warm-up + `BENCH_SENDS` (5) timed sends),
//!    and the per-message crypto cost from `push_bench`.
//! 5. With `wrk` on the PATH (and `BENCH_WRK` not `0`), one wrk run on the floor and on GET
//!    settings, printed under the table for comparison only.
//!
//! Progress goes to stderr; the table (markdown) to stdout.

use assistantd::push::crypto;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long exec → first 200 may take before a start counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Devices counts for the send figures.
const DEVICE_COUNTS: [usize; 3] = [1, 10, 100];
/// Sink delays for the send figures, in ms.
const SINK_DELAYS: [u64; 2] = [0, 50];
/// Repos in the fixture.
const FIXTURE_REPOS: usize = 100;
/// Subscriptions of the `default` user in the fixture.
const FIXTURE_SUBSCRIPTIONS: usize = 100;

// ---------------------------------------------------------------------------------------------
// Settings from the environment

struct Cfg {
    secs: f64,
    runs: usize,
    conns: usize,
    workers: Option<usize>,
    sends: usize,
    starts: usize,
    wrk: bool,
    keep: bool,
    dir: PathBuf,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            fail(&format!("{name}={v:?} is not a valid number"));
        }),
        _ => default,
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

fn cfg() -> Cfg {
    let c = Cfg {
        secs: env_num("BENCH_SECS", 10.0),
        runs: env_num("BENCH_RUNS", 3),
        conns: env_num("BENCH_CONNS", 32),
        workers: std::env::var("BENCH_WORKERS")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|_| env_num("BENCH_WORKERS", 0)),
        sends: env_num("BENCH_SENDS", 5),
        starts: env_num("BENCH_STARTS", 20),
        wrk: std::env::var("BENCH_WRK").map_or(true, |v| v != "0"),
        keep: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
        dir: std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench-tmp")),
    };
    if !(c.secs > 0.0 && c.secs <= 600.0) || c.runs == 0 || c.runs > 20 {
        fail("BENCH_SECS must be in (0, 600] and BENCH_RUNS in 1..=20");
    }
    if c.conns == 0 || c.conns > 1000 || c.sends == 0 || c.sends > 9 || c.starts == 0 {
        fail("BENCH_CONNS in 1..=1000, BENCH_SENDS in 1..=9 (the send bucket holds 10), BENCH_STARTS > 0");
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Pids of the children that are running, for the signal handler.
static CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn kill_pid(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// On SIGTERM/SIGINT/SIGHUP (Ctrl-C, or `timeout` in bench/run.sh), stop every child, then exit.
fn stop_children_on_signal() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let pids = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
            for pid in pids {
                kill_pid("-TERM", pid);
            }
            eprintln!("bench: signal {sig}, children stopped");
            std::process::exit(130);
        }
    });
}

/// A child that is stopped when dropped: SIGTERM first (assistantd drains and exits), then
/// SIGKILL after a few seconds.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn new(child: Child, name: &'static str) -> Proc {
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
        Proc { child, name }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let pid = self.pid();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|&p| p != pid);
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        kill_pid("-TERM", pid);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("bench: {} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `cmd` (stdout piped) and waits for its `listening on http://ADDR` line.
fn spawn_listening(name: &'static str, mut cmd: Command) -> (Proc, SocketAddr) {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {name}: {e}")));
    let stdout = child.stdout.take();
    let proc = Proc::new(child, name);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Some(out) = stdout else { return };
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.trim().to_string());
            }
            // Keep draining so the child never blocks on a full pipe.
        }
    });
    let addr = rx
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| fail(&format!("{name} did not print its address")));
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| fail(&format!("{name} printed a bad address {addr:?}")));
    (proc, addr)
}

struct Bins {
    assistantd: PathBuf,
    examples: PathBuf,
}

impl Bins {
    fn find() -> Bins {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
        let examples = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let assistantd = examples.join("../assistantd");
        let b = Bins {
            assistantd,
            examples,
        };
        for p in [
            b.assistantd.clone(),
            b.example("loadgen"),
            b.example("floor"),
            b.example("push_sink"),
            b.example("push_bench"),
        ] {
            if !p.exists() {
                fail(&format!(
                    "{} is missing; run `make bench` (it builds the release binary and examples)",
                    p.display()
                ));
            }
        }
        b
    }

    fn example(&self, name: &str) -> PathBuf {
        self.examples.join(name)
    }
}

/// `assistantd` with a clean environment for our variables.
fn assistantd_cmd(bins: &Bins) -> Command {
    let mut c = Command::new(&bins.assistantd);
    for var in [
        "ASSISTANTD_LISTEN",
        "ASSISTANTD_STATE",
        "ASSISTANTD_TOKEN",
        "ASSISTANTD_WORKERS",
        "HOST",
        "PORT",
        "REPOS_ROOT",
        "ASSISTANT_WORKSPACE",
        "OPENCODE_URL",
        "OPENCODE_HOST",
        "OPENCODE_SERVER_PORT",
        "OPENCODE_SERVER_USERNAME",
        "OPENCODE_SERVER_PASSWORD",
        "VAPID_PUBLIC_KEY",
        "VAPID_PRIVATE_KEY",
        "VAPID_SUBJECT",
    ] {
        c.env_remove(var);
    }
    c
}

fn start_server(
    bins: &Bins,
    state: &Path,
    log: &Path,
    workers: Option<usize>,
) -> (Proc, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", log.display())));
    let mut cmd = assistantd_cmd(bins);
    cmd.arg("serve")
        .arg("--state")
        .arg(state)
        .args(["--listen", "127.0.0.1:0", "--allow-private-push-endpoints"])
        // Nothing listens there; the bench never calls OpenCode.
        .args(["--opencode-url", "http://127.0.0.1:9"])
        .stderr(log);
    if let Some(w) = workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    spawn_listening("assistantd", cmd)
}

// ---------------------------------------------------------------------------------------------
// A one-shot HTTP client (Connection: close) for setup calls

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    let go = || -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header end"))?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let body = &raw[end + 4..];
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_vec()
            },
        ))
    };
    go().unwrap_or_else(|e| fail(&format!("{method} {path}: {e}")))
}

/// The payload of a complete chunked body (tiny_http chunks bodies of 32 KiB and more).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        let start = eol + 2;
        if size == 0 || start + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

fn expect_ok(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Vec<u8> {
    let (status, b) = http(addr, method, path, Some(token), body);
    if status != 200 {
        fail(&format!(
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&b)
        ));
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Fixture

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A real subscription's keys: an uncompressed P-256 point and a 16-byte auth secret.
fn device_keys() -> (String, String) {
    let key = crypto::random_secret_key();
    let auth: [u8; crypto::AUTH_LEN] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
    (
        b64url(&crypto::point_bytes(&key.public_key())),
        b64url(&auth),
    )
}

/// `settings.json`: the `default` user with every field set (secrets too, so redaction runs).
fn settings_fixture() -> Value {
    let shortcuts: serde_json::Map<String, Value> = [
        ("submit", "Ctrl+Enter"),
        ("abort", "Escape"),
        ("toggleMode", "T"),
        ("undo", "Z"),
        ("redo", "Shift+Z"),
        ("compact", "K"),
        ("fork", "F"),
        ("settings", ","),
        ("sessions", "S"),
        ("newSession", "N"),
        ("closeSession", "W"),
        ("toggleSidebar", "B"),
        ("selectModel", "M"),
        ("variantCycle", "Ctrl+T"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), json!(v)))
    .collect();
    let commands: Vec<Value> = (1..=5)
        .map(|i| {
            json!({
                "name": format!("cmd-{i}"),
                "description": format!("Custom command number {i}"),
                "promptTemplate": format!("Review the changes in $ARGUMENTS and report problem {i}")
            })
        })
        .collect();
    json!({
        "users": {
            "default": {
                "preferences": {
                    "theme": "light",
                    "mode": "plan",
                    "defaultModel": "anthropic/claude-sonnet-4-5",
                    "defaultAgent": "build",
                    "autoScroll": false,
                    "expandDiffs": false,
                    "expandToolCalls": true,
                    "showReasoning": true,
                    "simpleChatMode": true,
                    "leaderKey": "Ctrl+X",
                    "directShortcuts": ["submit", "abort", "undo", "redo"],
                    "keyboardShortcuts": shortcuts,
                    "customCommands": commands,
                    "gitCredentials": [
                        {"id": "cred-1", "name": "GitHub", "host": "github.com", "type": "pat",
                         "token": "ghp_0123456789abcdef0123456789abcdef0123", "username": "octo"},
                        {"id": "cred-2", "name": "Work GitLab", "host": "gitlab.example.com",
                         "type": "ssh", "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
                         "hasPassphrase": true, "passphrase": "correct horse battery staple"}
                    ],
                    "defaultGitCredentialId": "cred-1",
                    "gitIdentity": {"name": "Bench User", "email": "bench@example.com"},
                    "tts": {
                        "enabled": true, "provider": "external", "autoPlay": true,
                        "endpoint": "https://api.openai.com", "apiKey": "sk-tts-0123456789abcdef",
                        "voice": "alloy", "model": "tts-1-hd", "speed": 1.25,
                        "availableVoices": ["alloy", "echo", "fable", "onyx", "nova", "shimmer"],
                        "availableModels": ["tts-1", "tts-1-hd"],
                        "lastVoicesFetch": 1_764_000_000_000_i64, "lastModelsFetch": 1_764_000_000_000_i64
                    },
                    "stt": {
                        "enabled": true, "provider": "external", "endpoint": "https://api.openai.com",
                        "apiKey": "sk-stt-0123456789abcdef", "model": "whisper-1", "language": "en-US",
                        "availableModels": ["whisper-1", "gpt-4o-transcribe"],
                        "lastModelsFetch": 1_764_000_000_000_i64
                    },
                    "notifications": {
                        "enabled": true,
                        "events": {"permissionAsked": true, "questionAsked": true,
                                   "sessionError": true, "sessionIdle": true}
                    },
                    "lastKnownGoodConfig": "{\"$schema\":\"https://opencode.ai/config.json\"}",
                    "repoOrder": [42, 7, 99, 1, 13, 64, 28, 3, 77, 50],
                    "repoSortMode": "manual",
                    "serverEnvVars": [
                        {"key": "RUST_LOG", "value": "info"},
                        {"key": "NODE_ENV", "value": "production"}
                    ],
                    "disabledDefaultServerEnvVars": ["OPENCODE_DISABLE_AUTOUPDATE"]
                },
                "updatedAt": 1_764_000_000_000_i64
            }
        }
    })
}

fn repos_fixture() -> Value {
    let repos: Vec<Value> = (1..=FIXTURE_REPOS)
        .map(|i| {
            let mut r = json!({
                "id": i,
                "name": format!("project-{i:03}"),
                "repoUrl": format!("https://github.com/bench-org/project-{i:03}.git"),
                "localPath": format!("project-{i:03}"),
                "branch": if i % 3 == 0 { "develop" } else { "main" },
                "defaultBranch": "main",
                "cloneStatus": "ready",
                "clonedAt": 1_760_000_000_000_i64 + i as i64 * 1000,
                "lastPulled": 1_763_000_000_000_i64 + i as i64 * 1000,
                "lastAccessedAt": 1_764_000_000_000_i64 - i as i64 * 1000,
                "openCodeConfigName": "default"
            });
            if i % 10 == 0 {
                r["isWorktree"] = json!(true);
                r["sourcePath"] = json!(format!("/srv/src/project-{i:03}"));
            }
            if i % 25 == 0 {
                r["isLocal"] = json!(true);
            }
            r
        })
        .collect();
    json!({ "repos": repos })
}

fn subscriptions_fixture(sink: SocketAddr) -> Value {
    let subs: Vec<Value> = (1..=FIXTURE_SUBSCRIPTIONS)
        .map(|i| {
            let (p256dh, auth) = device_keys();
            json!({
                "id": i,
                "userId": "default",
                "endpoint": format!("http://{sink}/fixture/{i}"),
                "p256dh": p256dh,
                "auth": auth,
                "deviceName": format!("Device {i}"),
                "createdAt": 1_764_000_000_000_i64 + i as i64,
                "lastUsedAt": null
            })
        })
        .collect();
    json!({ "subscriptions": subs })
}

/// Writes `value` as `dir/name` atomically (temp + rename), as the server's own writes are.
fn write_json(dir: &Path, name: &str, value: &Value) {
    let tmp = dir.join(format!(".{name}.bench-tmp"));
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
        .unwrap_or_else(|e| fail(&format!("writing {name}: {e}")));
}

fn make_fixture(bins: &Bins, state: &Path, sink: SocketAddr) -> String {
    let out = assistantd_cmd(bins)
        .arg("init")
        .arg("--state")
        .arg(state)
        .output()
        .unwrap_or_else(|e| fail(&format!("assistantd init: {e}")));
    if !out.status.success() {
        fail(&format!(
            "assistantd init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    write_json(state, "settings.json", &settings_fixture());
    write_json(state, "repos.json", &repos_fixture());
    write_json(state, "subscriptions.json", &subscriptions_fixture(sink));
    std::fs::read_to_string(state.join("internal-token"))
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|e| fail(&format!("reading the token: {e}")))
}

/// Bodies for the PATCH scenario: line `i` and `i + conns` are client `i`'s two alternating
/// bodies (loadgen's `--bodies` rule). Client `i` patches key `i mod 18`; clients past the 18th
/// add a second key, so no two clients send the same key set.
fn patch_bodies(conns: usize) -> String {
    let keys: [(&str, Value, Value); 18] = [
        ("theme", json!("dark"), json!("light")),
        ("mode", json!("build"), json!("plan")),
        (
            "defaultModel",
            json!("openai/gpt-5"),
            json!("anthropic/claude-sonnet-4-5"),
        ),
        ("defaultAgent", json!("plan"), json!("build")),
        ("autoScroll", json!(true), json!(false)),
        ("expandDiffs", json!(true), json!(false)),
        ("expandToolCalls", json!(false), json!(true)),
        ("showReasoning", json!(false), json!(true)),
        ("simpleChatMode", json!(false), json!(true)),
        ("leaderKey", json!("Ctrl+O"), json!("Ctrl+X")),
        (
            "directShortcuts",
            json!(["submit", "abort"]),
            json!(["submit", "abort", "undo", "redo"]),
        ),
        (
            "keyboardShortcuts",
            json!({"submit": "Enter", "abort": "Escape", "undo": "Z", "redo": "Shift+Z"}),
            json!({"submit": "Ctrl+Enter", "abort": "Escape", "undo": "Z", "redo": "Shift+Z"}),
        ),
        (
            "customCommands",
            json!([{"name": "cmd-1", "description": "One", "promptTemplate": "Do $ARGUMENTS"}]),
            json!([{"name": "cmd-1", "description": "One", "promptTemplate": "Redo $ARGUMENTS"}]),
        ),
        (
            "notifications",
            json!({"enabled": true, "events": {"permissionAsked": true, "questionAsked": false, "sessionError": true, "sessionIdle": false}}),
            json!({"enabled": true, "events": {"permissionAsked": true, "questionAsked": true, "sessionError": true, "sessionIdle": true}}),
        ),
        (
            "repoOrder",
            json!([7, 42, 99, 1]),
            json!([42, 7, 99, 1, 13, 64, 28, 3, 77, 50]),
        ),
        ("repoSortMode", json!("name"), json!("manual")),
        (
            "tts",
            json!({"voice": "echo", "speed": 1.5}),
            json!({"voice": "alloy", "speed": 1.25}),
        ),
        (
            "stt",
            json!({"language": "de-DE"}),
            json!({"language": "en-US"}),
        ),
    ];
    let body = |i: usize, alt: bool| {
        let mut m = serde_json::Map::new();
        let mut add = |k: usize| {
            let (name, a, b) = &keys[k % keys.len()];
            m.insert(name.to_string(), if alt { b.clone() } else { a.clone() });
        };
        add(i);
        if i >= keys.len() {
            add(i + 1);
        }
        Value::Object(m).to_string()
    };
    let mut out = String::new();
    for alt in [false, true] {
        for i in 0..conns {
            out.push_str(&body(i, alt));
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One loadgen run.
#[derive(Clone, Default)]
struct Load {
    valid: bool,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    starved: u64,
    stalled: u64,
    errors: u64,
    unexpected: u64,
    /// Answers with `Connection: close` (the server shedding keep-alive connections).
    closed: u64,
}

impl Load {
    fn clean(&self) -> bool {
        self.valid && self.errors == 0 && self.unexpected == 0
    }

    fn label(&self) -> String {
        if !self.valid {
            format!(
                "INVALID ({} starved, {} stalled; {})",
                self.starved,
                self.stalled,
                k(self.rps)
            )
        } else if self.errors > 0 || self.unexpected > 0 {
            format!(
                "ERRORS ({} errors, {} wrong status; {})",
                self.errors,
                self.unexpected,
                k(self.rps)
            )
        } else if self.closed > 0 {
            format!("{} ({} closed)", k(self.rps), self.closed)
        } else {
            k(self.rps)
        }
    }
}

fn k(rps: f64) -> String {
    format!("{:.1}k", rps / 1000.0)
}

struct Scenario {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    auth: Auth,
    bodies: Option<PathBuf>,
    expect: u16,
    target: Target,
}

/// Which server a scenario loads.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Ours,
    /// The floor serving our GET settings bytes.
    Floor,
    /// The floor serving our GET repos bytes.
    FloorRepos,
}

enum Auth {
    Token,
    Wrong,
}

fn loadgen(bins: &Bins, c: &Cfg, addr: SocketAddr, sc: &Scenario, token: &str) -> Load {
    let mut cmd = Command::new(bins.example("loadgen"));
    cmd.args(["--addr", &addr.to_string()])
        .args(["--conns", &c.conns.to_string()])
        .args(["--secs", &c.secs.to_string()])
        .args(["--method", sc.method, "--path", sc.path])
        .args(["--expect", &sc.expect.to_string()]);
    let wrong = "0".repeat(64);
    let t = match sc.auth {
        Auth::Token => token,
        Auth::Wrong => &wrong,
    };
    cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    if let Some(b) = &sc.bodies {
        cmd.args(["-H", "Content-Type: application/json"])
            .arg("--bodies")
            .arg(b);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| fail(&format!("loadgen: {e}")));
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(result) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        fail(&format!("loadgen printed no RESULT line:\n{text}"));
    };
    let get = |key: &str| -> f64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let l = Load {
        valid: get("valid") == 1.0,
        rps: get("rps"),
        p50_us: get("p50_us"),
        p99_us: get("p99_us"),
        starved: get("starved") as u64,
        stalled: get("stalled") as u64,
        errors: get("errors") as u64,
        unexpected: get("unexpected") as u64,
        closed: get("closed") as u64,
    };
    for line in text.lines().filter(|l| !l.starts_with("RESULT ")) {
        eprintln!("    {line}");
    }
    l
}

/// `Vm…` of `/proc/<pid>/status`, in kB.
fn vm_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| {
                v.trim_start_matches(':')
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Threads of `pid` named `worker-*` (src/http.rs names its pool so).
fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("worker-"))
        })
        .count()
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The 1-minute load average, as text.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

/// exec → first `200` on `GET /health` on `port`, polling with short connect attempts.
fn time_to_first_200(bins: &Bins, state: &Path, log: &Path, port: u16) -> Option<Duration> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ok()?;
    let mut cmd = assistantd_cmd(bins);
    cmd.arg("serve")
        .arg("--state")
        .arg(state)
        .args([
            "--listen",
            &addr.to_string(),
            "--opencode-url",
            "http://127.0.0.1:9",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let started = Instant::now();
    let child = cmd.spawn().ok()?;
    let _guard = Proc::new(child, "assistantd (start time)");
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(20))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    };
    while started.elapsed() < START_TIMEOUT {
        if let Ok(true) = probe() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// `{delivered, …}` of one send and how long the call took.
fn timed_send(addr: SocketAddr, token: &str, user: &str) -> (Duration, Value) {
    let body = json!({"title": "Build finished", "body": "All 1,234 tests pass on main",
                      "url": "/sessions/42", "priority": "high"})
    .to_string();
    let started = Instant::now();
    let out = expect_ok(
        addr,
        "POST",
        &format!("/api/internal/notifications/send?userId={user}"),
        token,
        Some(&body),
    );
    let took = started.elapsed();
    (took, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

fn wrk(addr: SocketAddr, c: &Cfg, path: &str, token: &str) -> Option<(f64, String)> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", c.conns),
            &format!("-d{}s", c.secs.ceil()),
        ])
        .args(["--latency", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    Some((rps, p99))
}

// ---------------------------------------------------------------------------------------------
// The table

struct Table {
    rows: Vec<[String; 7]>,
}

impl Table {
    fn row(&mut self, cells: [&str; 7]) {
        self.rows.push(cells.map(str::to_string));
    }

    fn print(&self) {
        let head = [
            "figure", "median", "p50", "p99", "runs", "target", "verdict",
        ];
        let mut w = head.map(|h| h.chars().count());
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            }
            println!("{s}");
        };
        line(&head.map(str::to_string));
        line(&w.map(|n| "-".repeat(n)));
        for r in &self.rows {
            line(r);
        }
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 * 1024.0 / 1e6)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let c = cfg();
    let bins = Bins::find();
    stop_children_on_signal();
    crypto::init();
    let load_before = loadavg();
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    // Work dir: a fresh one per bench run.
    std::fs::create_dir_all(&c.dir).unwrap_or_else(|e| fail(&format!("{}: {e}", c.dir.display())));
    let work = std::path::absolute(c.dir.join(format!("run-{}", std::process::id())))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("{}: {e}", work.display())));
    let state = work.join("state");
    let log = work.join("server.log");
    eprintln!(
        "bench: work dir {} (server log: server.log)",
        work.display()
    );

    // Sinks first: the fixture's subscriptions point at the 0 ms one.
    let sinks: Vec<(u64, Proc, SocketAddr)> = SINK_DELAYS
        .iter()
        .map(|&d| {
            let mut cmd = Command::new(bins.example("push_sink"));
            cmd.args(["--delay-ms", &d.to_string(), "--max-secs", "3600"]);
            let (p, a) = spawn_listening("push_sink", cmd);
            (d, p, a)
        })
        .collect();
    let token = make_fixture(&bins, &state, sinks[0].2);
    let settings_bytes = std::fs::read(state.join("settings.json")).unwrap_or_default();

    // The server, warmed with a few requests; idle RSS.
    let (mut server, addr) = start_server(&bins, &state, &log, c.workers);
    let settings_body = expect_ok(addr, "GET", "/api/internal/settings", &token, None);
    let repos_body = expect_ok(addr, "GET", "/api/internal/repos", &token, None);
    for _ in 0..5 {
        expect_ok(addr, "GET", "/api/internal/settings", &token, None);
        expect_ok(addr, "GET", "/api/internal/repos", &token, None);
        expect_ok(addr, "GET", "/health", &token, None);
    }
    let repos_count = serde_json::from_slice::<Value>(&repos_body)
        .ok()
        .and_then(|v| {
            v.as_array()
                .map(Vec::len)
                .or_else(|| v["repos"].as_array().map(Vec::len))
        })
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(200));
    let idle_kb = vm_kb(server.pid(), "VmRSS");
    let workers = match worker_threads(server.pid()) {
        0 => c.workers.unwrap_or_else(assistantd::cli::default_workers),
        n => n,
    };
    eprintln!(
        "bench: assistantd pid {} on {addr}, {workers} workers; GET settings {} bytes, repos {} bytes ({repos_count} repos)",
        server.pid(),
        settings_body.len(),
        repos_body.len()
    );

    // The floor, with our exact settings bytes.
    let body_file = work.join("settings-response.json");
    std::fs::write(&body_file, &settings_body).unwrap_or_else(|e| fail(&e.to_string()));
    let mut floor_cmd = Command::new(bins.example("floor"));
    floor_cmd.arg("--body").arg(&body_file).args([
        "--workers",
        &workers.to_string(),
        "--max-secs",
        "3600",
    ]);
    let (mut floor, floor_addr) = spawn_listening("floor", floor_cmd);
    // A second floor with our GET repos bytes: what tiny_http alone does with that body.
    let repos_file = work.join("repos-response.json");
    std::fs::write(&repos_file, &repos_body).unwrap_or_else(|e| fail(&e.to_string()));
    let mut floor_cmd = Command::new(bins.example("floor"));
    floor_cmd.arg("--body").arg(&repos_file).args([
        "--workers",
        &workers.to_string(),
        "--max-secs",
        "3600",
    ]);
    let (mut floor_repos, floor_repos_addr) = spawn_listening("floor", floor_cmd);

    let bodies = work.join("patch-bodies.txt");
    std::fs::write(&bodies, patch_bodies(c.conns)).unwrap_or_else(|e| fail(&e.to_string()));
    let scenarios = [
        Scenario {
            name: "floor",
            method: "GET",
            path: "/api/internal/settings",
            auth: Auth::Token,
            bodies: None,
            expect: 200,
            target: Target::Floor,
        },
        Scenario {
            name: "settings",
            method: "GET",
            path: "/api/internal/settings",
            auth: Auth::Token,
            bodies: None,
            expect: 200,
            target: Target::Ours,
        },
        Scenario {
            name: "floor, repos bytes",
            method: "GET",
            path: "/api/internal/repos",
            auth: Auth::Token,
            bodies: None,
            expect: 200,
            target: Target::FloorRepos,
        },
        Scenario {
            name: "repos",
            method: "GET",
            path: "/api/internal/repos",
            auth: Auth::Token,
            bodies: None,
            expect: 200,
            target: Target::Ours,
        },
        Scenario {
            name: "401",
            method: "GET",
            path: "/api/internal/settings",
            auth: Auth::Wrong,
            bodies: None,
            expect: 401,
            target: Target::Ours,
        },
        Scenario {
            name: "patch",
            method: "PATCH",
            path: "/api/internal/settings",
            auth: Auth::Token,
            bodies: Some(bodies.clone()),
            expect: 200,
            target: Target::Ours,
        },
    ];
    let mut results: Vec<Vec<Load>> = vec![Vec::new(); scenarios.len()];
    let mut peak_get_kb = 0;
    for run in 1..=c.runs {
        // Every run reads the same settings (PATCH in the previous run changed them).
        let tmp = state.join(".settings.json.bench-tmp");
        std::fs::write(&tmp, &settings_bytes)
            .and_then(|()| std::fs::rename(&tmp, state.join("settings.json")))
            .unwrap_or_else(|e| fail(&format!("restoring settings.json: {e}")));
        for (i, sc) in scenarios.iter().enumerate() {
            eprintln!(
                "bench: run {run}/{}: {} {} ({})",
                c.runs, sc.method, sc.path, sc.name
            );
            let target = match sc.target {
                Target::Ours => addr,
                Target::Floor => floor_addr,
                Target::FloorRepos => floor_repos_addr,
            };
            results[i].push(loadgen(&bins, &c, target, sc, &token));
            if run == 1 && sc.name == "401" {
                peak_get_kb = vm_kb(server.pid(), "VmHWM");
            }
        }
    }
    let peak_all_kb = vm_kb(server.pid(), "VmHWM");
    let errors_in_log = std::fs::read_to_string(&log)
        .map(|l| l.lines().filter(|l| l.contains(" 500 ")).count())
        .unwrap_or(0);

    let wrk_rows = if c.wrk && Command::new("wrk").arg("--version").output().is_ok() {
        eprintln!("bench: wrk on the floor and on GET settings (comparison only)");
        vec![
            (
                "floor",
                wrk(floor_addr, &c, "/api/internal/settings", &token),
            ),
            (
                "GET settings",
                wrk(addr, &c, "/api/internal/settings", &token),
            ),
        ]
    } else {
        Vec::new()
    };
    floor.stop();
    floor_repos.stop();

    // Devices for the send figures: one user per (delay, count), registered through the API.
    let mut groups = Vec::new();
    for (delay, _, sink) in &sinks {
        for n in DEVICE_COUNTS {
            let user = format!("push-{delay}ms-{n}");
            for i in 0..n {
                let (p256dh, auth) = device_keys();
                let body = json!({
                    "endpoint": format!("http://{sink}/push/{user}/{i}"),
                    "keys": {"p256dh": p256dh, "auth": auth},
                    "deviceName": format!("bench {i}")
                })
                .to_string();
                expect_ok(
                    addr,
                    "POST",
                    &format!("/api/notifications/subscribe?userId={user}"),
                    &token,
                    Some(&body),
                );
            }
            groups.push((*delay, n, user));
        }
    }
    server.stop();

    // Each group on a fresh server: a full send bucket (10/min per token).
    let mut sends = Vec::new();
    for (delay, n, user) in &groups {
        eprintln!("bench: send to {n} device(s), sink answers after {delay} ms");
        let (mut s, a) = start_server(&bins, &state, &log, c.workers);
        let mut times = Vec::new();
        let mut all_delivered = true;
        for i in 0..=c.sends {
            let (took, report) = timed_send(a, &token, user);
            all_delivered &= report["delivered"].as_u64() == Some(*n as u64);
            if i > 0 {
                times.push(took.as_secs_f64() * 1000.0);
            }
        }
        s.stop();
        sends.push((*delay, *n, times, all_delivered));
    }
    drop(sinks);

    // exec → first 200, always on one port, as a deployment restarts: the workspace skills
    // carry the port, so the first (unmeasured) start rewrites them and the others find them
    // current.
    eprintln!("bench: exec → first 200, 1 + {} starts", c.starts);
    let port = free_port();
    let _ = time_to_first_200(&bins, &state, &log, port);
    let mut starts = Vec::new();
    for _ in 0..c.starts {
        if let Some(d) = time_to_first_200(&bins, &state, &log, port) {
            starts.push(d.as_secs_f64() * 1000.0);
        }
    }

    // Stripped binary.
    let stripped = work.join("assistantd.stripped");
    let strip_ok = std::fs::copy(&bins.assistantd, &stripped).is_ok()
        && Command::new("strip")
            .arg(&stripped)
            .status()
            .is_ok_and(|s| s.success());
    let bin_bytes = std::fs::metadata(if strip_ok {
        &stripped
    } else {
        &bins.assistantd
    })
    .map(|m| m.len())
    .unwrap_or(0);

    // Crypto per message.
    eprintln!("bench: push_bench");
    let pb = Command::new(bins.example("push_bench"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let crypto_us: Option<f64> = pb
        .lines()
        .find_map(|l| l.strip_prefix("RESULT per_message_us="))
        .and_then(|v| v.trim().parse().ok());

    // ---- the table
    let mut t = Table { rows: Vec::new() };
    // Indices into `scenarios` / `results`.
    let (floor_i, settings_i, floor_repos_i, repos_i, unauth_i, patch_i) = (0, 1, 2, 3, 4, 5);
    let load_row = |t: &mut Table,
                    i: usize,
                    label: &str,
                    target: &str,
                    min_rps: Option<f64>,
                    max_p99_ms: Option<f64>| {
        let runs = &results[i];
        let clean: Vec<&Load> = runs.iter().filter(|l| l.clean()).collect();
        let m = |f: fn(&Load) -> f64| median(&clean.iter().map(|l| f(l)).collect::<Vec<_>>());
        let (rps, p50, p99) = (m(|l| l.rps), m(|l| l.p50_us), m(|l| l.p99_us));
        let v = match (rps, p99) {
            (Some(r), Some(p)) => {
                let ok =
                    min_rps.is_none_or(|m| r >= m) && max_p99_ms.is_none_or(|m| p / 1000.0 <= m);
                let base = if min_rps.is_none() && max_p99_ms.is_none() {
                    "—"
                } else {
                    verdict(ok)
                };
                match runs.len() - clean.len() {
                    0 => base.to_string(),
                    bad => format!("{base}; {bad} of {} runs INVALID", runs.len()),
                }
            }
            _ => "INVALID".to_string(),
        };
        let labels: Vec<String> = runs.iter().map(Load::label).collect();
        t.row([
            label,
            &rps.map(|r| format!("{} req/s", thousands(r)))
                .unwrap_or("—".into()),
            &p50.map(ms).unwrap_or("—".into()),
            &p99.map(ms).unwrap_or("—".into()),
            &labels.join(" "),
            target,
            &v,
        ]);
    };
    // A ratio run by run (floor and ours ran back to back), then the median.
    let ratio_row = |t: &mut Table, floor: usize, ours: usize, label: &str, target: Option<f64>| {
        let ratios: Vec<f64> = results[floor]
            .iter()
            .zip(&results[ours])
            .filter(|(f, o)| f.clean() && o.clean() && f.rps > 0.0)
            .map(|(f, o)| o.rps / f.rps)
            .collect();
        let ratio = median(&ratios);
        let runs: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        t.row([
            label,
            &ratio.map(|r| format!("{r:.2}")).unwrap_or("—".into()),
            "",
            "",
            &runs.join(" "),
            &target.map(|x| format!("≥ {x}")).unwrap_or("—".into()),
            match (ratio, target) {
                (None, _) => "INVALID",
                (Some(_), None) => "—",
                (Some(r), Some(x)) => verdict(r >= x),
            },
        ]);
    };
    load_row(
        &mut t,
        floor_i,
        "floor: bare tiny_http, our settings bytes",
        "—",
        None,
        None,
    );
    load_row(
        &mut t,
        settings_i,
        "GET /api/internal/settings",
        "≥ 30,000 req/s, p99 ≤ 5 ms",
        Some(30_000.0),
        Some(5.0),
    );
    ratio_row(
        &mut t,
        floor_i,
        settings_i,
        "GET settings ÷ floor",
        Some(0.6),
    );
    load_row(
        &mut t,
        floor_repos_i,
        "floor: bare tiny_http, our repos bytes",
        "—",
        None,
        None,
    );
    load_row(
        &mut t,
        repos_i,
        &format!("GET /api/internal/repos ({FIXTURE_REPOS} repos)"),
        "≥ 20,000 req/s",
        Some(20_000.0),
        None,
    );
    ratio_row(
        &mut t,
        floor_repos_i,
        repos_i,
        "GET repos ÷ its floor",
        None,
    );
    load_row(
        &mut t,
        patch_i,
        &format!("PATCH settings, {} clients, fsync'd", c.conns),
        "≥ 1,500 req/s, p99 ≤ 25 ms",
        Some(1_500.0),
        Some(25.0),
    );
    load_row(
        &mut t,
        unauth_i,
        "401 (wrong token)",
        "≥ 35,000 req/s",
        Some(35_000.0),
        None,
    );
    t.row([
        "idle RSS (VmRSS)",
        &mb(idle_kb),
        "",
        "",
        "",
        "≤ 5 MB",
        verdict(idle_kb > 0 && idle_kb * 1024 <= 5_000_000),
    ]);
    t.row([
        "peak RSS under GET load (VmHWM)",
        &mb(peak_get_kb),
        "",
        "",
        &format!("whole bench: {}", mb(peak_all_kb)),
        "≤ 16 MB",
        verdict(peak_get_kb > 0 && peak_get_kb * 1024 <= 16_000_000),
    ]);
    let start_med = median(&starts);
    let (smin, smax) = starts
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
    t.row([
        "exec → first 200 (/health)",
        &start_med
            .map(|m| format!("{m:.1} ms"))
            .unwrap_or("—".into()),
        "",
        "",
        &format!("{} starts, {:.1}–{:.1} ms", starts.len(), smin, smax),
        "≤ 20 ms",
        start_med.map_or("FAILED", |m| verdict(m <= 20.0 && starts.len() == c.starts)),
    ]);
    t.row([
        if strip_ok {
            "release binary, stripped"
        } else {
            "release binary (strip not found)"
        },
        &format!("{:.2} MB", bin_bytes as f64 / 1e6),
        "",
        "",
        "",
        "≤ 8 MB",
        verdict(bin_bytes > 0 && bin_bytes <= 8_000_000),
    ]);
    for (delay, n, times, delivered) in &sends {
        let m = median(times);
        let target = if *n == 100 && *delay == 50 {
            "≤ 0.5 s"
        } else {
            "—"
        };
        let v = match m {
            _ if !delivered => "NOT DELIVERED",
            Some(m) if target != "—" => verdict(m <= 500.0),
            _ => "—",
        };
        t.row([
            &format!("send to {n} device(s), receiver {delay} ms"),
            &m.map(|m| format!("{m:.1} ms")).unwrap_or("—".into()),
            "",
            "",
            &times
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" "),
            target,
            v,
        ]);
    }
    t.row([
        "crypto per message (ECDH+HKDF+AES-GCM, JWT cached)",
        &crypto_us
            .map(|u| format!("{u:.0} µs"))
            .unwrap_or("—".into()),
        "",
        "",
        "",
        "≤ 200 µs",
        crypto_us.map_or("FAILED", |u| verdict(u <= 200.0)),
    ]);

    println!();
    println!(
        "assistantd bench, {stamp}: {} run(s) × {} s, {} keep-alive connections (loadgen, one \
         blocking thread each), {workers} server workers, {} cores",
        c.runs,
        c.secs,
        c.conns,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "load average (1 min) before / after: {load_before} / {}; this machine is shared, \
         so compare ratios",
        loadavg()
    );
    println!();
    t.print();
    println!();
    println!(
        "Medians of the valid runs (a run is INVALID when a connection got no answer or went \
         over 1 s without one while others progressed). MB = 10^6 bytes."
    );
    if errors_in_log > 0 {
        println!("WARNING: {errors_in_log} requests answered 500 (see the server log).");
    }
    for (name, r) in &wrk_rows {
        match r {
            Some((rps, p99)) => println!(
                "wrk -t2 -c{} {name}: {} req/s, p99 {p99} (comparison only; wrk does not count starved connections)",
                c.conns,
                thousands(*rps)
            ),
            None => println!("wrk {name}: failed"),
        }
    }

    if c.keep {
        eprintln!("bench: kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
}
