//! The connection pool: at most `max_connections` threads, each serving one connection at a time
//! from accept to close, plus a bounded queue of accepted connections waiting for a thread.
//!
//! tiny_http 0.12 gave each connection a thread from a task pool that queued a new connection
//! behind a thread it merely *counted* as waiting, and a thread kept its connection for the
//! connection's whole keep-alive life: in a burst of keep-alive connections some were never
//! served. Here a connection is queued only when a waiting thread is known to be free for it
//! (`idle > queue.len()` under one lock), a new thread is started otherwise, and at the cap a
//! thread is *freed* for it: the pool closes the connection idle the longest (waiting for its
//! next request; HTTP lets a server close an idle connection at any time), or one that has spent
//! more than [`SLOW_HEAD`] sending a request head. While connections wait, every response carries
//! `Connection: close`, so each busy thread frees itself after its current request.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use crate::limits::{
    ACCEPT_TICK, CONNECTION_THREAD_STACK, MAX_WAITING_CONNECTIONS, POOL_THREAD_IDLE, SLOW_HEAD,
};
use crate::Shared;

/// Waiting for the first byte of a request (a fresh or kept-alive connection). Evictable.
pub(crate) const IDLE: u8 = 0;
/// Reading a request head. Evictable once older than [`SLOW_HEAD`].
pub(crate) const HEAD: u8 = 1;
/// Reading an admitted body (under its own deadline). Not evictable.
pub(crate) const BODY: u8 = 2;
/// Request queued or being handled, or its response being written. Not evictable.
pub(crate) const BUSY: u8 = 3;
/// Final response written, discarding what the client still sends. Evictable.
pub(crate) const CLOSING: u8 = 4;
/// Closed by the pool; the connection thread finds out at its next read.
pub(crate) const EVICTED: u8 = 5;

/// One open connection as the pool sees it.
pub(crate) struct Slot {
    pub(crate) stream: TcpStream,
    state: AtomicU8,
    /// When the current state began (ms on `Shared::epoch`).
    since_ms: AtomicU64,
}

impl Slot {
    /// Moves from `from` to `to`; false when the pool evicted the connection meanwhile.
    pub(crate) fn enter(&self, from: u8, to: u8, now_ms: u64) -> bool {
        let ok = self
            .state
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ok {
            self.since_ms.store(now_ms, Ordering::SeqCst);
        }
        ok
    }

    pub(crate) fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Closes the connection if it is still in state `seen`.
    fn evict(&self, seen: u8) -> bool {
        let ok = self
            .state
            .compare_exchange(seen, EVICTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if ok {
            // The connection thread's blocking read returns at once.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        ok
    }
}

struct PoolState {
    /// Connection threads alive.
    threads: usize,
    /// Of those, waiting for a connection.
    idle: usize,
    /// Accepted connections waiting for a thread.
    queue: VecDeque<TcpStream>,
}

pub(crate) struct Pool {
    state: Mutex<PoolState>,
    /// Idle connection threads wait here.
    work: Condvar,
    /// The accept thread waits here while the queue is full.
    room: Condvar,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// `queue.len()`, readable without the lock.
    queued: AtomicUsize,
    /// Queued connections no idle thread is about to take: the "someone is waiting" signal.
    unserved: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover anyway rather than spread a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new() -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                threads: 0,
                idle: 0,
                queue: VecDeque::new(),
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            slots: Mutex::new(Vec::new()),
            queued: AtomicUsize::new(0),
            unserved: AtomicUsize::new(0),
        }
    }

    /// True while accepted connections wait for a thread and no idle thread is about to take
    /// them.
    pub(crate) fn under_pressure(&self) -> bool {
        self.unserved.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn in_progress(&self) -> usize {
        let busy = lock(&self.slots)
            .iter()
            .filter(|s| matches!(s.state(), HEAD | BODY | BUSY))
            .count();
        busy + self.queued.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> usize {
        lock(&self.slots).len() + self.queued.load(Ordering::SeqCst)
    }

    /// Closes one connection to free its thread: the one idle the longest (or lingering after
    /// its last response), else the one that has been sending its head the longest, if that is
    /// longer than [`SLOW_HEAD`]. False when every connection is doing useful work.
    fn evict_one(&self, shared: &Shared) -> bool {
        let now = shared.now_ms();
        let slow = SLOW_HEAD.as_millis() as u64;
        let slots = lock(&self.slots);
        for _attempt in 0..4 {
            let mut best: Option<(&Arc<Slot>, u8, (u8, u64))> = None;
            for s in slots.iter() {
                let st = s.state();
                let since = s.since_ms.load(Ordering::SeqCst);
                let rank = match st {
                    IDLE | CLOSING => 0,
                    HEAD if now.saturating_sub(since) >= slow => 1,
                    _ => continue,
                };
                if best.map_or(true, |(_, _, key)| (rank, since) < key) {
                    best = Some((s, st, (rank, since)));
                }
            }
            match best {
                None => return false,
                Some((s, st, _)) => {
                    if s.evict(st) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// After a stop: closes idle and lingering connections and slow heads.
    pub(crate) fn evict_for_stop(&self, shared: &Shared) {
        let now = shared.now_ms();
        let slow = SLOW_HEAD.as_millis() as u64;
        for s in lock(&self.slots).iter() {
            let st = s.state();
            let since = s.since_ms.load(Ordering::SeqCst);
            if matches!(st, IDLE | CLOSING) || (st == HEAD && now.saturating_sub(since) >= slow) {
                s.evict(st);
            }
        }
    }

    /// Called on every accept tick: frees threads for connections still waiting.
    pub(crate) fn relieve(&self, shared: &Shared) {
        let need = {
            let st = lock(&self.state);
            st.queue.len().saturating_sub(st.idle)
        };
        for _ in 0..need {
            if !self.evict_one(shared) {
                break;
            }
        }
    }

    /// Publishes the queue figures; called after every change of `queue` or `idle`.
    fn publish(&self, st: &PoolState) {
        self.queued.store(st.queue.len(), Ordering::SeqCst);
        self.unserved
            .store(st.queue.len().saturating_sub(st.idle), Ordering::SeqCst);
    }

    /// Serves one connection on the current thread, registered as a [`Slot`] while it lasts.
    fn serve(&self, shared: &Shared, sock: TcpStream) {
        let slot = Arc::new(Slot {
            stream: sock,
            state: AtomicU8::new(IDLE),
            since_ms: AtomicU64::new(shared.now_ms()),
        });
        lock(&self.slots).push(slot.clone());
        // A bug in the connection code (or in the caller's `admit` hook) costs this connection,
        // never the thread's place in the pool.
        let _ = catch_unwind(AssertUnwindSafe(|| crate::client::serve(&slot, shared)));
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, &slot));
    }
}

/// Hands an accepted connection to a thread (see the module doc).
pub(crate) fn dispatch(shared: &Arc<Shared>, sock: TcpStream) {
    let pool = &shared.pool;
    let mut st = lock(&pool.state);
    if st.idle > st.queue.len() {
        st.queue.push_back(sock);
        pool.publish(&st);
        pool.work.notify_one();
        return;
    }
    if st.threads < shared.config.max_connections {
        st.threads += 1;
        drop(st);
        let inside = shared.clone();
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .stack_size(CONNECTION_THREAD_STACK)
            .spawn(move || run(inside, sock));
        if spawned.is_err() {
            // Out of threads: the connection is dropped (closed); the count is restored.
            lock(&pool.state).threads -= 1;
        }
        return;
    }
    st.queue.push_back(sock);
    pool.publish(&st);
    drop(st);
    pool.evict_one(shared);
    // Keep the queue bounded: past it, stop accepting (the kernel backlog holds the rest).
    let mut st = lock(&pool.state);
    while st.queue.len() >= MAX_WAITING_CONNECTIONS && !shared.closing() {
        drop(st);
        pool.evict_one(shared);
        st = lock(&pool.state);
        st = pool
            .room
            .wait_timeout(st, ACCEPT_TICK)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// A connection thread: serves its first connection, then queued ones, and exits after
/// [`POOL_THREAD_IDLE`] without work.
fn run(shared: Arc<Shared>, first: TcpStream) {
    let pool = &shared.pool;
    let mut next = Some(first);
    loop {
        if let Some(sock) = next.take() {
            pool.serve(&shared, sock);
        }
        let mut st = lock(&pool.state);
        if let Some(sock) = st.queue.pop_front() {
            pool.publish(&st);
            pool.room.notify_one();
            next = Some(sock);
            continue;
        }
        st.idle += 1;
        pool.publish(&st);
        let deadline = Instant::now() + POOL_THREAD_IDLE;
        loop {
            if let Some(sock) = st.queue.pop_front() {
                st.idle -= 1;
                pool.publish(&st);
                pool.room.notify_one();
                next = Some(sock);
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                st.idle -= 1;
                st.threads -= 1;
                pool.publish(&st);
                return;
            }
            st = pool
                .work
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
