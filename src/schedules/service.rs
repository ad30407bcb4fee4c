//! The schedule service: one method per route, each a few store operations. Runs are started
//! and finished in `runner`; this file owns the CRUD side and the shared state both use.

use super::model::{
    self, apply_patch, new_job, run_summary, Job, Run, RunStatus, ScheduleFile, TriggerSource,
};
use super::runner::{EventHub, Wake};
use super::{
    parse_id, parse_limit, Clock, RepoInfo, RepoLookup, ScheduleError, FILE,
    MAX_FINISHED_RUNS_PER_JOB, MAX_JOBS,
};
use crate::opencode;
use crate::store::Store;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Name, `localPath` and URL reported for repo 0 (the Assistant workspace).
pub const ASSISTANT_REPO_NAME: &str = "Assistant";
pub const ASSISTANT_REPO_PATH: &str = "assistant";

/// What the service needs from the app.
pub struct SchedulesDeps {
    /// The state dir (`schedules.json` lives there).
    pub store: Arc<Store>,
    /// The OpenCode server the runs go to.
    pub opencode: opencode::Client,
    /// Repos other than 0.
    pub repos: Arc<dyn RepoLookup>,
    /// Absolute workspace dir: repo 0's directory.
    pub workspace: PathBuf,
    /// `Arc::new(SystemClock)` outside tests.
    pub clock: Arc<dyn super::Clock>,
}

/// Waits and bounds of the runner. [`Timing::default`] is what the server uses.
#[derive(Debug, Clone)]
pub struct Timing {
    /// A running run re-checks OpenCode at least this often (events wake it sooner).
    pub poll: Duration,
    /// A session that is idle without a finished assistant message is given this long
    /// (the prompt may not have reached the model yet) before the run fails.
    pub stall_grace: Duration,
    /// A run still going after this long is aborted and fails.
    pub max_run: Duration,
    /// A run whose OpenCode checks fail for this long in a row fails.
    pub upstream_down_max: Duration,
    /// The scheduler re-reads the state at least this often, even when nothing is due
    /// (catches hand edits and wall-clock jumps; not a busy poll).
    pub max_sleep: Duration,
}

/// 6 hours: the longest a scheduled prompt may run.
pub const MAX_RUN_DURATION: Duration = Duration::from_secs(6 * 60 * 60);

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_secs(2),
            stall_grace: Duration::from_secs(15),
            max_run: MAX_RUN_DURATION,
            upstream_down_max: Duration::from_secs(15 * 60),
            max_sleep: Duration::from_secs(60),
        }
    }
}

/// The schedules service. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct Schedules {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub store: Arc<Store>,
    pub oc: opencode::Client,
    pub repos: Arc<dyn RepoLookup>,
    pub workspace: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub timing: Timing,
    /// Job id → id of its run in flight in this process.
    pub active: Mutex<HashMap<i64, i64>>,
    /// Runs a cancel request is finishing; their monitor keeps its hands off.
    pub cancelling: Mutex<HashSet<i64>>,
    /// Wakes the scheduler thread.
    pub wake: Wake,
    /// Session events from OpenCode, for runs waiting on them.
    pub hub: EventHub,
    /// Set by `SchedulerHandle::shutdown`: background threads stop and leave runs as they are.
    pub shutdown: AtomicBool,
}

/// Locks a mutex, recovering from poisoning (the data are plain maps and stay consistent).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn find_job(f: &ScheduleFile, repo_id: i64, job_id: i64) -> Result<&Job, ScheduleError> {
    f.jobs
        .iter()
        .find(|j| j.id == job_id && j.repo_id == repo_id)
        .ok_or(ScheduleError::NotFound("Schedule not found"))
}

fn find_run(f: &ScheduleFile, job_id: i64, run_id: i64) -> Result<&Run, ScheduleError> {
    f.runs
        .iter()
        .find(|r| r.id == run_id && r.job_id == job_id)
        .ok_or(ScheduleError::NotFound("Run not found"))
}

/// Newest first: `startedAt` descending, then id descending.
fn newest_first(runs: &mut [&Run]) {
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
}

/// Drops the oldest finished runs of `job_id` beyond [`MAX_FINISHED_RUNS_PER_JOB`].
pub(super) fn prune_runs(f: &mut ScheduleFile, job_id: i64) -> usize {
    let mut finished: Vec<(i64, i64)> = f
        .runs
        .iter()
        .filter(|r| r.job_id == job_id && r.status != RunStatus::Running)
        .map(|r| (r.started_at, r.id))
        .collect();
    if finished.len() <= MAX_FINISHED_RUNS_PER_JOB {
        return 0;
    }
    finished.sort_unstable_by(|a, b| b.cmp(a));
    let drop: HashSet<i64> = finished[MAX_FINISHED_RUNS_PER_JOB..]
        .iter()
        .map(|(_, id)| *id)
        .collect();
    let before = f.runs.len();
    f.runs.retain(|r| !drop.contains(&r.id));
    before - f.runs.len()
}

/// A new `running` run of `job`, appended to the file.
pub(super) fn push_run(f: &mut ScheduleFile, job: &Job, trigger: TriggerSource, now: i64) -> Run {
    let run = Run {
        id: f.take_run_id(),
        job_id: job.id,
        repo_id: job.repo_id,
        trigger_source: trigger,
        status: RunStatus::Running,
        started_at: now,
        finished_at: None,
        created_at: now,
        session_id: None,
        session_title: None,
        log_text: None,
        response_text: None,
        error_text: None,
        run_branch: None,
        commit_hash: None,
        worktree_path: None,
        workspace_id: None,
    };
    f.runs.push(run.clone());
    run
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Our types serialise infallibly (string keys, no non-finite floats).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// First value of a query key, as the reference's `c.req.query(key)` reads it.
fn query<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Schedules {
    /// A service with the default [`Timing`]. Nothing runs in the background until
    /// [`super::start`] is called (manual runs work without it).
    pub fn new(deps: SchedulesDeps) -> Self {
        Self::with_timing(deps, Timing::default())
    }

    pub fn with_timing(deps: SchedulesDeps, timing: Timing) -> Self {
        Schedules {
            inner: Arc::new(Inner {
                store: deps.store,
                oc: deps.opencode,
                repos: deps.repos,
                workspace: deps.workspace,
                clock: deps.clock,
                timing,
                active: Mutex::new(HashMap::new()),
                cancelling: Mutex::new(HashSet::new()),
                wake: Wake::default(),
                hub: EventHub::default(),
                shutdown: AtomicBool::new(false),
            }),
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub(super) fn load(&self) -> Result<ScheduleFile, ScheduleError> {
        Ok(self.inner.store.load(FILE)?)
    }

    /// Wakes the scheduler thread (it re-reads the jobs). The service calls this itself after
    /// every create, update and delete.
    pub fn notify_changed(&self) {
        self.inner.wake.notify();
    }

    /// Repo 0 is the workspace; others come from the lookup. Unknown → 404 `Repo not found`.
    pub fn repo(&self, id: i64) -> Result<RepoInfo, ScheduleError> {
        if id == 0 {
            return Ok(RepoInfo {
                id: 0,
                name: ASSISTANT_REPO_NAME.into(),
                local_path: ASSISTANT_REPO_PATH.into(),
                repo_url: String::new(),
                dir: self.inner.workspace.clone(),
            });
        }
        self.inner
            .repos
            .repo(id)?
            .ok_or(ScheduleError::NotFound("Repo not found"))
    }

    /// `GET …/schedules` → `{"jobs":[Job…]}`, newest first.
    pub fn list_jobs(&self, repo_id: i64) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let f = self.load()?;
        let mut jobs: Vec<&Job> = f.jobs.iter().filter(|j| j.repo_id == repo_id).collect();
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(json!({ "jobs": jobs }))
    }

    /// `POST …/schedules` → `(201, {"job":Job})`.
    pub fn create_job(&self, repo_id: i64, body: &Value) -> Result<(u16, Value), ScheduleError> {
        self.repo(repo_id)?;
        let input = model::validate_create(body).map_err(ScheduleError::invalid_body)?;
        let now = self.now();
        let draft = new_job(0, repo_id, input, now).map_err(ScheduleError::invalid_body)?;
        let job = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            if f.jobs.len() >= MAX_JOBS {
                return Err(ScheduleError::Conflict(format!(
                    "Too many schedules (at most {MAX_JOBS})"
                )));
            }
            let job = Job {
                id: f.take_job_id(),
                ..draft
            };
            f.jobs.push(job.clone());
            Ok(job)
        })?;
        self.notify_changed();
        Ok((201, json!({ "job": job })))
    }

    /// `GET …/schedules/:jobId` → `{"job":Job}`.
    pub fn get_job(&self, repo_id: i64, job_id: i64) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let f = self.load()?;
        Ok(json!({ "job": find_job(&f, repo_id, job_id)? }))
    }

    /// `PATCH …/schedules/:jobId` → `{"job":Job}`.
    pub fn update_job(
        &self,
        repo_id: i64,
        job_id: i64,
        body: &Value,
    ) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let patch = model::validate_update(body).map_err(ScheduleError::invalid_body)?;
        let now = self.now();
        let job = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let job = f
                .jobs
                .iter_mut()
                .find(|j| j.id == job_id && j.repo_id == repo_id)
                .ok_or(ScheduleError::NotFound("Schedule not found"))?;
            *job = apply_patch(job, patch, now).map_err(ScheduleError::invalid_body)?;
            Ok::<_, ScheduleError>(job.clone())
        })?;
        self.notify_changed();
        Ok(json!({ "job": job }))
    }

    /// `DELETE …/schedules/:jobId` → `{"success":true}`; its runs go too. 409 while running.
    pub fn delete_job(&self, repo_id: i64, job_id: i64) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let busy = || {
            ScheduleError::Conflict(
                "Cannot delete a schedule while it is running. Cancel the run first.".into(),
            )
        };
        // Held across the update so a run cannot be claimed in between.
        let active = lock(&self.inner.active);
        let in_flight = active.contains_key(&job_id);
        self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            find_job(f, repo_id, job_id)?;
            if in_flight || f.running_run(job_id).is_some() {
                return Err(busy());
            }
            f.jobs.retain(|j| j.id != job_id);
            f.runs.retain(|r| r.job_id != job_id);
            Ok(())
        })?;
        drop(active);
        self.notify_changed();
        Ok(json!({ "success": true }))
    }

    /// `GET …/schedules/:jobId/runs?limit=` → `{"runs":[Run…]}` newest first, without
    /// `logText`/`responseText`.
    pub fn list_runs(
        &self,
        repo_id: i64,
        job_id: i64,
        limit: Option<&str>,
    ) -> Result<Value, ScheduleError> {
        let limit = parse_limit(limit)?;
        self.repo(repo_id)?;
        let f = self.load()?;
        find_job(&f, repo_id, job_id)?;
        let mut runs: Vec<&Run> = f.runs.iter().filter(|r| r.job_id == job_id).collect();
        newest_first(&mut runs);
        let runs: Vec<Run> = runs.into_iter().take(limit).map(run_summary).collect();
        Ok(json!({ "runs": runs }))
    }

    /// `GET …/schedules/:jobId/runs/:runId` → `{"run":Run}` with logs and response.
    pub fn get_run(&self, repo_id: i64, job_id: i64, run_id: i64) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let f = self.load()?;
        find_job(&f, repo_id, job_id)?;
        Ok(json!({ "run": find_run(&f, job_id, run_id)? }))
    }

    /// `DELETE …/schedules/:jobId/runs` → `{"cleared":n}`: every run that is not running.
    pub fn clear_runs(&self, repo_id: i64, job_id: i64) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        let n = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            find_job(f, repo_id, job_id)?;
            let before = f.runs.len();
            f.runs
                .retain(|r| r.job_id != job_id || r.status == RunStatus::Running);
            Ok::<_, ScheduleError>(before - f.runs.len())
        })?;
        Ok(json!({ "cleared": n }))
    }

    /// `DELETE …/schedules/:jobId/runs/:runId` → `{"success":true}`; 409 while running.
    pub fn delete_run(
        &self,
        repo_id: i64,
        job_id: i64,
        run_id: i64,
    ) -> Result<Value, ScheduleError> {
        self.repo(repo_id)?;
        self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            find_job(f, repo_id, job_id)?;
            if find_run(f, job_id, run_id)?.status == RunStatus::Running {
                return Err(ScheduleError::Conflict(
                    "Cannot delete a run while it is in progress. Cancel it first.".into(),
                ));
            }
            f.runs.retain(|r| r.id != run_id);
            Ok(())
        })?;
        Ok(json!({ "success": true }))
    }

    /// Repo facts for `/all` lists; a repo that is gone shows empty strings.
    fn repo_facts(
        &self,
        ids: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, RepoInfo>, ScheduleError> {
        let mut out = HashMap::new();
        for id in ids {
            if out.contains_key(&id) {
                continue;
            }
            match self.repo(id) {
                Ok(r) => {
                    out.insert(id, r);
                }
                Err(ScheduleError::NotFound(_)) => {
                    out.insert(
                        id,
                        RepoInfo {
                            id,
                            name: String::new(),
                            local_path: String::new(),
                            repo_url: String::new(),
                            dir: PathBuf::new(),
                        },
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `GET /api/internal/schedules/all` → `{"jobs":[Job + repoName, repoPath, repoUrl]}`,
    /// ordered by `repoPath`, then name.
    pub fn all_jobs(&self) -> Result<Value, ScheduleError> {
        let f = self.load()?;
        let repos = self.repo_facts(f.jobs.iter().map(|j| j.repo_id))?;
        let mut jobs: Vec<(&Job, &RepoInfo)> = f
            .jobs
            .iter()
            .filter_map(|j| repos.get(&j.repo_id).map(|r| (j, r)))
            .collect();
        jobs.sort_by(|(a, ra), (b, rb)| {
            ra.local_path
                .cmp(&rb.local_path)
                .then(a.name.cmp(&b.name))
                .then(a.id.cmp(&b.id))
        });
        let jobs: Vec<Value> = jobs
            .into_iter()
            .map(|(j, r)| {
                let mut m = match to_value(j) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                m.insert("repoName".into(), r.name.clone().into());
                m.insert("repoPath".into(), r.local_path.clone().into());
                m.insert("repoUrl".into(), r.repo_url.clone().into());
                Value::Object(m)
            })
            .collect();
        Ok(json!({ "jobs": jobs }))
    }

    /// `GET /api/internal/schedules/all/runs` → `{"runs":[Run + jobName, repoName,
    /// repoPath]}` newest first. Query (first value of each key wins): `limit` (as the run
    /// list), `offset` (strict decimal, default 0), `status`, `triggerSource` (exact match;
    /// empty = no filter), `repoId`, `jobId` (strict decimal ids; empty = no filter).
    pub fn all_runs(&self, query_pairs: &[(String, String)]) -> Result<Value, ScheduleError> {
        let limit = parse_limit(query(query_pairs, "limit"))?;
        let offset = match query(query_pairs, "offset") {
            None | Some("") => 0,
            Some(raw) => parse_id("offset", Some(raw))? as usize,
        };
        let id_filter = |key: &str, label: &str| match query(query_pairs, key) {
            None | Some("") => Ok(None),
            Some(raw) => parse_id(label, Some(raw)).map(Some),
        };
        let repo_filter = id_filter("repoId", "repo id")?;
        let job_filter = id_filter("jobId", "schedule id")?;
        let text_filter = |key: &str| query(query_pairs, key).filter(|s| !s.is_empty());
        let status = text_filter("status");
        let trigger = text_filter("triggerSource");

        let f = self.load()?;
        let mut runs: Vec<&Run> = f
            .runs
            .iter()
            .filter(|r| repo_filter.is_none_or(|id| r.repo_id == id))
            .filter(|r| job_filter.is_none_or(|id| r.job_id == id))
            .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
            .filter(|r| trigger.is_none_or(|t| r.trigger_source.as_str() == t))
            .collect();
        newest_first(&mut runs);
        let page: Vec<&Run> = runs.into_iter().skip(offset).take(limit).collect();
        let repos = self.repo_facts(page.iter().map(|r| r.repo_id))?;
        let names: HashMap<i64, &str> = f.jobs.iter().map(|j| (j.id, j.name.as_str())).collect();
        let runs: Vec<Value> = page
            .into_iter()
            .map(|r| {
                let mut m = match to_value(&run_summary(r)) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                let repo = repos.get(&r.repo_id);
                m.insert(
                    "jobName".into(),
                    names.get(&r.job_id).copied().unwrap_or("").into(),
                );
                m.insert(
                    "repoName".into(),
                    repo.map(|x| x.name.clone()).unwrap_or_default().into(),
                );
                m.insert(
                    "repoPath".into(),
                    repo.map(|x| x.local_path.clone())
                        .unwrap_or_default()
                        .into(),
                );
                Value::Object(m)
            })
            .collect();
        Ok(json!({ "runs": runs }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{ManualClock, SystemClock};
    use super::*;
    use crate::store::StoreError;

    pub struct Repos(pub Vec<RepoInfo>);

    impl RepoLookup for Repos {
        fn repo(&self, id: i64) -> Result<Option<RepoInfo>, StoreError> {
            Ok(self.0.iter().find(|r| r.id == id).cloned())
        }
    }

    pub fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("assistantd-sched-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn service(name: &str, clock: Arc<dyn Clock>) -> Schedules {
        let d = temp_dir(name);
        let repo = RepoInfo {
            id: 3,
            name: "Web".into(),
            local_path: "web".into(),
            repo_url: "https://example.com/web.git".into(),
            dir: d.join("repos/web"),
        };
        Schedules::new(SchedulesDeps {
            store: Arc::new(Store::new(&d)),
            // Port 9 is closed: any run fails fast at session creation.
            opencode: opencode::Client::new("http://127.0.0.1:9", "opencode", None),
            repos: Arc::new(Repos(vec![repo])),
            workspace: d.join("workspace"),
            clock,
        })
    }

    fn status_of(e: ScheduleError) -> u16 {
        crate::error::ApiError::from(e).status()
    }

    fn interval(name: &str) -> Value {
        json!({"name": name, "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10})
    }

    #[test]
    fn crud_shapes_and_errors() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let s = service("crud", clock.clone());
        assert_eq!(s.list_jobs(0).unwrap(), json!({"jobs": []}));
        assert_eq!(status_of(s.list_jobs(4).unwrap_err()), 404);

        let (st, a) = s.create_job(0, &interval("A")).unwrap();
        assert_eq!(st, 201);
        assert_eq!(a["job"]["id"], 1);
        assert_eq!(a["job"]["nextRunAt"], 1_000_000 + 600_000);
        clock.advance(10);
        let (_, b) = s.create_job(3, &interval("B")).unwrap();
        clock.advance(10);
        let (_, c) = s.create_job(0, &interval("C")).unwrap();
        let list = s.list_jobs(0).unwrap();
        let ids: Vec<i64> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [c["job"]["id"].as_i64().unwrap(), 1]);

        // A job is found only under its own repo.
        assert_eq!(s.get_job(0, 1).unwrap()["job"]["name"], "A");
        let e = s.get_job(3, 1).unwrap_err();
        assert_eq!(e.to_string(), "Schedule not found");
        assert_eq!(status_of(e), 404);

        let u = s
            .update_job(0, 1, &json!({"enabled": false, "name": "A2"}))
            .unwrap();
        assert_eq!(u["job"]["name"], "A2");
        assert_eq!(u["job"]["nextRunAt"], Value::Null);
        let e = s.update_job(0, 1, &json!({"name": " "})).unwrap_err();
        assert_eq!(status_of(e), 400);
        let e = s.create_job(0, &json!({"name": "x"})).unwrap_err();
        match &e {
            ScheduleError::Validation { error, details } => {
                assert_eq!(*error, "Invalid request body");
                assert!(!details.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let api = crate::error::ApiError::from(e);
        assert_eq!(api.status(), 400);
        assert!(api.body()["details"].is_array());

        let all = s.all_jobs().unwrap();
        let rows = all["jobs"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        // Ordered by repoPath ("assistant" < "web"), then name.
        assert_eq!(rows[0]["name"], "A2");
        assert_eq!(rows[0]["repoName"], "Assistant");
        assert_eq!(rows[0]["repoPath"], "assistant");
        assert_eq!(rows[0]["repoUrl"], "");
        assert_eq!(rows[2]["repoName"], "Web");
        assert_eq!(rows[2]["repoUrl"], "https://example.com/web.git");
        assert_eq!(rows[2]["id"], b["job"]["id"]);

        assert_eq!(s.delete_job(0, 1).unwrap(), json!({"success": true}));
        assert_eq!(status_of(s.delete_job(0, 1).unwrap_err()), 404);
        // Ids are never reused.
        let (_, d) = s.create_job(0, &interval("D")).unwrap();
        assert_eq!(d["job"]["id"], 4);
    }

    fn seed_runs(s: &Schedules, job_id: i64, n: usize, running: bool) {
        s.inner
            .store
            .update(FILE, |f: &mut ScheduleFile| {
                let job = f.jobs.iter().find(|j| j.id == job_id).unwrap().clone();
                for i in 0..n {
                    let mut r = push_run(f, &job, TriggerSource::Schedule, 1000 + i as i64);
                    r.status = RunStatus::Completed;
                    r.log_text = Some("log".into());
                    let last = f.runs.last_mut().unwrap();
                    *last = r;
                }
                if running {
                    push_run(f, &job, TriggerSource::Manual, 99_999);
                }
                Ok::<_, ScheduleError>(())
            })
            .unwrap();
    }

    #[test]
    fn run_lists_limits_and_deletes() {
        let s = service("runs", Arc::new(SystemClock));
        s.create_job(0, &interval("A")).unwrap();
        seed_runs(&s, 1, 30, true);
        let r = s.list_runs(0, 1, None).unwrap();
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 20);
        assert_eq!(runs[0]["status"], "running");
        assert!(runs[1]["logText"].is_null());
        assert_eq!(
            s.list_runs(0, 1, Some("500")).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            31
        );
        assert_eq!(status_of(s.list_runs(0, 1, Some("0")).unwrap_err()), 400);
        assert_eq!(status_of(s.list_runs(0, 2, Some("5")).unwrap_err()), 404);

        let full = s.get_run(0, 1, 1).unwrap();
        assert_eq!(full["run"]["logText"], "log");
        assert_eq!(
            s.get_run(0, 1, 999).unwrap_err().to_string(),
            "Run not found"
        );

        let running_id = 31;
        let e = s.delete_run(0, 1, running_id).unwrap_err();
        assert_eq!(status_of(e), 409);
        let e = s.delete_job(0, 1).unwrap_err();
        assert_eq!(status_of(e), 409);
        assert_eq!(s.delete_run(0, 1, 1).unwrap(), json!({"success": true}));
        assert_eq!(s.clear_runs(0, 1).unwrap(), json!({"cleared": 29}));
        assert_eq!(
            s.list_runs(0, 1, None).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let q = |pairs: &[(&str, &str)]| {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            s.all_runs(&v)
        };
        let all = q(&[]).unwrap();
        assert_eq!(all["runs"][0]["jobName"], "A");
        assert_eq!(all["runs"][0]["repoName"], "Assistant");
        assert!(all["runs"][0]["logText"].is_null());
        assert_eq!(
            q(&[("status", "completed")]).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            q(&[("status", "")]).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            q(&[("repoId", "0"), ("jobId", "1")]).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            q(&[("repoId", "3")]).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            q(&[("offset", "1")]).unwrap()["runs"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(status_of(q(&[("jobId", "x")]).unwrap_err()), 400);
        assert_eq!(status_of(q(&[("offset", "-1")]).unwrap_err()), 400);
        assert_eq!(status_of(q(&[("limit", "")]).unwrap_err()), 400);
    }

    #[test]
    fn finished_runs_are_pruned_to_the_cap() {
        let s = service("prune", Arc::new(SystemClock));
        s.create_job(0, &interval("A")).unwrap();
        seed_runs(&s, 1, MAX_FINISHED_RUNS_PER_JOB + 5, true);
        let removed = s
            .inner
            .store
            .update(FILE, |f: &mut ScheduleFile| {
                Ok::<_, ScheduleError>(prune_runs(f, 1))
            })
            .unwrap();
        assert_eq!(removed, 5);
        let f = s.load().unwrap();
        assert_eq!(f.runs.len(), MAX_FINISHED_RUNS_PER_JOB + 1);
        // The oldest went; the running one stayed.
        assert!(f.runs.iter().all(|r| r.id > 5));
        assert!(f.running_run(1).is_some());
    }
}
