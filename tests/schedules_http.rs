//! Schedules over HTTP against the real `assistantd` binary (issue 6): exact shapes and
//! errors of the routes, repos other than 0 taken from `repos.json`, and runs on the real
//! OpenCode server with the fake model of `schedules_opencode` — a manual run to completion,
//! a cancel, a run in another repo's directory, and a SIGKILL of assistantd in the middle of a
//! run followed by a restart that recovers it.

use crate::schedules_opencode::{
    FakeModel, OpenCode, FAST_TEXT, MODE_ENDLESS, MODE_FAST, MODE_SLOW, PASSWORD, SLOW_TEXT,
};
use crate::util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one run may take to reach the state a step waits for.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// How long the recovered run may take after the restart.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

const P0: &str = "/api/internal/repos/0/schedules";
const P5: &str = "/api/internal/repos/5/schedules";

/// `repos.json` with repo 5 (`localPath` `widget`, so `fullPath` is `<state>/repos/widget`).
fn write_repos(state: &Path) {
    let repos = json!({"repos": [{
        "id": 5, "name": "Widget", "repoUrl": "https://example.com/o/widget.git",
        "localPath": "widget", "cloneStatus": "ready", "clonedAt": 1_700_000_000_000i64
    }]});
    std::fs::write(state.join("repos.json"), repos.to_string()).unwrap();
    std::fs::create_dir_all(state.join("repos/widget")).unwrap();
}

/// `(status, JSON body)` of an authorised call.
fn call(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let r = s.call(method, path, body.as_deref());
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

/// The job a create answered, checked field by field against what was sent.
fn expect_created(v: &Value, id: i64, repo_id: i64, before: i64, after: i64) -> Value {
    let job = v["job"].clone();
    let created = job["createdAt"].as_i64().unwrap();
    assert!((before..=after).contains(&created), "{job}");
    assert_eq!(job["id"], id);
    assert_eq!(job["repoId"], repo_id);
    assert_eq!(job["updatedAt"], created);
    assert_eq!(job["lastRunAt"], Value::Null);
    job
}

fn wait_finished(s: &TestServer, path: &str, deadline: Duration) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let (status, v) = call(s, "GET", path, None);
        assert_eq!(status, 200, "{v}");
        if v["run"]["status"] != "running" {
            return v["run"].clone();
        }
        assert!(
            Instant::now() < end,
            "run never finished within {deadline:?}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bad_body(path: &str, code: &str, message: &str) -> Value {
    json!({"error": "Invalid request body",
           "details": [{"path": [path], "code": code, "message": message}]})
}

#[test]
fn schedule_routes_exact_shapes_errors_and_other_repos() {
    let d = TempDir::new("sched-http");
    let state = d.join("state");
    // Port 9 is closed: runs fail at session creation.
    let s = TestServer::start(&state, &[], &[]);
    write_repos(&state);

    // Create on repo 0: 201 and the whole job.
    let before = now();
    let (st, v) = call(
        &s,
        "POST",
        P0,
        Some(
            json!({"name": "  Nightly  ", "prompt": " Say hi ", "scheduleMode": "interval",
                    "intervalMinutes": 30, "unknownKey": 1}),
        ),
    );
    let after = now();
    assert_eq!(st, 201, "{v}");
    let job1 = expect_created(&v, 1, 0, before, after);
    let created = job1["createdAt"].as_i64().unwrap();
    assert_eq!(
        v,
        json!({"job": {
            "id": 1, "repoId": 0, "name": "Nightly", "description": null, "enabled": true,
            "scheduleMode": "interval", "intervalMinutes": 30, "cronExpression": null,
            "timezone": null, "agentSlug": null, "prompt": "Say hi", "model": null,
            "skillMetadata": null, "permissionConfig": null, "branch": null,
            "createdAt": created, "updatedAt": created, "lastRunAt": null,
            "nextRunAt": created + 30 * 60_000
        }})
    );
    // Cron without a timezone is UTC; @hourly's next run is the next whole hour.
    let (st, v) = call(
        &s,
        "POST",
        P0,
        Some(
            json!({"name": "Hourly", "prompt": "p", "scheduleMode": "cron",
                    "cronExpression": " @hourly ", "enabled": true}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let job2 = v["job"].clone();
    let c2 = job2["createdAt"].as_i64().unwrap();
    assert_eq!(
        (
            &job2["id"],
            &job2["cronExpression"],
            &job2["timezone"],
            &job2["intervalMinutes"]
        ),
        (&json!(2), &json!("@hourly"), &json!("UTC"), &Value::Null)
    );
    assert_eq!(job2["nextRunAt"], (c2 / 3_600_000 + 1) * 3_600_000);

    // Validation failures: 400 with details, nothing stored.
    let base =
        json!({"name": "n", "prompt": "p", "scheduleMode": "interval", "intervalMinutes": 60});
    let with = |k: &str, val: Value| {
        let mut b = base.clone();
        b[k] = val;
        b
    };
    for (body, want) in [
        (
            with("intervalMinutes", json!(4)),
            bad_body(
                "intervalMinutes",
                "too_small",
                "Too small: expected number to be >=5",
            ),
        ),
        (
            with("intervalMinutes", json!(10081)),
            bad_body(
                "intervalMinutes",
                "too_big",
                "Too big: expected number to be <=10080",
            ),
        ),
        (
            with("name", json!(" \t ")),
            bad_body("name", "too_small", "Must not be empty or only whitespace"),
        ),
        (
            with("prompt", json!("   ")),
            bad_body(
                "prompt",
                "too_small",
                "Must not be empty or only whitespace",
            ),
        ),
        (
            json!({"name": "n", "prompt": "p", "scheduleMode": "cron",
                   "cronExpression": "0 9 * * *", "timezone": "Mars/Phobos"}),
            bad_body("timezone", "invalid_value", "Invalid timezone: Mars/Phobos"),
        ),
    ] {
        assert_eq!(
            call(&s, "POST", P0, Some(body.clone())),
            (400, want),
            "{body}"
        );
    }
    let r = s.call("POST", P0, Some("{\"name\": "));
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"], "Invalid JSON");
    assert_eq!(v["details"][0]["path"], json!([]));
    assert_eq!(v["details"][0]["code"], "invalid_format");
    assert!(v["details"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("Malformed JSON: "));
    assert_eq!(
        call(&s, "PATCH", &format!("{P0}/1"), Some(json!({"name": "  "}))),
        (
            400,
            bad_body("name", "too_small", "Must not be empty or only whitespace")
        )
    );
    let (_, v) = call(&s, "GET", P0, None);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 2);

    // Strict ids, unknown jobs and runs, unknown repos.
    for (path, want) in [
        (
            format!("{P0}/1abc"),
            (400, json!({"error": "Invalid schedule id"})),
        ),
        (
            "/api/internal/repos/-1/schedules".to_string(),
            (400, json!({"error": "Invalid repo id"})),
        ),
        (
            format!("{P0}/1/runs/x"),
            (400, json!({"error": "Invalid run id"})),
        ),
        (
            format!("{P0}/999"),
            (404, json!({"error": "Schedule not found"})),
        ),
        (
            format!("{P0}/1/runs/999"),
            (404, json!({"error": "Run not found"})),
        ),
        (
            format!("{P0}/999/runs"),
            (404, json!({"error": "Schedule not found"})),
        ),
        (
            "/api/internal/repos/6/schedules".to_string(),
            (404, json!({"error": "Repo not found"})),
        ),
        (
            "/api/internal/schedules/other".to_string(),
            (404, json!({"error": "Not found"})),
        ),
        // Job 1 belongs to repo 0, not repo 5.
        (
            format!("{P5}/1"),
            (404, json!({"error": "Schedule not found"})),
        ),
    ] {
        assert_eq!(call(&s, "GET", &path, None), want, "GET {path}");
    }
    assert_eq!(
        call(
            &s,
            "POST",
            "/api/internal/repos/6/schedules",
            Some(base.clone())
        ),
        (404, json!({"error": "Repo not found"}))
    );
    assert_eq!(
        call(&s, "POST", &format!("{P0}/999/run"), None),
        (404, json!({"error": "Schedule not found"}))
    );
    let r = s.call("PUT", P0, Some("{}"));
    assert_eq!(
        (r.status, r.header("Allow"), r.json()),
        (
            405,
            Some("GET, POST"),
            json!({"error": "Method not allowed"})
        )
    );
    let r = http("GET", &s.url(P0), &[], None);
    assert_eq!(
        (r.status, r.json()),
        (401, json!({"error": "Unauthorized"}))
    );

    // Repo 5 from repos.json.
    let before = now();
    let (st, v) = call(
        &s,
        "POST",
        P5,
        Some(
            json!({"name": "Widget check", "prompt": "Check", "scheduleMode": "cron",
                    "cronExpression": "0 9 * * 1-5", "timezone": "Europe/Berlin"}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let job3 = expect_created(&v, 3, 5, before, now());
    assert_eq!(job3["timezone"], "Europe/Berlin");
    assert_eq!(call(&s, "GET", P5, None), (200, json!({"jobs": [job3]})));
    assert_eq!(
        call(&s, "GET", &format!("{P5}/3"), None),
        (200, json!({"job": job3}))
    );
    let (_, v) = call(&s, "GET", P0, None);
    let ids: Vec<&Value> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["id"])
        .collect();
    assert_eq!(ids, [&json!(2), &json!(1)], "newest first, repo 0 only");

    // `/all`: ordered by repoPath ("assistant" < "widget"), then name.
    let with_repo = |j: &Value, name: &str, path: &str, url: &str| {
        let mut j = j.clone();
        j["repoName"] = json!(name);
        j["repoPath"] = json!(path);
        j["repoUrl"] = json!(url);
        j
    };
    let (_, j1) = call(&s, "GET", &format!("{P0}/1"), None);
    let (_, j2) = call(&s, "GET", &format!("{P0}/2"), None);
    assert_eq!(
        call(&s, "GET", "/api/internal/schedules/all", None),
        (
            200,
            json!({"jobs": [
                with_repo(&j2["job"], "Assistant", "assistant", ""),
                with_repo(&j1["job"], "Assistant", "assistant", ""),
                with_repo(&job3, "Widget", "widget", "https://example.com/o/widget.git"),
            ]})
        )
    );

    // A run without OpenCode: 502, and a failed manual run with context in `/all/runs`.
    let (st, v) = call(&s, "POST", &format!("{P5}/3/run"), None);
    assert_eq!(st, 502, "{v}");
    assert_eq!(v["error"], "Failed to create OpenCode session");
    assert!(v["detail"].is_string(), "{v}");
    let (st, v) = call(&s, "GET", "/api/internal/schedules/all/runs?repoId=5", None);
    assert_eq!(st, 200);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    let r = &runs[0];
    assert_eq!(
        (
            &r["id"],
            &r["jobId"],
            &r["repoId"],
            &r["status"],
            &r["triggerSource"]
        ),
        (
            &json!(1),
            &json!(3),
            &json!(5),
            &json!("failed"),
            &json!("manual")
        )
    );
    assert_eq!(
        (&r["jobName"], &r["repoName"], &r["repoPath"]),
        (&json!("Widget check"), &json!("Widget"), &json!("widget"))
    );
    assert_eq!(
        (&r["logText"], &r["responseText"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(
        call(&s, "GET", "/api/internal/schedules/all/runs?repoId=0", None),
        (200, json!({"runs": []}))
    );
    assert_eq!(
        call(&s, "POST", &format!("{P5}/3/runs/1/cancel"), None),
        (
            409,
            json!({"error": "Only running schedule runs can be cancelled"})
        )
    );

    // Delete: the job and its runs go.
    assert_eq!(
        call(&s, "DELETE", &format!("{P5}/3"), None),
        (200, json!({"success": true}))
    );
    assert_eq!(
        call(&s, "GET", &format!("{P5}/3"), None),
        (404, json!({"error": "Schedule not found"}))
    );
    assert_eq!(
        call(&s, "GET", "/api/internal/schedules/all/runs", None),
        (200, json!({"runs": []}))
    );
}

#[test]
fn runs_on_real_opencode_over_http_survive_a_sigkill() {
    let started = Instant::now();
    let d = TempDir::new("sched-http-oc");
    let model = FakeModel::start();
    let oc = OpenCode::start(model.port, d.path());
    let state = d.join("state");
    let args = ["--opencode-url", oc.url.as_str()];
    let envs = [("OPENCODE_SERVER_PASSWORD", PASSWORD)];
    let s = TestServer::start(&state, &args, &envs);
    write_repos(&state);
    eprintln!("opencode and assistantd up after {:?}", started.elapsed());

    let (st, v) = call(
        &s,
        "POST",
        P0,
        Some(json!({"name": "Fast job", "prompt": "Say something.",
                    "scheduleMode": "interval", "intervalMinutes": 60})),
    );
    assert_eq!(st, 201, "{v}");
    let job = v["job"]["id"].as_i64().unwrap();
    let next_run_at = v["job"]["nextRunAt"].clone();

    // 1. A manual run to completion with the fake model's exact text.
    let (st, v) = call(&s, "POST", &format!("{P0}/{job}/run"), None);
    assert_eq!(st, 200, "{v}");
    let run = &v["run"];
    assert_eq!(
        (&run["status"], &run["triggerSource"], &run["sessionTitle"]),
        (
            &json!("running"),
            &json!("manual"),
            &json!("Scheduled: Fast job")
        )
    );
    assert!(
        run["sessionId"].as_str().unwrap().starts_with("ses"),
        "{run}"
    );
    let run_id = run["id"].as_i64().unwrap();
    let done = wait_finished(&s, &format!("{P0}/{job}/runs/{run_id}"), RUN_DEADLINE);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["responseText"], FAST_TEXT);
    assert_eq!(done["errorText"], Value::Null);
    assert!(done["finishedAt"].as_i64().unwrap() >= done["startedAt"].as_i64().unwrap());
    let (_, j) = call(&s, "GET", &format!("{P0}/{job}"), None);
    assert_eq!(j["job"]["lastRunAt"], done["finishedAt"]);
    assert_eq!(
        j["job"]["nextRunAt"], next_run_at,
        "a manual run keeps nextRunAt"
    );
    eprintln!("manual run done after {:?}", started.elapsed());

    // 2. A slow answer, cancelled.
    model.set_mode(MODE_ENDLESS);
    let asked = model.requests();
    let (st, v) = call(&s, "POST", &format!("{P0}/{job}/run"), None);
    assert_eq!(st, 200, "{v}");
    let run_id = v["run"]["id"].as_i64().unwrap();
    assert_eq!(
        call(&s, "POST", &format!("{P0}/{job}/run"), None),
        (409, json!({"error": "Schedule is already running"}))
    );
    assert!(
        wait_until(RUN_DEADLINE, || model.requests() > asked),
        "the model was never asked"
    );
    let (st, v) = call(
        &s,
        "POST",
        &format!("{P0}/{job}/runs/{run_id}/cancel"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (&v["run"]["status"], &v["run"]["errorText"]),
        (&json!("cancelled"), &json!("Run cancelled by user."))
    );
    let (_, v) = call(&s, "GET", &format!("{P0}/{job}/runs/{run_id}"), None);
    assert_eq!(v["run"]["status"], "cancelled");
    eprintln!("cancel done after {:?}", started.elapsed());

    // 3. A run on repo 5 goes to OpenCode with `?directory=` = that repo's fullPath.
    model.set_mode(MODE_FAST);
    let (_, repos) = call(&s, "GET", "/api/internal/repos", None);
    let full_path = repos["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == 5)
        .unwrap()["fullPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(Path::new(&full_path), state.join("repos/widget"));
    let (st, v) = call(
        &s,
        "POST",
        P5,
        Some(json!({"name": "Widget job", "prompt": "Say something.",
                    "scheduleMode": "interval", "intervalMinutes": 60})),
    );
    assert_eq!(st, 201, "{v}");
    let wjob = v["job"]["id"].as_i64().unwrap();
    let (st, v) = call(&s, "POST", &format!("{P5}/{wjob}/run"), None);
    assert_eq!(st, 200, "{v}");
    let wrun = v["run"]["id"].as_i64().unwrap();
    let session = v["run"]["sessionId"].as_str().unwrap().to_string();
    let done = wait_finished(&s, &format!("{P5}/{wjob}/runs/{wrun}"), RUN_DEADLINE);
    assert_eq!(
        (&done["status"], &done["responseText"], &done["repoId"]),
        (&json!("completed"), &json!(FAST_TEXT), &json!(5)),
        "{done:#}"
    );
    let client = oc.client();
    let in_widget = client
        .call_json("GET", "/session", Some(Path::new(&full_path)), None)
        .unwrap();
    let ours = in_widget
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == session.as_str())
        .unwrap_or_else(|| panic!("session {session} not listed for {full_path}: {in_widget}"));
    assert_eq!(ours["directory"], full_path.as_str(), "{ours}");
    let in_workspace = client
        .call_json(
            "GET",
            "/session",
            Some(&state.join("repos/assistant")),
            None,
        )
        .unwrap();
    assert!(
        !in_workspace
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == session.as_str()),
        "the repo-5 session is listed under the workspace: {in_workspace}"
    );
    eprintln!("repo 5 run done after {:?}", started.elapsed());

    // 4. SIGKILL assistantd mid-run; a new process on the same state recovers the run.
    model.set_mode(MODE_SLOW);
    let asked = model.requests();
    let (st, v) = call(&s, "POST", &format!("{P0}/{job}/run"), None);
    assert_eq!(st, 200, "{v}");
    let run_id = v["run"]["id"].as_i64().unwrap();
    let run_path = format!("{P0}/{job}/runs/{run_id}");
    assert!(
        wait_until(RUN_DEADLINE, || model.requests() > asked),
        "the model was never asked"
    );
    let (_, v) = call(&s, "GET", &run_path, None);
    assert_eq!(v["run"]["status"], "running", "{v}");
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    s.child.wait().unwrap();
    drop(s);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(state.join("schedules.json")).unwrap()).unwrap();
    let on_disk = stored["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run_id)
        .unwrap();
    assert_eq!(on_disk["status"], "running", "killed before the run ended");
    let killed_at = Instant::now();
    let s = TestServer::start(&state, &args, &envs);
    let done = wait_finished(&s, &run_path, RECOVERY_DEADLINE);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["responseText"], SLOW_TEXT);
    assert_eq!(done["errorText"], Value::Null);
    // The new process finalised it (resumed while OpenCode was still busy, or found it done).
    let log = s.log_text();
    assert!(
        log.contains(&format!("schedules: run {run_id} of job {job} completed")),
        "{log}"
    );
    eprintln!(
        "recovered {:?} after the kill ({:?} in all); log: {}",
        killed_at.elapsed(),
        started.elapsed(),
        log.lines()
            .filter(|l| l.starts_with("schedules:"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // The job is free again.
    model.set_mode(MODE_FAST);
    let (st, v) = call(&s, "POST", &format!("{P0}/{job}/run"), None);
    assert_eq!(st, 200, "{v}");
    let id = v["run"]["id"].as_i64().unwrap();
    let done = wait_finished(&s, &format!("{P0}/{job}/runs/{id}"), RUN_DEADLINE);
    assert_eq!(done["responseText"], FAST_TEXT, "{done:#}");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Time zones come from the tz database built into the binary: with no zoneinfo to be found
/// (TZDIR pointing nowhere, TZ a zone name), New York's winter (UTC-5) and summer (UTC-4) and
/// Berlin's are still right, and an unknown zone is still refused.
#[test]
fn time_zones_work_without_any_zoneinfo_files() {
    let d = TempDir::new("sched-tzdb");
    let env = [("TZDIR", "/nonexistent/zoneinfo"), ("TZ", "Europe/Berlin")];
    let s = TestServer::start(&d.join("state"), &[], &env);
    let now_ms = now();
    // The next `month`-15 09:00 local, given that local time there is UTC+`offset_h`.
    let next = |month: i8, offset_h: i8| -> i64 {
        let year = jiff::Timestamp::from_millisecond(now_ms)
            .unwrap()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .year();
        [year, year + 1]
            .iter()
            .map(|y| {
                jiff::civil::date(*y, month, 15)
                    .at(9 - offset_h, 0, 0, 0)
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .unwrap()
                    .timestamp()
                    .as_millisecond()
            })
            .find(|t| *t > now_ms)
            .unwrap()
    };
    for (tz, month, offset_h) in [
        ("America/New_York", 1, -5),
        ("America/New_York", 7, -4),
        ("Europe/Berlin", 1, 1),
        ("Europe/Berlin", 7, 2),
    ] {
        let body = json!({"name": format!("{tz} {month}"), "prompt": "p", "scheduleMode": "cron",
                          "cronExpression": format!("0 9 15 {month} *"), "timezone": tz});
        let (status, v) = call(&s, "POST", P0, Some(body));
        assert_eq!(status, 201, "{v}");
        assert_eq!(v["job"]["timezone"], tz);
        assert_eq!(
            v["job"]["nextRunAt"],
            next(month, offset_h),
            "{tz} month {month}"
        );
    }
    let body = json!({"name": "x", "prompt": "p", "scheduleMode": "cron",
                      "cronExpression": "0 9 * * *", "timezone": "Mars/Olympus_Mons"});
    assert_eq!(call(&s, "POST", P0, Some(body)).0, 400);
}
