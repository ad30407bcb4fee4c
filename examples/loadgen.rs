//! A closed-loop HTTP/1.1 load generator that counts answers per connection (issue 5).
//!
//! ```sh
//! cargo run --release --example loadgen -- --addr 127.0.0.1:5003 --conns 32 --secs 10 \
//!     --path /api/internal/settings -H "Authorization: Bearer $TOKEN"
//! ```
//!
//! Every connection is a keep-alive `TcpStream` with one request in flight at a time (send,
//! read the whole answer by `Content-Length` or chunks, send the next), like wrk's closed loop.
//! std has no `poll`, so each connection gets its own blocking thread instead of wrk's two
//! epoll threads; a blocked thread costs nothing until its answer arrives.
//!
//! wrk only reports figures for the connections that got answers; this tool also says which
//! did not. A connection that got **zero** answers is *starved*; one that went longer than
//! `--stall-ms` (default 1000) without an answer while the others progressed is *stalled*.
//! Either makes the run INVALID: a server that answers 28 of 32 clients fast is not fast.
//!
//! Options: `--addr` (127.0.0.1 only), `--conns` (32), `--secs` (10), `--method` (GET),
//! `--path` (/), `-H 'Name: value'` (repeatable), `--body TEXT`, `--bodies FILE` (one body per
//! line: with at least `conns` lines, connection *i* cycles through lines *l* with
//! `l % conns == i`; with fewer, connection *i* sends line `i % lines`), `--expect STATUS` (200),
//! `--stall-ms`. An answer with `Connection: close` counts; the connection is then reopened
//! (`closed=` says how often). The last line of output is machine-readable: `RESULT key=value …`.
//! Exit status 0 also for invalid runs (the caller reads `valid=`); 2 on bad arguments.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest response head we accept.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body we accept.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How often the monitor looks at the per-connection counters.
const MONITOR_TICK: Duration = Duration::from_millis(50);
/// How long a read blocks before the thread looks at the clock again.
const READ_POLL: Duration = Duration::from_millis(100);
/// After the deadline, how long an answer in flight may still take before we give up on it.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

struct Args {
    addr: SocketAddr,
    conns: usize,
    secs: f64,
    method: String,
    path: String,
    headers: Vec<String>,
    bodies: Vec<String>,
    expect: u16,
    stall: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    eprintln!(
        "usage: loadgen --addr 127.0.0.1:PORT [--conns 32] [--secs 10] [--method GET] \
         [--path /] [-H 'K: V']… [--body TEXT | --bodies FILE] [--expect 200] [--stall-ms 1000]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:5003".parse().unwrap_or_else(|_| usage("addr")),
        conns: 32,
        secs: 10.0,
        method: "GET".into(),
        path: "/".into(),
        headers: Vec::new(),
        bodies: Vec::new(),
        expect: 200,
        stall: Duration::from_millis(1000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--addr" => a.addr = val().parse().unwrap_or_else(|_| usage("bad --addr")),
            "--conns" => a.conns = val().parse().unwrap_or_else(|_| usage("bad --conns")),
            "--secs" => a.secs = val().parse().unwrap_or_else(|_| usage("bad --secs")),
            "--method" => a.method = val(),
            "--path" => a.path = val(),
            "-H" | "--header" => a.headers.push(val()),
            "--body" => a.bodies = vec![val()],
            "--bodies" => {
                let f = val();
                let text = std::fs::read_to_string(&f)
                    .unwrap_or_else(|e| usage(&format!("cannot read {f}: {e}")));
                a.bodies = text.lines().map(str::to_string).collect();
            }
            "--expect" => a.expect = val().parse().unwrap_or_else(|_| usage("bad --expect")),
            "--stall-ms" => {
                a.stall =
                    Duration::from_millis(val().parse().unwrap_or_else(|_| usage("bad --stall-ms")))
            }
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        usage("only loopback addresses (this is a benchmark for 127.0.0.1)");
    }
    if a.conns == 0 || !(a.secs > 0.0 && a.secs <= 3600.0) {
        usage("--conns must be > 0 and --secs in (0, 3600]");
    }
    a
}

/// The requests connection `i` cycles through (see the module docs).
fn requests_for(a: &Args, i: usize) -> Vec<Vec<u8>> {
    let build = |body: Option<&str>| {
        let mut r = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", a.method, a.path, a.addr);
        for h in &a.headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || matches!(a.method.as_str(), "POST" | "PUT" | "PATCH") {
            r.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r.into_bytes()
    };
    let n = a.bodies.len();
    if n == 0 {
        vec![build(None)]
    } else if n >= a.conns {
        (i..n)
            .step_by(a.conns)
            .map(|l| build(Some(&a.bodies[l])))
            .collect()
    } else {
        vec![build(Some(&a.bodies[i % n]))]
    }
}

/// What one connection saw.
#[derive(Default)]
struct ConnReport {
    /// Latency of every answer that completed before the deadline, in µs.
    latencies: Vec<u32>,
    /// Answers with a status other than `--expect`.
    unexpected: u64,
    /// I/O errors, connections closed without an answer and unparsable answers (each followed
    /// by a reconnect).
    errors: u64,
    /// Answers that came with `Connection: close` (counted; then a reconnect).
    closed: u64,
    /// The longest time without an answer, including start → first and last → deadline.
    max_gap: Duration,
    first_error: Option<String>,
}

/// Counters the monitor reads while the run goes on.
struct Live {
    answers: AtomicU64,
    /// µs since the start at the last answer.
    last_us: AtomicU64,
    stalled: AtomicBool,
}

/// Reads one response; returns its status and whether the server closes the connection after
/// it. `buf` keeps bytes that arrived beyond it.
fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    give_up: Instant,
) -> Result<(u16, bool), String> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        fill(s, buf, &mut chunk, give_up)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut len = None;
    let mut chunked = false;
    let mut close = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            if !v.eq_ignore_ascii_case("chunked") {
                return Err(format!("Transfer-Encoding {v} is not supported"));
            }
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    if chunked {
        // tiny_http sends bodies of 32 KiB and more chunked (its default threshold).
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(p) = find(&buf[pos..], b"\r\n") {
                    break pos + p;
                }
                if buf.len() - pos > 1024 {
                    return Err("chunk size line too long".into());
                }
                fill(s, buf, &mut chunk, give_up)?;
            };
            let size_text = std::str::from_utf8(&buf[pos..line_end]).map_err(|_| "bad chunk")?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
            if size > MAX_BODY || line_end - head_end > MAX_BODY {
                return Err("body too large".into());
            }
            pos = line_end + 2;
            if size == 0 {
                // No trailers from tiny_http: the last chunk is followed by one CRLF.
                while buf.len() < pos + 2 {
                    fill(s, buf, &mut chunk, give_up)?;
                }
                buf.drain(..pos + 2);
                break;
            }
            while buf.len() < pos + size + 2 {
                fill(s, buf, &mut chunk, give_up)?;
            }
            pos += size + 2;
        }
    } else {
        let len = len.ok_or("answer without Content-Length")?;
        if len > MAX_BODY {
            return Err("body too large".into());
        }
        while buf.len() < head_end + len {
            fill(s, buf, &mut chunk, give_up)?;
        }
        buf.drain(..head_end + len);
    }
    Ok((status, close))
}

/// One `read` into `buf`, retrying on the poll timeout until `give_up`.
fn fill(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    give_up: Instant,
) -> Result<(), String> {
    loop {
        match s.read(chunk) {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= give_up {
                    return Err("no answer before the end of the run".into());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_POLL))?;
    Ok(s)
}

/// Drives one connection until `deadline`.
fn run_conn(
    addr: SocketAddr,
    requests: Vec<Vec<u8>>,
    expect: u16,
    start: Instant,
    deadline: Instant,
    live: &Live,
) -> ConnReport {
    let mut rep = ConnReport {
        latencies: Vec::with_capacity(64 * 1024),
        ..Default::default()
    };
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut last_answer = start;
    let mut k = 0usize;
    let note_error = |rep: &mut ConnReport, e: String| {
        rep.errors += 1;
        rep.first_error.get_or_insert(e);
    };
    while Instant::now() < deadline {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match connect(addr) {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    note_error(&mut rep, format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let req = &requests[k % requests.len()];
        k += 1;
        let sent = Instant::now();
        let result = s
            .write_all(req)
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| read_response(s, &mut buf, deadline + DRAIN_GRACE));
        let done = Instant::now();
        match result {
            Ok((status, close)) => {
                if done > deadline {
                    break; // finished after the end: not counted
                }
                if close {
                    rep.closed += 1;
                    stream = None;
                    buf.clear();
                }
                rep.max_gap = rep.max_gap.max(done - last_answer);
                last_answer = done;
                rep.latencies
                    .push((done - sent).as_micros().min(u128::from(u32::MAX)) as u32);
                if status != expect {
                    rep.unexpected += 1;
                }
                live.answers.fetch_add(1, Ordering::Relaxed);
                live.last_us
                    .store((done - start).as_micros() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                note_error(&mut rep, e);
                stream = None;
                buf.clear();
            }
        }
    }
    rep.max_gap = rep
        .max_gap
        .max(deadline.saturating_duration_since(last_answer));
    rep
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let a = parse_args();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.secs);
    let live: Arc<Vec<Live>> = Arc::new(
        (0..a.conns)
            .map(|_| Live {
                answers: AtomicU64::new(0),
                last_us: AtomicU64::new(0),
                stalled: AtomicBool::new(false),
            })
            .collect(),
    );
    let threads: Vec<_> = (0..a.conns)
        .map(|i| {
            let (requests, live) = (requests_for(&a, i), live.clone());
            let (addr, expect) = (a.addr, a.expect);
            std::thread::Builder::new()
                .name(format!("conn-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_conn(addr, requests, expect, start, deadline, &live[i]))
                .unwrap_or_else(|e| usage(&format!("cannot spawn a thread: {e}")))
        })
        .collect();

    // Monitor: a connection is stalled when it has gone `stall` without an answer while the
    // total grew over that same window (so a server that stops for everyone is slow, not
    // unfair; that shows in p99 instead).
    let stall_us = a.stall.as_micros() as u64;
    let mut history: Vec<(u64, u64)> = Vec::new(); // (µs since start, total answers)
    while Instant::now() < deadline {
        std::thread::sleep(MONITOR_TICK.min(deadline.saturating_duration_since(Instant::now())));
        let now_us = start.elapsed().as_micros() as u64;
        let total: u64 = live.iter().map(|l| l.answers.load(Ordering::Relaxed)).sum();
        history.push((now_us, total));
        if now_us < stall_us {
            continue;
        }
        let before = history
            .iter()
            .rev()
            .find(|(t, _)| *t + stall_us <= now_us)
            .map_or(0, |h| h.1);
        for l in live.iter() {
            let gap = now_us - l.last_us.load(Ordering::Relaxed).min(now_us);
            if gap > stall_us && total > before {
                l.stalled.store(true, Ordering::Relaxed);
            }
        }
    }

    let reports: Vec<ConnReport> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let elapsed = a.secs;
    let per_conn: Vec<usize> = reports.iter().map(|r| r.latencies.len()).collect();
    let mut all: Vec<u32> = reports
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    let answers = all.len();
    let starved = per_conn.iter().filter(|&&n| n == 0).count();
    let stalled = live
        .iter()
        .zip(&per_conn)
        .filter(|(l, &n)| n > 0 && l.stalled.load(Ordering::Relaxed))
        .count();
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let unexpected: u64 = reports.iter().map(|r| r.unexpected).sum();
    let closed: u64 = reports.iter().map(|r| r.closed).sum();
    let max_gap = reports.iter().map(|r| r.max_gap).max().unwrap_or_default();
    let mut sorted_conn = per_conn.clone();
    sorted_conn.sort_unstable();
    let valid = starved == 0 && stalled == 0;
    let rps = answers as f64 / elapsed;
    let (p50, p99) = (percentile(&all, 0.50), percentile(&all, 0.99));

    println!(
        "{} {} x{} conns {:.1}s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        a.method,
        a.path,
        a.conns,
        elapsed,
        rps,
        f64::from(p50) / 1000.0,
        f64::from(p99) / 1000.0,
        f64::from(all.last().copied().unwrap_or(0)) / 1000.0
    );
    println!(
        "answers per connection: min {} median {} max {}; starved {starved}, stalled {stalled} \
         (>{} ms without an answer while others progressed); longest gap {:.0} ms",
        sorted_conn.first().copied().unwrap_or(0),
        sorted_conn[sorted_conn.len() / 2],
        sorted_conn.last().copied().unwrap_or(0),
        a.stall.as_millis(),
        max_gap.as_secs_f64() * 1000.0
    );
    if closed > 0 {
        println!("answers with Connection: close (then a new connection): {closed}");
    }
    if errors > 0 || unexpected > 0 {
        let first = reports.iter().find_map(|r| r.first_error.as_deref());
        println!(
            "errors {errors} (first: {}), answers with a status other than {}: {unexpected}",
            first.unwrap_or("-"),
            a.expect
        );
    }
    if !valid {
        println!("INVALID: {starved} connection(s) starved, {stalled} stalled");
    }
    println!(
        "RESULT valid={} rps={rps:.1} p50_us={p50} p99_us={p99} answers={answers} conns={} \
         starved={starved} stalled={stalled} errors={errors} unexpected={unexpected} closed={closed} \
         min_conn={} max_conn={} max_gap_ms={:.0} secs={elapsed}",
        u8::from(valid),
        a.conns,
        sorted_conn.first().copied().unwrap_or(0),
        sorted_conn.last().copied().unwrap_or(0),
        max_gap.as_secs_f64() * 1000.0
    );
}
