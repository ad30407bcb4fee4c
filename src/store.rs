//! The file-backed state store. Every domain keeps one JSON file in the state dir and goes
//! through this module, which owns the invariants:
//!
//! * A write is read-modify-write under an exclusive `flock` on a separate lock file
//!   (`.<file>.lock`, never renamed, so the lock always guards the current file), then a temp
//!   file in the same dir, `fsync`, `rename`, `fsync` of the dir. Readers never see a torn file
//!   and two processes on one state dir lose no update.
//! * Reads take the shared lock when the lock file can be opened (a read-only state dir still
//!   reads; the atomic rename keeps lock-free reads whole anyway).
//! * Hand-written files may hold comments and trailing commas; we write plain JSON.
//! * A file that does not parse or validate is an error naming the file. It is never replaced
//!   by defaults and never written over: the update closure is not even called.
//! * No network I/O happens while a lock is held (callers do it before or after `update`).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Mode of state files we create (they may hold secrets such as API keys).
pub const STATE_FILE_MODE: u32 = 0o600;
/// Marker in temp file names: `.<file>.tmp.<pid>.<n>`.
const TEMP_MARKER: &str = ".tmp.";

/// What went wrong with which state file.
#[derive(Debug)]
pub struct StoreError {
    /// The file's name inside the state dir (`settings.json`), safe to show to clients.
    pub file: String,
    pub kind: StoreErrorKind,
}

#[derive(Debug)]
pub enum StoreErrorKind {
    /// The file exists but could not be read.
    Read(io::Error),
    /// The file is not (tolerant) JSON.
    Parse(String),
    /// The file is JSON but not the shape this domain stores.
    Invalid(String),
    /// Taking the lock failed.
    Lock(io::Error),
    /// Writing the new version failed; the old one is untouched.
    Write(io::Error),
}

impl StoreError {
    pub fn invalid(file: &str, reason: impl Into<String>) -> Self {
        StoreError {
            file: file.to_string(),
            kind: StoreErrorKind::Invalid(reason.into()),
        }
    }

    /// The text a client may see: file name and reason, no absolute paths.
    pub fn public_message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = &self.file;
        match &self.kind {
            StoreErrorKind::Read(e) => write!(f, "State file {file} could not be read: {e}"),
            StoreErrorKind::Parse(e) => write!(f, "State file {file} is not valid JSON: {e}"),
            StoreErrorKind::Invalid(e) => write!(f, "State file {file} is invalid: {e}"),
            StoreErrorKind::Lock(e) => write!(f, "State file {file} could not be locked: {e}"),
            StoreErrorKind::Write(e) => write!(f, "State file {file} could not be written: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Read(e) | StoreErrorKind::Lock(e) | StoreErrorKind::Write(e) => Some(e),
            StoreErrorKind::Parse(_) | StoreErrorKind::Invalid(_) => None,
        }
    }
}

/// The state dir. Cheap to share (`Arc<Store>` in the app).
pub struct Store {
    dir: PathBuf,
    /// Group-commit state per file (see [`Store::update`]).
    slots: Mutex<HashMap<String, SharedSlot>>,
}

/// Writes one flock session may carry before it stops taking newcomers and releases the lock,
/// so a busy process cannot keep another one from writing the same file.
const MAX_BATCHES_PER_SESSION: u32 = 8;

/// A file's slot and the condition its waiters sleep on.
type SharedSlot = Arc<(Mutex<Slot>, Condvar)>;

/// Failed write ranges remembered for waiters (a waiter looks its generation up once woken).
const MAX_REMEMBERED_FAILURES: usize = 64;

/// One file's group-commit state in this process. Generations count successful in-memory
/// changes; `committed` is the newest generation whose fate (written or failed) is known.
#[derive(Default)]
struct Slot {
    session: Option<Session>,
    opening: bool,
    writing: bool,
    /// The session takes no newcomers (see [`MAX_BATCHES_PER_SESSION`]).
    draining: bool,
    /// Writes done in the current session.
    batches: u32,
    generation: u64,
    committed: u64,
    failures: Vec<(u64, u64, io::ErrorKind, String)>,
}

/// The exclusive flock plus the decoded current value, held while changes are pending.
struct Session {
    _guard: LockGuard,
    value: Box<dyn Any + Send>,
    encode: fn(&(dyn Any + Send)) -> Vec<u8>,
    /// The bytes the file holds now (`None`: missing), to skip writes that change nothing.
    on_disk: Option<Vec<u8>>,
}

/// Pretty JSON plus a newline, the format every state file is written in.
fn encode_any<T: Serialize + 'static>(v: &(dyn Any + Send)) -> Vec<u8> {
    let mut bytes = v
        .downcast_ref::<T>()
        .and_then(|t| serde_json::to_vec_pretty(t).ok())
        .unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Holds a `flock`; released on drop (closing the file releases it).
struct LockGuard(#[allow(dead_code)] File); // kept only for its Drop

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store {
            dir: dir.into(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn lock_path(&self, file: &str) -> PathBuf {
        self.dir.join(format!(".{file}.lock"))
    }

    fn lock_exclusive(&self, file: &str) -> Result<LockGuard, StoreError> {
        let err = |e| StoreError {
            file: file.to_string(),
            kind: StoreErrorKind::Lock(e),
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(STATE_FILE_MODE)
            .open(self.lock_path(file))
            .map_err(err)?;
        f.lock().map_err(err)?;
        Ok(LockGuard(f))
    }

    /// A shared lock when the lock file exists or can be made; `None` on a read-only dir.
    fn lock_shared(&self, file: &str) -> Option<LockGuard> {
        let path = self.lock_path(file);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(STATE_FILE_MODE)
            .open(&path)
            .or_else(|_| File::open(&path))
            .ok()?;
        f.lock_shared().ok()?;
        Some(LockGuard(f))
    }

    /// The raw bytes of `file`, or `None` when it does not exist.
    fn read_bytes(&self, file: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(self.path(file)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError {
                file: file.to_string(),
                kind: StoreErrorKind::Read(e),
            }),
        }
    }

    fn decode<T: DeserializeOwned + Default>(
        file: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<T, StoreError> {
        let Some(bytes) = bytes else {
            return Ok(T::default());
        };
        // Straight into `T`, with no `Value` tree in between: a tree of a 100-repo file costs
        // ~15 times the file's size in small allocations, which the allocator then keeps.
        let parse = |e: String| StoreError {
            file: file.to_string(),
            kind: StoreErrorKind::Parse(e),
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| parse(format!("not UTF-8: {e}")))?;
        serde_json::from_str(&crate::util::strip_jsonc(text)).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                StoreError::invalid(file, e.to_string())
            } else {
                parse(e.to_string())
            }
        })
    }

    /// Reads and decodes `file`; a missing file is `T::default()`.
    pub fn load<T: DeserializeOwned + Default>(&self, file: &str) -> Result<T, StoreError> {
        let _guard = self.lock_shared(file);
        let bytes = self.read_bytes(file)?;
        Self::decode(file, bytes)
    }

    /// Read-modify-write under the exclusive lock, with group commit. `f` sees the current
    /// contents (default when missing) and runs on a copy: when it returns `Err`, nothing of
    /// it is kept. When it returns `Ok`, this call returns only after a write that includes
    /// the change is durable (or reports that write's failure). Concurrent updates of the same
    /// file in this process share one lock session, one write and one pair of fsyncs: while one
    /// caller writes, the others apply their changes in memory and the next write carries them
    /// all. A bad file is reported to every caller and never written.
    pub fn update<T, R, E>(
        &self,
        file: &str,
        f: impl FnOnce(&mut T) -> Result<R, E>,
    ) -> Result<R, E>
    where
        T: Serialize + DeserializeOwned + Default + Clone + Send + 'static,
        E: From<StoreError>,
    {
        let slot = self.slot(file);
        let (lock, cv) = &*slot;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        // 1. Join the open session, or open one (flock + read + decode). A session that has
        //    carried MAX_BATCHES_PER_SESSION writes takes no newcomers: it drains and releases
        //    the flock, so another process gets its turn.
        loop {
            if st.session.is_some() && !st.draining {
                break;
            }
            if st.session.is_none() && !st.opening {
                st.opening = true;
                drop(st);
                let opened = self.open_session::<T>(file);
                st = lock.lock().unwrap_or_else(|p| p.into_inner());
                st.opening = false;
                cv.notify_all();
                match opened {
                    Ok(session) => {
                        st.session = Some(session);
                        st.batches = 0;
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        // 2. Apply `f` to a copy of the session's value.
        let session = st.session.as_mut().expect("a session is open");
        if session.value.downcast_ref::<T>().is_none() {
            // Another type was used for this file in this session: go through its bytes.
            let bytes = (session.encode)(session.value.as_ref());
            let decoded: T = Self::decode(file, Some(bytes))?;
            session.value = Box::new(decoded);
            session.encode = encode_any::<T>;
        }
        let current = session.value.downcast_ref::<T>().expect("checked above");
        let mut work = current.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut work)));
        let out = match result {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                self.finish_if_idle(&mut st, cv);
                return Err(e);
            }
            Err(panic) => {
                // Never leave the flock held by an idle session.
                self.finish_if_idle(&mut st, cv);
                drop(st);
                std::panic::resume_unwind(panic);
            }
        };
        session.value = Box::new(work);
        st.generation += 1;
        let mine = st.generation;
        // 3. Until generation `mine` is written: write one batch when nobody is writing (it
        //    carries every change made so far), else wait. After its batch a writer hands the
        //    role on, so no caller keeps writing for others while its own answer waits.
        while st.committed < mine {
            if st.writing {
                st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.writing = true;
            let target = st.generation;
            let session = st
                .session
                .as_ref()
                .expect("a session is open while changes are pending");
            let bytes = (session.encode)(session.value.as_ref());
            let unchanged = session.on_disk.as_deref() == Some(&bytes[..]);
            drop(st);
            let written = if unchanged {
                Ok(())
            } else {
                write_atomic(&self.path(file), &bytes, STATE_FILE_MODE)
            };
            st = lock.lock().unwrap_or_else(|p| p.into_inner());
            st.writing = false;
            match written {
                Ok(()) => {
                    st.committed = target;
                    st.batches += 1;
                    if let Some(s) = st.session.as_mut() {
                        s.on_disk = Some(bytes);
                    }
                    if st.batches >= MAX_BATCHES_PER_SESSION {
                        st.draining = true;
                    }
                }
                Err(e) => {
                    // Everything not yet durable is lost with the session: report it to every
                    // waiter of those generations and re-read the file next time.
                    let (from, to) = (st.committed + 1, st.generation);
                    st.failures.push((from, to, e.kind(), e.to_string()));
                    if st.failures.len() > MAX_REMEMBERED_FAILURES {
                        st.failures.remove(0);
                    }
                    st.committed = to;
                    st.session = None;
                }
            }
            if st.committed == st.generation {
                // Nothing pending: release the flock; the next session re-reads the file.
                st.session = None;
                st.draining = false;
            }
            cv.notify_all();
        }
        match st
            .failures
            .iter()
            .find(|(from, to, _, _)| (*from..=*to).contains(&mine))
        {
            Some((_, _, kind, msg)) => Err(StoreError {
                file: file.to_string(),
                kind: StoreErrorKind::Write(io::Error::new(*kind, msg.clone())),
            }
            .into()),
            None => Ok(out),
        }
    }

    /// The per-file group-commit slot of this process.
    fn slot(&self, file: &str) -> SharedSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(file.to_string()).or_default().clone()
    }

    /// Takes the flock and reads the current version.
    fn open_session<T>(&self, file: &str) -> Result<Session, StoreError>
    where
        T: Serialize + DeserializeOwned + Default + Send + 'static,
    {
        let guard = self.lock_exclusive(file)?;
        let on_disk = self.read_bytes(file)?;
        let value: T = Self::decode(file, on_disk.clone())?;
        Ok(Session {
            _guard: guard,
            value: Box::new(value),
            encode: encode_any::<T>,
            on_disk,
        })
    }

    /// Ends a session nobody writes in (a caller's `f` failed and no change is pending).
    fn finish_if_idle(&self, st: &mut Slot, cv: &Condvar) {
        if !st.writing && st.committed == st.generation {
            st.session = None;
            st.draining = false;
            cv.notify_all();
        }
    }

    /// Identity of a file's current version: device, inode, mtime (ns) and size. Every write is a
    /// rename of a fresh temp file, so a new version always has a new inode and mtime.
    pub fn stamp(&self, file: &str) -> Option<FileStamp> {
        let m = fs::metadata(self.path(file)).ok()?;
        Some(FileStamp(
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
        ))
    }

    /// Removes temp files left by writers that died (their pid no longer runs).
    pub fn clean_temp_files(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = temp_file_pid(&name) {
                let alive =
                    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
                if !alive && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// See [`Store::stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp(u64, u64, i64, i64, u64);

/// Most views kept by a [`ViewCache`]; when full it starts over.
pub const MAX_CACHED_VIEWS: usize = 1024;

/// The stamps a view was built from, and its bytes.
type CachedView = (Vec<Option<FileStamp>>, Arc<Vec<u8>>);

/// Serialised responses derived from state files, kept while those files are unchanged: a GET
/// costs a `stat` per file instead of read + parse + validate + serialise. Errors are never
/// cached, so a broken file is reported on every request.
#[derive(Debug, Default)]
pub struct ViewCache {
    map: Mutex<HashMap<String, CachedView>>,
}

impl ViewCache {
    /// The view `key` built from `files`: cached bytes when every file's stamp is unchanged,
    /// else `build()` (stamps are taken first, so a write during `build` only costs a rebuild).
    pub fn get_or_build<E>(
        &self,
        store: &Store,
        key: &str,
        files: &[&str],
        build: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        let stamps: Vec<Option<FileStamp>> = files.iter().map(|f| store.stamp(f)).collect();
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((st, bytes)) = map.get(key) {
                if *st == stamps && stamps.iter().all(Option::is_some) {
                    return Ok(bytes.clone());
                }
            }
        }
        let bytes = Arc::new(build()?);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_VIEWS {
            map.clear();
        }
        map.insert(key.to_string(), (stamps, bytes.clone()));
        Ok(bytes)
    }
}

/// The writer's pid in a temp file name `.<file>.tmp.<pid>.<n>`.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let idx = rest.rfind(TEMP_MARKER)?;
    let mut parts = rest[idx + TEMP_MARKER.len()..].split('.');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    Some(pid)
}

/// Writes `bytes` to `path` atomically and durably: temp file in the same dir, fsync, rename,
/// fsync dir. An existing file's mode is kept; a new file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TEMP_MARKER}{}.{n}", std::process::id()));
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(mode);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` is filtered by the umask on create; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    struct Doc {
        n: u32,
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("assistantd-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn missing_file_is_default_and_update_writes_plain_json() {
        let d = temp_dir("rmw");
        let s = Store::new(&d);
        assert_eq!(s.load::<Doc>("doc.json").unwrap(), Doc { n: 0 });
        s.update("doc.json", |d: &mut Doc| {
            d.n += 5;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(d.join("doc.json")).unwrap(),
            "{\n  \"n\": 5\n}\n"
        );
        let mode = fs::metadata(d.join("doc.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn corrupt_file_is_reported_and_never_written() {
        let d = temp_dir("corrupt");
        fs::write(d.join("doc.json"), b"{\"n\": ").unwrap();
        let s = Store::new(&d);
        let e = s.load::<Doc>("doc.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("State file doc.json is not valid JSON"),
            "{e}"
        );
        let mut called = false;
        let r = s.update("doc.json", |_: &mut Doc| {
            called = true;
            Ok::<_, StoreError>(())
        });
        assert!(r.is_err());
        assert!(!called);
        assert_eq!(fs::read(d.join("doc.json")).unwrap(), b"{\"n\": ");
    }

    #[test]
    fn wrong_shape_is_invalid() {
        let d = temp_dir("shape");
        fs::write(d.join("doc.json"), b"{\"n\": \"x\"}").unwrap();
        let e = Store::new(&d).load::<Doc>("doc.json").unwrap_err();
        assert!(matches!(e.kind, StoreErrorKind::Invalid(_)));
    }

    #[test]
    fn comments_are_tolerated() {
        let d = temp_dir("jsonc");
        fs::write(d.join("doc.json"), b"// hi\n{\"n\": 3,}").unwrap();
        assert_eq!(
            Store::new(&d).load::<Doc>("doc.json").unwrap(),
            Doc { n: 3 }
        );
    }

    #[test]
    fn failed_closure_writes_nothing() {
        let d = temp_dir("fail");
        let s = Store::new(&d);
        let r: Result<(), StoreError> = s.update("doc.json", |_: &mut Doc| {
            Err(StoreError::invalid("doc.json", "no"))
        });
        assert!(r.is_err());
        assert!(!d.join("doc.json").exists());
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed() {
        let d = temp_dir("clean");
        fs::write(d.join(".doc.json.tmp.999999999.0"), b"x").unwrap();
        fs::write(d.join("keep.json"), b"{}").unwrap();
        assert_eq!(Store::new(&d).clean_temp_files(), 1);
        assert!(d.join("keep.json").exists());
    }

    #[test]
    fn group_commit_shares_writes_and_a_failed_change_is_dropped() {
        let d = temp_dir("group");
        let s = std::sync::Arc::new(Store::new(&d));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for n in 0..50 {
                        let r = s.update("doc.json", |d: &mut Doc| {
                            d.n += 1;
                            if (i + n) % 7 == 0 {
                                // A change that fails leaves nothing behind.
                                d.n += 1000;
                                return Err(StoreError::invalid("doc.json", "refused"));
                            }
                            Ok(())
                        });
                        assert_eq!(r.is_err(), (i + n) % 7 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let refused = (0..8)
            .flat_map(|i| (0..50).map(move |n| (i + n) % 7 == 0))
            .filter(|x| *x)
            .count();
        assert_eq!(
            s.load::<Doc>("doc.json").unwrap().n as usize,
            8 * 50 - refused
        );
        // The session is closed: another handle (as another process would) can write at once.
        Store::new(&d)
            .update("doc.json", |d: &mut Doc| {
                d.n = 1;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(s.load::<Doc>("doc.json").unwrap().n, 1);
    }

    #[test]
    fn a_failed_write_is_reported_and_the_file_reread() {
        let d = temp_dir("wfail");
        let s = Store::new(&d);
        s.update("doc.json", |d: &mut Doc| {
            d.n = 7;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        // A directory where the temp file would go makes the write fail.
        let blocker = d.join(format!(
            ".doc.json{TEMP_MARKER}{}.{}",
            std::process::id(),
            1
        ));
        fs::create_dir_all(&blocker).unwrap();
        let mut failures = 0;
        for _ in 0..3 {
            let r = s.update("doc.json", |d: &mut Doc| {
                d.n += 1;
                Ok::<_, StoreError>(())
            });
            if let Err(e) = r {
                assert!(matches!(e.kind, StoreErrorKind::Write(_)), "{e}");
                failures += 1;
            }
        }
        fs::remove_dir_all(&blocker).unwrap();
        let n = s.load::<Doc>("doc.json").unwrap().n;
        assert_eq!(
            n as usize,
            7 + 3 - failures,
            "failed changes are not on disk"
        );
    }

    #[test]
    fn parallel_updates_lose_nothing() {
        let d = temp_dir("parallel");
        let s = std::sync::Arc::new(Store::new(&d));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        s.update("doc.json", |d: &mut Doc| {
                            d.n += 1;
                            Ok::<_, StoreError>(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.load::<Doc>("doc.json").unwrap().n, 100);
    }
}
