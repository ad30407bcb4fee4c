//! tiny_http 0.12.0 as vendored by assistantd: the same `Server::recv()` / `Request::respond()`
//! model, with the connection layer rebuilt so that no client, however slow or malformed, can
//! crash the process, grow its memory without bound or keep other clients from being answered.
//! README.md lists every change against the published crate.
//!
//! # Model
//!
//! - One **accept thread** owns the listener. Each accepted connection goes to the
//!   **connection pool** ([`pool`]): at most [`Config::max_connections`] threads, each serving
//!   one connection at a time, from accept to close. When every thread is taken, the connection
//!   waits in a short queue while the pool closes the connection that has been idle the longest
//!   (a kept-alive connection waiting for its next request, or one that has been sending a request
//!   head for too long); if none is idle, the next thread to finish a request closes its
//!   connection after that response. The queue is bounded; beyond it, connections wait in the
//!   kernel's listen backlog.
//! - A connection thread does all the socket I/O, each step under a deadline: it reads the request
//!   head (line, size and count caps), asks [`Config::admit`] whether the body may be read, reads
//!   the body into memory (at most [`Config::max_body`] bytes; chunked framing decoded and
//!   checked), queues the [`Request`] for the workers and waits for the response. The worker
//!   renders the response into memory and sends what the socket takes at once without blocking;
//!   the connection thread writes any rest under its deadline. Workers never block on a socket,
//!   so a stalled client costs one connection thread, never a worker.
//! - **Workers** are the caller's threads blocked in [`Server::recv`].
//!
//! A body that is not read (refused by `admit`, or over the cap) is skipped after the response
//! when it is small and arrives promptly ([`limits::MAX_DRAIN`]); otherwise the response carries
//! `Connection: close` and the connection is closed, so leftover body bytes are never parsed as a
//! request.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::MessagesQueue;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use request::{BodyStatus, Request};
pub use response::{Response, ResponseBox};

mod client;
mod common;
pub mod limits;
mod pool;
mod request;
mod response;
mod util;

/// Decides, from the request line and headers alone, whether a request's body may be read.
/// Called on the connection thread for every request that declares a body, before any body byte
/// is read and before `100 Continue` is sent. Must be fast and must not block.
pub type Admit = Box<dyn Fn(&Request) -> bool + Send + Sync + 'static>;

/// Limits and hooks of a [`Server`]. `Config::default()` uses the values in [`limits`].
pub struct Config {
    /// Largest body read into memory; a larger declared or streamed body is
    /// [`BodyStatus::TooLarge`].
    pub max_body: usize,
    /// Most connections served at once (one thread each).
    pub max_connections: usize,
    /// See [`Admit`]. `None` reads every body (up to `max_body`).
    pub admit: Option<Admit>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body: limits::MAX_BODY,
            max_connections: limits::MAX_CONNECTIONS,
            admit: None,
        }
    }
}

/// State shared by the accept thread, the connection threads and the [`Server`] handle.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) messages: Arc<MessagesQueue<Request>>,
    /// Set by [`Server::stop_accepting`]: no new connections, no more keep-alive.
    pub(crate) closing: AtomicBool,
    pub(crate) pool: pool::Pool,
    /// Origin of the millisecond clock the connection slots use.
    pub(crate) epoch: Instant,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// The main class of this library.
///
/// Dropping it stops accepting connections (as [`Server::stop_accepting`]); requests already
/// received are still answered.
pub struct Server {
    shared: Arc<Shared>,
    listening_addr: SocketAddr,
}

// this trait is to make sure that Server implements Share and Send
#[doc(hidden)]
#[allow(dead_code)]
trait MustBeShareDummy: Sync + Send {}
#[doc(hidden)]
impl MustBeShareDummy for Server {}

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

impl Server {
    /// Serves HTTP on `listener` (already bound and listening) with `config`.
    pub fn from_listener(listener: TcpListener, config: Config) -> IoResult<Server> {
        let listening_addr = listener.local_addr()?;
        // accept() honours SO_RCVTIMEO on Linux: the accept loop wakes up every tick to retry
        // evictions for queued connections and to notice a stop. Accepted sockets inherit the
        // option; connection threads set their own timeouts first thing.
        socket2::SockRef::from(&listener).set_read_timeout(Some(limits::ACCEPT_TICK))?;
        let shared = Arc::new(Shared {
            config,
            messages: MessagesQueue::with_capacity(64),
            closing: AtomicBool::new(false),
            pool: pool::Pool::new(),
            epoch: Instant::now(),
        });
        let inside = shared.clone();
        thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(listener, inside))?;
        Ok(Server {
            shared,
            listening_addr,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> SocketAddr {
        self.listening_addr
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        match self.shared.messages.pop() {
            Some(rq) => Ok(rq),
            None => Err(IoError::new(IoErrorKind::Other, "thread unblocked")),
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        Ok(self.shared.messages.pop_timeout(timeout))
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        Ok(self.shared.messages.try_pop())
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.shared.messages.unblock();
    }

    /// Starts a graceful stop: the listening socket is closed (new connections are refused),
    /// idle kept-alive connections are closed, and every request in progress is answered with
    /// `Connection: close`. Requests already received keep flowing to [`Server::recv`].
    pub fn stop_accepting(&self) {
        if self.shared.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept thread at once rather than at its next tick.
        if let Ok(s) = TcpStream::connect_timeout(&self.listening_addr, Duration::from_millis(200))
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.pool.evict_for_stop(&self.shared);
    }

    /// Requests not yet answered: connections reading a request or waiting for its response,
    /// plus accepted connections waiting for a thread. After [`Server::stop_accepting`] this
    /// also closes idle connections and those that have been sending a request head for longer
    /// than [`limits::SLOW_HEAD`], so a stop is never held up by a slowloris client.
    pub fn requests_in_progress(&self) -> usize {
        if self.shared.closing() {
            self.shared.pool.evict_for_stop(&self.shared);
        }
        self.shared.pool.in_progress()
    }

    /// Connections currently open (served by a thread or waiting for one).
    pub fn connections(&self) -> usize {
        self.shared.pool.connections()
    }
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.closing() {
        match listener.accept() {
            Ok((sock, _)) => {
                if shared.closing() {
                    break;
                }
                pool::dispatch(&shared, sock);
            }
            Err(e) => match e.kind() {
                // The tick: a chance to free a thread for queued connections.
                IoErrorKind::WouldBlock | IoErrorKind::TimedOut | IoErrorKind::Interrupted => {
                    shared.pool.relieve(&shared)
                }
                // Out of file descriptors, a connection reset before accept, …: never fatal
                // (tiny_http 0.12 stopped serving for good here). Back off briefly and go on.
                _ => thread::sleep(limits::ACCEPT_ERROR_BACKOFF),
            },
        }
    }
    // Dropping the listener closes it: new connections are refused from here on.
}
