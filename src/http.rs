//! The HTTP edge: tiny_http (vendored, see `vendor/tiny_http/README.md`) on a prepared listener
//! (TCP_NODELAY, which accepted sockets inherit on Linux), a fixed pool of worker threads, and the
//! adapter between tiny_http and our plain [`Request`]/[`Response`].
//!
//! tiny_http's connection threads do every socket read and write under deadlines, with caps on
//! heads, connections and bodies (`tiny_http::limits`); the workers here only run handlers. Auth
//! is decided before any body byte is read: the connection thread asks [`crate::routes::authorize`]
//! (the `admit` hook) whether a body may be read, so a missing or bad token never makes us read
//! (or send `100 Continue` for) a body, and a body over [`MAX_BODY`] is 413 without reading the
//! rest. The adapter catches panics (500, the worker lives on), answers every request exactly
//! once and logs one line per request: method, path without query, status, ms.

use crate::app::App;
use crate::error::ApiError;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body we accept (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Listen backlog.
pub const LISTEN_BACKLOG: i32 = 1024;
/// How long a graceful stop waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// Longest path we write to the log.
const MAX_LOGGED_PATH: usize = 200;

/// What a handler sees.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`), possibly empty.
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Body {
    #[default]
    Empty,
    Bytes(Vec<u8>),
    /// Declared or streamed over [`MAX_BODY`]; the rest was not read.
    TooLarge,
}

impl Request {
    /// A request for tests and benchmarks: `Request::new("GET", "/x?a=b", &[("authorization", "…")], b"")`.
    pub fn new(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: if body.is_empty() {
                Body::Empty
            } else {
                Body::Bytes(body.to_vec())
            },
        }
    }

    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// First value of a query parameter, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// All query parameters, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    /// The body's bytes (empty when there is none or it was too large).
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Bytes(b) => b,
            Body::Empty | Body::TooLarge => &[],
        }
    }

    /// The body parsed as JSON: 413 when too large, 400 `Invalid JSON` when not JSON.
    pub fn json(&self) -> Result<Value, ApiError> {
        match &self.body {
            Body::TooLarge => Err(ApiError::PayloadTooLarge { limit: MAX_BODY }),
            Body::Empty => Err(ApiError::InvalidJson),
            Body::Bytes(b) => serde_json::from_slice(b).map_err(|_| ApiError::InvalidJson),
        }
    }
}

/// Percent-decoding for query components; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Response body bytes, shared: a cached view is sent without copying it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bytes(pub Arc<Vec<u8>>);

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(Arc::new(v))
    }
}

/// What a handler returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &Value) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default().into(),
        }
    }

    /// A JSON response from shared bytes that already hold JSON (a cached view).
    pub fn json_view(status: u16, body: Arc<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: Bytes(body),
        }
    }

    pub fn from_error(e: &ApiError) -> Self {
        let mut r = Response::json(e.status(), &e.body());
        r.headers.extend(e.headers());
        r
    }

    /// The body as JSON (tests).
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Binds `addr` with TCP_NODELAY set on the listening socket.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad listen address"))?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock.into())
}

fn to_request(rq: &tiny_http::Request) -> Request {
    let url = rq.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    Request {
        method: rq.method().as_str().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: rq
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect(),
        body: Body::Empty,
    }
}

/// The body the connection thread read (or why it did not). `authenticated`: the request
/// carried a valid token (only those have their bodies read).
fn take_body(rq: &mut tiny_http::Request, authenticated: bool) -> Result<Body, ApiError> {
    match rq.body_status() {
        tiny_http::BodyStatus::Complete => {
            let b = rq.take_body();
            Ok(if b.is_empty() {
                Body::Empty
            } else {
                Body::Bytes(b)
            })
        }
        tiny_http::BodyStatus::TooLarge => Ok(Body::TooLarge),
        tiny_http::BodyStatus::Malformed => Err(ApiError::BadRequest(
            "Malformed chunked request body".into(),
        )),
        // A public path: no public route takes a body.
        tiny_http::BodyStatus::NotRead if !authenticated => Ok(Body::Empty),
        // The token file changed between the connection thread's check and ours.
        tiny_http::BodyStatus::NotRead => Err(ApiError::BadRequest(
            "Could not read the request body".into(),
        )),
    }
}

fn respond(rq: tiny_http::Request, resp: Response) {
    let mut headers: Vec<tiny_http::Header> = Vec::with_capacity(resp.headers.len());
    for (k, v) in &resp.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            headers.push(h);
        }
    }
    let len = resp.body.len();
    // Bodies are in memory: always a Content-Length, never chunked.
    let r = tiny_http::Response::new(
        tiny_http::StatusCode(resp.status),
        headers,
        std::io::Cursor::new(resp.body),
        Some(len),
        None,
    )
    .with_chunked_threshold(usize::MAX);
    // The client may be gone; nothing to do about it.
    let _ = rq.respond(r);
}

/// One line per request, formatted first and written with a single `write(2)` (`eprintln!`
/// on unbuffered stderr issues one call per piece, ~10 per line).
fn log_line(method: &str, path: &str, status: u16, started: Instant, extra: Option<&str>) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut line = String::with_capacity(96);
    let path_end = path
        .char_indices()
        .nth(MAX_LOGGED_PATH)
        .map_or(path.len(), |(i, _)| i);
    let _ = write!(line, "{method} {} {status} {ms:.1}ms", &path[..path_end]);
    if let Some(e) = extra {
        line.push(' ');
        line.push_str(e);
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Handles one tiny_http request end to end.
fn process(app: &App, mut rq: tiny_http::Request) {
    let started = Instant::now();
    let mut req = to_request(&rq);
    // Auth comes before the body is read: a bad token never makes us read (or send
    // `100 Continue` for) a body.
    let early = match crate::routes::authorize(app, &req) {
        Err(e) => Some(Response::from_error(&e)),
        Ok(token) => match take_body(&mut rq, token.is_some()) {
            Ok(b) => {
                req.body = b;
                None
            }
            Err(e) => Some(Response::from_error(&e)),
        },
    };
    let (resp, extra) = match early {
        Some(r) => (r, None),
        None => match catch_unwind(AssertUnwindSafe(|| crate::routes::handle(app, &req))) {
            Ok(out) => (out.response, out.log),
            Err(_) => (
                Response::from_error(&ApiError::internal("Internal server error")),
                Some("handler panicked".to_string()),
            ),
        },
    };
    let status = resp.status;
    respond(rq, resp);
    log_line(&req.method, &req.path, status, started, extra.as_deref());
}

/// A running server.
pub struct Server {
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `workers` threads serving `app` on `listener`.
    pub fn start(app: Arc<App>, listener: TcpListener, workers: usize) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let gate = app.clone();
        let config = tiny_http::Config {
            max_body: MAX_BODY,
            // Runs on the connection thread before any body byte is read: only requests with a
            // valid token have their bodies read (public paths take none), so memory spent on
            // bodies is bounded by authenticated connections.
            admit: Some(Box::new(move |rq: &tiny_http::Request| {
                matches!(
                    crate::routes::authorize(&gate, &to_request(rq)),
                    Ok(Some(_))
                )
            })),
            ..tiny_http::Config::default()
        };
        let server = tiny_http::Server::from_listener(listener, config)?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handles = (0..workers)
            .map(|i| {
                let (server, app, stopping, in_flight) = (
                    server.clone(),
                    app.clone(),
                    stopping.clone(),
                    in_flight.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || {
                        while !stopping.load(Ordering::SeqCst) {
                            match server.recv() {
                                Ok(rq) => {
                                    in_flight.fetch_add(1, Ordering::SeqCst);
                                    process(&app, rq);
                                    in_flight.fetch_sub(1, Ordering::SeqCst);
                                }
                                Err(_) => break,
                            }
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Server {
            server,
            workers: handles,
            stopping,
            in_flight,
            addr,
        })
    }

    /// Stops taking requests, lets those in flight finish (bounded by [`SHUTDOWN_GRACE`]):
    /// the listener closes, idle connections close, requests already received are answered
    /// (with `Connection: close`), then the workers stop. Returns true when everything
    /// finished in time.
    pub fn shutdown(self) -> bool {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        self.server.stop_accepting();
        while self.server.requests_in_progress() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let drained = self.server.requests_in_progress() == 0;
        self.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        while Instant::now() < deadline {
            if self.workers.iter().all(|w| w.is_finished()) {
                break;
            }
            // Workers blocked in recv() after the unblocks were consumed: unblock again.
            self.server.unblock();
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = self.workers.iter().all(|w| w.is_finished());
        if done {
            for w in self.workers {
                let _ = w.join();
            }
        }
        done && drained && self.in_flight.load(Ordering::SeqCst) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let r = Request::new("GET", "/x?userId=al%69ce&b=1+2&userId=bob&e=", &[], b"");
        assert_eq!(r.query_param("userId").as_deref(), Some("alice"));
        assert_eq!(r.query_param("b").as_deref(), Some("1 2"));
        assert_eq!(r.query_param("e").as_deref(), Some(""));
        assert_eq!(r.query_param("zz"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%2Fb%"), "a/b%");
    }

    #[test]
    fn json_body_errors() {
        assert!(matches!(
            Request::new("POST", "/", &[], b"{").json(),
            Err(ApiError::InvalidJson)
        ));
        assert!(matches!(
            Request::new("POST", "/", &[], b"").json(),
            Err(ApiError::InvalidJson)
        ));
        let mut r = Request::new("POST", "/", &[], b"");
        r.body = Body::TooLarge;
        assert!(matches!(r.json(), Err(ApiError::PayloadTooLarge { .. })));
    }
}
