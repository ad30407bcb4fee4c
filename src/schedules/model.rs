//! Stored shapes (reference §11.2) and body validation (§11.3, with the contract's
//! differences: every failure is a 400 with `details`, cron without a time zone means UTC,
//! whitespace-only `name`/`prompt` are refused, unknown keys are dropped).
//!
//! Validation is pure: it turns a JSON body into a [`NewJob`] or [`JobPatch`], and
//! [`plan_schedule`] turns the schedule fields into a `nextRunAt`. String limits count UTF-16
//! code units, as the reference does.

use super::cron::{self, Cron, MINUTE_MS};
use crate::error::Detail;
use crate::path;
use crate::util::utf16_len;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const NAME_MAX: usize = 120;
pub const DESCRIPTION_MAX: usize = 500;
pub const AGENT_SLUG_MAX: usize = 100;
pub const PROMPT_MAX: usize = 20_000;
pub const MODEL_MAX: usize = 200;
pub const SKILL_SLUG_MAX: usize = 100;
/// Not limited by the reference; bounded here like every list.
pub const MAX_SKILL_SLUGS: usize = 50;
pub const SKILL_NOTES_MAX: usize = 2_000;
pub const MAX_BASH_DENY_PATTERNS: usize = 200;
pub const BASH_DENY_PATTERN_MAX: usize = 200;
pub const BRANCH_MAX: usize = 200;
pub const INTERVAL_MIN_MINUTES: i64 = 5;
pub const INTERVAL_MAX_MINUTES: i64 = 10_080;
/// Interval used when an update switches a cron job to interval without giving one.
pub const DEFAULT_INTERVAL_MINUTES: i64 = 60;
pub const CRON_EXPRESSION_MAX: usize = 200;
pub const TIMEZONE_MAX: usize = 120;
/// Zone of cron jobs that name none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Destructive shell commands a scheduled run may not execute unless the job says otherwise.
pub const DEFAULT_BASH_DENY_PATTERNS: [&str; 10] = [
    "git push --force*",
    "git push -f *",
    "sudo *",
    "dd *",
    "mkfs*",
    "shutdown*",
    "reboot*",
    "halt*",
    "kill -9 *",
    "killall *",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleMode {
    Interval,
    Cron,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerSource {
    Manual,
    Schedule,
}

impl TriggerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerSource::Manual => "manual",
            TriggerSource::Schedule => "schedule",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkillMetadata {
    #[serde(default)]
    pub skill_slugs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

fn default_deny_patterns() -> Vec<String> {
    DEFAULT_BASH_DENY_PATTERNS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionConfig {
    #[serde(default)]
    pub allow_external_directory: bool,
    #[serde(default)]
    pub allow_questions: bool,
    #[serde(default = "default_deny_patterns")]
    pub bash_deny_patterns: Vec<String>,
}

/// A job as stored and as sent (`Job` of reference §11.2, same key order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: i64,
    pub repo_id: i64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub enabled: bool,
    pub schedule_mode: ScheduleMode,
    #[serde(default)]
    pub interval_minutes: Option<i64>,
    #[serde(default)]
    pub cron_expression: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub agent_slug: Option<String>,
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub skill_metadata: Option<SkillMetadata>,
    #[serde(default)]
    pub permission_config: Option<PermissionConfig>,
    #[serde(default)]
    pub branch: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub last_run_at: Option<i64>,
    #[serde(default)]
    pub next_run_at: Option<i64>,
}

/// A run as stored and as sent (`Run` of reference §11.2, same key order). `runBranch`,
/// `commitHash`, `worktreePath` and `workspaceId` stay null: runs execute in the repo's
/// directory, without a worktree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: i64,
    pub job_id: i64,
    pub repo_id: i64,
    pub trigger_source: TriggerSource,
    pub status: RunStatus,
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: Option<i64>,
    pub created_at: i64,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub session_title: Option<String>,
    #[serde(default)]
    pub log_text: Option<String>,
    #[serde(default)]
    pub response_text: Option<String>,
    #[serde(default)]
    pub error_text: Option<String>,
    #[serde(default)]
    pub run_branch: Option<String>,
    #[serde(default)]
    pub commit_hash: Option<String>,
    #[serde(default)]
    pub worktree_path: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
}

/// The whole of `schedules.json`. Id counters only grow, so a deleted job's id is never
/// reused (a hand-written file without them is fine: ids continue after the largest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleFile {
    #[serde(default)]
    pub jobs: Vec<Job>,
    #[serde(default)]
    pub runs: Vec<Run>,
    #[serde(default)]
    pub next_job_id: i64,
    #[serde(default)]
    pub next_run_id: i64,
}

impl ScheduleFile {
    pub fn take_job_id(&mut self) -> i64 {
        let max = self.jobs.iter().map(|j| j.id).max().unwrap_or(0);
        let id = self.next_job_id.max(max + 1).max(1);
        self.next_job_id = id + 1;
        id
    }

    pub fn take_run_id(&mut self) -> i64 {
        let max = self.runs.iter().map(|r| r.id).max().unwrap_or(0);
        let id = self.next_run_id.max(max + 1).max(1);
        self.next_run_id = id + 1;
        id
    }

    pub fn running_run(&self, job_id: i64) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.job_id == job_id && r.status == RunStatus::Running)
    }
}

/// Present-with-a-value, present-as-null, or absent (update bodies distinguish all three).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T> Patch<T> {
    pub fn is_present(&self) -> bool {
        !matches!(self, Patch::Absent)
    }
    pub fn set(self) -> Option<T> {
        match self {
            Patch::Set(v) => Some(v),
            _ => None,
        }
    }
}

/// What to schedule: validated shape, not yet checked for a next run.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleSpec {
    Interval(i64),
    Cron {
        expression: String,
        timezone: String,
    },
}

impl ScheduleSpec {
    /// `Schedule: …` line of the run logs.
    pub fn describe(&self) -> String {
        match self {
            ScheduleSpec::Interval(n) => format!("every {n} minutes"),
            ScheduleSpec::Cron {
                expression,
                timezone,
            } => format!("{expression} ({timezone})"),
        }
    }

    pub fn of_job(job: &Job) -> ScheduleSpec {
        match job.schedule_mode {
            ScheduleMode::Interval => {
                ScheduleSpec::Interval(job.interval_minutes.unwrap_or(DEFAULT_INTERVAL_MINUTES))
            }
            ScheduleMode::Cron => ScheduleSpec::Cron {
                expression: job.cron_expression.clone().unwrap_or_default(),
                timezone: job
                    .timezone
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| DEFAULT_TIMEZONE.into()),
            },
        }
    }
}

/// A validated create body (already trimmed and normalised).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub schedule: ScheduleSpec,
    pub agent_slug: Option<String>,
    pub prompt: String,
    pub model: Option<String>,
    pub skill_metadata: Option<SkillMetadata>,
    pub permission_config: Option<PermissionConfig>,
    pub branch: Option<String>,
}

/// A validated update body; strings are raw (trimmed when applied).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobPatch {
    pub name: Option<String>,
    pub description: Patch<String>,
    pub enabled: Option<bool>,
    pub schedule_mode: Option<ScheduleMode>,
    pub interval_minutes: Patch<i64>,
    pub cron_expression: Patch<String>,
    pub timezone: Patch<String>,
    pub agent_slug: Patch<String>,
    pub prompt: Option<String>,
    pub model: Patch<String>,
    pub skill_metadata: Patch<SkillMetadata>,
    pub permission_config: Patch<PermissionConfig>,
    pub branch: Patch<String>,
}

// ---------------------------------------------------------------------------------------------
// Field readers: every problem becomes a Detail; reading goes on so one answer lists them all.

fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    base: Vec<Value>,
    details: &'a mut Vec<Detail>,
}

impl<'a> Reader<'a> {
    fn path(&self, key: &str) -> Vec<Value> {
        let mut p = self.base.clone();
        p.push(Value::from(key));
        p
    }

    fn type_error(&mut self, path: Vec<Value>, expected: &str, got: Option<&Value>) {
        self.details.push(Detail::new(
            path,
            "invalid_type",
            format!(
                "Invalid input: expected {expected}, received {}",
                type_name(got)
            ),
        ));
    }

    /// A field that may be absent or, when `nullable`, null.
    fn raw(&mut self, key: &str, nullable: bool, expected: &str) -> Patch<&'a Value> {
        match self.obj.get(key) {
            None => Patch::Absent,
            Some(Value::Null) if nullable => Patch::Null,
            Some(Value::Null) => {
                self.type_error(self.path(key), expected, Some(&Value::Null));
                Patch::Absent
            }
            Some(v) => Patch::Set(v),
        }
    }

    fn string(&mut self, key: &str, min: usize, max: usize, nullable: bool) -> Patch<String> {
        let v = match self.raw(key, nullable, "string") {
            Patch::Set(v) => v,
            Patch::Null => return Patch::Null,
            Patch::Absent => return Patch::Absent,
        };
        let path = self.path(key);
        match check_string(v, min, max, path, self.details) {
            Some(s) => Patch::Set(s),
            None => Patch::Absent,
        }
    }

    fn required_string(&mut self, key: &str, min: usize, max: usize) -> Option<String> {
        match self.string(key, min, max, false) {
            Patch::Set(s) => Some(s),
            _ => {
                if !self.obj.contains_key(key) {
                    self.type_error(self.path(key), "string", None);
                }
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        match self.raw(key, false, "boolean") {
            Patch::Set(Value::Bool(b)) => Some(*b),
            Patch::Set(v) => {
                self.type_error(self.path(key), "boolean", Some(v));
                None
            }
            _ => None,
        }
    }

    fn int(&mut self, key: &str, min: i64, max: i64, nullable: bool) -> Patch<i64> {
        let v = match self.raw(key, nullable, "number") {
            Patch::Set(v) => v,
            Patch::Null => return Patch::Null,
            Patch::Absent => return Patch::Absent,
        };
        let path = self.path(key);
        let Some(f) = v.as_f64().filter(|_| v.is_number()) else {
            self.type_error(path, "number", Some(v));
            return Patch::Absent;
        };
        // JSON cannot tell 5 from 5.0 in JavaScript either; a fraction is not an integer.
        if f.fract() != 0.0 || !f.is_finite() {
            self.details.push(Detail::new(
                path,
                "invalid_type",
                "Invalid input: expected int, received number",
            ));
            return Patch::Absent;
        }
        if f < min as f64 {
            self.details.push(Detail::new(
                path,
                "too_small",
                format!("Too small: expected number to be >={min}"),
            ));
            return Patch::Absent;
        }
        if f > max as f64 {
            self.details.push(Detail::new(
                path,
                "too_big",
                format!("Too big: expected number to be <={max}"),
            ));
            return Patch::Absent;
        }
        Patch::Set(f as i64)
    }

    fn mode(&mut self, key: &str) -> Option<ScheduleMode> {
        let v = match self.raw(key, false, "string") {
            Patch::Set(v) => v,
            _ => return None,
        };
        match v.as_str() {
            Some("interval") => Some(ScheduleMode::Interval),
            Some("cron") => Some(ScheduleMode::Cron),
            _ => {
                self.details.push(Detail::new(
                    self.path(key),
                    "invalid_value",
                    "Invalid option: expected one of \"interval\"|\"cron\"",
                ));
                None
            }
        }
    }

    fn object(&mut self, key: &str) -> Patch<&'a Map<String, Value>> {
        match self.raw(key, true, "object") {
            Patch::Set(Value::Object(o)) => Patch::Set(o),
            Patch::Set(v) => {
                self.type_error(self.path(key), "object", Some(v));
                Patch::Absent
            }
            Patch::Null => Patch::Null,
            Patch::Absent => Patch::Absent,
        }
    }

    fn nested<'b>(&'b mut self, key: &str, obj: &'a Map<String, Value>) -> Reader<'b>
    where
        'a: 'b,
    {
        Reader {
            obj,
            base: self.path(key),
            details: &mut *self.details,
        }
    }

    /// An array of strings, each `min..=max` long, at most `max_items` of them.
    fn string_list(
        &mut self,
        key: &str,
        min: usize,
        max: usize,
        max_items: usize,
    ) -> Option<Vec<String>> {
        let v = match self.raw(key, false, "array") {
            Patch::Set(v) => v,
            _ => return None,
        };
        let path = self.path(key);
        let Some(items) = v.as_array() else {
            self.type_error(path, "array", Some(v));
            return None;
        };
        if items.len() > max_items {
            self.details.push(Detail::new(
                path,
                "too_big",
                format!("Too big: expected array to have <={max_items} items"),
            ));
            return None;
        }
        let before = self.details.len();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut p = path.clone();
            p.push(Value::from(i));
            if let Some(s) = check_string(item, min, max, p, self.details) {
                out.push(s);
            }
        }
        (self.details.len() == before).then_some(out)
    }

    fn skill_metadata(&mut self, key: &str) -> Patch<SkillMetadata> {
        let obj = match self.object(key) {
            Patch::Set(o) => o,
            Patch::Null => return Patch::Null,
            Patch::Absent => return Patch::Absent,
        };
        let mut r = self.nested(key, obj);
        let slugs = r.string_list("skillSlugs", 1, SKILL_SLUG_MAX, MAX_SKILL_SLUGS);
        let notes = r.string("notes", 0, SKILL_NOTES_MAX, false).set();
        let failed = obj.contains_key("skillSlugs") && slugs.is_none();
        if failed {
            return Patch::Absent;
        }
        Patch::Set(SkillMetadata {
            skill_slugs: slugs.unwrap_or_default(),
            notes,
        })
    }

    fn permission_config(&mut self, key: &str) -> Patch<PermissionConfig> {
        let obj = match self.object(key) {
            Patch::Set(o) => o,
            Patch::Null => return Patch::Null,
            Patch::Absent => return Patch::Absent,
        };
        let mut r = self.nested(key, obj);
        let external = r.bool("allowExternalDirectory").unwrap_or(false);
        let questions = r.bool("allowQuestions").unwrap_or(false);
        let patterns = r.string_list(
            "bashDenyPatterns",
            1,
            BASH_DENY_PATTERN_MAX,
            MAX_BASH_DENY_PATTERNS,
        );
        Patch::Set(PermissionConfig {
            allow_external_directory: external,
            allow_questions: questions,
            bash_deny_patterns: patterns.unwrap_or_else(default_deny_patterns),
        })
    }
}

fn check_string(
    v: &Value,
    min: usize,
    max: usize,
    path: Vec<Value>,
    details: &mut Vec<Detail>,
) -> Option<String> {
    let Some(s) = v.as_str() else {
        details.push(Detail::new(
            path,
            "invalid_type",
            format!(
                "Invalid input: expected string, received {}",
                type_name(Some(v))
            ),
        ));
        return None;
    };
    let len = utf16_len(s);
    if len < min {
        details.push(Detail::new(
            path,
            "too_small",
            format!("Too small: expected string to have >={min} characters"),
        ));
        return None;
    }
    if len > max {
        details.push(Detail::new(
            path,
            "too_big",
            format!("Too big: expected string to have <={max} characters"),
        ));
        return None;
    }
    Some(s.to_string())
}

fn blank(path: Vec<Value>) -> Detail {
    Detail::new(path, "too_small", "Must not be empty or only whitespace")
}

fn body_object(body: &Value) -> Result<&Map<String, Value>, Vec<Detail>> {
    body.as_object().ok_or_else(|| {
        vec![Detail::new(
            Vec::new(),
            "invalid_type",
            format!(
                "Invalid input: expected object, received {}",
                type_name(Some(body))
            ),
        )]
    })
}

/// Trimmed; empty → `None`.
fn trimmed_opt(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Validates a create body (reference create schema, discriminated on `scheduleMode`).
pub fn validate_create(body: &Value) -> Result<NewJob, Vec<Detail>> {
    let obj = body_object(body)?;
    let mut details = Vec::new();
    let mut r = Reader {
        obj,
        base: Vec::new(),
        details: &mut details,
    };
    let mode = r.mode("scheduleMode");
    if !obj.contains_key("scheduleMode") {
        r.details.push(Detail::new(
            path!["scheduleMode"],
            "invalid_value",
            "Invalid option: expected one of \"interval\"|\"cron\"",
        ));
    }
    let name = r.required_string("name", 1, NAME_MAX);
    let description = r.string("description", 0, DESCRIPTION_MAX, false).set();
    let enabled = r.bool("enabled").unwrap_or(true);
    let agent_slug = r.string("agentSlug", 1, AGENT_SLUG_MAX, false).set();
    let prompt = r.required_string("prompt", 1, PROMPT_MAX);
    let model = r.string("model", 1, MODEL_MAX, false).set();
    let skill_metadata = r.skill_metadata("skillMetadata").set();
    let permission_config = r.permission_config("permissionConfig").set();
    let branch = r.string("branch", 1, BRANCH_MAX, true).set();
    let schedule = match mode {
        Some(ScheduleMode::Interval) => {
            let n = r.int(
                "intervalMinutes",
                INTERVAL_MIN_MINUTES,
                INTERVAL_MAX_MINUTES,
                false,
            );
            if !obj.contains_key("intervalMinutes") {
                r.type_error(path!["intervalMinutes"], "number", None);
            }
            n.set().map(ScheduleSpec::Interval)
        }
        Some(ScheduleMode::Cron) => {
            let expr = r.required_string("cronExpression", 1, CRON_EXPRESSION_MAX);
            let tz = r.string("timezone", 0, TIMEZONE_MAX, true);
            expr.map(|e| ScheduleSpec::Cron {
                expression: e.trim().to_string(),
                timezone: trimmed_opt(tz.set()).unwrap_or_else(|| DEFAULT_TIMEZONE.into()),
            })
        }
        None => None,
    };
    let name = name.map(|n| n.trim().to_string());
    let prompt = prompt.map(|p| p.trim().to_string());
    if name.as_deref() == Some("") {
        details.push(blank(path!["name"]));
    }
    if prompt.as_deref() == Some("") {
        details.push(blank(path!["prompt"]));
    }
    if let Some(ScheduleSpec::Cron { expression, .. }) = &schedule {
        if expression.is_empty() {
            details.push(blank(path!["cronExpression"]));
        }
    }
    match (name, prompt, schedule) {
        (Some(name), Some(prompt), Some(schedule)) if details.is_empty() => Ok(NewJob {
            name,
            description: trimmed_opt(description),
            enabled,
            schedule,
            agent_slug: trimmed_opt(agent_slug),
            prompt,
            model: trimmed_opt(model),
            skill_metadata,
            permission_config,
            branch: trimmed_opt(branch),
        }),
        _ => Err(details),
    }
}

/// Validates an update body (all fields optional; some nullable).
pub fn validate_update(body: &Value) -> Result<JobPatch, Vec<Detail>> {
    let obj = body_object(body)?;
    let mut details = Vec::new();
    let mut r = Reader {
        obj,
        base: Vec::new(),
        details: &mut details,
    };
    let patch = JobPatch {
        name: r.string("name", 1, NAME_MAX, false).set(),
        description: r.string("description", 0, DESCRIPTION_MAX, true),
        enabled: r.bool("enabled"),
        schedule_mode: r.mode("scheduleMode"),
        interval_minutes: r.int(
            "intervalMinutes",
            INTERVAL_MIN_MINUTES,
            INTERVAL_MAX_MINUTES,
            true,
        ),
        cron_expression: r.string("cronExpression", 1, CRON_EXPRESSION_MAX, true),
        timezone: r.string("timezone", 0, TIMEZONE_MAX, true),
        agent_slug: r.string("agentSlug", 1, AGENT_SLUG_MAX, true),
        prompt: r.string("prompt", 1, PROMPT_MAX, false).set(),
        model: r.string("model", 1, MODEL_MAX, true),
        skill_metadata: r.skill_metadata("skillMetadata"),
        permission_config: r.permission_config("permissionConfig"),
        branch: r.string("branch", 1, BRANCH_MAX, true),
    };
    if patch.name.as_deref().is_some_and(|s| s.trim().is_empty()) {
        details.push(blank(path!["name"]));
    }
    if patch.prompt.as_deref().is_some_and(|s| s.trim().is_empty()) {
        details.push(blank(path!["prompt"]));
    }
    if matches!(&patch.cron_expression, Patch::Set(s) if s.trim().is_empty()) {
        details.push(blank(path!["cronExpression"]));
    }
    if details.is_empty() {
        Ok(patch)
    } else {
        Err(details)
    }
}

/// Checks the cron expression and time zone and computes the first `nextRunAt` after `now`
/// (`None` when disabled).
pub fn plan_schedule(
    spec: &ScheduleSpec,
    enabled: bool,
    now: i64,
) -> Result<Option<i64>, Vec<Detail>> {
    let next = match spec {
        ScheduleSpec::Interval(n) => now + n * MINUTE_MS,
        ScheduleSpec::Cron {
            expression,
            timezone,
        } => {
            let mut details = Vec::new();
            let cron = Cron::parse(expression)
                .map_err(|e| {
                    details.push(Detail::new(
                        path!["cronExpression"],
                        "invalid_format",
                        e.to_string(),
                    ))
                })
                .ok();
            let tz = cron::time_zone(timezone);
            if tz.is_none() {
                details.push(Detail::new(
                    path!["timezone"],
                    "invalid_value",
                    format!("Invalid timezone: {timezone}"),
                ));
            }
            let (Some(cron), Some(tz)) = (cron, tz) else {
                return Err(details);
            };
            cron.next_after(&tz, now).ok_or_else(|| {
                vec![Detail::new(
                    path!["cronExpression"],
                    "custom",
                    format!("Cron expression \"{expression}\" has no upcoming run"),
                )]
            })?
        }
    };
    Ok(enabled.then_some(next))
}

/// The next firing after a scheduled run started at `now` that was due at `due`: interval
/// jobs continue on their grid from `due`; cron jobs take the next occurrence after `now`.
/// `None` when the stored expression or zone no longer parses (the job then waits for an
/// edit).
pub fn next_after_fire(job: &Job, due: i64, now: i64) -> Option<i64> {
    match ScheduleSpec::of_job(job) {
        ScheduleSpec::Interval(n) => Some(cron::advance_interval(due, n, now)),
        ScheduleSpec::Cron {
            expression,
            timezone,
        } => {
            let cron = Cron::parse(&expression).ok()?;
            let tz = cron::time_zone(&timezone)?;
            cron.next_after(&tz, now.max(due))
        }
    }
}

/// Builds a new job from a validated body.
pub fn new_job(id: i64, repo_id: i64, input: NewJob, now: i64) -> Result<Job, Vec<Detail>> {
    let next_run_at = plan_schedule(&input.schedule, input.enabled, now)?;
    let (mode, interval, expr, tz) = split_spec(input.schedule);
    Ok(Job {
        id,
        repo_id,
        name: input.name,
        description: input.description,
        enabled: input.enabled,
        schedule_mode: mode,
        interval_minutes: interval,
        cron_expression: expr,
        timezone: tz,
        agent_slug: input.agent_slug,
        prompt: input.prompt,
        model: input.model,
        skill_metadata: input.skill_metadata,
        permission_config: input.permission_config,
        branch: input.branch,
        created_at: now,
        updated_at: now,
        last_run_at: None,
        next_run_at,
    })
}

fn split_spec(spec: ScheduleSpec) -> (ScheduleMode, Option<i64>, Option<String>, Option<String>) {
    match spec {
        ScheduleSpec::Interval(n) => (ScheduleMode::Interval, Some(n), None, None),
        ScheduleSpec::Cron {
            expression,
            timezone,
        } => (ScheduleMode::Cron, None, Some(expression), Some(timezone)),
    }
}

/// absent → existing; null or blank → null; else trimmed.
fn merge_opt(patch: Patch<String>, existing: &Option<String>) -> Option<String> {
    match patch {
        Patch::Absent => existing.clone(),
        Patch::Null => None,
        Patch::Set(s) => trimmed_opt(Some(s)),
    }
}

/// Applies a validated patch to `job` (reference update merge). The schedule is always
/// re-validated; `nextRunAt` is recomputed from `now` when a schedule field or `enabled` was
/// given or there was none, and is null when disabled.
pub fn apply_patch(job: &Job, patch: JobPatch, now: i64) -> Result<Job, Vec<Detail>> {
    let enabled = patch.enabled.unwrap_or(job.enabled);
    let mode = patch.schedule_mode.unwrap_or(job.schedule_mode);
    let schedule_touched = patch.schedule_mode.is_some()
        || patch.interval_minutes.is_present()
        || patch.cron_expression.is_present()
        || patch.timezone.is_present()
        || patch.enabled.is_some();
    let spec = match mode {
        ScheduleMode::Interval => ScheduleSpec::Interval(
            patch
                .interval_minutes
                .set()
                .or(job.interval_minutes)
                .unwrap_or(DEFAULT_INTERVAL_MINUTES),
        ),
        ScheduleMode::Cron => {
            let expression = patch
                .cron_expression
                .set()
                .or_else(|| job.cron_expression.clone())
                .unwrap_or_default()
                .trim()
                .to_string();
            if expression.is_empty() {
                return Err(vec![Detail::new(
                    path!["cronExpression"],
                    "invalid_type",
                    "Invalid input: a cron schedule needs a cronExpression",
                )]);
            }
            let timezone = trimmed_opt(patch.timezone.set())
                .or_else(|| trimmed_opt(job.timezone.clone()))
                .unwrap_or_else(|| DEFAULT_TIMEZONE.into());
            ScheduleSpec::Cron {
                expression,
                timezone,
            }
        }
    };
    let planned = plan_schedule(&spec, enabled, now)?;
    let next_run_at = if !enabled {
        None
    } else if schedule_touched || job.next_run_at.is_none() {
        planned
    } else {
        job.next_run_at
    };
    let (mode, interval, expr, tz) = split_spec(spec);
    let keep_or = |new: Option<String>, old: &String| {
        new.map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| old.clone())
    };
    Ok(Job {
        id: job.id,
        repo_id: job.repo_id,
        name: keep_or(patch.name, &job.name),
        description: merge_opt(patch.description, &job.description),
        enabled,
        schedule_mode: mode,
        interval_minutes: interval,
        cron_expression: expr,
        timezone: tz,
        agent_slug: merge_opt(patch.agent_slug, &job.agent_slug),
        prompt: keep_or(patch.prompt, &job.prompt),
        model: merge_opt(patch.model, &job.model),
        skill_metadata: match patch.skill_metadata {
            Patch::Absent => job.skill_metadata.clone(),
            Patch::Null => None,
            Patch::Set(s) => Some(s),
        },
        permission_config: match patch.permission_config {
            Patch::Absent => job.permission_config.clone(),
            Patch::Null => None,
            Patch::Set(p) => Some(p),
        },
        branch: merge_opt(patch.branch, &job.branch),
        created_at: job.created_at,
        updated_at: now,
        last_run_at: job.last_run_at,
        next_run_at,
    })
}

/// A run as listed: without `logText` and `responseText` (reference lists send them null).
pub fn run_summary(run: &Run) -> Run {
    Run {
        log_text: None,
        response_text: None,
        ..run.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000_000;

    fn create_err(body: Value) -> Vec<Detail> {
        match validate_create(&body) {
            Err(d) => d,
            Ok(j) => panic!("expected 400 for {body}, got {j:?}"),
        }
    }

    fn paths(details: &[Detail]) -> Vec<String> {
        details
            .iter()
            .map(|d| serde_json::to_string(&d.path).unwrap())
            .collect()
    }

    fn interval_body() -> Value {
        json!({"name": "Daily", "prompt": "Do it", "scheduleMode": "interval", "intervalMinutes": 30})
    }

    #[test]
    fn create_interval_defaults_and_trimming() {
        let mut b = interval_body();
        b["name"] = json!("  Daily  ");
        b["description"] = json!("   ");
        b["agentSlug"] = json!(" build ");
        b["unknown"] = json!(1);
        let n = validate_create(&b).unwrap();
        assert_eq!(n.name, "Daily");
        assert_eq!(n.description, None);
        assert_eq!(n.agent_slug.as_deref(), Some("build"));
        assert!(n.enabled);
        assert_eq!(n.schedule, ScheduleSpec::Interval(30));
        let job = new_job(1, 0, n, NOW).unwrap();
        assert_eq!(job.next_run_at, Some(NOW + 30 * MINUTE_MS));
        let v = serde_json::to_value(&job).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "id",
                "repoId",
                "name",
                "description",
                "enabled",
                "scheduleMode",
                "intervalMinutes",
                "cronExpression",
                "timezone",
                "agentSlug",
                "prompt",
                "model",
                "skillMetadata",
                "permissionConfig",
                "branch",
                "createdAt",
                "updatedAt",
                "lastRunAt",
                "nextRunAt"
            ]
        );
        assert!(v["cronExpression"].is_null() && v["timezone"].is_null());
    }

    #[test]
    fn cron_without_timezone_is_utc() {
        let b = json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": " 0 9 * * * "});
        let n = validate_create(&b).unwrap();
        assert_eq!(
            n.schedule,
            ScheduleSpec::Cron {
                expression: "0 9 * * *".into(),
                timezone: "UTC".into()
            }
        );
        let b = json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": "0 9 * * *", "timezone": "  "});
        assert!(
            matches!(validate_create(&b).unwrap().schedule, ScheduleSpec::Cron { timezone, .. } if timezone == "UTC")
        );
        // The zone is stored as typed (case kept).
        let b = json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": "0 9 * * *", "timezone": "america/new_york"});
        let job = new_job(1, 0, validate_create(&b).unwrap(), NOW).unwrap();
        assert_eq!(job.timezone.as_deref(), Some("america/new_york"));
        assert!(job.interval_minutes.is_none());
    }

    #[test]
    fn create_validation_failures_each_have_details() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "[]"),
            (json!("x"), "[]"),
            (json!(null), "[]"),
            (json!({"name": "n", "prompt": "p"}), "[\"scheduleMode\"]"),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "weekly"}),
                "[\"scheduleMode\"]",
            ),
            (
                json!({"prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": "   ", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": "n", "prompt": " \n\t", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"prompt\"]",
            ),
            (
                json!({"name": "", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": "x".repeat(121), "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": "😀".repeat(61), "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": 5, "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 5}),
                "[\"name\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval"}),
                "[\"intervalMinutes\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 4}),
                "[\"intervalMinutes\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10081}),
                "[\"intervalMinutes\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 7.5}),
                "[\"intervalMinutes\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": "10"}),
                "[\"intervalMinutes\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "enabled": "yes"}),
                "[\"enabled\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "description": null}),
                "[\"description\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "agentSlug": ""}),
                "[\"agentSlug\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "model": "m".repeat(201)}),
                "[\"model\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "skillMetadata": {"skillSlugs": [""]}}),
                "[\"skillMetadata\",\"skillSlugs\",0]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "skillMetadata": {"skillSlugs": "a"}}),
                "[\"skillMetadata\",\"skillSlugs\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "skillMetadata": "a"}),
                "[\"skillMetadata\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "permissionConfig": {"allowQuestions": 1}}),
                "[\"permissionConfig\",\"allowQuestions\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "permissionConfig": {"bashDenyPatterns": vec!["x"; 201]}}),
                "[\"permissionConfig\",\"bashDenyPatterns\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10, "branch": ""}),
                "[\"branch\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "cron"}),
                "[\"cronExpression\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": "  "}),
                "[\"cronExpression\"]",
            ),
            (
                json!({"name": "n", "prompt": "p", "scheduleMode": "cron", "cronExpression": "* * *", "timezone": 3}),
                "[\"timezone\"]",
            ),
        ];
        for (body, path) in cases {
            let d = create_err(body.clone());
            assert!(!d.is_empty(), "{body}");
            assert!(
                paths(&d).contains(&path.to_string()),
                "{body}: {:?}",
                paths(&d)
            );
        }
        // All problems are reported at once.
        let d = create_err(
            json!({"name": "", "prompt": 1, "scheduleMode": "interval", "intervalMinutes": 1}),
        );
        assert_eq!(
            paths(&d),
            ["[\"name\"]", "[\"prompt\"]", "[\"intervalMinutes\"]"]
        );
    }

    #[test]
    fn cron_and_timezone_are_checked_when_planning() {
        let spec = |e: &str, tz: &str| ScheduleSpec::Cron {
            expression: e.into(),
            timezone: tz.into(),
        };
        let d = plan_schedule(&spec("0 9 * * *", "Mars/Phobos"), true, NOW).unwrap_err();
        assert_eq!(d[0].message, "Invalid timezone: Mars/Phobos");
        assert_eq!(d[0].path, path!["timezone"]);
        let d = plan_schedule(&spec("61 * * * *", "UTC"), true, NOW).unwrap_err();
        assert!(d[0].message.contains("minute value 61"), "{}", d[0].message);
        let d = plan_schedule(&spec("0 0 30 2 *", "UTC"), true, NOW).unwrap_err();
        assert_eq!(
            d[0].message,
            "Cron expression \"0 0 30 2 *\" has no upcoming run"
        );
        assert_eq!(
            plan_schedule(&spec("@hourly", "UTC"), false, NOW).unwrap(),
            None
        );
        assert!(plan_schedule(&spec("@hourly", "Europe/BERLIN"), true, NOW)
            .unwrap()
            .is_some());
    }

    #[test]
    fn permission_defaults_are_filled() {
        let b = json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 10,
                       "permissionConfig": {"allowQuestions": true}, "skillMetadata": {"notes": "x"}});
        let n = validate_create(&b).unwrap();
        let p = n.permission_config.unwrap();
        assert!(p.allow_questions && !p.allow_external_directory);
        assert_eq!(p.bash_deny_patterns.len(), 10);
        let s = n.skill_metadata.unwrap();
        assert!(s.skill_slugs.is_empty());
        assert_eq!(s.notes.as_deref(), Some("x"));
    }

    fn job() -> Job {
        new_job(7, 0, validate_create(&interval_body()).unwrap(), NOW).unwrap()
    }

    #[test]
    fn update_merge_rules() {
        let j = job();
        let later = NOW + 1000;
        // Only the name: schedule kept, nextRunAt kept.
        let p = validate_update(&json!({"name": " New "})).unwrap();
        let u = apply_patch(&j, p, later).unwrap();
        assert_eq!(u.name, "New");
        assert_eq!(u.next_run_at, j.next_run_at);
        assert_eq!(u.updated_at, later);
        // Interval given: recomputed from now.
        let p = validate_update(&json!({"intervalMinutes": 10})).unwrap();
        let u = apply_patch(&j, p, later).unwrap();
        assert_eq!(u.next_run_at, Some(later + 10 * MINUTE_MS));
        // Disable → null; re-enable → recomputed from now.
        let p = validate_update(&json!({"enabled": false})).unwrap();
        let off = apply_patch(&j, p, later).unwrap();
        assert_eq!(off.next_run_at, None);
        let p = validate_update(&json!({"enabled": true})).unwrap();
        let on = apply_patch(&off, p, later + 5000).unwrap();
        assert_eq!(on.next_run_at, Some(later + 5000 + 30 * MINUTE_MS));
        // Nullable strings: null or blank clears, absent keeps.
        let mut with_desc = j.clone();
        with_desc.description = Some("d".into());
        let p = validate_update(&json!({"description": null, "model": " "})).unwrap();
        let u = apply_patch(&with_desc, p, later).unwrap();
        assert_eq!(u.description, None);
        assert_eq!(u.model, None);
        // Switch to cron: needs an expression; zone defaults to UTC.
        let p = validate_update(&json!({"scheduleMode": "cron"})).unwrap();
        let d = apply_patch(&j, p, later).unwrap_err();
        assert_eq!(d[0].path, path!["cronExpression"]);
        let p =
            validate_update(&json!({"scheduleMode": "cron", "cronExpression": "@daily"})).unwrap();
        let c = apply_patch(&j, p, later).unwrap();
        assert_eq!(c.timezone.as_deref(), Some("UTC"));
        assert_eq!(c.interval_minutes, None);
        // And back to interval without a value: 60.
        let p = validate_update(&json!({"scheduleMode": "interval"})).unwrap();
        let i = apply_patch(&c, p, later).unwrap();
        assert_eq!(i.interval_minutes, Some(60));
        assert_eq!(i.cron_expression, None);
        // Bad zone on update.
        let p = validate_update(&json!({"timezone": "Nowhere/Land"})).unwrap();
        let d = apply_patch(&c, p, later).unwrap_err();
        assert_eq!(d[0].message, "Invalid timezone: Nowhere/Land");
    }

    #[test]
    fn update_validation_failures() {
        for body in [
            json!({"name": "  "}),
            json!({"prompt": ""}),
            json!({"name": null}),
            json!({"enabled": null}),
            json!({"scheduleMode": null}),
            json!({"intervalMinutes": 3}),
            json!({"cronExpression": " "}),
            json!({"skillMetadata": []}),
            json!([1]),
        ] {
            let d = validate_update(&body).unwrap_err();
            assert!(!d.is_empty(), "{body}");
        }
        let p = validate_update(&json!({"intervalMinutes": null, "cronExpression": null, "timezone": null, "branch": null})).unwrap();
        assert_eq!(p.interval_minutes, Patch::Null);
    }

    #[test]
    fn next_after_fire_interval_keeps_its_grid() {
        let j = job();
        let due = j.next_run_at.unwrap();
        assert_eq!(
            next_after_fire(&j, due, due + 5),
            Some(due + 30 * MINUTE_MS)
        );
        // Overdue by 3.5 slots (server was down): one run now, next on the grid.
        let now = due + 105 * MINUTE_MS;
        assert_eq!(next_after_fire(&j, due, now), Some(due + 120 * MINUTE_MS));
    }

    #[test]
    fn file_ids_never_reused() {
        let mut f = ScheduleFile::default();
        assert_eq!(f.take_job_id(), 1);
        assert_eq!(f.take_job_id(), 2);
        f.jobs.push(Job { id: 10, ..job() });
        assert_eq!(f.take_job_id(), 11);
        f.jobs.clear();
        assert_eq!(f.take_job_id(), 12);
    }
}
