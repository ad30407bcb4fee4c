//! Test helpers: temp dirs, a `TestServer` that runs the real binary on port 0 against a temp
//! state dir and is killed on drop, and a small HTTP client.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_assistantd");
/// A fixed token for tests that want one.
pub const FIXED_TOKEN: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Secret values the tests plant (stored API keys and git tokens, passwords, request bodies):
/// no server log may hold one. Every [`TestServer`] checks its log on drop against these, the
/// secrets of its state dir and the secret env values it was started with (see
/// [`TestServer::secrets`]).
pub const SECRET_FIXTURES: &[&str] = &[
    FIXED_TOKEN,
    // tests/api_settings.rs: stored tts.apiKey and git credential token.
    "sk-tts-SECRET",
    "ghp_SECRET",
    // tests/durability.rs: stored tts.apiKey, OpenCode password, a PATCH body value.
    "sk-very-SECRET-value",
    "oc-SECRET-pw",
    "body-SECRET",
    // tests/schedules_opencode.rs: the OpenCode server password.
    "schedules-test-pw",
];

/// Secrets shorter than this are not looked for (they could occur in a log line by chance).
const MIN_SECRET_LEN: usize = 8;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "assistantd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("ASSISTANTD_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct TestServer {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub state: PathBuf,
    pub log: PathBuf,
    /// Secrets seen at start (token, VAPID private key, secret env values, stored settings
    /// secrets), in case the state dir changes or goes before the drop's log check.
    pub start_secrets: Vec<String>,
}

impl TestServer {
    /// Starts `assistantd serve --listen 127.0.0.1:0 --state <state> <args>`.
    pub fn start(state: &Path, args: &[&str], envs: &[(&str, &str)]) -> TestServer {
        Self::try_start(state, args, envs).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub fn try_start(
        state: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<TestServer, String> {
        let log = state.with_extension(format!("log{}", std::process::id()));
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--state")
            .arg(state)
            .args(args)
            .env_remove("ASSISTANTD_TOKEN")
            .env_remove("VAPID_PUBLIC_KEY")
            .env_remove("VAPID_PRIVATE_KEY")
            .env_remove("VAPID_SUBJECT")
            .env("OPENCODE_URL", "http://127.0.0.1:9")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.starts_with("listening on http://") => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("first stdout line {other:?}; log: {log_text}"));
            }
        };
        let base = line.trim().trim_start_matches("listening on ").to_string();
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        let mut start_secrets: Vec<String> = envs
            .iter()
            .filter(|(k, _)| {
                ["TOKEN", "PASSWORD", "PRIVATE", "SECRET"]
                    .iter()
                    .any(|w| k.contains(w))
            })
            .map(|(_, v)| v.to_string())
            .collect();
        start_secrets.extend(state_secrets(state));
        Ok(TestServer {
            child,
            base,
            port,
            state: state.to_path_buf(),
            log,
            start_secrets,
        })
    }

    /// Everything this server's log must not contain: [`SECRET_FIXTURES`], the secrets seen at
    /// start and the ones in the state dir now.
    pub fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = SECRET_FIXTURES.iter().map(|s| s.to_string()).collect();
        all.extend(self.start_secrets.iter().cloned());
        all.extend(state_secrets(&self.state));
        all.retain(|s| s.len() >= MIN_SECRET_LEN);
        all.sort();
        all.dedup();
        all
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The token in the state dir (or the fixed one when ASSISTANTD_TOKEN was used).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.state.join("internal-token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| FIXED_TOKEN.to_string())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 5 s) until the log holds `needle`; panics with the whole log otherwise.
    /// Returns the log.
    pub fn await_log(&self, needle: &str) -> String {
        let found = wait_until(Duration::from_secs(5), || self.log_text().contains(needle));
        let log = self.log_text();
        assert!(found, "the log never said {needle:?}:\n{log}");
        log
    }

    /// An authorised JSON request.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {}", self.token());
        http(
            method,
            &self.url(path),
            &[("Authorization", &auth)],
            body.map(str::as_bytes),
        )
    }

    /// [`TestServer::call`] that returns `None` when the server is gone.
    pub fn try_call(&self, method: &str, path: &str, body: Option<&str>) -> Option<Resp> {
        let auth = format!("Bearer {}", self.token());
        try_http(
            method,
            &self.url(path),
            &[("Authorization", &auth)],
            body.map(str::as_bytes),
        )
        .ok()
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    /// Kills the server, then checks its whole log for secrets (issue 4: no token, key, secret
    /// or body in any log line) before removing it. Skipped when the test already panicked.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read(&self.log).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log);
        if std::thread::panicking() {
            return;
        }
        let log = String::from_utf8_lossy(&log);
        let leaks: Vec<String> = self
            .secrets()
            .into_iter()
            .filter(|secret| log.contains(secret.as_str()))
            .map(|secret| {
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains(&secret))
                    .take(3)
                    .collect();
                format!("{secret:?} in {lines:?}")
            })
            .collect();
        assert!(
            leaks.is_empty(),
            "secrets in the log of the server on {}: {leaks:?}",
            self.state.display()
        );
    }
}

/// The secrets a state dir holds: the token, the VAPID private key, every stored settings
/// secret (what `settings::redact` hides) and the subscriptions' `auth` secrets. Files that are
/// missing or do not parse (tests break them on purpose) give none.
pub fn state_secrets(state: &Path) -> Vec<String> {
    let read = |f: &str| {
        std::fs::read(state.join(f))
            .ok()
            .and_then(|b| assistantd::util::parse_jsonc(&b).ok())
    };
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(state.join("internal-token")) {
        out.push(t.trim().to_string());
    }
    if let Some(v) = read("vapid.json") {
        if let Some(k) = v["privateKey"].as_str() {
            out.push(k.to_string());
        }
    }
    if let Some(Value::Object(users)) = read("settings.json").map(|v| v["users"].clone()) {
        for user in users.values() {
            if let Value::Object(prefs) = &user["preferences"] {
                let mut hidden = prefs.clone();
                assistantd::settings::redact(&mut hidden);
                redacted_strings(
                    &Value::Object(prefs.clone()),
                    &Value::Object(hidden),
                    &mut out,
                );
            }
        }
    }
    if let Some(Value::Array(subs)) = read("subscriptions.json").map(|v| v["subscriptions"].clone())
    {
        for s in subs {
            if let Some(a) = s["auth"].as_str() {
                // Placeholder fixtures (one repeated character) are not secrets.
                if a.chars().any(|c| !a.starts_with(c)) {
                    out.push(a.to_string());
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The strings of `plain` that `hidden` (the same value after redaction) replaced.
fn redacted_strings(plain: &Value, hidden: &Value, out: &mut Vec<String>) {
    match (plain, hidden) {
        (Value::String(a), Value::String(b)) if a != b => out.push(a.clone()),
        (Value::Array(a), Value::Array(b)) => {
            for (x, y) in a.iter().zip(b) {
                redacted_strings(x, y, out);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in a {
                if let Some(y) = b.get(k) {
                    redacted_strings(x, y, out);
                }
            }
        }
        _ => {}
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.1 request on a fresh connection (`Connection: close`), so tests see exactly
/// the bytes the server sends.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_http(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`http`] that reports connection failures instead of panicking (a server being killed).
pub fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes)?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(std::io::Error::other(
            "connection closed before a full answer",
        ));
    }
    Ok(parse_response(&raw))
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}

/// Waits until `f` is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// xorshift64*: a deterministic, dependency-free generator for the bounded fuzz tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}
