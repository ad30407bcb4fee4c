use std::io::{self, Cursor, Read};

use std::fmt;
use std::net::SocketAddr;

use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::pool::Slot;
use crate::response::ConnectionHeader;
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// What became of a request's body before the request reached [`crate::Server::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStatus {
    /// No body, or the whole body was read into memory ([`Request::as_reader`] yields it).
    Complete,
    /// Declared or streamed over [`crate::Config::max_body`]; the rest was not read and the
    /// connection closes after the response.
    TooLarge,
    /// The chunked framing was malformed; the connection closes after the response.
    Malformed,
    /// [`crate::Config::admit`] refused it; nothing was read (and no `100 Continue` sent).
    NotRead,
}

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// The body, when there is one and it was admitted, has already been read into memory by the
/// connection thread. Answering renders the response into memory, sends what the socket takes
/// at once without blocking, and hands the rest (usually nothing) to the connection thread,
/// which writes it under its deadline. A worker never blocks on a socket.
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `respond` being called, an empty response with a
/// 500 status code (internal server error) is sent back to the client.
pub struct Request {
    body: Cursor<Vec<u8>>,

    body_status: BodyStatus,

    // if this is empty, then the request has been answered
    reply: Option<Sender<Reply>>,

    // the connection, for the worker's non-blocking send
    slot: Arc<Slot>,

    remote_addr: Option<SocketAddr>,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    connection: ConnectionHeader<'static>,
}

impl Request {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        method: Method,
        path: String,
        version: HTTPVersion,
        headers: Vec<Header>,
        remote_addr: Option<SocketAddr>,
        body_length: Option<usize>,
        reply: Sender<Reply>,
        slot: Arc<Slot>,
    ) -> Request {
        Request {
            body: Cursor::new(Vec::new()),
            body_status: BodyStatus::Complete,
            reply: Some(reply),
            slot,
            remote_addr,
            method,
            path,
            http_version: version,
            headers,
            body_length,
            connection: ConnectionHeader::None,
        }
    }

    pub(crate) fn set_body(&mut self, status: BodyStatus, body: Vec<u8>) {
        self.body_status = status;
        self.body = Cursor::new(body);
    }

    pub(crate) fn set_connection_header(&mut self, c: ConnectionHeader<'static>) {
        self.connection = c;
    }

    /// Drops the request without any answer: for one that never reached the application
    /// because its body could not be read (the connection layer answers 408 or closes), where
    /// the automatic 500 of `Drop` would be a second, wrong response on the socket.
    pub(crate) fn discard(mut self) {
        self.reply = None;
    }

    /// Returns true if the request was made through HTTPS (never: TLS support was removed).
    #[inline]
    pub fn secure(&self) -> bool {
        false
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the declared length of the body (`Content-Length`) in bytes.
    ///
    /// Returns `None` if the length is unknown (chunked, or no body).
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// What became of the body; see [`BodyStatus`].
    #[inline]
    pub fn body_status(&self) -> BodyStatus {
        self.body_status
    }

    /// Returns the address of the client that sent this request.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Allows to read the body of the request (already in memory; empty unless
    /// [`Request::body_status`] is [`BodyStatus::Complete`]).
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    /// Takes the body out of the request without copying it.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body).into_inner()
    }

    /// Sends a response to this request.
    ///
    /// The response is rendered into memory here and sent with a non-blocking write; whatever
    /// the socket does not take at once is written by the connection thread under its write
    /// deadline. Errors of those writes are not reported back.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), io::Error>
    where
        R: Read,
    {
        self.respond_impl(response)
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), io::Error>
    where
        R: Read,
    {
        let reply = match self.reply.take() {
            Some(r) => r,
            None => return Ok(()),
        };
        let do_not_send_body = self.method == Method::Head;
        let mut out = Vec::with_capacity(256 + response.data_length().unwrap_or(0).min(1 << 16));
        let printed = response.print(
            &mut out,
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            self.connection,
        );
        if let Err(e) = printed {
            // The response's reader failed half-way: send a plain 500 instead of a torn reply.
            out.clear();
            Response::empty(StatusCode(500))
                .print(
                    &mut out,
                    self.http_version.clone(),
                    &self.headers,
                    do_not_send_body,
                    self.connection,
                )
                .ok();
            let _ = reply.send(Reply {
                bytes: out,
                sent: 0,
            });
            return Err(e);
        }
        // Straight to the socket when it takes the bytes at once (the usual case): the client
        // gets its answer without waiting for the connection thread to be scheduled.
        let sent = send_now(&self.slot, &out);
        // The connection thread may be gone (client vanished); nothing to do about it.
        let _ = reply.send(Reply { bytes: out, sent });
        Ok(())
    }
}

/// A rendered response handed back to the connection thread: `bytes[sent..]` is still to write.
pub(crate) struct Reply {
    pub(crate) bytes: Vec<u8>,
    pub(crate) sent: usize,
}

/// Sends as much of `bytes` as the socket accepts without blocking; returns how much.
fn send_now(slot: &Slot, bytes: &[u8]) -> usize {
    let sock = socket2::SockRef::from(&slot.stream);
    let mut sent = 0;
    while sent < bytes.len() {
        match sock.send_with_flags(&bytes[sent..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Would block, or a broken connection: the connection thread finds out.
            Err(_) => break,
        }
    }
    sent
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.reply.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
