//! One client connection, served by one pool thread from its first byte to its close.
//!
//! Every wait has a deadline ([`crate::limits`]): [`IDLE_TIMEOUT`] for the first byte of a
//! request, [`HEAD_TIMEOUT`] in total for the rest of the head (one byte every few seconds does
//! not extend it), [`BODY_TIMEOUT`] in total for an admitted body, [`WRITE_TIMEOUT`] per write.
//! Heads are capped in line length, line count and total size; bodies are read into memory up to
//! `max_body`, chunked framing included. The connection thread does all the blocking socket I/O;
//! the worker that answers a request renders the response into memory, sends what the socket
//! takes at once without blocking, and hands the rest (usually none) back here.
//!
//! After a response the connection is kept only when the stream is at a request boundary: the
//! body was read, or a small refused body was skipped ([`MAX_DRAIN`], [`DRAIN_TIMEOUT`]).
//! Otherwise the response said `Connection: close`, and the connection is closed the polite way:
//! stop sending, discard what the client still sends for a moment ([`MAX_LINGER`],
//! [`LINGER_TIMEOUT`]), close — so the client reads our answer rather than a reset.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::str::FromStr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ascii::AsciiString;

use crate::limits::{
    BODY_TIMEOUT, DRAIN_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT, LINGER_TIMEOUT, MAX_CHUNK_LINE,
    MAX_DRAIN, MAX_HEAD, MAX_HEADERS, MAX_HEADER_LINE, MAX_LINGER, MAX_REQUEST_LINE, READ_BUFFER,
    WRITE_TIMEOUT,
};
use crate::pool::{Slot, BODY, BUSY, CLOSING, HEAD, IDLE};
use crate::request::{BodyStatus, Reply};
use crate::response::ConnectionHeader;
use crate::{HTTPVersion, Header, HeaderField, Method, Request, Shared, StatusCode};

/// Why a request ended early.
#[derive(Debug, PartialEq)]
enum Fail {
    /// The peer closed or reset, a socket call failed, or the pool evicted the connection:
    /// close without a word.
    Gone,
    /// Answer with this status and `Connection: close`, then close.
    Status(u16),
}

/// What the connection does after the response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// The stream is at the next request.
    KeepAlive,
    /// This many bytes of an unread body come first.
    Drain(u64),
    /// The stream position is unknown (or the body too large to skip): close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Failures of a chunked body.
enum ChunkFail {
    TooLarge,
    Malformed,
    Io(io::Error),
}

impl From<io::Error> for ChunkFail {
    fn from(e: io::Error) -> Self {
        ChunkFail::Io(e)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(ErrorKind::TimedOut, "deadline passed")
}

fn eof() -> io::Error {
    io::Error::new(ErrorKind::UnexpectedEof, "connection closed")
}

/// Read errors while a request is in progress: a deadline is a 408, anything else a silent close.
fn io_fail(e: io::Error) -> Fail {
    if e.kind() == ErrorKind::TimedOut {
        Fail::Status(408)
    } else {
        Fail::Gone
    }
}

struct Conn<'a> {
    slot: &'a Arc<Slot>,
    shared: &'a Shared,
    stream: &'a TcpStream,
    /// Our idea of the slot's state (the pool may move it to EVICTED behind our back).
    state: u8,
    /// Bytes read and not yet consumed are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The socket's current SO_RCVTIMEO, to set it only when it changes.
    timeout: Option<Duration>,
    reply_tx: Sender<Reply>,
    reply_rx: Receiver<Reply>,
    remote: Option<SocketAddr>,
}

/// Serves the connection in `slot` until it closes.
pub(crate) fn serve(slot: &Arc<Slot>, shared: &Shared) {
    let stream = &slot.stream;
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let (reply_tx, reply_rx) = channel();
    let mut c = Conn {
        slot,
        shared,
        stream,
        state: IDLE,
        buf: vec![0; READ_BUFFER],
        start: 0,
        end: 0,
        // Unknown: accepted sockets inherit the listener's accept tick. Set before each read.
        timeout: None,
        reply_tx,
        reply_rx,
        remote: stream.peer_addr().ok(),
    };
    loop {
        match c.one_request() {
            Ok(true) => continue,
            Ok(false) | Err(Fail::Gone) => return,
            Err(Fail::Status(code)) => {
                c.fail(code);
                return;
            }
        }
    }
}

impl Conn<'_> {
    /// Moves the slot to `to`; `Gone` when the pool evicted the connection meanwhile.
    fn to(&mut self, to: u8) -> Result<(), Fail> {
        if self.state == to {
            return Ok(());
        }
        if self.slot.enter(self.state, to, self.shared.now_ms()) {
            self.state = to;
            Ok(())
        } else {
            Err(Fail::Gone)
        }
    }

    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        let d = d.max(Duration::from_millis(1));
        if self.timeout != Some(d) {
            self.stream.set_read_timeout(Some(d))?;
            self.timeout = Some(d);
        }
        Ok(())
    }

    /// Makes room in the buffer (compacting it, or growing it up to `max_buf`).
    fn make_room(&mut self, max_buf: usize) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < max_buf {
                let n = (self.buf.len() * 2).min(max_buf);
                self.buf.resize(n, 0);
            } else {
                return Err(io::Error::new(ErrorKind::InvalidData, "read buffer full"));
            }
        }
        Ok(())
    }

    /// Reads once into the buffer, waiting at most `wait`. `Ok(0)` is the end of the stream; a
    /// timeout is `ErrorKind::TimedOut`.
    fn fill_within(&mut self, wait: Duration, max_buf: usize) -> io::Result<usize> {
        self.make_room(max_buf)?;
        self.set_timeout(wait)?;
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(timed_out())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads once into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant, max_buf: usize) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out());
        }
        self.fill_within(deadline - now, max_buf)
    }

    /// Reads, answers and finishes one request. `Ok(true)`: the connection stays open for the
    /// next one.
    fn one_request(&mut self) -> Result<bool, Fail> {
        if self.start == self.end {
            // Wait for the first byte of the next request.
            if self.shared.closing() {
                return Ok(false);
            }
            self.to(IDLE)?;
            // Checked again once IDLE is published: `stop_accepting` sets the flag, then closes
            // IDLE connections, so one of the two sees the other.
            if self.shared.closing() {
                return Ok(false);
            }
            if self.buf.len() > READ_BUFFER {
                self.buf = vec![0; READ_BUFFER];
            }
            match self.fill_within(IDLE_TIMEOUT, READ_BUFFER) {
                Ok(0) | Err(_) => return Err(Fail::Gone),
                Ok(_) => {}
            }
        }
        self.to(HEAD)?;
        let head_deadline = Instant::now() + HEAD_TIMEOUT;
        let head_end = self.read_head(head_deadline)?;
        let (mut rq, framing, expect_continue, client_close, keep_alive_10) =
            self.parse_head(head_end)?;
        self.start = head_end;

        // A request whose body fails (deadline, client gone, evicted) never reaches the
        // application: it must not answer 500 on its way out before the 408 (or the close).
        let (status, body, after) = match self.read_body(&rq, framing, expect_continue) {
            Ok(v) => v,
            Err(e) => {
                rq.discard();
                return Err(e);
            }
        };
        rq.set_body(status, body);
        let close = client_close
            || after == After::Close
            || self.shared.closing()
            || self.shared.pool.under_pressure();
        rq.set_connection_header(if close {
            ConnectionHeader::Close
        } else if keep_alive_10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::None
        });

        if let Err(e) = self.to(BUSY) {
            rq.discard();
            return Err(e);
        }
        self.shared.messages.push(rq);
        // We hold a sender ourselves and a dropped Request answers 500, so this always returns.
        let reply = self.reply_rx.recv().map_err(|_| Fail::Gone)?;
        self.stream
            .write_all(&reply.bytes[reply.sent..])
            .map_err(|_| Fail::Gone)?;

        if close {
            if after != After::KeepAlive {
                self.linger();
            } else {
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            return Ok(false);
        }
        if let After::Drain(n) = after {
            return Ok(self.drain(n));
        }
        Ok(true)
    }

    /// Reads until the end of the head; returns the index just past its final CRLF CRLF, with
    /// `self.start` at the request line (leading empty lines skipped, RFC 9112 §2.2).
    fn read_head(&mut self, deadline: Instant) -> Result<usize, Fail> {
        let mut scan = 0; // bytes after `start` already looked at
        let mut line_start = 0; // offset of the current line after `start`
        let mut lines = 0; // complete lines: the request line, then headers
        let mut skipped = 0;
        loop {
            while self.start + scan < self.end {
                let b = self.buf[self.start + scan];
                scan += 1;
                if b == b'\n' {
                    let len = scan - line_start;
                    if len < 2 || self.buf[self.start + scan - 2] != b'\r' {
                        return Err(Fail::Status(400));
                    }
                    if len == 2 {
                        if lines > 0 {
                            return Ok(self.start + scan);
                        }
                        skipped += 1;
                        if skipped > MAX_HEADERS {
                            return Err(Fail::Status(400));
                        }
                        self.start += scan;
                        scan = 0;
                        line_start = 0;
                        continue;
                    }
                    lines += 1;
                    if lines > MAX_HEADERS + 1 {
                        return Err(Fail::Status(431));
                    }
                    line_start = scan;
                } else {
                    // Line length so far, allowing for the CR of its CRLF.
                    let len = scan - line_start;
                    if lines == 0 && len > MAX_REQUEST_LINE + 1 {
                        return Err(Fail::Status(414));
                    }
                    if lines > 0 && len > MAX_HEADER_LINE + 1 {
                        return Err(Fail::Status(431));
                    }
                }
                if scan > MAX_HEAD {
                    return Err(Fail::Status(431));
                }
            }
            match self.fill(deadline, MAX_HEAD + 1) {
                Ok(0) => return Err(Fail::Gone),
                Ok(_) => {}
                Err(e) => return Err(io_fail(e)),
            }
        }
    }

    /// Parses `buf[start..head_end]` into a request (body not yet attached), its framing, and
    /// what it says about `Expect` and the connection.
    #[allow(clippy::type_complexity)]
    fn parse_head(&self, head_end: usize) -> Result<(Request, Framing, bool, bool, bool), Fail> {
        let bad = Fail::Status(400);
        let raw = &self.buf[self.start..head_end - 4];
        // Visible ASCII, spaces and tabs only (a lone CR or other control byte is an error).
        if !raw
            .iter()
            .all(|&b| b == b'\t' || b == b'\r' || b == b'\n' || (0x20..0x7f).contains(&b))
        {
            return Err(bad);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Fail::Status(400))?;
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        if request_line.contains('\r') {
            return Err(bad);
        }
        let mut parts = request_line.split(' ');
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) if !m.is_empty() && !t.is_empty() => (m, t, v),
            _ => return Err(bad),
        };
        if parts.next().is_some() {
            return Err(bad);
        }
        let version = match version {
            "HTTP/1.1" => HTTPVersion(1, 1),
            "HTTP/1.0" => HTTPVersion(1, 0),
            v if v.len() == 8
                && v.starts_with("HTTP/")
                && v.as_bytes()[5].is_ascii_digit()
                && v.as_bytes()[6] == b'.'
                && v.as_bytes()[7].is_ascii_digit() =>
            {
                return Err(Fail::Status(505))
            }
            _ => return Err(bad),
        };
        let method = Method::from_str(method).map_err(|_| Fail::Status(400))?;

        let mut headers = Vec::new();
        let mut content_length: Option<u64> = None;
        let mut transfer_encoding = false;
        let mut only_chunked = true;
        let mut expect: Option<bool> = None;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') || line.contains('\r') {
                // obs-fold (RFC 9112 §5.2) or a stray CR.
                return Err(Fail::Status(400));
            }
            let (name, value) = line.split_once(':').ok_or(Fail::Status(400))?;
            if name.is_empty() || name.contains([' ', '\t']) {
                return Err(Fail::Status(400));
            }
            let value = value.trim_matches([' ', '\t']);
            let field = HeaderField::from_str(name).map_err(|_| Fail::Status(400))?;
            if field.equiv("Content-Length") {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Fail::Status(400));
                }
                // Too many digits for u64 is "too large", not an error.
                let n = value.parse::<u64>().unwrap_or(u64::MAX);
                if content_length.is_some_and(|c| c != n) {
                    return Err(Fail::Status(400));
                }
                content_length = Some(n);
            } else if field.equiv("Transfer-Encoding") {
                transfer_encoding = true;
                only_chunked &= value
                    .split(',')
                    .all(|c| c.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"));
            } else if field.equiv("Expect") {
                let cont = value.eq_ignore_ascii_case("100-continue");
                if !cont {
                    return Err(Fail::Status(417));
                }
                expect = Some(true);
            } else if field.equiv("Connection") {
                for token in value.split(',') {
                    let token = token.trim_matches([' ', '\t']);
                    conn_close |= token.eq_ignore_ascii_case("close");
                    conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            let value = AsciiString::from_ascii(value).map_err(|_| Fail::Status(400))?;
            headers.push(Header { field, value });
        }

        let framing = if transfer_encoding {
            // Both framings at once is a request-smuggling shape (RFC 9112 §6.1): refuse it, as
            // we do a transfer coding we cannot decode and chunked in HTTP/1.0.
            if content_length.is_some() || version == HTTPVersion(1, 0) {
                return Err(Fail::Status(400));
            }
            if !only_chunked {
                return Err(Fail::Status(501));
            }
            Framing::Chunked
        } else {
            match content_length {
                None | Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
            }
        };
        let http10 = version == HTTPVersion(1, 0);
        let client_close = conn_close || (http10 && !conn_keep_alive);
        let keep_alive_10 = http10 && conn_keep_alive && !conn_close;
        let body_length = content_length.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let rq = Request::new(
            method,
            target.to_string(),
            version,
            headers,
            self.remote,
            body_length,
            self.reply_tx.clone(),
            self.slot.clone(),
        );
        Ok((
            rq,
            framing,
            expect.unwrap_or(false),
            client_close,
            keep_alive_10,
        ))
    }

    /// Decides on and reads the body: nothing without one; nothing when `admit` refuses it or it
    /// is declared over the cap; otherwise all of it, under [`BODY_TIMEOUT`].
    fn read_body(
        &mut self,
        rq: &Request,
        framing: Framing,
        expect_continue: bool,
    ) -> Result<(BodyStatus, Vec<u8>, After), Fail> {
        if framing == Framing::None {
            return Ok((BodyStatus::Complete, Vec::new(), After::KeepAlive));
        }
        let admitted = self.shared.config.admit.as_ref().map_or(true, |f| f(rq));
        if !admitted {
            // A client that asked `Expect: 100-continue` and got no 100 may or may not send its
            // body: the stream position is unknown.
            let after = match framing {
                Framing::Length(n) if n <= MAX_DRAIN && !expect_continue => After::Drain(n),
                _ => After::Close,
            };
            return Ok((BodyStatus::NotRead, Vec::new(), after));
        }
        let max = self.shared.config.max_body;
        if let Framing::Length(n) = framing {
            if n > max as u64 {
                return Ok((BodyStatus::TooLarge, Vec::new(), After::Close));
            }
        }
        if expect_continue && *rq.http_version() >= HTTPVersion(1, 1) {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| Fail::Gone)?;
        }
        self.to(BODY)?;
        let deadline = Instant::now() + BODY_TIMEOUT;
        match framing {
            Framing::Length(n) => {
                let body = self
                    .read_exact_body(n as usize, deadline)
                    .map_err(io_fail)?;
                Ok((BodyStatus::Complete, body, After::KeepAlive))
            }
            Framing::Chunked => match self.read_chunked(max, deadline) {
                Ok(body) => Ok((BodyStatus::Complete, body, After::KeepAlive)),
                Err(ChunkFail::TooLarge) => Ok((BodyStatus::TooLarge, Vec::new(), After::Close)),
                Err(ChunkFail::Malformed) => Ok((BodyStatus::Malformed, Vec::new(), After::Close)),
                Err(ChunkFail::Io(e)) => Err(io_fail(e)),
            },
            Framing::None => unreachable!("handled above"),
        }
    }

    /// Reads exactly `n` body bytes (`n` is at most `max_body`), growing the buffer as bytes
    /// arrive rather than trusting the declared length up front.
    fn read_exact_body(&mut self, n: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        let first = n.min(self.end - self.start);
        let mut body = Vec::with_capacity(first.max(n.min(64 * 1024)));
        body.extend_from_slice(&self.buf[self.start..self.start + first]);
        self.start += first;
        let mut got = first;
        while got < n {
            if body.len() == got {
                let len = n.min((got * 2).max(64 * 1024));
                body.resize(len, 0);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            self.set_timeout(deadline - now)?;
            match self.stream.read(&mut body[got..]) {
                Ok(0) => return Err(eof()),
                Ok(m) => got += m,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(timed_out())
                }
                Err(e) => return Err(e),
            }
        }
        body.truncate(n);
        Ok(body)
    }

    /// One CRLF-terminated line of at most `max` bytes (without the CRLF).
    fn read_line(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, ChunkFail> {
        let mut scanned = 0;
        loop {
            let from = self.start + scanned;
            if let Some(p) = self.buf[from..self.end].iter().position(|&b| b == b'\n') {
                let lf = from + p;
                if lf == self.start || self.buf[lf - 1] != b'\r' {
                    return Err(ChunkFail::Malformed);
                }
                let line = self.buf[self.start..lf - 1].to_vec();
                self.start = lf + 1;
                if line.len() > max {
                    return Err(ChunkFail::Malformed);
                }
                return Ok(line);
            }
            scanned = self.end - self.start;
            if scanned > max + 1 {
                return Err(ChunkFail::Malformed);
            }
            let max_buf = self.buf.len().max(max + 2);
            if self.fill(deadline, max_buf)? == 0 {
                return Err(ChunkFail::Io(eof()));
            }
        }
    }

    /// A chunked body (RFC 9112 §7.1), at most `max` bytes of data: a chunk that would pass the
    /// cap stops the read at once (413 without reading it).
    fn read_chunked(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, ChunkFail> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, deadline)?;
            let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .map_err(|_| ChunkFail::Malformed)?
                .trim_matches([' ', '\t']);
            if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ChunkFail::Malformed);
            }
            let size = u64::from_str_radix(size, 16).map_err(|_| ChunkFail::Malformed)?;
            if size == 0 {
                // Trailer fields, read and dropped.
                for _ in 0..=MAX_HEADERS {
                    if self.read_line(MAX_HEADER_LINE, deadline)?.is_empty() {
                        return Ok(body);
                    }
                }
                return Err(ChunkFail::Malformed);
            }
            if body.len() as u64 + size > max as u64 {
                return Err(ChunkFail::TooLarge);
            }
            let mut left = size as usize;
            while left > 0 {
                if self.start == self.end && self.fill(deadline, self.buf.len())? == 0 {
                    return Err(ChunkFail::Io(eof()));
                }
                let k = left.min(self.end - self.start);
                body.extend_from_slice(&self.buf[self.start..self.start + k]);
                self.start += k;
                left -= k;
            }
            if !self.read_line(0, deadline)?.is_empty() {
                return Err(ChunkFail::Malformed);
            }
        }
    }

    /// Skips `n` bytes of an unread body; false when they do not arrive within
    /// [`DRAIN_TIMEOUT`] (the connection is then closed).
    fn drain(&mut self, n: u64) -> bool {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut left = n;
        loop {
            let k = left.min((self.end - self.start) as u64);
            self.start += k as usize;
            left -= k;
            if left == 0 {
                return true;
            }
            match self.fill(deadline, self.buf.len()) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// A final error response, then a lingering close.
    fn fail(&mut self, code: u16) {
        let reason = StatusCode(code).default_reason_phrase();
        let body = format!("{{\"error\":\"{reason}\"}}");
        let msg = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if self.stream.write_all(msg.as_bytes()).is_ok() {
            self.linger();
        }
    }

    /// Closes after a final response while the client may still be sending: stop sending,
    /// discard input for a moment, then close. Closing with unread input would send a reset,
    /// which can destroy the response before the client reads it.
    fn linger(&mut self) {
        if self.to(CLOSING).is_err() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER_TIMEOUT;
        let mut discarded = 0;
        while discarded < MAX_LINGER {
            self.start = self.end;
            match self.fill(deadline, self.buf.len()) {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    }
}
