//! The one place where errors become HTTP. Every domain has its own error type; each converts
//! into [`ApiError`] with `From`, and [`ApiError::status`] / [`ApiError::body`] decide what the
//! client sees. The log gets [`ApiError::log_detail`], which may say more (paths, causes) but
//! never a token, key or request body.

use serde::Serialize;
use serde_json::{json, Value};

/// One validation problem, as sent in `details`.
/// The challenges of a 401: both schemes we accept, each with the realm RFC 7617 requires of
/// Basic (and RFC 6750 allows for Bearer).
pub const WWW_AUTHENTICATE: &str = r#"Bearer realm="assistantd", Basic realm="assistantd""#;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    /// Where in the body: object keys as strings, array indices as numbers (zod's shape).
    pub path: Vec<Value>,
    /// A stable machine code: `invalid_type`, `too_big`, `too_small`, `invalid_value`,
    /// `unrecognized_keys`, `invalid_format`, `custom`.
    pub code: &'static str,
    pub message: String,
    /// Only for `unrecognized_keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl Detail {
    pub fn new(path: Vec<Value>, code: &'static str, message: impl Into<String>) -> Self {
        Detail {
            path,
            code,
            message: message.into(),
            keys: None,
        }
    }
}

/// Builds a `path` vector: `path!["tts", "speed"]`, `path!["customCommands", 0, "name"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { vec![$(serde_json::Value::from($seg)),*] };
}

/// Everything a request can fail with, as the client sees it.
#[derive(Debug)]
pub enum ApiError {
    /// 401, with `WWW-Authenticate`.
    Unauthorized,
    /// 404 `{"error":"Not found"}` for unknown paths, or a domain's own text.
    NotFound(String),
    /// 405 with `Allow`.
    MethodNotAllowed { allow: &'static str },
    /// 413: the body is over the cap.
    PayloadTooLarge { limit: usize },
    /// 400 `{"error":"Invalid JSON"}`.
    InvalidJson,
    /// 400 with `details`.
    Validation {
        error: &'static str,
        details: Vec<Detail>,
    },
    /// 400 with a fixed text.
    BadRequest(String),
    /// 409 with a fixed text.
    Conflict(String),
    /// 429 with `Retry-After` in whole seconds.
    RateLimited { retry_after_secs: u64 },
    /// 503 with a fixed text.
    Unavailable(String),
    /// 502: an upstream (OpenCode) failed; `detail` is short and safe to show.
    BadGateway {
        error: String,
        detail: Option<String>,
    },
    /// 500 with a text safe to show (a state file's name and what is wrong with it).
    Internal { public: String, log: String },
}

impl ApiError {
    pub fn not_found() -> Self {
        ApiError::NotFound("Not found".into())
    }

    pub fn internal(public: impl Into<String>) -> Self {
        let public = public.into();
        ApiError::Internal {
            log: public.clone(),
            public,
        }
    }

    /// The HTTP status. Exhaustive on purpose: a new variant must decide its status here.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::InvalidJson => 400,
            ApiError::Validation { .. } => 400,
            ApiError::BadRequest(_) => 400,
            ApiError::Conflict(_) => 409,
            ApiError::RateLimited { .. } => 429,
            ApiError::Unavailable(_) => 503,
            ApiError::BadGateway { .. } => 502,
            ApiError::Internal { .. } => 500,
        }
    }

    /// The JSON body the client gets.
    pub fn body(&self) -> Value {
        match self {
            ApiError::Unauthorized => json!({"error": "Unauthorized"}),
            ApiError::NotFound(msg) => json!({ "error": msg }),
            ApiError::MethodNotAllowed { .. } => json!({"error": "Method not allowed"}),
            ApiError::PayloadTooLarge { limit } => {
                json!({ "error": format!("Request body too large (limit {limit} bytes)") })
            }
            ApiError::InvalidJson => json!({"error": "Invalid JSON"}),
            ApiError::Validation { error, details } => {
                json!({ "error": error, "details": details })
            }
            ApiError::BadRequest(msg) | ApiError::Conflict(msg) | ApiError::Unavailable(msg) => {
                json!({ "error": msg })
            }
            ApiError::RateLimited { .. } => json!({"error": "Rate limit exceeded"}),
            ApiError::BadGateway {
                error,
                detail: Some(d),
            } => json!({"error": error, "detail": d}),
            ApiError::BadGateway {
                error,
                detail: None,
            } => json!({ "error": error }),
            ApiError::Internal { public, .. } => json!({ "error": public }),
        }
    }

    /// Extra response headers.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::Unauthorized => vec![("WWW-Authenticate", WWW_AUTHENTICATE.into())],
            ApiError::MethodNotAllowed { allow } => vec![("Allow", (*allow).into())],
            ApiError::RateLimited { retry_after_secs } => {
                vec![("Retry-After", retry_after_secs.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// What the log line says about this error (never secrets or bodies).
    pub fn log_detail(&self) -> Option<String> {
        match self {
            ApiError::Internal { log, .. } => Some(log.clone()),
            ApiError::BadGateway { error, detail } => {
                Some(format!("{error}: {}", detail.as_deref().unwrap_or("-")))
            }
            _ => None,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal {
            public: e.public_message(),
            log: e.to_string(),
        }
    }
}

impl From<crate::settings::SettingsError> for ApiError {
    fn from(e: crate::settings::SettingsError) -> Self {
        use crate::settings::{
            SettingsError, INVALID_BODY, STT_NOT_CONFIGURED, TTS_NOT_CONFIGURED,
        };
        match e {
            SettingsError::Validation(details) => ApiError::Validation {
                error: INVALID_BODY,
                details,
            },
            SettingsError::TtsNotConfigured => ApiError::BadRequest(TTS_NOT_CONFIGURED.into()),
            SettingsError::SttNotConfigured => ApiError::BadRequest(STT_NOT_CONFIGURED.into()),
            SettingsError::Store(e) => e.into(),
        }
    }
}

impl From<crate::push::PushError> for ApiError {
    fn from(e: crate::push::PushError) -> Self {
        use crate::push::PushError;
        match e {
            PushError::Validation(details) => ApiError::Validation {
                error: "Invalid request body",
                details,
            },
            PushError::PayloadTooLarge { size, max } => ApiError::Validation {
                error: "Invalid request body",
                details: vec![Detail::new(
                    Vec::new(),
                    "too_big",
                    format!(
                        "Notification payload is {size} bytes; at most {max} bytes fit one Web Push message"
                    ),
                )],
            },
            PushError::NotConfigured => ApiError::Unavailable(
                "Push notifications are not configured (missing VAPID env)".into(),
            ),
            PushError::Store(e) => e.into(),
            e @ (PushError::InvalidKey(_) | PushError::Crypto(_)) => ApiError::Internal {
                public: "Push encryption failed".into(),
                log: e.to_string(),
            },
        }
    }
}

impl From<crate::push::DeviceError> for ApiError {
    fn from(e: crate::push::DeviceError) -> Self {
        use crate::push::DeviceError;
        match e {
            DeviceError::InvalidSubscription(details) => ApiError::Validation {
                error: "Invalid subscription data",
                details,
            },
            DeviceError::InvalidEndpoint(details) => ApiError::Validation {
                error: "Valid endpoint URL is required",
                details,
            },
            DeviceError::TooManySubscriptions { limit } => ApiError::BadRequest(format!(
                "Too many push subscriptions for this user (limit {limit}); remove one first"
            )),
            DeviceError::InvalidId => ApiError::BadRequest("Invalid subscription ID".into()),
            DeviceError::NoSubscriptions => {
                ApiError::NotFound("No push subscriptions registered".into())
            }
            DeviceError::NotConfigured => {
                ApiError::Unavailable("Push notifications are not configured".into())
            }
            DeviceError::Store(e) => e.into(),
        }
    }
}

impl From<crate::schedules::ScheduleError> for ApiError {
    fn from(e: crate::schedules::ScheduleError) -> Self {
        use crate::schedules::ScheduleError as S;
        match e {
            S::BadRequest(msg) => ApiError::BadRequest(msg),
            S::Validation { error, details } => ApiError::Validation { error, details },
            S::NotFound(msg) => ApiError::NotFound(msg.into()),
            S::Conflict(msg) => ApiError::Conflict(msg),
            S::BadGateway { error, detail } => ApiError::BadGateway { error, detail },
            S::Store(e) => e.into(),
        }
    }
}
