//! A local Web Push receiver for `make bench` (issue 5): answers every request with
//! `201 Created` after `--delay-ms` (default 0), the way a push service acknowledges a message.
//! std only; one thread per connection (keep-alive honoured), so N parallel senders see N
//! parallel delays, as they would against a real push service.
//!
//! ```sh
//! cargo run --release --example push_sink -- --delay-ms 50
//! ```
//!
//! Prints `listening on http://ADDR` on stdout. `GET /count` answers `200` with the number of
//! other requests received so far (not delayed, not counted). Stops by itself after
//! `--max-secs` (default 3600); idle connections are dropped after 30 s. Listens on loopback
//! only (`--listen`, default `127.0.0.1:0`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request head we read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body we read (a push message is at most 4096 bytes).
const MAX_BODY: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);

fn die(msg: &str) -> ! {
    eprintln!("push_sink: {msg}");
    eprintln!("usage: push_sink [--delay-ms 0] [--listen 127.0.0.1:0] [--max-secs 3600]");
    std::process::exit(2)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serves one connection: read a request, wait, answer; until the peer closes or idles.
fn serve(mut s: TcpStream, delay: Duration, count: &AtomicU64) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IDLE))?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut len = 0usize;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(usize::MAX);
                }
            }
        }
        if len > MAX_BODY {
            s.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return Ok(());
        }
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + len);
        if head.starts_with("GET /count ") {
            let body = count.load(Ordering::SeqCst).to_string();
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        count.fetch_add(1, Ordering::SeqCst);
        s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")?;
    }
}

fn main() {
    let mut delay_ms = 0u64;
    let mut listen = "127.0.0.1:0".to_string();
    let mut max_secs = 3600u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--delay-ms" => delay_ms = val().parse().unwrap_or_else(|_| die("bad --delay-ms")),
            "--listen" => listen = val(),
            "--max-secs" => max_secs = val().parse().unwrap_or_else(|_| die("bad --max-secs")),
            _ => die(&format!("unknown argument {flag}")),
        }
    }
    let addr: SocketAddr = listen.parse().unwrap_or_else(|_| die("bad --listen"));
    if !addr.ip().is_loopback() {
        die("--listen must be a loopback address");
    }
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| die(&format!("{addr}: {e}")));
    let local = listener.local_addr().unwrap_or(addr);
    println!("listening on http://{local}");
    let _ = std::io::stdout().flush();

    let delay = Duration::from_millis(delay_ms);
    let count = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(max_secs);
    std::thread::spawn(move || {
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let count = count.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let _ = serve(conn, delay, &count);
            });
        if spawned.is_err() {
            // Out of threads: the connection is dropped; the sender counts a failure.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
