//! The scheduler thread and the run flow against OpenCode (reference §11.4–11.5).
//!
//! * The scheduler thread sleeps on a condvar until the earliest `nextRunAt` (at most
//!   `Timing::max_sleep`), and is woken at once by any create, update or delete. When jobs are
//!   due it claims them in one store update: it moves `nextRunAt` to the next slot first (so an
//!   overdue job fires once, not once per missed slot), and inserts a `running` run unless the
//!   job already has one (then the slot is skipped, like croner's `protect`).
//! * A run: resolve the model (`/config`, `/config/providers`), `POST /session` with the
//!   permission ruleset, store the session, then in the background load skills,
//!   `prompt_async`, and wait for the answer: `/session/status` plus the last messages, polled
//!   every `Timing::poll` and re-checked at once when `/global/event` reports the session idle
//!   or failed. Every wait is bounded (`Timing::max_run`, `Timing::upstream_down_max`).
//! * No store lock is held during network I/O: each step is its own short update, and the
//!   finishing update only touches a run that is still `running`.
//! * Restart: at start, runs left `running` are recovered (finished from OpenCode's answer,
//!   monitored again while the session is busy, or failed with the reference's texts).

use super::model::{
    next_after_fire, PermissionConfig, Run, RunStatus, ScheduleFile, ScheduleSpec, SkillMetadata,
    TriggerSource, DEFAULT_BASH_DENY_PATTERNS,
};
use super::service::{lock, prune_runs, push_run, Schedules};
use super::{RepoInfo, ScheduleError, FILE};
use crate::opencode::{OpencodeError, MESSAGE_TAIL};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Texts of the reference, verbatim.
pub const STOPPED_WITHOUT_RESPONSE: &str = "The session stopped without producing an assistant response. This usually means OpenCode restarted mid-run or the session was interrupted. Open the linked session to inspect any partial output and rerun if needed.";
pub const INTERRUPTED_NO_SESSION: &str =
    "This run was interrupted before completion and had no linked session to recover.";
pub const INTERRUPTED_RESTART: &str = "This run was interrupted before completion, likely because OpenCode Manager restarted while it was in progress. Open the linked session to inspect the partial output and rerun if needed.";
pub const CANCELLED_BY_USER: &str = "Run cancelled by user.";
pub const UNKNOWN_SESSION_ERROR: &str = "The session reported an unknown error.";
pub const NO_MODELS: &str = "No configured OpenCode models are available";
pub const SESSION_CREATE_FAILED: &str = "Failed to create OpenCode session";
pub const PROMPT_FAILED: &str = "Failed to run scheduled prompt";
pub const CANCEL_FAILED: &str = "Failed to cancel schedule run";
pub const SESSION_GONE: &str = "The OpenCode session of this run no longer exists.";
/// Longest `responseText` stored (bytes; a longer answer is cut and marked). The reference
/// keeps everything; here 100 runs × 500 jobs must stay a readable file.
pub const MAX_RESPONSE_TEXT: usize = 64 * 1024;
/// Longest `errorText` stored (bytes).
pub const MAX_ERROR_TEXT: usize = 4 * 1024;
const CLIPPED: &str = "\n[… truncated]";
/// How long `shutdown` waits for the scheduler thread (it may be inside one OpenCode call).
pub const SHUTDOWN_JOIN: Duration = Duration::from_secs(12);
/// Event-stream reconnect back-off bounds.
const EVENTS_BACKOFF_MIN: Duration = Duration::from_secs(1);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Shortest scheduler sleep, so a bug can never turn the loop into a spin.
const MIN_SLEEP: Duration = Duration::from_millis(10);

fn log(msg: impl AsRef<str>) {
    eprintln!("schedules: {}", msg.as_ref());
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as JavaScript's `toISOString`.
pub fn iso(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!(
            "{}.{:03}Z",
            t.strftime("%Y-%m-%dT%H:%M:%S"),
            ms.rem_euclid(1000)
        ),
        Err(_) => ms.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Wake-ups

/// The scheduler's doorbell.
#[derive(Default)]
pub(super) struct Wake {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *lock(&self.rung) = true;
        self.cv.notify_all();
    }

    /// Sleeps up to `timeout`, or until rung (a ring while awake is not lost).
    fn wait(&self, timeout: Duration) {
        let guard = lock(&self.rung);
        let (mut guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |rung| !*rung)
            .unwrap_or_else(|e| e.into_inner());
        *guard = false;
    }
}

#[derive(Default)]
struct Watch {
    generation: u64,
    error: Option<String>,
}

/// Sessions that runs are waiting on, and what `/global/event` said about them.
#[derive(Default)]
pub(super) struct EventHub {
    watched: Mutex<HashMap<String, Watch>>,
    cv: Condvar,
}

impl EventHub {
    fn watch(&self, session: &str) {
        lock(&self.watched).entry(session.to_string()).or_default();
        self.cv.notify_all();
    }

    fn unwatch(&self, session: &str) {
        lock(&self.watched).remove(session);
    }

    fn generation(&self, session: &str) -> u64 {
        lock(&self.watched).get(session).map_or(0, |w| w.generation)
    }

    fn error(&self, session: &str) -> Option<String> {
        lock(&self.watched)
            .get(session)
            .and_then(|w| w.error.clone())
    }

    fn is_idle(&self) -> bool {
        lock(&self.watched).is_empty()
    }

    /// Wakes everyone waiting on `session` (or everyone, for shutdown).
    fn poke(&self, session: Option<&str>) {
        let mut w = lock(&self.watched);
        match session {
            Some(s) => {
                if let Some(x) = w.get_mut(s) {
                    x.generation += 1;
                }
            }
            None => w.values_mut().for_each(|x| x.generation += 1),
        }
        drop(w);
        self.cv.notify_all();
    }

    /// Waits until `session`'s generation moves past `seen`, or `timeout`.
    fn wait(&self, session: &str, seen: u64, timeout: Duration) {
        let guard = lock(&self.watched);
        let _ = self
            .cv
            .wait_timeout_while(guard, timeout, |w| {
                w.get(session).is_some_and(|x| x.generation == seen)
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Sleeps `timeout`, cut short by shutdown (which pokes every waiter).
    fn sleep(&self, timeout: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.watched);
        while !stop.load(Ordering::SeqCst) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            guard = self
                .cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until some session is watched, or `timeout`.
    fn wait_for_watch(&self, timeout: Duration) {
        let guard = lock(&self.watched);
        let _ = self
            .cv
            .wait_timeout_while(guard, timeout, |w| w.is_empty())
            .unwrap_or_else(|e| e.into_inner());
    }

    fn on_event(&self, event: &Value) {
        let Some((session, error)) = classify_event(event) else {
            return;
        };
        let mut w = lock(&self.watched);
        let Some(x) = w.get_mut(&session) else {
            return;
        };
        x.generation += 1;
        if error.is_some() {
            x.error = error;
        }
        drop(w);
        self.cv.notify_all();
    }
}

/// The error text of an OpenCode error object: `data.message ?? name`.
fn error_text(err: &Value) -> Option<String> {
    err.pointer("/data/message")
        .and_then(Value::as_str)
        .or_else(|| err.get("name").and_then(Value::as_str))
        .map(str::to_string)
}

/// A `/global/event` frame that matters for a waiting run: the session id, and the error
/// text for `session.error`. Frames are `{directory, payload:{type, properties}}`; a bare
/// `{type, properties}` (the per-directory stream) is accepted too.
pub fn classify_event(event: &Value) -> Option<(String, Option<String>)> {
    let payload = event.get("payload").unwrap_or(event);
    let kind = payload.get("type")?.as_str()?;
    let props = payload.get("properties")?;
    let session = |v: &Value| {
        v.get("sessionID")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match kind {
        "session.idle" => Some((session(props)?, None)),
        "session.status" => {
            let idle = props.pointer("/status/type").and_then(Value::as_str) == Some("idle");
            idle.then(|| session(props)).flatten().map(|s| (s, None))
        }
        "session.error" => {
            let text = props
                .get("error")
                .and_then(error_text)
                .unwrap_or_else(|| UNKNOWN_SESSION_ERROR.to_string());
            Some((session(props)?, Some(text)))
        }
        "message.updated" => {
            let info = props.get("info")?;
            let done = info.get("role").and_then(Value::as_str) == Some("assistant")
                && info
                    .pointer("/time/completed")
                    .is_some_and(|v| !v.is_null());
            done.then(|| session(info)).flatten().map(|s| (s, None))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Pure pieces of the run flow

/// The model a run uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub provider_id: String,
    pub model_id: String,
}

/// Reference model resolution: the first of job model, `config.model`, `config.small_model`
/// (trimmed, deduplicated) that a provider offers; else the first `default` entry whose model
/// exists; else the first model of the first provider that has one.
pub fn pick_model(job_model: Option<&str>, config: &Value, providers: &Value) -> Option<ModelRef> {
    let list: Vec<&Value> = providers
        .get("providers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let has = |p: &str, m: &str| {
        list.iter().any(|x| {
            x.get("id").and_then(Value::as_str) == Some(p)
                && x.get("models").and_then(|ms| ms.get(m)).is_some()
        })
    };
    let mut candidates: Vec<String> = Vec::new();
    for c in [
        job_model,
        config.get("model").and_then(Value::as_str),
        config.get("small_model").and_then(Value::as_str),
    ]
    .into_iter()
    .flatten()
    {
        let c = c.trim().to_string();
        if !c.is_empty() && !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    for c in &candidates {
        if let Some((p, m)) = c.split_once('/') {
            if has(p, m) {
                return Some(ModelRef {
                    provider_id: p.into(),
                    model_id: m.into(),
                });
            }
        }
    }
    if let Some(defaults) = providers.get("default").and_then(Value::as_object) {
        for (p, m) in defaults {
            if let Some(m) = m.as_str() {
                if has(p, m) {
                    return Some(ModelRef {
                        provider_id: p.clone(),
                        model_id: m.into(),
                    });
                }
            }
        }
    }
    list.iter().find_map(|x| {
        let p = x.get("id")?.as_str()?;
        let m = x.get("models")?.as_object()?.keys().next()?;
        Some(ModelRef {
            provider_id: p.into(),
            model_id: m.clone(),
        })
    })
}

/// The session permission ruleset (ordered; OpenCode applies the last match).
pub fn permission_ruleset(cfg: Option<&PermissionConfig>) -> Value {
    let defaults = PermissionConfig {
        allow_external_directory: false,
        allow_questions: false,
        bash_deny_patterns: DEFAULT_BASH_DENY_PATTERNS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let cfg = cfg.unwrap_or(&defaults);
    let mut rules = vec![json!({"permission": "*", "pattern": "*", "action": "allow"})];
    if !cfg.allow_external_directory {
        rules.push(json!({"permission": "external_directory", "pattern": "*", "action": "deny"}));
    }
    if !cfg.allow_questions {
        rules.push(json!({"permission": "question", "pattern": "*", "action": "deny"}));
    }
    for p in &cfg.bash_deny_patterns {
        rules.push(json!({"permission": "bash", "pattern": p, "action": "deny"}));
    }
    Value::Array(rules)
}

fn skill_matches(name: &str, slug: &str) -> bool {
    name == slug || name.ends_with(&format!("/{slug}")) || name.ends_with(&format!("-{slug}"))
}

/// The prompt with skills appended (reference step 7). `skills` is the `/skill` answer, or
/// `None` when it could not be fetched.
pub fn build_prompt(prompt: &str, meta: Option<&SkillMetadata>, skills: Option<&Value>) -> String {
    let mut out = prompt.to_string();
    let Some(meta) = meta else {
        return out;
    };
    if !meta.skill_slugs.is_empty() {
        let found: Vec<(&str, &str)> = skills
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|s| {
                        let name = s.get("name")?.as_str()?;
                        let content = s.get("content").and_then(Value::as_str).unwrap_or("");
                        meta.skill_slugs
                            .iter()
                            .any(|slug| skill_matches(name, slug))
                            .then_some((name, content))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if found.is_empty() {
            out.push_str("\n\nFor this task, use the following skills: ");
            out.push_str(&meta.skill_slugs.join(", "));
        } else {
            out.push_str("\n\nThe following skills have been loaded for this task:");
            for (name, content) in found {
                out.push_str(&format!(
                    "\n\n<skill_content name=\"{name}\">\n{content}\n</skill_content>"
                ));
            }
        }
    }
    if let Some(notes) = meta
        .notes
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        out.push_str(&format!("\nSkill notes: {notes}"));
    }
    out
}

/// `text` cut to at most `max` bytes (on a char boundary), marked when cut.
pub fn clip(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(CLIPPED.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(CLIPPED);
    text
}

/// Removes `<think>…</think>` blocks (an unclosed one runs to the end).
fn strip_think(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text parts of a message without think blocks, trimmed, empties dropped, joined by a blank
/// line; `None` when nothing is left.
pub fn response_text(message: &Value) -> Option<String> {
    let parts: Vec<String> = message
        .get("parts")
        .and_then(Value::as_array)?
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .map(|t| strip_think(t).trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// Where the last assistant message of a session stands.
#[derive(Debug, Clone, PartialEq)]
pub enum AssistantState {
    /// No assistant message (yet).
    Missing,
    /// An assistant message that has not finished.
    Working,
    Completed {
        text: Option<String>,
    },
    Failed {
        error: String,
        text: Option<String>,
    },
}

/// Reads `GET /session/:id/message` (`[{info, parts}]`, oldest first).
pub fn assistant_state(messages: &Value) -> AssistantState {
    let Some(last) = messages.as_array().and_then(|a| {
        a.iter()
            .rev()
            .find(|m| m.pointer("/info/role").and_then(Value::as_str) == Some("assistant"))
    }) else {
        return AssistantState::Missing;
    };
    let text = response_text(last);
    if let Some(err) = last.pointer("/info/error").filter(|e| !e.is_null()) {
        return AssistantState::Failed {
            error: error_text(err).unwrap_or_else(|| UNKNOWN_SESSION_ERROR.to_string()),
            text,
        };
    }
    if last
        .pointer("/info/time/completed")
        .is_some_and(|v| !v.is_null())
    {
        return AssistantState::Completed { text };
    }
    AssistantState::Working
}

/// A short, safe message from an OpenCode error: its `data.message` when the body is
/// OpenCode's JSON error, else our own description.
fn upstream_message(e: &OpencodeError) -> Option<String> {
    match e {
        OpencodeError::Status { body, .. } => serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| error_text(&v)),
        _ => None,
    }
}

/// What one check of a session found.
enum Check {
    Busy,
    /// Idle, but no finished assistant message.
    Stalled,
    Done(Finish),
}

/// How a run ends.
#[derive(Debug, Clone)]
struct Finish {
    status: RunStatus,
    response: Option<String>,
    error: Option<String>,
}

impl Finish {
    fn failed(error: impl Into<String>) -> Self {
        Finish {
            status: RunStatus::Failed,
            response: None,
            error: Some(error.into()),
        }
    }

    fn from_state(state: AssistantState) -> Option<Self> {
        match state {
            AssistantState::Completed { text } => Some(Finish {
                status: RunStatus::Completed,
                response: text,
                error: None,
            }),
            AssistantState::Failed { error, text } => Some(Finish {
                status: RunStatus::Failed,
                response: text,
                error: Some(error),
            }),
            AssistantState::Missing | AssistantState::Working => None,
        }
    }
}

/// What a run needs to talk to OpenCode.
struct Claim {
    run: Run,
    repo: RepoInfo,
}

// ---------------------------------------------------------------------------------------------
// The run flow

impl Schedules {
    fn stopping(&self) -> bool {
        self.inner.shutdown.load(Ordering::SeqCst)
    }

    fn job_snapshot(&self, job_id: i64) -> Option<super::model::Job> {
        self.load()
            .ok()
            .and_then(|f| f.jobs.into_iter().find(|j| j.id == job_id))
    }

    /// The header lines both logs share.
    fn log_head(&self, run: &Run, when_label: &str, when: i64) -> Vec<String> {
        let job = self.job_snapshot(run.job_id);
        let name = job.as_ref().map_or("(deleted)", |j| j.name.as_str());
        let agent = job
            .as_ref()
            .and_then(|j| j.agent_slug.clone())
            .unwrap_or_else(|| "default".into());
        let schedule = job
            .as_ref()
            .map_or_else(|| "-".into(), |j| ScheduleSpec::of_job(j).describe());
        vec![
            format!("Job: {name}"),
            format!("Trigger: {}", run.trigger_source.as_str()),
            format!("{when_label}: {}", iso(when)),
            format!("Agent: {agent}"),
            format!("Schedule: {schedule}"),
        ]
    }

    /// Finishes a run that is still `running` (a run finished by someone else is left
    /// alone: `Ok(None)`), stamps the job's `lastRunAt`, prunes old runs, and clears the
    /// in-memory state of the run either way.
    fn finish(&self, run_id: i64, job_id: i64, end: Finish) -> Result<Option<Run>, ScheduleError> {
        let end = Finish {
            status: end.status,
            response: end.response.map(|t| clip(t, MAX_RESPONSE_TEXT)),
            error: end.error.map(|t| clip(t, MAX_ERROR_TEXT)),
        };
        let now = self.now();
        let probe = self.load()?.runs.into_iter().find(|r| r.id == run_id);
        // Built outside the lock (it reads the job); the run fields it uses do not change
        // while the run is running.
        let log_text = probe.as_ref().map(|run| {
            let mut lines = self.log_head(run, "Finished", now);
            if let Some(s) = &run.session_id {
                lines.push(format!("Session ID: {s}"));
            }
            if let Some(t) = &run.session_title {
                lines.push(format!("Session title: {t}"));
            }
            if let Some(e) = &end.error {
                lines.extend([String::new(), "Error:".into(), e.clone()]);
            }
            if let Some(r) = &end.response {
                lines.extend([String::new(), "Assistant output:".into(), r.clone()]);
            }
            lines.join("\n")
        });
        let result = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let Some(run) = f.runs.iter_mut().find(|r| r.id == run_id) else {
                return Ok(None);
            };
            if run.status != RunStatus::Running {
                return Ok(None);
            }
            run.status = end.status;
            run.finished_at = Some(now);
            run.response_text = end.response.clone();
            run.error_text = end.error.clone();
            run.log_text = log_text.clone();
            let done = run.clone();
            if let Some(job) = f.jobs.iter_mut().find(|j| j.id == job_id) {
                job.last_run_at = Some(now);
            }
            prune_runs(f, job_id);
            Ok::<_, ScheduleError>(Some(done))
        });
        let session = probe.and_then(|r| r.session_id);
        self.release(job_id, run_id, session.as_deref());
        match &result {
            Ok(Some(run)) => log(format!(
                "run {run_id} of job {job_id} {}",
                run.status.as_str()
            )),
            Ok(None) => {}
            // The run stays `running` on disk; the next start's recovery settles it.
            Err(e) => log(format!("run {run_id} could not be finished: {e}")),
        }
        result
    }

    /// Forgets a run in memory (only if the job's in-flight run is this one).
    fn release(&self, job_id: i64, run_id: i64, session: Option<&str>) {
        let mut active = lock(&self.inner.active);
        if active.get(&job_id) == Some(&run_id) {
            active.remove(&job_id);
        }
        drop(active);
        lock(&self.inner.cancelling).remove(&run_id);
        if let Some(s) = session {
            self.inner.hub.unwatch(s);
        }
    }

    /// `POST …/schedules/:jobId/run` → `{"run":Run}` once the OpenCode session exists; the
    /// prompt runs in the background. 409 when the job already has a run going.
    pub fn run_job(&self, repo_id: i64, job_id: i64) -> Result<Value, ScheduleError> {
        let repo = self.repo(repo_id)?;
        let now = self.now();
        let mut active = lock(&self.inner.active);
        let already = || ScheduleError::Conflict("Schedule is already running".into());
        if active.contains_key(&job_id) {
            return Err(already());
        }
        let run = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let job = f
                .jobs
                .iter()
                .find(|j| j.id == job_id && j.repo_id == repo_id)
                .ok_or(ScheduleError::NotFound("Schedule not found"))?
                .clone();
            if f.running_run(job_id).is_some() {
                return Err(already());
            }
            Ok(push_run(f, &job, TriggerSource::Manual, now))
        })?;
        active.insert(job_id, run.id);
        drop(active);
        let claim = Claim { run, repo };
        let (run, started) = self.open(&claim)?;
        if let Some((session, model)) = started {
            self.spawn_drive(claim, session, model);
        }
        Ok(json!({ "run": run }))
    }

    /// Model + session, stored on the run. On failure the run is marked failed and the error
    /// returned. `None` for the session when the run was cancelled meanwhile.
    #[allow(clippy::type_complexity)] // (run, optional (session, model)) reads fine here
    fn open(&self, claim: &Claim) -> Result<(Run, Option<(String, ModelRef)>), ScheduleError> {
        match self.open_inner(claim) {
            Ok(x) => Ok(x),
            Err(e) => {
                log(format!("run {} could not start: {e}", claim.run.id));
                let _ = self.finish(
                    claim.run.id,
                    claim.run.job_id,
                    Finish::failed(e.to_string()),
                );
                Err(e)
            }
        }
    }

    fn open_inner(
        &self,
        claim: &Claim,
    ) -> Result<(Run, Option<(String, ModelRef)>), ScheduleError> {
        let oc = &self.inner.oc;
        let dir = claim.repo.dir.as_path();
        let job = self
            .job_snapshot(claim.run.job_id)
            .ok_or(ScheduleError::NotFound("Schedule not found"))?;
        let model = self.resolve_model(dir, job.model.as_deref())?;
        let title = format!("Scheduled: {}", job.name);
        let mut body = json!({
            "title": title,
            "permission": permission_ruleset(job.permission_config.as_ref()),
        });
        if let Some(agent) = &job.agent_slug {
            body["agent"] = json!(agent);
        }
        let gateway = |detail: String| ScheduleError::BadGateway {
            error: SESSION_CREATE_FAILED.into(),
            detail: Some(detail),
        };
        let session = oc
            .create_session(dir, &body)
            .map_err(|e| gateway(e.to_string()))?;
        let session_id = session
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| gateway("OpenCode answered without a session id".into()))?
            .to_string();
        let mut lines = self.log_head(&claim.run, "Started", claim.run.started_at);
        lines.extend([
            format!("Session ID: {session_id}"),
            format!("Session title: {title}"),
            String::new(),
            "Run started. Waiting for assistant response...".into(),
        ]);
        let log_text = lines.join("\n");
        let stored = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let run = f
                .runs
                .iter_mut()
                .find(|r| r.id == claim.run.id)
                .ok_or(ScheduleError::NotFound("Run not found"))?;
            if run.status != RunStatus::Running {
                return Ok((run.clone(), false));
            }
            run.session_id = Some(session_id.clone());
            run.session_title = Some(title.clone());
            run.log_text = Some(log_text.clone());
            Ok::<_, ScheduleError>((run.clone(), true))
        })?;
        match stored {
            (run, true) => Ok((run, Some((session_id, model)))),
            (run, false) => {
                // Cancelled before the session existed: do not leave it working.
                let _ = oc.abort_session(dir, &session_id);
                self.release(run.job_id, run.id, None);
                Ok((run, None))
            }
        }
    }

    fn resolve_model(
        &self,
        dir: &Path,
        job_model: Option<&str>,
    ) -> Result<ModelRef, ScheduleError> {
        let oc = &self.inner.oc;
        let (config, providers) = std::thread::scope(|s| {
            let c = s.spawn(|| oc.config(dir));
            let p = oc.config_providers(dir);
            (
                c.join()
                    .unwrap_or(Err(OpencodeError::Transport("panicked".into()))),
                p,
            )
        });
        let upstream = |e: OpencodeError| match e {
            OpencodeError::Status { status, .. } => ScheduleError::BadGateway {
                error: format!("OpenCode upstream returned {status}"),
                detail: None,
            },
            other => ScheduleError::BadGateway {
                error: SESSION_CREATE_FAILED.into(),
                detail: Some(other.to_string()),
            },
        };
        let config = config.map_err(upstream)?;
        let providers = providers.map_err(upstream)?;
        pick_model(job_model, &config, &providers).ok_or_else(|| ScheduleError::BadGateway {
            error: NO_MODELS.into(),
            detail: None,
        })
    }

    fn spawn_drive(&self, claim: Claim, session: String, model: ModelRef) {
        let me = self.clone();
        let name = format!("schedule-run-{}", claim.run.id);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            me.drive(&claim, &session, &model);
        });
        if let Err(e) = spawned {
            log(format!("could not start a run thread: {e}"));
        }
    }

    /// Background half of a run: skills, `prompt_async`, then wait for the answer.
    fn drive(&self, claim: &Claim, session: &str, model: &ModelRef) {
        let oc = &self.inner.oc;
        let dir = claim.repo.dir.as_path();
        let (run_id, job_id) = (claim.run.id, claim.run.job_id);
        self.inner.hub.watch(session);
        let Some(job) = self.job_snapshot(job_id) else {
            let _ = self.finish(run_id, job_id, Finish::failed("The schedule was deleted."));
            return;
        };
        let wants_skills = job
            .skill_metadata
            .as_ref()
            .is_some_and(|m| !m.skill_slugs.is_empty());
        let skills = if wants_skills {
            oc.skills(dir)
                .map_err(|e| log(format!("run {run_id}: /skill failed: {e}")))
                .ok()
        } else {
            None
        };
        let text = build_prompt(&job.prompt, job.skill_metadata.as_ref(), skills.as_ref());
        let mut body = json!({
            "parts": [{"type": "text", "text": text}],
            "model": {"providerID": model.provider_id, "modelID": model.model_id},
        });
        if let Some(agent) = &job.agent_slug {
            body["agent"] = json!(agent);
        }
        if let Err(e) = oc.prompt_async(dir, session, &body) {
            log(format!("run {run_id}: prompt_async failed: {e}"));
            let text = upstream_message(&e).unwrap_or_else(|| format!("{PROMPT_FAILED}: {e}"));
            let _ = self.finish(run_id, job_id, Finish::failed(text));
            return;
        }
        self.monitor(run_id, job_id, session, dir, claim.run.started_at);
    }

    /// One look at the session: busy, stalled (idle with no finished answer), or done.
    fn check(&self, dir: &Path, session: &str) -> Result<Check, OpencodeError> {
        let oc = &self.inner.oc;
        let status = oc.session_status(dir)?;
        if matches!(
            status.get(session).map(String::as_str),
            Some("busy") | Some("retry")
        ) {
            return Ok(Check::Busy);
        }
        let messages = oc.session_messages(dir, session, MESSAGE_TAIL)?;
        Ok(match Finish::from_state(assistant_state(&messages)) {
            Some(end) => Check::Done(end),
            None => Check::Stalled,
        })
    }

    /// Waits for the run's session to finish and records the outcome. Returns without
    /// touching the run on shutdown, or when the run stopped running (cancelled).
    fn monitor(&self, run_id: i64, job_id: i64, session: &str, dir: &Path, started_at: i64) {
        let t = self.inner.timing.clone();
        let hub = &self.inner.hub;
        hub.watch(session);
        let mut stalled_since: Option<Instant> = None;
        let mut down_since: Option<Instant> = None;
        loop {
            if self.stopping() {
                hub.unwatch(session);
                return;
            }
            let seen = hub.generation(session);
            let cancelling = lock(&self.inner.cancelling).contains(&run_id);
            let still_running = match self.load() {
                Ok(f) => f
                    .runs
                    .iter()
                    .any(|r| r.id == run_id && r.status == RunStatus::Running),
                Err(e) => {
                    log(format!("run {run_id}: {e}"));
                    true
                }
            };
            if !still_running {
                self.release(job_id, run_id, Some(session));
                return;
            }
            if !cancelling {
                let elapsed = self.now().saturating_sub(started_at);
                if elapsed > t.max_run.as_millis() as i64 {
                    let _ = self.inner.oc.abort_session(dir, session);
                    let msg = format!(
                        "The run did not finish within {} hours and was stopped.",
                        t.max_run.as_secs() / 3600
                    );
                    let _ = self.finish(run_id, job_id, Finish::failed(msg));
                    return;
                }
                match self.check(dir, session) {
                    Ok(Check::Done(end)) => {
                        let _ = self.finish(run_id, job_id, end);
                        return;
                    }
                    Ok(Check::Busy) => {
                        down_since = None;
                        stalled_since = None;
                    }
                    Ok(Check::Stalled) => {
                        down_since = None;
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        let reported = hub.error(session);
                        if reported.is_some() || since.elapsed() >= t.stall_grace {
                            let text = reported.unwrap_or_else(|| STOPPED_WITHOUT_RESPONSE.into());
                            let _ = self.finish(run_id, job_id, Finish::failed(text));
                            return;
                        }
                    }
                    Err(e @ OpencodeError::Status { status: 404, .. }) => {
                        let text = upstream_message(&e).unwrap_or_else(|| SESSION_GONE.into());
                        let _ = self.finish(run_id, job_id, Finish::failed(text));
                        return;
                    }
                    Err(e) => {
                        let since = *down_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= t.upstream_down_max {
                            let msg = format!(
                                "OpenCode could not be reached for {} minutes: {e}",
                                t.upstream_down_max.as_secs() / 60
                            );
                            let _ = self.finish(run_id, job_id, Finish::failed(msg));
                            return;
                        }
                    }
                }
            }
            hub.wait(session, seen, t.poll);
        }
    }

    /// `POST …/runs/:runId/cancel` → `{"run":Run}`. A run whose answer already arrived is
    /// finished as completed/failed and returned as such (reference); otherwise the session
    /// is aborted and the run becomes `cancelled`.
    pub fn cancel_run(
        &self,
        repo_id: i64,
        job_id: i64,
        run_id: i64,
    ) -> Result<Value, ScheduleError> {
        let repo = self.repo(repo_id)?;
        let f = self.load()?;
        f.jobs
            .iter()
            .find(|j| j.id == job_id && j.repo_id == repo_id)
            .ok_or(ScheduleError::NotFound("Schedule not found"))?;
        let run = f
            .runs
            .iter()
            .find(|r| r.id == run_id && r.job_id == job_id)
            .ok_or(ScheduleError::NotFound("Run not found"))?
            .clone();
        if run.status != RunStatus::Running {
            return Err(ScheduleError::Conflict(
                "Only running schedule runs can be cancelled".into(),
            ));
        }
        lock(&self.inner.cancelling).insert(run_id);
        let current = |s: &Self| -> Result<Value, ScheduleError> {
            let f = s.load()?;
            let run = f
                .runs
                .into_iter()
                .find(|r| r.id == run_id)
                .ok_or(ScheduleError::NotFound("Run not found"))?;
            Ok(json!({ "run": run }))
        };
        if let Some(session) = &run.session_id {
            let dir = repo.dir.as_path();
            // Finished already? Then record that instead (only when also idle: a finished
            // step of a multi-step answer is not the end).
            if let Ok(Check::Done(end)) = self.check(dir, session) {
                return match self.finish(run_id, job_id, end)? {
                    Some(done) => Ok(json!({ "run": done })),
                    None => current(self),
                };
            }
            if let Err(e) = self.inner.oc.abort_session(dir, session) {
                lock(&self.inner.cancelling).remove(&run_id);
                return Err(ScheduleError::BadGateway {
                    error: upstream_message(&e).unwrap_or_else(|| CANCEL_FAILED.into()),
                    detail: Some(e.to_string()),
                });
            }
        }
        let end = Finish {
            status: RunStatus::Cancelled,
            response: None,
            error: Some(CANCELLED_BY_USER.into()),
        };
        let done = self.finish(run_id, job_id, end)?;
        if let Some(s) = &run.session_id {
            self.inner.hub.poke(Some(s));
        }
        match done {
            Some(run) => Ok(json!({ "run": run })),
            None => current(self),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Scheduler

    /// Claims every due job at `now` (moving its `nextRunAt` on first) and returns the claims
    /// plus the earliest `nextRunAt` left. Pure store work, no network.
    fn claim_due(&self, now: i64) -> Result<(Vec<Claim>, Option<i64>), ScheduleError> {
        let snapshot = self.load()?;
        let due_repos: Vec<i64> = snapshot
            .jobs
            .iter()
            .filter(|j| j.enabled && j.next_run_at.is_some_and(|t| t <= now))
            .map(|j| j.repo_id)
            .collect();
        if due_repos.is_empty() {
            let next = snapshot
                .jobs
                .iter()
                .filter(|j| j.enabled)
                .filter_map(|j| j.next_run_at)
                .min();
            return Ok((Vec::new(), next));
        }
        let mut repos: HashMap<i64, Option<RepoInfo>> = HashMap::new();
        for id in due_repos {
            if let std::collections::hash_map::Entry::Vacant(e) = repos.entry(id) {
                let info = match self.repo(id) {
                    Ok(r) => Some(r),
                    Err(err) => {
                        log(format!(
                            "repo {id} unavailable, skipping its due jobs: {err}"
                        ));
                        None
                    }
                };
                e.insert(info);
            }
        }
        let mut active = lock(&self.inner.active);
        let result = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let mut claims = Vec::new();
            let due: Vec<usize> = (0..f.jobs.len())
                .filter(|&i| f.jobs[i].enabled && f.jobs[i].next_run_at.is_some_and(|t| t <= now))
                .collect();
            for i in due {
                let job = f.jobs[i].clone();
                let due_at = job.next_run_at.unwrap_or(now);
                let next = next_after_fire(&job, due_at, now);
                if next.is_none() {
                    log(format!(
                        "job {}: no next run (schedule no longer valid)",
                        job.id
                    ));
                }
                f.jobs[i].next_run_at = next;
                if active.contains_key(&job.id) || f.running_run(job.id).is_some() {
                    log(format!("job {}: still running, slot skipped", job.id));
                    continue;
                }
                let Some(Some(repo)) = repos.get(&job.repo_id) else {
                    continue;
                };
                let run = push_run(f, &job, TriggerSource::Schedule, now);
                active.insert(job.id, run.id);
                claims.push(Claim {
                    run,
                    repo: repo.clone(),
                });
            }
            let next = f
                .jobs
                .iter()
                .filter(|j| j.enabled)
                .filter_map(|j| j.next_run_at)
                .min();
            Ok::<_, ScheduleError>((claims, next))
        });
        drop(active);
        result
    }

    /// One scheduler step at `now`: start the due jobs; returns when to look again.
    fn tick(&self, now: i64) -> Option<i64> {
        match self.claim_due(now) {
            Ok((claims, next)) => {
                for claim in claims {
                    log(format!(
                        "job {} due, starting run {}",
                        claim.run.job_id, claim.run.id
                    ));
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("schedule-run-{}", claim.run.id))
                        .spawn(move || {
                            if let Ok((_, Some((session, model)))) = me.open(&claim) {
                                me.drive(&claim, &session, &model);
                            }
                        });
                    if let Err(e) = spawned {
                        log(format!("could not start a run thread: {e}"));
                    }
                }
                next
            }
            Err(e) => {
                log(format!("scheduler: {e}"));
                None
            }
        }
    }

    /// Start-up: drop jobs and runs of repos that are gone (repo 0 never is), then settle
    /// runs left `running` by a previous process.
    fn recover(&self) {
        if let Err(e) = self.remove_orphans() {
            log(format!("orphan cleanup skipped: {e}"));
        }
        if let Err(e) = self.plan_unplanned() {
            log(format!("could not plan jobs without nextRunAt: {e}"));
        }
        let f = match self.load() {
            Ok(f) => f,
            Err(e) => {
                log(format!("recovery skipped: {e}"));
                return;
            }
        };
        for run in f.runs.iter().filter(|r| r.status == RunStatus::Running) {
            if self.stopping() {
                return;
            }
            if lock(&self.inner.active).contains_key(&run.job_id) {
                continue;
            }
            self.recover_run(run.clone());
        }
    }

    /// Enabled jobs without a `nextRunAt` (hand-written state) get one from now, the way an
    /// update would; disabled jobs lose a stale one.
    fn plan_unplanned(&self) -> Result<(), ScheduleError> {
        let now = self.now();
        let needs = |j: &super::model::Job| j.enabled == j.next_run_at.is_none();
        if !self.load()?.jobs.iter().any(needs) {
            return Ok(());
        }
        self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            for job in f.jobs.iter_mut().filter(|j| needs(j)) {
                let spec = ScheduleSpec::of_job(job);
                job.next_run_at = match super::model::plan_schedule(&spec, job.enabled, now) {
                    Ok(next) => next,
                    Err(d) => {
                        let why = d.first().map_or("", |d| d.message.as_str());
                        log(format!("job {} cannot be scheduled: {why}", job.id));
                        None
                    }
                };
            }
            Ok(())
        })
    }

    fn remove_orphans(&self) -> Result<(), ScheduleError> {
        let f = self.load()?;
        let mut gone = Vec::new();
        for id in f.jobs.iter().map(|j| j.repo_id).filter(|&id| id != 0) {
            if !gone.contains(&id) && self.inner.repos.repo(id)?.is_none() {
                gone.push(id);
            }
        }
        let (jobs, runs) = self.inner.store.update(FILE, |f: &mut ScheduleFile| {
            let (j, r) = (f.jobs.len(), f.runs.len());
            f.jobs.retain(|x| !gone.contains(&x.repo_id));
            let ids: Vec<i64> = f.jobs.iter().map(|x| x.id).collect();
            f.runs.retain(|x| ids.contains(&x.job_id));
            Ok::<_, ScheduleError>((j - f.jobs.len(), r - f.runs.len()))
        })?;
        if jobs + runs > 0 {
            log(format!("removed {jobs} orphaned job(s) and {runs} run(s)"));
        }
        Ok(())
    }

    fn recover_run(&self, run: Run) {
        let (run_id, job_id) = (run.id, run.job_id);
        let Some(session) = run.session_id.clone() else {
            let _ = self.finish(run_id, job_id, Finish::failed(INTERRUPTED_NO_SESSION));
            return;
        };
        let repo = match self.repo(run.repo_id) {
            Ok(r) => r,
            Err(e) => {
                log(format!("run {run_id}: repo unavailable: {e}"));
                let _ = self.finish(run_id, job_id, Finish::failed(INTERRUPTED_RESTART));
                return;
            }
        };
        match self.check(&repo.dir, &session) {
            Ok(Check::Done(end)) => {
                let _ = self.finish(run_id, job_id, end);
            }
            Ok(Check::Stalled) => {
                let _ = self.finish(run_id, job_id, Finish::failed(INTERRUPTED_RESTART));
            }
            // Busy, or OpenCode not answering yet: keep watching (bounded by the monitor).
            Ok(Check::Busy) | Err(_) => {
                log(format!("run {run_id}: resuming after restart"));
                lock(&self.inner.active).insert(job_id, run_id);
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("schedule-run-{run_id}"))
                    .spawn(move || {
                        me.monitor(run_id, job_id, &session, &repo.dir, run.started_at);
                    });
                if let Err(e) = spawned {
                    log(format!("could not start a run thread: {e}"));
                }
            }
        }
    }

    fn scheduler_loop(&self) {
        self.recover();
        let max_sleep = self.inner.timing.max_sleep;
        while !self.stopping() {
            let now = self.now();
            let next = self.tick(now);
            let sleep = match next {
                Some(t) => {
                    Duration::from_millis(t.saturating_sub(now).max(0) as u64).min(max_sleep)
                }
                None => max_sleep,
            };
            if self.stopping() {
                break;
            }
            self.inner.wake.wait(sleep.max(MIN_SLEEP));
        }
    }

    /// Reads `/global/event` while some run waits, turning session events into wake-ups.
    fn events_loop(&self) {
        let hub = &self.inner.hub;
        let mut backoff = EVENTS_BACKOFF_MIN;
        let mut logged = false;
        while !self.stopping() {
            if hub.is_idle() {
                hub.wait_for_watch(self.inner.timing.max_sleep);
                continue;
            }
            match self.inner.oc.global_events() {
                Ok(mut stream) => {
                    backoff = EVENTS_BACKOFF_MIN;
                    logged = false;
                    while !self.stopping() && !hub.is_idle() {
                        match stream.next_event() {
                            Ok(Some(ev)) => hub.on_event(&ev),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    // A server that keeps closing the stream must not be hammered.
                    hub.sleep(EVENTS_BACKOFF_MIN, &self.inner.shutdown);
                }
                Err(e) => {
                    if !logged {
                        log(format!("event stream unavailable (polling only): {e}"));
                        logged = true;
                    }
                    hub.sleep(backoff, &self.inner.shutdown);
                    backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Background threads of a started service.
pub struct SchedulerHandle {
    svc: Schedules,
    scheduler: Option<JoinHandle<()>>,
}

/// Recovers runs left `running`, then runs the scheduler thread and the event reader.
/// Keep the handle for the life of the server; [`SchedulerHandle::shutdown`] (or dropping
/// it) stops them and leaves running runs to the next start's recovery.
#[must_use = "dropping the handle stops the scheduler"]
pub fn start(svc: &Schedules) -> SchedulerHandle {
    let me = svc.clone();
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || me.scheduler_loop())
        .map_err(|e| log(format!("could not start the scheduler thread: {e}")))
        .ok();
    let me = svc.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("opencode-events".into())
        .spawn(move || me.events_loop())
    {
        log(format!("could not start the event reader: {e}"));
    }
    SchedulerHandle {
        svc: svc.clone(),
        scheduler,
    }
}

impl SchedulerHandle {
    /// Wakes the scheduler so it re-reads the jobs at once.
    pub fn notify_changed(&self) {
        self.svc.notify_changed();
    }

    /// Stops the scheduler, the event reader and every run monitor of this process. Runs
    /// stay `running` in the state (a restart recovers them). Waits up to [`SHUTDOWN_JOIN`]
    /// for the scheduler thread.
    pub fn shutdown(mut self) {
        self.signal();
        if let Some(t) = self.scheduler.take() {
            let deadline = Instant::now() + SHUTDOWN_JOIN;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn signal(&self) {
        let inner = &self.svc.inner;
        inner.shutdown.store(true, Ordering::SeqCst);
        inner.wake.notify();
        inner.hub.poke(None);
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::super::service::tests::service;
    use super::super::{ManualClock, MAX_FINISHED_RUNS_PER_JOB};
    use super::*;
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    #[test]
    fn long_texts_are_clipped_on_char_boundaries() {
        assert_eq!(clip("short".into(), 100), "short");
        let c = clip("é".repeat(100), 50);
        assert!(c.len() <= 50 && c.ends_with("[… truncated]"), "{c}");
    }

    #[test]
    fn overdue_job_runs_once_at_start() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = service("overdue", clock.clone());
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        );
        // A hand-written enabled job without nextRunAt gets one at start.
        let id2 = create(
            &s,
            json!({"name": "j", "prompt": "p", "scheduleMode": "cron", "cronExpression": "@daily"}),
        );
        s.inner
            .store
            .update(FILE, |f: &mut ScheduleFile| {
                f.jobs.iter_mut().find(|j| j.id == id2).unwrap().next_run_at = None;
                Ok::<_, ScheduleError>(())
            })
            .unwrap();
        // The server was down for 52 minutes: ten slots missed.
        clock.set(T0 + 57 * MIN);
        let handle = start(&s);
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs_of(&s, id)
            .first()
            .is_none_or(|r| r.status == RunStatus::Running)
        {
            assert!(Instant::now() < deadline, "the overdue job did not run");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        handle.shutdown();
        assert_eq!(runs_of(&s, id).len(), 1);
        assert_eq!(job_next(&s, id), Some(T0 + 60 * MIN));
        assert_eq!(
            iso(job_next(&s, id2).unwrap()),
            iso((T0 / (1440 * MIN) + 1) * 1440 * MIN)
        );
        assert!(runs_of(&s, id2).is_empty());
    }

    #[test]
    fn iso_like_javascript() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_796_321_173_765), "2026-12-03T18:06:13.765Z");
    }

    #[test]
    fn model_resolution_order() {
        let providers = json!({
            "providers": [
                {"id": "a", "models": {"x": {}, "y": {}}},
                {"id": "b", "models": {"z/deep": {}}},
                {"id": "e", "models": {}}
            ],
            "default": {"e": "none", "a": "y"}
        });
        let m = |p: &str, id: &str| {
            Some(ModelRef {
                provider_id: p.into(),
                model_id: id.into(),
            })
        };
        assert_eq!(
            pick_model(Some(" b/z/deep "), &json!({}), &providers),
            m("b", "z/deep")
        );
        assert_eq!(
            pick_model(Some("nope/x"), &json!({"model": "a/x"}), &providers),
            m("a", "x")
        );
        assert_eq!(
            pick_model(
                None,
                &json!({"model": "q/q", "small_model": "a/y"}),
                &providers
            ),
            m("a", "y")
        );
        assert_eq!(pick_model(None, &json!({}), &providers), m("a", "y"));
        let no_default =
            json!({"providers": [{"id": "e", "models": {}}, {"id": "b", "models": {"k": {}}}]});
        assert_eq!(pick_model(None, &json!({}), &no_default), m("b", "k"));
        assert_eq!(
            pick_model(None, &json!({}), &json!({"providers": []})),
            None
        );
    }

    #[test]
    fn ruleset_defaults_and_overrides() {
        let r = permission_ruleset(None);
        let r = r.as_array().unwrap();
        assert_eq!(
            r[0],
            json!({"permission": "*", "pattern": "*", "action": "allow"})
        );
        assert_eq!(r[1]["permission"], "external_directory");
        assert_eq!(r[2]["permission"], "question");
        assert_eq!(r.len(), 3 + 10);
        assert_eq!(
            r[3],
            json!({"permission": "bash", "pattern": "git push --force*", "action": "deny"})
        );
        let cfg = PermissionConfig {
            allow_external_directory: true,
            allow_questions: true,
            bash_deny_patterns: vec!["rm -rf *".into()],
        };
        let r = permission_ruleset(Some(&cfg));
        assert_eq!(r.as_array().unwrap().len(), 2);
        assert_eq!(r[1]["pattern"], "rm -rf *");
    }

    #[test]
    fn prompt_with_skills() {
        let meta = SkillMetadata {
            skill_slugs: vec!["deploy".into(), "lint".into()],
            notes: Some(" be careful ".into()),
        };
        let skills = json!([
            {"name": "team/deploy", "content": "Deploy steps"},
            {"name": "other", "content": "x"},
            {"name": "my-lint", "content": "Lint steps"}
        ]);
        assert_eq!(
            build_prompt("Go", Some(&meta), Some(&skills)),
            "Go\n\nThe following skills have been loaded for this task:\n\n\
             <skill_content name=\"team/deploy\">\nDeploy steps\n</skill_content>\n\n\
             <skill_content name=\"my-lint\">\nLint steps\n</skill_content>\nSkill notes: be careful"
        );
        assert_eq!(
            build_prompt("Go", Some(&meta), None),
            "Go\n\nFor this task, use the following skills: deploy, lint\nSkill notes: be careful"
        );
        assert_eq!(build_prompt("Go", None, None), "Go");
    }

    #[test]
    fn assistant_message_reading() {
        let msgs = json!([
            {"info": {"role": "user"}, "parts": [{"type": "text", "text": "hi"}]},
            {"info": {"role": "assistant", "time": {"created": 1, "completed": 2}},
             "parts": [{"type": "step-start"},
                       {"type": "text", "text": "<think>hmm</think>  Hello "},
                       {"type": "reasoning", "text": "no"},
                       {"type": "text", "text": "<think>only thinking"},
                       {"type": "text", "text": "World"}]}
        ]);
        assert_eq!(
            assistant_state(&msgs),
            AssistantState::Completed {
                text: Some("Hello\n\nWorld".into())
            }
        );
        let failed = json!([{"info": {"role": "assistant", "time": {"completed": 2},
            "error": {"name": "APIError", "data": {"message": "fake upstream refused"}}}, "parts": []}]);
        assert_eq!(
            assistant_state(&failed),
            AssistantState::Failed {
                error: "fake upstream refused".into(),
                text: None
            }
        );
        let named =
            json!([{"info": {"role": "assistant", "error": {"name": "MessageAbortedError"}}}]);
        assert!(
            matches!(assistant_state(&named), AssistantState::Failed { error, .. } if error == "MessageAbortedError")
        );
        let working = json!([{"info": {"role": "assistant", "time": {"created": 1}}, "parts": []}]);
        assert_eq!(assistant_state(&working), AssistantState::Working);
        assert_eq!(
            assistant_state(&json!([{"info": {"role": "user"}}])),
            AssistantState::Missing
        );
    }

    #[test]
    fn events_are_classified() {
        let ev =
            |t: &str, p: Value| json!({"directory": "/x", "payload": {"type": t, "properties": p}});
        assert_eq!(
            classify_event(&ev("session.idle", json!({"sessionID": "ses_1"}))),
            Some(("ses_1".into(), None))
        );
        assert_eq!(
            classify_event(&ev(
                "session.status",
                json!({"sessionID": "ses_1", "status": {"type": "busy"}})
            )),
            None
        );
        assert_eq!(
            classify_event(&ev(
                "session.status",
                json!({"sessionID": "ses_1", "status": {"type": "idle"}})
            )),
            Some(("ses_1".into(), None))
        );
        assert_eq!(
            classify_event(&ev(
                "session.error",
                json!({"sessionID": "ses_1", "error": {"name": "APIError", "data": {"message": "boom"}}})
            )),
            Some(("ses_1".into(), Some("boom".into())))
        );
        assert_eq!(
            classify_event(&ev("session.error", json!({"sessionID": "ses_1"}))),
            Some(("ses_1".into(), Some(UNKNOWN_SESSION_ERROR.into())))
        );
        assert_eq!(
            classify_event(&json!({"payload": {"type": "server.heartbeat", "properties": {}}})),
            None
        );
    }

    fn create(s: &Schedules, body: Value) -> i64 {
        s.create_job(0, &body).unwrap().1["job"]["id"]
            .as_i64()
            .unwrap()
    }

    fn job_next(s: &Schedules, id: i64) -> Option<i64> {
        s.load()
            .unwrap()
            .jobs
            .iter()
            .find(|j| j.id == id)
            .unwrap()
            .next_run_at
    }

    fn runs_of(s: &Schedules, id: i64) -> Vec<Run> {
        s.load()
            .unwrap()
            .runs
            .into_iter()
            .filter(|r| r.job_id == id)
            .collect()
    }

    #[test]
    fn interval_job_fires_on_its_grid_and_overdue_runs_once() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = service("grid", clock.clone());
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10}),
        );
        assert_eq!(job_next(&s, id), Some(T0 + 10 * MIN));
        // Not due yet: nothing claimed, wake at nextRunAt.
        let (claims, next) = s.claim_due(T0 + 9 * MIN).unwrap();
        assert!(claims.is_empty());
        assert_eq!(next, Some(T0 + 10 * MIN));
        // Due 3 s late: claimed, next slot is nextRunAt + 10 min (not now + 10 min).
        let (claims, next) = s.claim_due(T0 + 10 * MIN + 3000).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].run.trigger_source, TriggerSource::Schedule);
        assert_eq!(next, Some(T0 + 20 * MIN));
        // Still running at the next slot: skipped, not doubled; grid continues.
        let (claims, _) = s.claim_due(T0 + 20 * MIN).unwrap();
        assert!(claims.is_empty());
        assert_eq!(job_next(&s, id), Some(T0 + 30 * MIN));
        assert_eq!(runs_of(&s, id).len(), 1);
        // Finish it, then "restart" 95 minutes later: one run, next slot on the grid.
        let run_id = runs_of(&s, id)[0].id;
        s.finish(run_id, id, Finish::failed("x")).unwrap();
        let (claims, next) = s.claim_due(T0 + 125 * MIN).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(next, Some(T0 + 130 * MIN));
        let (claims, _) = s.claim_due(T0 + 125 * MIN).unwrap();
        assert!(claims.is_empty());
    }

    #[test]
    fn cron_job_next_run_in_zone_and_disable_reenable() {
        // 2026-03-07T12:00Z; New York spring-forward is the next night.
        let now = jiff::Timestamp::from_second(1_772_884_800)
            .unwrap()
            .as_millisecond();
        let clock = Arc::new(ManualClock::new(now));
        let s = service("cronjob", clock.clone());
        let id = create(
            &s,
            json!({"name": "c", "prompt": "p", "scheduleMode": "cron",
                                   "cronExpression": "30 2 * * *", "timezone": "America/New_York"}),
        );
        let first = job_next(&s, id).unwrap();
        assert_eq!(iso(first), "2026-03-08T07:00:00.000Z");
        let (claims, next) = s.claim_due(first).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(iso(next.unwrap()), "2026-03-09T06:30:00.000Z");
        s.finish(claims[0].run.id, id, Finish::failed("x")).unwrap();

        s.update_job(0, id, &json!({"enabled": false})).unwrap();
        assert_eq!(job_next(&s, id), None);
        let (claims, next) = s.claim_due(first + 10 * 24 * 60 * MIN).unwrap();
        assert!(claims.is_empty());
        assert_eq!(next, None);
        // Re-enabled later: computed from the new now.
        clock.set(first + 10 * 24 * 60 * MIN); // 2026-03-18T07:00Z = 03:00 EDT
        s.update_job(0, id, &json!({"enabled": true})).unwrap();
        assert_eq!(iso(job_next(&s, id).unwrap()), "2026-03-19T06:30:00.000Z");
    }

    #[test]
    fn scheduler_thread_wakes_on_change_and_fails_without_opencode() {
        let clock = Arc::new(ManualClock::new(T0));
        let s = service("thread", clock.clone());
        let handle = start(&s);
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(runs_of(&s, id).is_empty());
        // Time passes (the thread sleeps on real time up to max_sleep); a change wakes it.
        clock.advance(5 * MIN);
        handle.notify_changed();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let runs = runs_of(&s, id);
            if runs.first().is_some_and(|r| r.status != RunStatus::Running) {
                let r = &runs[0];
                assert_eq!(r.status, RunStatus::Failed);
                assert_eq!(r.trigger_source, TriggerSource::Schedule);
                assert!(
                    r.error_text
                        .as_deref()
                        .unwrap()
                        .starts_with(SESSION_CREATE_FAILED),
                    "{:?}",
                    r.error_text
                );
                assert!(r.log_text.as_deref().unwrap().contains("Trigger: schedule"));
                break;
            }
            assert!(Instant::now() < deadline, "scheduler did not run the job");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(job_next(&s, id), Some(T0 + 10 * MIN));
        assert!(lock(&s.inner.active).is_empty());
        handle.shutdown();
    }

    #[test]
    fn manual_run_without_opencode_is_502_and_failed() {
        let s = service("manual", Arc::new(ManualClock::new(T0)));
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        );
        let e = s.run_job(0, id).unwrap_err();
        let api = crate::error::ApiError::from(e);
        assert_eq!(api.status(), 502);
        assert_eq!(api.body()["error"], SESSION_CREATE_FAILED);
        let runs = runs_of(&s, id);
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert_eq!(runs[0].trigger_source, TriggerSource::Manual);
        // Manual runs leave nextRunAt alone; lastRunAt is stamped.
        let job = s.load().unwrap().jobs[0].clone();
        assert_eq!(job.next_run_at, Some(T0 + 5 * MIN));
        assert_eq!(job.last_run_at, Some(T0));
        // Not running any more: another manual run is allowed; cancel is 409.
        let run_id = runs[0].id;
        let e = s.cancel_run(0, id, run_id).unwrap_err();
        assert_eq!(crate::error::ApiError::from(e).status(), 409);
        assert!(s.run_job(0, id).is_err());
        assert_eq!(runs_of(&s, id).len(), 2);
        assert_eq!(
            crate::error::ApiError::from(s.run_job(0, 99).unwrap_err()).status(),
            404
        );
        assert_eq!(
            crate::error::ApiError::from(s.run_job(7, id).unwrap_err()).status(),
            404
        );
    }

    #[test]
    fn running_run_blocks_a_second_run_and_recovery_settles_it() {
        let s = service("recover", Arc::new(ManualClock::new(T0)));
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        );
        // A run left running by a "previous process", without a session.
        s.inner
            .store
            .update(FILE, |f: &mut ScheduleFile| {
                let job = f.jobs[0].clone();
                push_run(f, &job, TriggerSource::Schedule, T0);
                Ok::<_, ScheduleError>(())
            })
            .unwrap();
        let e = s.run_job(0, id).unwrap_err();
        assert_eq!(e.to_string(), "Schedule is already running");
        let e = s.delete_job(0, id).unwrap_err();
        assert_eq!(crate::error::ApiError::from(e).status(), 409);
        s.recover();
        let r = &runs_of(&s, id)[0];
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.error_text.as_deref(), Some(INTERRUPTED_NO_SESSION));
    }

    #[test]
    fn finishing_prunes_to_the_cap() {
        let s = service("finishprune", Arc::new(ManualClock::new(T0)));
        let id = create(
            &s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
        );
        let mut last = 0;
        for _ in 0..(MAX_FINISHED_RUNS_PER_JOB + 3) {
            let run = s
                .inner
                .store
                .update(FILE, |f: &mut ScheduleFile| {
                    let job = f.jobs[0].clone();
                    Ok::<_, ScheduleError>(push_run(f, &job, TriggerSource::Manual, T0))
                })
                .unwrap();
            s.finish(run.id, id, Finish::failed("x")).unwrap().unwrap();
            last = run.id;
        }
        let runs = runs_of(&s, id);
        assert_eq!(runs.len(), MAX_FINISHED_RUNS_PER_JOB);
        assert!(runs.iter().any(|r| r.id == last));
        assert!(!runs.iter().any(|r| r.id <= 3));
    }

    // -----------------------------------------------------------------------------------------
    // DST through the scheduler: jobs planned by create/update, fired by `claim_due` at the
    // injected clock's time, 2026 changes in New York (Mar 8, Nov 1) and Berlin (Mar 29,
    // Oct 25). Instants are asserted as RFC 3339 UTC plus the local wall time and offset.

    /// Milliseconds of an RFC 3339 instant.
    fn at(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    /// `ms` as wall time in `tz`, e.g. `03:00-04:00`.
    fn wall(ms: i64, tz: &str) -> String {
        jiff::Timestamp::from_millisecond(ms)
            .unwrap()
            .in_tz(tz)
            .unwrap()
            .strftime("%H:%M%:z")
            .to_string()
    }

    /// Drives job `id` through the scheduler's claim path `n` times. 1 ms before its
    /// `nextRunAt` nothing is claimed and the scheduler is told to wake at that `nextRunAt`;
    /// at it, exactly one scheduled run starts at exactly that instant and the job's new
    /// `nextRunAt` is the wake-up time returned. Each run is finished before the next slot.
    /// Returns `"<UTC> <wall time in tz>"` per firing.
    fn fire_series(s: &Schedules, clock: &ManualClock, id: i64, tz: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let due = job_next(s, id).expect("an enabled job has a nextRunAt");
            clock.set(due - 1);
            let (claims, next) = s.claim_due(s.now()).unwrap();
            assert!(claims.is_empty(), "claimed early, before {}", iso(due));
            assert_eq!(next, Some(due));
            clock.set(due);
            let (claims, next) = s.claim_due(s.now()).unwrap();
            assert_eq!(claims.len(), 1, "not claimed at {}", iso(due));
            let run = &claims[0].run;
            assert_eq!(
                (run.job_id, run.started_at, run.trigger_source),
                (id, due, TriggerSource::Schedule)
            );
            assert_eq!(next, job_next(s, id));
            s.finish(run.id, id, Finish::failed("x")).unwrap().unwrap();
            out.push(format!("{} {}", iso(due), wall(due, tz)));
        }
        out
    }

    fn cron_job(s: &Schedules, expr: &str, tz: &str) -> i64 {
        create(
            s,
            json!({"name": "c", "prompt": "p", "scheduleMode": "cron",
                   "cronExpression": expr, "timezone": tz}),
        )
    }

    fn interval_job(s: &Schedules, minutes: i64) -> i64 {
        create(
            s,
            json!({"name": "i", "prompt": "p", "scheduleMode": "interval",
                   "intervalMinutes": minutes}),
        )
    }

    #[test]
    fn dst_new_york_spring_forward_through_the_scheduler() {
        let ny = "America/New_York";
        let clock = Arc::new(ManualClock::new(at("2026-03-07T12:00:00Z")));
        let s = service("dst-ny-spring", clock.clone());
        // Daily 02:30: that time does not exist on Mar 8; it fires at the end of the gap.
        let daily = cron_job(&s, "30 2 * * *", ny);
        assert_eq!(
            fire_series(&s, &clock, daily, ny, 3),
            [
                "2026-03-08T07:00:00.000Z 03:00-04:00",
                "2026-03-09T06:30:00.000Z 02:30-04:00",
                "2026-03-10T06:30:00.000Z 02:30-04:00",
            ]
        );
        s.update_job(0, daily, &json!({"enabled": false})).unwrap();
        // Every 30 minutes through the gap: 02:00, 02:30 and 03:00 collapse into one run.
        clock.set(at("2026-03-08T06:10:00Z")); // 01:10 EST
        let half = cron_job(&s, "*/30 * * * *", ny);
        assert_eq!(
            fire_series(&s, &clock, half, ny, 4),
            [
                "2026-03-08T06:30:00.000Z 01:30-05:00",
                "2026-03-08T07:00:00.000Z 03:00-04:00",
                "2026-03-08T07:30:00.000Z 03:30-04:00",
                "2026-03-08T08:00:00.000Z 04:00-04:00",
            ]
        );
        s.update_job(0, half, &json!({"enabled": false})).unwrap();
        // Interval jobs are real minutes, not wall time: every 1440 min from 09:00 EST is
        // 10:00 EDT after the change.
        clock.set(at("2026-03-06T14:00:00Z")); // 09:00 EST
        let day = interval_job(&s, 1440);
        assert_eq!(
            fire_series(&s, &clock, day, ny, 3),
            [
                "2026-03-07T14:00:00.000Z 09:00-05:00",
                "2026-03-08T14:00:00.000Z 10:00-04:00",
                "2026-03-09T14:00:00.000Z 10:00-04:00",
            ]
        );
        // Re-enabled inside the gap (02:45 EST does not exist; the clock says 06:45Z =
        // 01:45 EST): the next daily 02:30 is the end of the gap, 15 minutes later.
        clock.set(at("2026-03-08T06:45:00Z"));
        let u = s.update_job(0, daily, &json!({"enabled": true})).unwrap();
        assert_eq!(u["job"]["nextRunAt"], at("2026-03-08T07:00:00Z"));
        // Overdue across the change: down from Mar 8 06:50Z to Mar 9 12:00Z, one run at
        // start, then the next 02:30 EDT.
        clock.set(at("2026-03-09T12:00:00Z"));
        let (claims, _) = s.claim_due(s.now()).unwrap();
        let fired: Vec<(i64, i64)> = claims
            .iter()
            .map(|c| (c.run.job_id, c.run.started_at))
            .collect();
        assert_eq!(fired, [(daily, at("2026-03-09T12:00:00Z"))]);
        assert_eq!(
            iso(job_next(&s, daily).unwrap()),
            "2026-03-10T06:30:00.000Z"
        );
    }

    #[test]
    fn dst_new_york_fall_back_through_the_scheduler() {
        let ny = "America/New_York";
        let clock = Arc::new(ManualClock::new(at("2026-10-31T12:00:00Z")));
        let s = service("dst-ny-fall", clock.clone());
        // Daily 01:30 happens twice on Nov 1: it fires once, at the first (EDT) one.
        let daily = cron_job(&s, "30 1 * * *", ny);
        assert_eq!(
            fire_series(&s, &clock, daily, ny, 3),
            [
                "2026-11-01T05:30:00.000Z 01:30-04:00",
                "2026-11-02T06:30:00.000Z 01:30-05:00",
                "2026-11-03T06:30:00.000Z 01:30-05:00",
            ]
        );
        s.update_job(0, daily, &json!({"enabled": false})).unwrap();
        // Hourly through the fold: the repeated 01:00 (EST) does not fire again.
        clock.set(at("2026-11-01T03:30:00Z")); // 23:30 EDT
        let hourly = cron_job(&s, "@hourly", ny);
        assert_eq!(
            fire_series(&s, &clock, hourly, ny, 4),
            [
                "2026-11-01T04:00:00.000Z 00:00-04:00",
                "2026-11-01T05:00:00.000Z 01:00-04:00",
                "2026-11-01T07:00:00.000Z 02:00-05:00",
                "2026-11-01T08:00:00.000Z 03:00-05:00",
            ]
        );
        s.update_job(0, hourly, &json!({"enabled": false})).unwrap();
        // An interval job runs in both passes of the repeated hour: real time is uniform.
        clock.set(at("2026-11-01T04:30:00Z")); // 00:30 EDT
        let every = interval_job(&s, 60);
        assert_eq!(
            fire_series(&s, &clock, every, ny, 3),
            [
                "2026-11-01T05:30:00.000Z 01:30-04:00",
                "2026-11-01T06:30:00.000Z 01:30-05:00",
                "2026-11-01T07:30:00.000Z 02:30-05:00",
            ]
        );
        s.update_job(0, every, &json!({"enabled": false})).unwrap();
        // Re-enabled during the first 01:xx (EDT) after 01:30: the next daily 01:30 is
        // tomorrow's, not the repeat an hour later.
        clock.set(at("2026-11-01T05:45:00Z")); // 01:45 EDT
        let u = s.update_job(0, daily, &json!({"enabled": true})).unwrap();
        assert_eq!(u["job"]["nextRunAt"], at("2026-11-02T06:30:00Z"));
        // A scheduled hourly run claimed late, inside the second pass (01:20 EST): the next
        // slot is 02:00 EST, not another 01:xx.
        clock.set(at("2026-11-01T04:50:00Z"));
        s.update_job(0, hourly, &json!({"enabled": true})).unwrap();
        assert_eq!(
            iso(job_next(&s, hourly).unwrap()),
            "2026-11-01T05:00:00.000Z"
        );
        clock.set(at("2026-11-01T06:20:00Z"));
        let (claims, next) = s.claim_due(s.now()).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].run.job_id, hourly);
        assert_eq!(
            iso(job_next(&s, hourly).unwrap()),
            "2026-11-01T07:00:00.000Z"
        );
        assert_eq!(next, Some(at("2026-11-01T07:00:00Z")));
    }

    #[test]
    fn dst_berlin_spring_forward_through_the_scheduler() {
        let berlin = "Europe/Berlin";
        let clock = Arc::new(ManualClock::new(at("2026-03-27T12:00:00Z")));
        let s = service("dst-berlin-spring", clock.clone());
        // 02:30 does not exist on Mar 29 (02:00 CET → 03:00 CEST at 01:00Z).
        let daily = cron_job(&s, "30 2 * * *", berlin);
        assert_eq!(
            fire_series(&s, &clock, daily, berlin, 3),
            [
                "2026-03-28T01:30:00.000Z 02:30+01:00",
                "2026-03-29T01:00:00.000Z 03:00+02:00",
                "2026-03-30T00:30:00.000Z 02:30+02:00",
            ]
        );
        s.update_job(0, daily, &json!({"enabled": false})).unwrap();
        // Weekday 08:00 local, from Thursday Mar 26: 07:00Z on Friday, 06:00Z on Monday.
        clock.set(at("2026-03-26T12:00:00Z"));
        let work = cron_job(&s, "0 8 * * MON-FRI", berlin);
        assert_eq!(
            fire_series(&s, &clock, work, berlin, 2),
            [
                "2026-03-27T07:00:00.000Z 08:00+01:00",
                "2026-03-30T06:00:00.000Z 08:00+02:00",
            ]
        );
        s.update_job(0, work, &json!({"enabled": false})).unwrap();
        // Every 45 minutes across the gap: uniform in real time, 01:45 CET then 03:30 CEST.
        clock.set(at("2026-03-28T23:15:00Z")); // 00:15 CET
        let every = interval_job(&s, 45);
        assert_eq!(
            fire_series(&s, &clock, every, berlin, 3),
            [
                "2026-03-29T00:00:00.000Z 01:00+01:00",
                "2026-03-29T00:45:00.000Z 01:45+01:00",
                "2026-03-29T01:30:00.000Z 03:30+02:00",
            ]
        );
    }

    #[test]
    fn dst_berlin_fall_back_through_the_scheduler() {
        let berlin = "Europe/Berlin";
        let clock = Arc::new(ManualClock::new(at("2026-10-24T12:00:00Z")));
        let s = service("dst-berlin-fall", clock.clone());
        // 02:30 happens twice on Oct 25 (03:00 CEST → 02:00 CET at 01:00Z): once, the first.
        let daily = cron_job(&s, "30 2 * * *", berlin);
        assert_eq!(
            fire_series(&s, &clock, daily, berlin, 3),
            [
                "2026-10-25T00:30:00.000Z 02:30+02:00",
                "2026-10-26T01:30:00.000Z 02:30+01:00",
                "2026-10-27T01:30:00.000Z 02:30+01:00",
            ]
        );
        s.update_job(0, daily, &json!({"enabled": false})).unwrap();
        // Every 20 minutes from 01:50 CEST: 02:00–02:40 fire in the first pass only.
        clock.set(at("2026-10-24T23:50:00Z")); // 01:50 CEST
        let third = cron_job(&s, "*/20 * * * *", berlin);
        assert_eq!(
            fire_series(&s, &clock, third, berlin, 5),
            [
                "2026-10-25T00:00:00.000Z 02:00+02:00",
                "2026-10-25T00:20:00.000Z 02:20+02:00",
                "2026-10-25T00:40:00.000Z 02:40+02:00",
                "2026-10-25T02:00:00.000Z 03:00+01:00",
                "2026-10-25T02:20:00.000Z 03:20+01:00",
            ]
        );
        s.update_job(0, third, &json!({"enabled": false})).unwrap();
        // An interval job that was overdue across the change fires once, then stays on its
        // real-time grid: 90-minute slots from 23:30Z, server down until 02:10Z.
        clock.set(at("2026-10-24T22:00:00Z"));
        let every = interval_job(&s, 90);
        assert_eq!(
            iso(job_next(&s, every).unwrap()),
            "2026-10-24T23:30:00.000Z"
        );
        clock.set(at("2026-10-25T02:10:00Z")); // 03:10 CET, 2 slots missed
        let (claims, next) = s.claim_due(s.now()).unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].run.started_at, at("2026-10-25T02:10:00Z"));
        assert_eq!(next, Some(at("2026-10-25T02:30:00Z")));
        s.finish(claims[0].run.id, every, Finish::failed("x"))
            .unwrap();
        assert_eq!(
            fire_series(&s, &clock, every, berlin, 2),
            [
                "2026-10-25T02:30:00.000Z 03:30+01:00",
                "2026-10-25T04:00:00.000Z 05:00+01:00",
            ]
        );
    }

    /// The same as the claim-path tests, but through the real scheduler thread: it sleeps
    /// until the job is due by the injected clock and starts the run at the gap's end.
    #[test]
    fn dst_scheduler_thread_fires_at_the_end_of_the_berlin_gap() {
        let clock = Arc::new(ManualClock::new(at("2026-03-29T00:40:00Z"))); // 01:40 CET
        let s = service("dst-thread", clock.clone());
        let handle = start(&s);
        let id = cron_job(&s, "30 2 * * *", "Europe/Berlin");
        assert_eq!(iso(job_next(&s, id).unwrap()), "2026-03-29T01:00:00.000Z");
        clock.set(at("2026-03-29T00:59:59.999Z"));
        handle.notify_changed();
        std::thread::sleep(Duration::from_millis(150));
        assert!(runs_of(&s, id).is_empty(), "fired before the gap ended");
        clock.set(at("2026-03-29T01:00:00Z"));
        handle.notify_changed();
        let deadline = Instant::now() + Duration::from_secs(10);
        let run = loop {
            let runs = runs_of(&s, id);
            if let Some(r) = runs.first().filter(|r| r.status != RunStatus::Running) {
                break r.clone();
            }
            assert!(Instant::now() < deadline, "the scheduler did not fire");
            std::thread::sleep(Duration::from_millis(20));
        };
        handle.shutdown();
        assert_eq!(run.trigger_source, TriggerSource::Schedule);
        assert_eq!(iso(run.started_at), "2026-03-29T01:00:00.000Z");
        assert_eq!(runs_of(&s, id).len(), 1);
        assert_eq!(iso(job_next(&s, id).unwrap()), "2026-03-30T00:30:00.000Z");
    }
}
