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
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Holds a `flock`; released on drop (closing the file releases it).
struct LockGuard(#[allow(dead_code)] File); // kept only for its Drop

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
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
        let value = crate::util::parse_jsonc(&bytes).map_err(|e| StoreError {
            file: file.to_string(),
            kind: StoreErrorKind::Parse(e),
        })?;
        serde_json::from_value(value).map_err(|e| StoreError::invalid(file, e.to_string()))
    }

    /// Reads and decodes `file`; a missing file is `T::default()`.
    pub fn load<T: DeserializeOwned + Default>(&self, file: &str) -> Result<T, StoreError> {
        let _guard = self.lock_shared(file);
        let bytes = self.read_bytes(file)?;
        Self::decode(file, bytes)
    }

    /// Read-modify-write under the exclusive lock. `f` sees the current contents (default when
    /// missing); when it returns `Ok`, the new value is written durably before the lock is
    /// released. When it returns `Err`, or the file is bad, nothing is written.
    pub fn update<T, R, E>(
        &self,
        file: &str,
        f: impl FnOnce(&mut T) -> Result<R, E>,
    ) -> Result<R, E>
    where
        T: Serialize + DeserializeOwned + Default,
        E: From<StoreError>,
    {
        let _guard = self.lock_exclusive(file)?;
        let current = self.read_bytes(file)?;
        let mut value: T = Self::decode(file, current.clone())?;
        let out = f(&mut value)?;
        let mut bytes = serde_json::to_vec_pretty(&value)
            .map_err(|e| StoreError::invalid(file, e.to_string()))?;
        bytes.push(b'\n');
        if current.as_deref() == Some(&bytes[..]) {
            // Nothing changed: no write, no fsync, no new file version.
            return Ok(out);
        }
        write_atomic(&self.path(file), &bytes, STATE_FILE_MODE).map_err(|e| StoreError {
            file: file.to_string(),
            kind: StoreErrorKind::Write(e),
        })?;
        Ok(out)
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

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
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
