//! Client for the OpenCode server (see ../shared/spec/opencode-server.md). Blocking ureq calls
//! with deadlines, no redirects, no proxy from the environment (OpenCode runs next to us on
//! loopback), Basic auth when a password is configured, and `?directory=` on every
//! instance-scoped call. OpenCode answers unknown paths with `200 text/html` (its web UI), so a
//! success is a 2xx *with a JSON body*; anything else is an [`OpencodeError`].

use base64::Engine;
use serde_json::Value;
use std::fmt;
use std::io::Read;
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
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            auth,
            agent,
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
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
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
    fn refused_connection_is_transport_error() {
        // Port 9 (discard) is closed on loopback here.
        let c = Client::new("http://127.0.0.1:9", "opencode", None);
        let e = c.dispose(Path::new("/tmp")).unwrap_err();
        assert!(matches!(e, OpencodeError::Transport(_)), "{e:?}");
    }
}
