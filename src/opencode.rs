//! Client for the OpenCode server (see ../shared/spec/opencode-server.md). Blocking ureq calls
//! with deadlines, no redirects, no proxy from the environment (OpenCode runs next to us on
//! loopback), Basic auth when a password is configured, and `?directory=` on every
//! instance-scoped call. OpenCode answers unknown paths with `200 text/html` (its web UI), so a
//! success is a 2xx *with a JSON body*; anything else is an [`OpencodeError`].

use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

/// Deadline of one management call (dispose, session create, …).
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// Connect deadline (OpenCode is local; a refused or dead port fails fast).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
/// Largest upstream body we read into memory.
pub const MAX_UPSTREAM_BODY: u64 = 8 * 1024 * 1024;
/// Default OpenCode server user name (OpenCode's own default).
pub const DEFAULT_USERNAME: &str = "opencode";
/// Longest silence on the event stream before the reader gives up and reconnects. OpenCode
/// sends a `server.heartbeat` every 10 s, so this only trips on a dead connection.
pub const EVENT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest single event we hold in memory; longer ones (big diffs) are skipped whole.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Messages fetched from the end of a session when looking for its last assistant answer.
pub const MESSAGE_TAIL: usize = 50;

/// Why an OpenCode call failed. `Display` is short and safe to show to a client.
#[derive(Debug)]
pub enum OpencodeError {
    /// Connection refused, DNS, TLS or other transport failure.
    Transport(String),
    /// The deadline passed.
    Timeout,
    /// A non-2xx status; `body` is a short snippet of the upstream text (for logs).
    Status { status: u16, body: String },
    /// A 2xx that is not JSON (e.g. the web-UI HTML fallback).
    NotJson { status: u16, content_type: String },
}

impl fmt::Display for OpencodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpencodeError::Transport(e) => write!(f, "OpenCode unreachable: {e}"),
            OpencodeError::Timeout => {
                write!(
                    f,
                    "OpenCode did not answer within {} s",
                    CALL_DEADLINE.as_secs()
                )
            }
            OpencodeError::Status { status, .. } => write!(f, "OpenCode answered HTTP {status}"),
            OpencodeError::NotJson {
                status,
                content_type,
            } => {
                write!(
                    f,
                    "OpenCode answered HTTP {status} with {content_type}, not JSON"
                )
            }
        }
    }
}

impl std::error::Error for OpencodeError {}

/// A configured OpenCode server.
#[derive(Clone)]
pub struct Client {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
    /// For the long-lived event stream: no overall deadline, but a per-read timeout.
    stream_agent: ureq::Agent,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the auth header.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// `base_url` like `http://127.0.0.1:5551` (a trailing slash is dropped). A Basic auth
    /// header is sent only when `password` is set and non-empty.
    pub fn new(base_url: &str, username: &str, password: Option<&str>) -> Self {
        let auth = password.filter(|p| !p.is_empty()).map(|p| {
            let raw = format!("{username}:{p}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_connect(Some(CONNECT_DEADLINE))
            .timeout_global(Some(CALL_DEADLINE))
            .build()
            .into();
        let stream_agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .timeout_connect(Some(CONNECT_DEADLINE))
            .timeout_recv_response(Some(CALL_DEADLINE))
            .timeout_per_read(Some(EVENT_READ_TIMEOUT))
            .build()
            .into();
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            auth,
            agent,
            stream_agent,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The `Authorization` header value, when a password is configured.
    pub fn auth_header(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// `<base><path>?directory=<dir>` (or without the query when `dir` is `None`).
    pub fn url(&self, path: &str, dir: Option<&Path>) -> String {
        match dir {
            Some(d) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                let d = encode_query_value(&d.to_string_lossy());
                format!("{}{path}{sep}directory={d}", self.base)
            }
            None => format!("{}{path}", self.base),
        }
    }

    /// One call with a JSON answer. `body` is sent as JSON when given.
    pub fn call_json(
        &self,
        method: &str,
        path: &str,
        dir: Option<&Path>,
        body: Option<&Value>,
    ) -> Result<Value, OpencodeError> {
        let url = self.url(path, dir);
        let result = match (method, body) {
            ("GET", _) => self.with_auth(self.agent.get(&url)).call(),
            ("POST", Some(b)) => self.with_auth(self.agent.post(&url)).send_json(b),
            ("POST", None) => self.with_auth(self.agent.post(&url)).send_empty(),
            ("PATCH", Some(b)) => self.with_auth(self.agent.patch(&url)).send_json(b),
            ("DELETE", _) => self.with_auth(self.agent.delete(&url)).call(),
            _ => {
                return Err(OpencodeError::Transport(format!(
                    "unsupported method {method}"
                )))
            }
        };
        let mut resp = result.map_err(map_ureq_error)?;
        let status = resp.status().as_u16();
        let content_type = content_type(&resp);
        let mut bytes = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_UPSTREAM_BODY)
            .read_to_end(&mut bytes)
            .map_err(|e| OpencodeError::Transport(format!("reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(OpencodeError::Status { status, body });
        }
        if status == 204 && bytes.is_empty() {
            return Ok(Value::Null);
        }
        let not_json = || OpencodeError::NotJson {
            status,
            content_type: content_type.clone(),
        };
        if !content_type.to_ascii_lowercase().contains("json") {
            return Err(not_json());
        }
        serde_json::from_slice(&bytes).map_err(|_| not_json())
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }

    /// `POST /instance/dispose?directory=<dir>`: OpenCode drops the instance of that
    /// directory, so the next session there reloads its config, agents and skills.
    pub fn dispose(&self, dir: &Path) -> Result<(), OpencodeError> {
        self.call_json("POST", "/instance/dispose", Some(dir), None)
            .map(|_| ())
    }
}

/// A path segment (session ids are `ses_…`, but never trust that).
fn seg(s: &str) -> String {
    encode_query_value(s)
}

/// Typed helpers for the calls the schedule runner makes. Every one is instance-scoped
/// (`?directory=`) and has the 10 s deadline.
impl Client {
    /// `GET /config`: the merged config of that directory (`model`, `small_model`, …).
    pub fn config(&self, dir: &Path) -> Result<Value, OpencodeError> {
        self.call_json("GET", "/config", Some(dir), None)
    }

    /// `GET /config/providers`: `{"providers":[{id, models:{…}}], "default":{provider: model}}`.
    pub fn config_providers(&self, dir: &Path) -> Result<Value, OpencodeError> {
        self.call_json("GET", "/config/providers", Some(dir), None)
    }

    /// `POST /session` with `body` (`title`, `agent`, `permission`); returns the session.
    pub fn create_session(&self, dir: &Path, body: &Value) -> Result<Value, OpencodeError> {
        self.call_json("POST", "/session", Some(dir), Some(body))
    }

    /// `POST /session/:id/prompt_async`; OpenCode answers 204 before any model work.
    pub fn prompt_async(
        &self,
        dir: &Path,
        session: &str,
        body: &Value,
    ) -> Result<(), OpencodeError> {
        let path = format!("/session/{}/prompt_async", seg(session));
        self.call_json("POST", &path, Some(dir), Some(body))
            .map(|_| ())
    }

    /// `GET /session/status`: session id → `idle` / `busy` / `retry`. Idle sessions are
    /// usually absent.
    pub fn session_status(&self, dir: &Path) -> Result<HashMap<String, String>, OpencodeError> {
        let v = self.call_json("GET", "/session/status", Some(dir), None)?;
        let Value::Object(map) = v else {
            return Err(OpencodeError::Transport(
                "session status is not an object".into(),
            ));
        };
        Ok(map
            .into_iter()
            .map(|(id, s)| {
                let t = s.get("type").and_then(Value::as_str).unwrap_or("idle");
                (id, t.to_string())
            })
            .collect())
    }

    /// `GET /session/:id/message?limit=`: the last `limit` messages, oldest first, each
    /// `{info, parts}`.
    pub fn session_messages(
        &self,
        dir: &Path,
        session: &str,
        limit: usize,
    ) -> Result<Value, OpencodeError> {
        let path = format!("/session/{}/message?limit={limit}", seg(session));
        self.call_json("GET", &path, Some(dir), None)
    }

    /// `POST /session/:id/abort` (OpenCode answers `true` even for idle sessions).
    pub fn abort_session(&self, dir: &Path, session: &str) -> Result<(), OpencodeError> {
        let path = format!("/session/{}/abort", seg(session));
        self.call_json("POST", &path, Some(dir), None).map(|_| ())
    }

    /// `GET /skill`: `[{name, description, location, content}]`.
    pub fn skills(&self, dir: &Path) -> Result<Value, OpencodeError> {
        self.call_json("GET", "/skill", Some(dir), None)
    }

    /// Opens `GET /global/event` (server-sent events of every instance). The stream has no
    /// overall deadline; a read that waits longer than [`EVENT_READ_TIMEOUT`] fails.
    pub fn global_events(&self) -> Result<EventStream, OpencodeError> {
        let url = self.url("/global/event", None);
        let mut req = self
            .stream_agent
            .get(&url)
            .header("Accept", "text/event-stream");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.call().map_err(map_ureq_error)?;
        let status = resp.status().as_u16();
        let content_type = content_type(&resp);
        if !(200..300).contains(&status) {
            return Err(OpencodeError::Status {
                status,
                body: String::new(),
            });
        }
        if !content_type.starts_with("text/event-stream") {
            return Err(OpencodeError::NotJson {
                status,
                content_type,
            });
        }
        Ok(EventStream {
            reader: BufReader::new(Box::new(resp.into_body().into_reader())),
        })
    }
}

/// A server-sent-event stream. Each event's `data:` lines are joined and parsed as JSON.
pub struct EventStream {
    reader: BufReader<Box<dyn Read + Send>>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// Wraps any byte stream (tests feed canned SSE text).
    pub fn from_reader(r: impl Read + Send + 'static) -> Self {
        EventStream {
            reader: BufReader::new(Box::new(r)),
        }
    }

    /// The next event's data as JSON; `Ok(None)` when the server closed the stream. Events
    /// whose data is not JSON or is over [`MAX_EVENT_BYTES`] are skipped.
    pub fn next_event(&mut self) -> Result<Option<Value>, OpencodeError> {
        let mut data: Vec<u8> = Vec::new();
        let mut oversized = false;
        loop {
            let Some((line, too_long)) = self.read_line()? else {
                return Ok(None);
            };
            if line.is_empty() && !too_long {
                // End of one event.
                if !data.is_empty() && !oversized {
                    if let Ok(v) = serde_json::from_slice(&data) {
                        return Ok(Some(v));
                    }
                }
                data.clear();
                oversized = false;
                continue;
            }
            if too_long {
                oversized = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if data.len() + rest.len() + 1 > MAX_EVENT_BYTES {
                    oversized = true;
                    continue;
                }
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(rest);
            }
            // `event:`, `id:`, `retry:` and `:` comments are not used by OpenCode.
        }
    }

    /// One line without its terminator, at most [`MAX_EVENT_BYTES`] kept (the flag says the
    /// rest was dropped). `None` at end of stream.
    fn read_line(&mut self) -> Result<Option<(Vec<u8>, bool)>, OpencodeError> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    return Err(OpencodeError::Timeout)
                }
                Err(e) => return Err(OpencodeError::Transport(format!("event stream: {e}"))),
            };
            if buf.is_empty() {
                return Ok(if line.is_empty() && !too_long {
                    None
                } else {
                    Some((line, too_long))
                });
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if line.len() + chunk.len() > MAX_EVENT_BYTES {
                too_long = true;
            } else {
                line.extend_from_slice(chunk);
            }
            let used = done.unwrap_or(buf.len());
            self.reader.consume(used);
            if done.is_some() {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some((line, too_long)));
            }
        }
    }
}

/// The response's `Content-Type`, or empty.
fn content_type<B>(resp: &ureq::http::Response<B>) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn map_ureq_error(e: ureq::Error) -> OpencodeError {
    match e {
        ureq::Error::Timeout(_) => OpencodeError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => OpencodeError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            OpencodeError::Transport("connection refused".into())
        }
        other => OpencodeError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_is_percent_encoded() {
        let c = Client::new("http://127.0.0.1:5551/", "opencode", None);
        assert_eq!(
            c.url("/instance/dispose", Some(Path::new("/srv/my ws/a"))),
            "http://127.0.0.1:5551/instance/dispose?directory=%2Fsrv%2Fmy%20ws%2Fa"
        );
        assert!(c.auth_header().is_none());
    }

    #[test]
    fn basic_auth_only_with_password() {
        let c = Client::new("http://x", "opencode", Some("pw"));
        assert_eq!(c.auth_header(), Some("Basic b3BlbmNvZGU6cHc="));
        assert!(Client::new("http://x", "opencode", Some(""))
            .auth_header()
            .is_none());
    }

    #[test]
    fn sse_frames_are_parsed_and_garbage_skipped() {
        let big = "x".repeat(MAX_EVENT_BYTES + 10);
        let text = format!(
            ": comment\ndata: {{\"a\":1}}\n\nevent: x\ndata: not json\n\ndata: {{\"b\":\n\
             data: 2}}\r\n\r\ndata: \"{big}\"\n\ndata: {{\"c\":3}}\n\n"
        );
        let mut s = EventStream::from_reader(std::io::Cursor::new(text.into_bytes()));
        assert_eq!(s.next_event().unwrap(), Some(serde_json::json!({"a": 1})));
        assert_eq!(s.next_event().unwrap(), Some(serde_json::json!({"b": 2})));
        assert_eq!(s.next_event().unwrap(), Some(serde_json::json!({"c": 3})));
        assert_eq!(s.next_event().unwrap(), None);
    }

    #[test]
    fn refused_connection_is_transport_error() {
        // Port 9 (discard) is closed on loopback here.
        let c = Client::new("http://127.0.0.1:9", "opencode", None);
        let e = c.dispose(Path::new("/tmp")).unwrap_err();
        assert!(matches!(e, OpencodeError::Transport(_)), "{e:?}");
    }
}
