//! Schedules: jobs that send a prompt to OpenCode on an interval or a cron expression, and the
//! runs they produce (contract §12, reference §11).
//!
//! * State: `schedules.json` in the state dir, `{"jobs":[…],"runs":[…],"nextJobId":n,
//!   "nextRunId":n}`, always through [`Store::update`] (locked read-modify-write). No network
//!   I/O happens while that lock is held.
//! * [`Schedules`] is the service the route arms call (one method per route, each returning
//!   the reference's JSON shape); [`start`] spawns the scheduler thread.
//! * Invariants: at most one run per job is `running` (a persisted `running` run and an
//!   in-memory map of runs in flight are both checked); at most
//!   [`MAX_FINISHED_RUNS_PER_JOB`] finished runs are kept per job; a disabled job has
//!   `nextRunAt: null`.
//!
//! Modules: [`cron`] (expressions, time zones, DST), [`model`] (shapes, validation),
//! `service` (store operations), `runner` (scheduler thread and the run flow against OpenCode).

pub mod cron;
pub mod model;
mod runner;
mod service;

pub use runner::{start, SchedulerHandle};
pub use service::{Schedules, SchedulesDeps, Timing};

use crate::error::Detail;
use crate::store::StoreError;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};

/// The state file of this domain.
pub const FILE: &str = "schedules.json";
/// Jobs over all repos; a create beyond this answers 409.
pub const MAX_JOBS: usize = 500;
/// Finished runs kept per job; older ones are pruned when a run finishes.
pub const MAX_FINISHED_RUNS_PER_JOB: usize = 100;
/// `limit` of the run lists when absent.
pub const DEFAULT_RUN_LIST_LIMIT: usize = 20;
/// Larger `limit` values are clamped to this.
pub const MAX_RUN_LIST_LIMIT: usize = 100;

/// Why a schedule operation failed; [`crate::error::ApiError`] has the `From` that decides
/// the HTTP status (400 / 404 / 409 / 502 / 500).
#[derive(Debug)]
pub enum ScheduleError {
    /// 400 `{"error": …}`: `Missing <label>`, `Invalid <label>`, `Limit must be greater than 0`.
    BadRequest(String),
    /// 400 `{"error": …, "details": […]}`: body validation, malformed JSON, cron, time zone.
    Validation {
        error: &'static str,
        details: Vec<Detail>,
    },
    /// 404 `Repo not found` / `Schedule not found` / `Run not found`.
    NotFound(&'static str),
    /// 409, e.g. `Schedule is already running`.
    Conflict(String),
    /// 502: OpenCode failed (session creation, model resolution, abort).
    BadGateway {
        error: String,
        detail: Option<String>,
    },
    /// 500: `schedules.json` or `repos.json` could not be read or written.
    Store(StoreError),
}

impl From<StoreError> for ScheduleError {
    fn from(e: StoreError) -> Self {
        ScheduleError::Store(e)
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::BadRequest(m) | ScheduleError::Conflict(m) => f.write_str(m),
            ScheduleError::Validation { error, details } => {
                write!(f, "{error}")?;
                for d in details {
                    write!(f, "; {}", d.message)?;
                }
                Ok(())
            }
            ScheduleError::NotFound(m) => f.write_str(m),
            ScheduleError::BadGateway { error, detail } => match detail {
                Some(d) => write!(f, "{error}: {d}"),
                None => f.write_str(error),
            },
            ScheduleError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ScheduleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScheduleError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl ScheduleError {
    pub(crate) fn invalid_body(details: Vec<Detail>) -> Self {
        ScheduleError::Validation {
            error: "Invalid request body",
            details,
        }
    }
}

/// What the schedules domain needs to know about a repo. Repo 0 (the Assistant workspace) is
/// handled by [`Schedules`] itself and never asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoInfo {
    pub id: i64,
    /// Display name (`repoName` in `/all` lists).
    pub name: String,
    /// `localPath` (`repoPath` in `/all` lists); empty when unknown.
    pub local_path: String,
    /// `repoUrl`, empty when unknown.
    pub repo_url: String,
    /// Absolute directory runs execute in (`fullPath`: `sourcePath`, else
    /// `<repos_root>/<localPath>`).
    pub dir: PathBuf,
}

/// Finds repos by id (the app implements this over `repos.json`).
pub trait RepoLookup: Send + Sync {
    /// `Ok(None)` when no repo has this id.
    fn repo(&self, id: i64) -> Result<Option<RepoInfo>, StoreError>;
}

/// Wall-clock time in ms since the epoch, injectable for tests.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::util::now_ms()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A strict decimal id: ASCII digits only (no sign, `0x`, fraction or spaces), fitting `i64`.
/// Missing or empty → `Missing <label>`; anything else that is not such a number →
/// `Invalid <label>`. Labels are `repo id`, `schedule id`, `run id`.
pub fn parse_id(label: &str, raw: Option<&str>) -> Result<i64, ScheduleError> {
    let raw = match raw {
        None | Some("") => return Err(ScheduleError::BadRequest(format!("Missing {label}"))),
        Some(r) => r,
    };
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScheduleError::BadRequest(format!("Invalid {label}")));
    }
    raw.parse::<i64>()
        .map_err(|_| ScheduleError::BadRequest(format!("Invalid {label}")))
}

/// The `limit` query of run lists: absent → [`DEFAULT_RUN_LIST_LIMIT`]; empty → `Missing
/// limit`; not a strict decimal → `Invalid limit`; `0` → `Limit must be greater than 0`;
/// above [`MAX_RUN_LIST_LIMIT`] → clamped.
pub fn parse_limit(raw: Option<&str>) -> Result<usize, ScheduleError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_RUN_LIST_LIMIT);
    };
    let n = parse_id("limit", Some(raw))?;
    if n < 1 {
        return Err(ScheduleError::BadRequest(
            "Limit must be greater than 0".into(),
        ));
    }
    Ok((n as u64).min(MAX_RUN_LIST_LIMIT as u64) as usize)
}

/// Parses a request body for the create and update routes. Malformed JSON (including an
/// empty body) is a 400 `Invalid JSON` with a detail saying where it broke.
pub fn parse_body(bytes: &[u8]) -> Result<serde_json::Value, ScheduleError> {
    serde_json::from_slice(bytes).map_err(|e| ScheduleError::Validation {
        error: "Invalid JSON",
        details: vec![Detail::new(
            Vec::new(),
            "invalid_format",
            format!("Malformed JSON: {e}"),
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(r: Result<impl fmt::Debug, ScheduleError>) -> String {
        match r {
            Err(ScheduleError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_strict_decimals() {
        assert_eq!(parse_id("schedule id", Some("12")).unwrap(), 12);
        assert_eq!(parse_id("schedule id", Some("0")).unwrap(), 0);
        assert_eq!(parse_id("schedule id", Some("007")).unwrap(), 7);
        assert_eq!(
            parse_id("repo id", Some("9223372036854775807")).unwrap(),
            i64::MAX
        );
        assert_eq!(bad(parse_id("repo id", None)), "Missing repo id");
        assert_eq!(bad(parse_id("run id", Some(""))), "Missing run id");
        for raw in [
            "12abc",
            "-3",
            "+3",
            "1.9",
            "1e3",
            "0x10",
            " 1",
            "1 ",
            "١",
            "9223372036854775808",
            "99999999999999999999999",
        ] {
            assert_eq!(
                bad(parse_id("schedule id", Some(raw))),
                "Invalid schedule id",
                "{raw:?}"
            );
        }
    }

    #[test]
    fn limit_rules() {
        assert_eq!(parse_limit(None).unwrap(), 20);
        assert_eq!(parse_limit(Some("1")).unwrap(), 1);
        assert_eq!(parse_limit(Some("100")).unwrap(), 100);
        assert_eq!(parse_limit(Some("101")).unwrap(), 100);
        assert_eq!(parse_limit(Some("5000000")).unwrap(), 100);
        assert_eq!(bad(parse_limit(Some(""))), "Missing limit");
        assert_eq!(bad(parse_limit(Some("abc"))), "Invalid limit");
        assert_eq!(bad(parse_limit(Some("-1"))), "Invalid limit");
        assert_eq!(bad(parse_limit(Some("2.5"))), "Invalid limit");
        assert_eq!(bad(parse_limit(Some("0"))), "Limit must be greater than 0");
    }

    #[test]
    fn malformed_json_is_400_with_details() {
        match parse_body(b"{\"name\": ") {
            Err(ScheduleError::Validation { error, details }) => {
                assert_eq!(error, "Invalid JSON");
                assert_eq!(details.len(), 1);
                assert!(details[0].message.starts_with("Malformed JSON"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_body(b"").is_err());
        assert_eq!(parse_body(b"{}").unwrap(), serde_json::json!({}));
    }
}
