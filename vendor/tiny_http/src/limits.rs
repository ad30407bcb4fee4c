//! Every limit of the connection layer, in one place. Sizes in bytes, durations as written.

use std::time::Duration;

/// Default [`crate::Config::max_body`]: the largest body read into memory (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Default [`crate::Config::max_connections`]: connections served at once, one thread each.
pub const MAX_CONNECTIONS: usize = 256;
/// Accepted connections that may wait for a connection thread; beyond this the accept loop
/// stops accepting and new connections wait in the kernel's listen backlog.
pub const MAX_WAITING_CONNECTIONS: usize = 64;
/// Stack of a connection thread: it parses heads, runs the `admit` hook and copies bytes.
pub const CONNECTION_THREAD_STACK: usize = 256 * 1024;
/// An idle connection thread exits after this long without a connection.
pub const POOL_THREAD_IDLE: Duration = Duration::from_secs(10);

/// Longest request line (method, target, version); longer → 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest header line; longer → 431.
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Most header lines in one request (trailers of a chunked body count too); more → 431.
pub const MAX_HEADERS: usize = 100;
/// Largest request head (request line, headers, line ends); larger → 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line of a chunked body (size plus extensions); longer → malformed.
pub const MAX_CHUNK_LINE: usize = 1024;

/// Read buffer of a connection; grows up to [`MAX_HEAD`] for a large head, then shrinks back.
pub const READ_BUFFER: usize = 4 * 1024;

/// A kept-alive (or fresh) connection may wait this long for the first byte of a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// From the first byte of a request to the end of its head, in total (slowloris guard) → 408.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of the head to the end of an admitted body, in total → 408.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(20);
/// Each socket write of a response (a client that does not read) → the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A head still incomplete after this long may be cut when a thread is needed for a new
/// connection or the server is stopping.
pub const SLOW_HEAD: Duration = Duration::from_secs(1);

/// An unread body (refused by `admit`) of at most this many bytes is skipped after the response
/// and the connection kept; a larger or unknown one closes the connection.
pub const MAX_DRAIN: u64 = 64 * 1024;
/// Time allowed to skip such a body.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Closing after an error or an unread body: after the response we stop sending and discard
/// what the client still sends, at most this much …
pub const MAX_LINGER: usize = 256 * 1024;
/// … for at most this long, so the client reads the response instead of a reset.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the accept loop wakes up without a new connection.
pub const ACCEPT_TICK: Duration = Duration::from_millis(200);
/// Pause after a failed `accept()` (out of file descriptors, …).
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);
