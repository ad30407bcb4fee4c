//! Every route in one `match` on the path segments, then the method: a known path with the
//! wrong method is 405 with `Allow`, an unknown path 404. Every `/api/…` path needs auth first
//! (before 404/405, before the body is read). Arms stay short: parse, call the domain, serialise.

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::push::{self, subscriptions};
use crate::repos;
use crate::schedules;
use crate::settings;
use crate::util::now_ms;
use serde_json::json;

/// The default user.
pub const DEFAULT_USER: &str = "default";
/// Longest `userId`.
pub const MAX_USER_ID: usize = 64;

/// A response plus what the log line should add.
pub struct Outcome {
    pub response: Response,
    pub log: Option<String>,
}

/// Auth for `/api/…` paths; `Ok(Some(token))` when authorised, `Ok(None)` for public paths.
pub fn authorize(app: &App, req: &Request) -> Result<Option<String>, ApiError> {
    if req.path == "/api" || req.path.starts_with("/api/") {
        app.tokens
            .check(req.header("authorization"))
            .map(Some)
            .ok_or(ApiError::Unauthorized)
    } else {
        Ok(None)
    }
}

/// Handles a request whose body has been read (or that never had one).
pub fn handle(app: &App, req: &Request) -> Outcome {
    match route(app, req) {
        Ok(response) => Outcome {
            response,
            log: None,
        },
        Err(e) => Outcome {
            response: Response::from_error(&e),
            log: e.log_detail(),
        },
    }
}

/// `?userId=`: missing or empty → `default`; else `^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`.
pub fn user_id(req: &Request) -> Result<String, ApiError> {
    match req.query_param("userId") {
        None => Ok(DEFAULT_USER.to_string()),
        Some(u) if u.is_empty() => Ok(DEFAULT_USER.to_string()),
        Some(u) if is_valid_user_id(&u) => Ok(u),
        Some(_) => Err(ApiError::BadRequest("Invalid userId".into())),
    }
}

pub fn is_valid_user_id(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_USER_ID
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
}

fn not_allowed(allow: &'static str) -> Result<Response, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

fn to_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn ok(value: serde_json::Value) -> Result<Response, ApiError> {
    Ok(Response::json(200, &value))
}

fn route(app: &App, req: &Request) -> Result<Response, ApiError> {
    let token = authorize(app, req)?;
    if req.body == crate::http::Body::TooLarge {
        return Err(ApiError::PayloadTooLarge {
            limit: crate::http::MAX_BODY,
        });
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    match segs.as_slice() {
        ["health"] => match m {
            "GET" => ok(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})),
            _ => not_allowed("GET"),
        },
        ["api", "internal", "settings"] => match m {
            "GET" => {
                let user = user_id(req)?;
                let view = app.views.get_or_build(
                    &app.store,
                    &format!("settings/{user}"),
                    &[settings::SETTINGS_FILE],
                    || {
                        settings::get(&app.store, &user, app.cfg.expose_secrets)
                            .map(|v| to_bytes(&v))
                    },
                )?;
                Ok(Response::json_view(200, view))
            }
            "PATCH" => {
                let user = user_id(req)?;
                let body = req.json()?;
                ok(settings::patch(
                    &app.store,
                    &user,
                    &body,
                    now_ms(),
                    app.cfg.expose_secrets,
                )?)
            }
            _ => not_allowed("GET, PATCH"),
        },
        ["api", "internal", "notifications", "send"] => match m {
            "POST" => send_notification(app, req, token.as_deref().unwrap_or_default()),
            _ => not_allowed("POST"),
        },
        ["api", "notifications", "vapid-public-key"] => match m {
            "GET" => ok(json!({ "publicKey": vapid_for_devices(app)?.public_b64 })),
            _ => not_allowed("GET"),
        },
        ["api", "notifications", "subscribe"] => match m {
            "POST" => {
                let user = user_id(req)?;
                let body = req.json()?;
                let sub = subscriptions::subscribe(
                    &app.store,
                    &user,
                    &body,
                    app.cfg.allow_private_push,
                    now_ms(),
                )?;
                ok(json!({ "subscription": sub }))
            }
            "DELETE" => {
                let user = user_id(req)?;
                let endpoint = subscriptions::validate_unsubscribe_body(&req.json()?)?;
                ok(json!({ "success": subscriptions::unsubscribe(&app.store, &user, &endpoint)? }))
            }
            _ => not_allowed("POST, DELETE"),
        },
        ["api", "notifications", "subscriptions"] => match m {
            "GET" => {
                ok(json!({ "subscriptions": subscriptions::list(&app.store, &user_id(req)?)? }))
            }
            _ => not_allowed("GET"),
        },
        ["api", "notifications", "subscriptions", id] => match m {
            "DELETE" => {
                let user = user_id(req)?;
                let id = subscriptions::parse_subscription_id(id)?;
                ok(json!({ "success": subscriptions::delete_by_id(&app.store, &user, id)? }))
            }
            _ => not_allowed("DELETE"),
        },
        ["api", "notifications", "test"] => match m {
            "POST" => {
                let vapid = vapid_for_devices(app)?;
                let user = user_id(req)?;
                let report = push::send_test(&app.store, &app.push_client, vapid, &user)?;
                ok(serde_json::to_value(&report).unwrap_or_default())
            }
            _ => not_allowed("POST"),
        },
        ["api", "internal", "schedules", "all"] => match m {
            "GET" => ok(app.schedules.all_jobs()?),
            _ => not_allowed("GET"),
        },
        ["api", "internal", "schedules", "all", "runs"] => match m {
            "GET" => ok(app.schedules.all_runs(&req.query_pairs())?),
            _ => not_allowed("GET"),
        },
        ["api", "internal", "repos", repo, "schedules", rest @ ..] => {
            schedule_route(app, req, repo, rest)
        }
        ["api", "internal", "repos"] => match m {
            "GET" => {
                let user = user_id(req)?;
                let view = app.views.get_or_build(
                    &app.store,
                    &format!("repos/{user}"),
                    &[repos::REPOS_FILE, settings::SETTINGS_FILE],
                    || repos::list(&app.store, &app.repo_paths, &user),
                )?;
                Ok(Response::json_view(200, view))
            }
            _ => not_allowed("GET"),
        },
        ["api", "internal", "assistant", "reload"] => match m {
            "POST" => reload(app, token.as_deref().unwrap_or_default()),
            _ => not_allowed("POST"),
        },
        #[cfg(feature = "test-panic-route")]
        ["api", "internal", "__panic"] => panic!("test-only panic route"),
        _ => Err(ApiError::not_found()),
    }
}

/// `/api/internal/repos/:id/schedules…` (contract §12).
fn schedule_route(
    app: &App,
    req: &Request,
    repo: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let svc = &app.schedules;
    let m = req.method.as_str();
    let repo_id = || schedules::parse_id("repo id", Some(repo));
    let job = |s: &str| schedules::parse_id("schedule id", Some(s));
    let run = |s: &str| schedules::parse_id("run id", Some(s));
    let body = || schedules::parse_body(req.body_bytes());
    match rest {
        [] => match m {
            "GET" => ok(svc.list_jobs(repo_id()?)?),
            "POST" => {
                let (status, v) = svc.create_job(repo_id()?, &body()?)?;
                Ok(Response::json(status, &v))
            }
            _ => not_allowed("GET, POST"),
        },
        [j] => match m {
            "GET" => ok(svc.get_job(repo_id()?, job(j)?)?),
            "PATCH" => ok(svc.update_job(repo_id()?, job(j)?, &body()?)?),
            "DELETE" => ok(svc.delete_job(repo_id()?, job(j)?)?),
            _ => not_allowed("GET, PATCH, DELETE"),
        },
        [j, "run"] => match m {
            "POST" => ok(svc.run_job(repo_id()?, job(j)?)?),
            _ => not_allowed("POST"),
        },
        [j, "runs"] => match m {
            "GET" => ok(svc.list_runs(repo_id()?, job(j)?, req.query_param("limit").as_deref())?),
            "DELETE" => ok(svc.clear_runs(repo_id()?, job(j)?)?),
            _ => not_allowed("GET, DELETE"),
        },
        [j, "runs", r] => match m {
            "GET" => ok(svc.get_run(repo_id()?, job(j)?, run(r)?)?),
            "DELETE" => ok(svc.delete_run(repo_id()?, job(j)?, run(r)?)?),
            _ => not_allowed("GET, DELETE"),
        },
        [j, "runs", r, "cancel"] => match m {
            "POST" => ok(svc.cancel_run(repo_id()?, job(j)?, run(r)?)?),
            _ => not_allowed("POST"),
        },
        _ => Err(ApiError::not_found()),
    }
}

/// `POST /api/internal/notifications/send`: auth → 503 → validation (free) → 429 → delivery.
fn send_notification(app: &App, req: &Request, token: &str) -> Result<Response, ApiError> {
    let vapid = app.vapid.as_ref().ok_or(push::PushError::NotConfigured)?;
    let user = user_id(req)?;
    let notification = push::validate_send_body(&req.json()?, now_ms())?;
    app.send_limiter
        .try_acquire(token, now_ms())
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    let report = push::deliver(&app.store, &app.push_client, vapid, &user, &notification)?;
    ok(serde_json::to_value(&report).unwrap_or_default())
}

/// The devices API's VAPID keys (its 503 text differs from the send route's).
fn vapid_for_devices(app: &App) -> Result<&push::VapidKeys, ApiError> {
    app.vapid
        .as_ref()
        .ok_or_else(|| push::DeviceError::NotConfigured.into())
}

/// `POST /api/internal/assistant/reload`: auth → 429 → upstream (contract §10).
fn reload(app: &App, token: &str) -> Result<Response, ApiError> {
    app.reload_limiter
        .try_acquire(token, now_ms())
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })?;
    app.opencode
        .dispose(&app.cfg.workspace)
        .map_err(|e| ApiError::BadGateway {
            error: "Failed to reload assistant workspace".into(),
            detail: Some(e.to_string()),
        })?;
    ok(json!({"success": true}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(is_valid_user_id("default"));
        assert!(is_valid_user_id("a.b_c@d-e"));
        assert!(is_valid_user_id(&"a".repeat(64)));
        assert!(!is_valid_user_id(&"a".repeat(65)));
        assert!(!is_valid_user_id("../x"));
        assert!(!is_valid_user_id(".x"));
        assert!(!is_valid_user_id("a/b"));
        assert!(!is_valid_user_id("a\0b"));
        let r = Request::new("GET", "/x?userId=", &[], b"");
        assert_eq!(user_id(&r).unwrap(), "default");
        let r = Request::new("GET", "/x?userId=..%2Fx", &[], b"");
        assert!(user_id(&r).is_err());
    }
}
