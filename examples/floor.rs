//! The floor for `make bench` (issue 5): the least a tiny_http server can do to answer a GET
//! with our settings bytes. Same tiny_http as assistantd (this crate's dependency, the vendored
//! one) with its default limits, a listener prepared the way `src/http.rs` `bind()` prepares it
//! (socket2: reuse-address, TCP_NODELAY — which accepted sockets inherit on Linux — backlog
//! 1024), the same number of worker threads calling `recv()`, and the body sent with a
//! Content-Length as `src/http.rs` `respond()` sends it. No routing, no auth (no `admit` hook),
//! no log line, no copy of the body.
//!
//! ```sh
//! cargo run --release --example floor -- --body settings.json --workers 8
//! ```
//!
//! Prints `listening on http://ADDR` on stdout, then serves until killed or `--max-secs`
//! (default 3600) have passed, so a forgotten floor does not outlive the bench by much.
//! `--chunked-threshold N` sends bodies of N bytes and more chunked (tiny_http's own default is
//! 32 KiB), to measure what chunking would cost on large bodies such as the repos list.

use socket2::{Domain, Protocol, Socket, Type};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `src/http.rs` `LISTEN_BACKLOG`.
const LISTEN_BACKLOG: i32 = 1024;

/// The body, shared without copying.
#[derive(Clone)]
struct Shared(Arc<[u8]>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn die(msg: &str) -> ! {
    eprintln!("floor: {msg}");
    eprintln!(
        "usage: floor --body FILE [--workers N] [--listen 127.0.0.1:0] [--max-secs 3600] \
         [--chunked-threshold N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut body_file = None;
    let mut workers = assistantd::cli::default_workers();
    let mut listen = "127.0.0.1:0".to_string();
    let mut max_secs = 3600u64;
    let mut chunked_threshold = usize::MAX;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--body" => body_file = Some(val()),
            "--workers" => workers = val().parse().unwrap_or_else(|_| die("bad --workers")),
            "--listen" => listen = val(),
            "--max-secs" => max_secs = val().parse().unwrap_or_else(|_| die("bad --max-secs")),
            "--chunked-threshold" => {
                chunked_threshold = val()
                    .parse()
                    .unwrap_or_else(|_| die("bad --chunked-threshold"))
            }
            _ => die(&format!("unknown argument {flag}")),
        }
    }
    let body_file = body_file.unwrap_or_else(|| die("--body is required"));
    let body = std::fs::read(&body_file).unwrap_or_else(|e| die(&format!("{body_file}: {e}")));
    let body = Shared(body.into());

    let addr: SocketAddr = listen.parse().unwrap_or_else(|_| die("bad --listen"));
    let listener = (|| {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_nodelay(true)?;
        sock.bind(&addr.into())?;
        sock.listen(LISTEN_BACKLOG)?;
        std::io::Result::Ok(std::net::TcpListener::from(sock))
    })()
    .unwrap_or_else(|e| die(&format!("cannot listen on {addr}: {e}")));
    let local = listener.local_addr().unwrap_or(addr);
    let server = tiny_http::Server::from_listener(listener, tiny_http::Config::default())
        .unwrap_or_else(|e| die(&format!("tiny_http: {e}")));
    let server = Arc::new(server);
    let content_type = tiny_http::Header::from_bytes("Content-Type", "application/json")
        .unwrap_or_else(|()| die("header"));

    for _ in 0..workers.max(1) {
        let (server, body, ct) = (server.clone(), body.clone(), content_type.clone());
        std::thread::spawn(move || {
            while let Ok(rq) = server.recv() {
                let len = body.0.len();
                let resp = tiny_http::Response::new(
                    tiny_http::StatusCode(200),
                    vec![ct.clone()],
                    std::io::Cursor::new(body.clone()),
                    Some(len),
                    None,
                )
                .with_chunked_threshold(chunked_threshold);
                let _ = rq.respond(resp);
            }
        });
    }
    println!("listening on http://{local}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(max_secs));
}
