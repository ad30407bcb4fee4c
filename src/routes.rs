//! Every route in one `match` on the path segments, then the method: a known path with the
//! wrong method is 405 with `Allow`, an unknown path 404. Every `/api/…` path needs auth first
//! (before 404/405, before the body is read). Arms stay short: parse, call the domain, serialise.

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Request, Response};
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
        ["api", "internal", "repos"] => match m {
            "GET" => ok(crate::repos::list(
                &app.store,
                &app.repo_paths,
                &user_id(req)?,
            )?),
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

/// `POST /api/internal/assistant/reload`: auth → 429 → upstream (contract §10).
fn reload(app: &App, token: &str) -> Result<Response, ApiError> {
    app.reload_limiter
        .try_acquire(token, crate::util::now_ms())
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
