//! Settings: per-user preferences kept in `settings.json` in the state dir, as
//! `{"users": {"<userId>": {"preferences": {...}, "updatedAt": <ms>}}}`.
//!
//! This module is pure domain logic plus two thin store calls ([`get`], [`patch`]); it knows
//! nothing about HTTP (the caller validates `userId` and maps [`SettingsError`] to
//! [`crate::error::ApiError`]). It owns these invariants (internal-api §6, reference §7):
//!
//! * Stored preferences may be partial. On read they are laid over [`defaults`] (shallow) and
//!   checked against the full stored schema: unknown keys are dropped (like zod's strip, so an
//!   old `customAgents` disappears), a partial `tts`/`stt` object gets its missing fields from
//!   the default `tts`/`stt`. A user with nothing stored reads as the defaults with
//!   `updatedAt: 0`.
//! * A stored value that breaks the schema (`"theme": "neon"`) is an error naming the user and
//!   the key path. It is never replaced by defaults, and [`patch`] then writes nothing.
//! * PATCH bodies are checked against a strict allow-list before the lock is taken; every
//!   problem is reported at once, and one bad key fails the whole body. Values replace whole
//!   keys, except `tts`/`stt`, which are merged one level deep and only when an `apiKey` is
//!   stored (TTS is checked before STT). The result is normalised with the full schema and
//!   written in one locked read-modify-write, or not at all.
//! * Secrets are shown as `"[redacted]"` unless the server exposes them (see [`redact`]).
//!
//! Decisions where the reference is silent:
//!
//! * Input caps, enforced on PATCH bodies only (the reference has none; stored data written
//!   by the original manager must stay readable, so the stored schema has no caps): every
//!   string, including `keyboardShortcuts` names, at most [`MAX_STRING_LEN`] UTF-16 code units;
//!   every array at most [`MAX_ARRAY_LEN`] items; `keyboardShortcuts` at most
//!   [`MAX_KEYBOARD_SHORTCUTS`] entries. An array or map over its cap gets one `too_big` detail
//!   and its items are not inspected further, so the detail list stays small.
//! * `repoOrder` accepts any JSON number, as the reference does (JSON cannot express NaN or
//!   infinities, so they are always finite). Numbers are normalised the way JavaScript prints
//!   them: an integral float such as `1.0` becomes `1`.
//! * Output key order is the stored schema's order ([`defaults`] order, with the optional keys
//!   `defaultModel`, `defaultAgent`, `defaultGitCredentialId`, `lastKnownGoodConfig` and
//!   `repoOrder` in their schema places); validation details come in that order too, with
//!   unknown keys reported last, as zod does.
//! * Inside stored objects other than `tts`/`stt` (`gitIdentity`, `notifications`, git
//!   credentials, env vars, custom commands) missing required fields are errors, as in the
//!   reference schema; only `gitCredentials[].type` has a default (`pat`).
//! * `settings.json` itself is read strictly: an unknown key at the top or inside a user entry
//!   (a typo such as `"user"`) makes the file invalid instead of being dropped on the next write.

use crate::error::Detail;
use crate::store::{Store, StoreError};
use crate::util::utf16_len;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Number, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The settings file's name inside the state dir.
pub const SETTINGS_FILE: &str = "settings.json";
/// Longest string a PATCH may set, in UTF-16 code units (JavaScript `.length`).
pub const MAX_STRING_LEN: usize = 10_000;
/// Most items an array in a PATCH may hold (`directShortcuts`, `customCommands`, `repoOrder`).
pub const MAX_ARRAY_LEN: usize = 1_000;
/// Most entries `keyboardShortcuts` may hold in a PATCH.
pub const MAX_KEYBOARD_SHORTCUTS: usize = 200;
/// Slowest TTS speed, inclusive.
pub const TTS_SPEED_MIN: f64 = 0.25;
/// Fastest TTS speed, inclusive.
pub const TTS_SPEED_MAX: f64 = 4.0;
/// What a non-empty secret is replaced by on the way out.
pub const REDACTED: &str = "[redacted]";
/// The `error` text of a 400 with `details`.
pub const INVALID_BODY: &str = "Invalid request body";
/// The reference's exact text when `tts` is patched without a stored `apiKey`.
pub const TTS_NOT_CONFIGURED: &str =
    "TTS is not configured. Set up TTS (including credentials) in the UI before adjusting it.";
/// The reference's exact text when `stt` is patched without a stored `apiKey`.
pub const STT_NOT_CONFIGURED: &str =
    "STT is not configured. Set up STT (including credentials) in the UI before adjusting it.";

/// Shortcut modifier the reference uses on a non-Mac server.
const SHORTCUT_MODIFIER: &str = "Ctrl";
/// How many problems a stored-file error names before it says "and N more".
const MAX_REASON_PROBLEMS: usize = 5;
/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

const THEMES: &[&str] = &["dark", "light", "system"];
const MODES: &[&str] = &["plan", "build"];
const REPO_SORT_MODES: &[&str] = &["recent", "manual", "name"];
const SPEECH_PROVIDERS: &[&str] = &["external", "builtin"];
const CREDENTIAL_TYPES: &[&str] = &["pat", "ssh"];
/// Git credential fields that hold secrets.
const CREDENTIAL_SECRETS: &[&str] = &[
    "token",
    "sshPrivateKey",
    "sshPrivateKeyEncrypted",
    "passphrase",
];

/// The whole of `settings.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

/// One user's stored preferences (possibly partial) and the time of the last write (ms).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    #[serde(default)]
    pub preferences: Map<String, Value>,
    #[serde(rename = "updatedAt", default)]
    pub updated_at: i64,
}

/// What a settings read or write can fail with.
#[derive(Debug)]
pub enum SettingsError {
    /// The PATCH body breaks the patch schema; every problem found.
    Validation(Vec<Detail>),
    /// `tts` was patched while no TTS `apiKey` is stored.
    TtsNotConfigured,
    /// `stt` was patched while no STT `apiKey` is stored.
    SttNotConfigured,
    /// `settings.json` could not be read, locked, validated or written.
    Store(StoreError),
}

impl From<StoreError> for SettingsError {
    fn from(e: StoreError) -> Self {
        SettingsError::Store(e)
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Validation(details) => {
                write!(f, "{INVALID_BODY} ({} problems)", details.len())
            }
            SettingsError::TtsNotConfigured => f.write_str(TTS_NOT_CONFIGURED),
            SettingsError::SttNotConfigured => f.write_str(STT_NOT_CONFIGURED),
            SettingsError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SettingsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SettingsError::Store(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Defaults

fn default_shortcuts() -> Map<String, Value> {
    let m = SHORTCUT_MODIFIER;
    [
        ("submit", format!("{m}+Enter")),
        ("abort", "Escape".into()),
        ("toggleMode", "T".into()),
        ("undo", "Z".into()),
        ("redo", "Shift+Z".into()),
        ("compact", "K".into()),
        ("fork", "F".into()),
        ("settings", ",".into()),
        ("sessions", "S".into()),
        ("newSession", "N".into()),
        ("closeSession", "W".into()),
        ("toggleSidebar", "B".into()),
        ("selectModel", "M".into()),
        ("variantCycle", format!("{m}+T")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Value::String(v)))
    .collect()
}

fn default_tts() -> Map<String, Value> {
    object(json!({
        "enabled": false,
        "provider": "external",
        "autoPlay": false,
        "endpoint": "https://api.openai.com",
        "apiKey": "",
        "voice": "alloy",
        "model": "tts-1",
        "speed": 1,
        "availableVoices": [],
        "availableModels": [],
        "lastVoicesFetch": 0,
        "lastModelsFetch": 0
    }))
}

fn default_stt() -> Map<String, Value> {
    object(json!({
        "enabled": false,
        "provider": "builtin",
        "endpoint": "https://api.openai.com",
        "apiKey": "",
        "model": "",
        "language": "en-US",
        "availableModels": [],
        "lastModelsFetch": 0
    }))
}

/// The full default preferences (reference §7.1, Linux modifier `Ctrl`), in the reference's
/// key order, without the raw-default-only `customAgents` and without the keys that are
/// absent unless set.
pub fn defaults() -> Map<String, Value> {
    object(json!({
        "theme": "dark",
        "mode": "build",
        "autoScroll": true,
        "expandDiffs": true,
        "expandToolCalls": false,
        "showReasoning": false,
        "simpleChatMode": false,
        "leaderKey": format!("{SHORTCUT_MODIFIER}+O"),
        "directShortcuts": ["submit", "abort"],
        "keyboardShortcuts": default_shortcuts(),
        "customCommands": [],
        "gitCredentials": [],
        "gitIdentity": {"name": "OpenCode Agent", "email": ""},
        "tts": default_tts(),
        "stt": default_stt(),
        "notifications": {
            "enabled": false,
            "events": {
                "permissionAsked": true,
                "questionAsked": true,
                "sessionError": true,
                "sessionIdle": false
            }
        },
        "repoSortMode": "recent",
        "serverEnvVars": [],
        "disabledDefaultServerEnvVars": []
    }))
}

/// The map inside an object literal (our literals are always objects).
fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas: a small zod-like description checked by `Checker`.

/// A value's expected type.
enum Ty {
    /// A string of at least `min` UTF-16 units.
    Str {
        min: usize,
    },
    Bool,
    /// A number within the inclusive bounds.
    Num {
        min: Option<f64>,
        max: Option<f64>,
    },
    /// One of these strings.
    OneOf(&'static [&'static str]),
    List(Box<Ty>),
    /// An object used as a map from any string to values of one type.
    Dict(Box<Ty>),
    Obj(Obj),
}

struct Obj {
    fields: Vec<Field>,
    unknown: Unknown,
}

/// What happens to keys an object schema does not list.
#[derive(Clone, Copy)]
enum Unknown {
    /// Dropped silently (zod's default).
    Strip,
    /// One `unrecognized_keys` detail (zod's `.strict()`).
    Reject,
}

struct Field {
    key: &'static str,
    ty: Ty,
    absent: Absent,
}

/// What happens when a field is missing.
enum Absent {
    /// A problem (`expected …, received undefined`).
    Fail,
    /// Fine; the output has no such key.
    Skip,
    /// Filled with this value.
    Default(Value),
}

impl Field {
    fn optional(mut self) -> Self {
        self.absent = Absent::Skip;
        self
    }

    fn or(mut self, default: Value) -> Self {
        self.absent = Absent::Default(default);
        self
    }
}

fn field(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        absent: Absent::Fail,
    }
}

fn string() -> Ty {
    Ty::Str { min: 0 }
}

fn number() -> Ty {
    Ty::Num {
        min: None,
        max: None,
    }
}

fn list(ty: Ty) -> Ty {
    Ty::List(Box::new(ty))
}

fn obj(unknown: Unknown, fields: Vec<Field>) -> Ty {
    Ty::Obj(Obj { fields, unknown })
}

fn tts_speed() -> Ty {
    Ty::Num {
        min: Some(TTS_SPEED_MIN),
        max: Some(TTS_SPEED_MAX),
    }
}

fn custom_command() -> Ty {
    obj(
        Unknown::Strip,
        vec![
            field("name", string()),
            field("description", string()),
            field("promptTemplate", string()),
        ],
    )
}

/// Complete in both schemas: PATCH must send the whole object.
fn notifications() -> Ty {
    let events = [
        "permissionAsked",
        "questionAsked",
        "sessionError",
        "sessionIdle",
    ]
    .into_iter()
    .map(|k| field(k, Ty::Bool))
    .collect();
    obj(
        Unknown::Strip,
        vec![
            field("enabled", Ty::Bool),
            field("events", obj(Unknown::Strip, events)),
        ],
    )
}

/// What a PATCH body may contain (reference §7.2): strict at the top and in `tts`/`stt`,
/// every key optional, no defaults.
fn patch_schema() -> Ty {
    let tts = obj(
        Unknown::Reject,
        vec![
            field("enabled", Ty::Bool).optional(),
            field("provider", Ty::OneOf(SPEECH_PROVIDERS)).optional(),
            field("autoPlay", Ty::Bool).optional(),
            field("voice", string()).optional(),
            field("model", string()).optional(),
            field("speed", tts_speed()).optional(),
        ],
    );
    let stt = obj(
        Unknown::Reject,
        vec![
            field("enabled", Ty::Bool).optional(),
            field("provider", Ty::OneOf(SPEECH_PROVIDERS)).optional(),
            field("model", string()).optional(),
            field("language", string()).optional(),
        ],
    );
    let fields = vec![
        field("theme", Ty::OneOf(THEMES)),
        field("mode", Ty::OneOf(MODES)),
        field("defaultModel", string()),
        field("defaultAgent", string()),
        field("autoScroll", Ty::Bool),
        field("expandDiffs", Ty::Bool),
        field("expandToolCalls", Ty::Bool),
        field("showReasoning", Ty::Bool),
        field("simpleChatMode", Ty::Bool),
        field("leaderKey", string()),
        field("directShortcuts", list(string())),
        field("keyboardShortcuts", Ty::Dict(Box::new(string()))),
        field("customCommands", list(custom_command())),
        field("tts", tts),
        field("stt", stt),
        field("notifications", notifications()),
        field("repoOrder", list(number())),
        field("repoSortMode", Ty::OneOf(REPO_SORT_MODES)),
    ];
    obj(
        Unknown::Reject,
        fields.into_iter().map(Field::optional).collect(),
    )
}

/// What stored (and returned) preferences look like once laid over the defaults: the patch
/// keys plus the read-only ones; unknown keys stripped; `tts`/`stt` fields default one by one.
fn stored_schema() -> Ty {
    let credential = obj(
        Unknown::Strip,
        vec![
            field("id", string()).optional(),
            field("name", string()),
            field("host", string()),
            field("type", Ty::OneOf(CREDENTIAL_TYPES)).or(json!("pat")),
            field("token", string()).optional(),
            field("sshPrivateKey", string()).optional(),
            field("sshPrivateKeyEncrypted", string()).optional(),
            field("hasPassphrase", Ty::Bool).optional(),
            field("username", string()).optional(),
            field("passphrase", string()).optional(),
        ],
    );
    let env_var = obj(
        Unknown::Strip,
        vec![field("key", Ty::Str { min: 1 }), field("value", string())],
    );
    let identity = obj(
        Unknown::Strip,
        vec![field("name", string()), field("email", string())],
    );
    let tts_types = [
        ("enabled", Ty::Bool),
        ("provider", Ty::OneOf(SPEECH_PROVIDERS)),
        ("autoPlay", Ty::Bool),
        ("endpoint", string()),
        ("apiKey", string()),
        ("voice", string()),
        ("model", string()),
        ("speed", tts_speed()),
        ("availableVoices", list(string())),
        ("availableModels", list(string())),
        ("lastVoicesFetch", number()),
        ("lastModelsFetch", number()),
    ];
    let stt_types = [
        ("enabled", Ty::Bool),
        ("provider", Ty::OneOf(SPEECH_PROVIDERS)),
        ("endpoint", string()),
        ("apiKey", string()),
        ("model", string()),
        ("language", string()),
        ("availableModels", list(string())),
        ("lastModelsFetch", number()),
    ];
    obj(
        Unknown::Strip,
        vec![
            field("theme", Ty::OneOf(THEMES)),
            field("mode", Ty::OneOf(MODES)),
            field("defaultModel", string()).optional(),
            field("defaultAgent", string()).optional(),
            field("autoScroll", Ty::Bool),
            field("expandDiffs", Ty::Bool),
            field("expandToolCalls", Ty::Bool),
            field("showReasoning", Ty::Bool),
            field("simpleChatMode", Ty::Bool),
            field("leaderKey", string()),
            field("directShortcuts", list(string())),
            field("keyboardShortcuts", Ty::Dict(Box::new(string()))),
            field("customCommands", list(custom_command())),
            field("gitCredentials", list(credential)),
            field("defaultGitCredentialId", string()).optional(),
            field("gitIdentity", identity),
            field("tts", defaulted_obj(tts_types, default_tts())),
            field("stt", defaulted_obj(stt_types, default_stt())),
            field("notifications", notifications()),
            field("lastKnownGoodConfig", string()).optional(),
            field("repoOrder", list(number())).optional(),
            field("repoSortMode", Ty::OneOf(REPO_SORT_MODES)),
            field("serverEnvVars", list(env_var)),
            field("disabledDefaultServerEnvVars", list(string())),
        ],
    )
}

/// A strip object whose every field falls back to the same key of `defaults`.
fn defaulted_obj<const N: usize>(
    types: [(&'static str, Ty); N],
    mut defaults: Map<String, Value>,
) -> Ty {
    let fields = types
        .into_iter()
        .map(|(key, ty)| match defaults.remove(key) {
            Some(d) => field(key, ty).or(d),
            None => field(key, ty),
        })
        .collect();
    obj(Unknown::Strip, fields)
}

// ---------------------------------------------------------------------------------------------
// The checker

/// Size caps; `None` means unbounded.
#[derive(Clone, Copy)]
struct Caps {
    string: Option<usize>,
    items: Option<usize>,
    entries: Option<usize>,
}

const PATCH_CAPS: Caps = Caps {
    string: Some(MAX_STRING_LEN),
    items: Some(MAX_ARRAY_LEN),
    entries: Some(MAX_KEYBOARD_SHORTCUTS),
};

const NO_CAPS: Caps = Caps {
    string: None,
    items: None,
    entries: None,
};

/// Walks a value against a [`Ty`], collecting every problem with its path and building the
/// normalised value (unknown keys stripped, defaults filled, numbers in JavaScript form).
struct Checker {
    caps: Caps,
    path: Vec<Value>,
    details: Vec<Detail>,
}

impl Checker {
    fn run(ty: &Ty, value: &Value, caps: Caps) -> Result<Value, Vec<Detail>> {
        let mut c = Checker {
            caps,
            path: Vec::new(),
            details: Vec::new(),
        };
        match c.check(ty, value) {
            Some(v) if c.details.is_empty() => Ok(v),
            _ => Err(c.details),
        }
    }

    fn problem(&mut self, code: &'static str, message: String) {
        self.details
            .push(Detail::new(self.path.clone(), code, message));
    }

    fn invalid_type(&mut self, expected: &str, got: Option<&Value>) {
        let received = got.map_or("undefined", type_name);
        self.problem(
            "invalid_type",
            format!("Invalid input: expected {expected}, received {received}"),
        );
    }

    /// The normalised value, or `None` when `value` (or anything inside it) is bad.
    fn check(&mut self, ty: &Ty, value: &Value) -> Option<Value> {
        match ty {
            Ty::Str { min } => self.check_str(*min, value),
            Ty::Bool => match value {
                Value::Bool(_) => Some(value.clone()),
                _ => {
                    self.invalid_type("boolean", Some(value));
                    None
                }
            },
            Ty::Num { min, max } => self.check_num(*min, *max, value),
            Ty::OneOf(options) => match value {
                Value::String(s) if options.contains(&s.as_str()) => Some(value.clone()),
                _ => {
                    let quoted: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                    self.problem(
                        "invalid_value",
                        format!("Invalid option: expected one of {}", quoted.join("|")),
                    );
                    None
                }
            },
            Ty::List(item) => self.check_list(item, value),
            Ty::Dict(item) => self.check_dict(item, value),
            Ty::Obj(o) => self.check_obj(o, value),
        }
    }

    fn check_str(&mut self, min: usize, value: &Value) -> Option<Value> {
        let Value::String(s) = value else {
            self.invalid_type("string", Some(value));
            return None;
        };
        let len = utf16_len(s);
        if len < min {
            self.problem(
                "too_small",
                format!("Too small: expected string to have >={min} characters"),
            );
            return None;
        }
        if let Some(max) = self.caps.string.filter(|&max| len > max) {
            self.problem(
                "too_big",
                format!("Too big: expected string to have <={max} characters"),
            );
            return None;
        }
        Some(value.clone())
    }

    fn check_num(&mut self, min: Option<f64>, max: Option<f64>, value: &Value) -> Option<Value> {
        let Value::Number(n) = value else {
            self.invalid_type("number", Some(value));
            return None;
        };
        // Without serde_json's arbitrary_precision every number has an f64 view.
        let x = n.as_f64().unwrap_or(f64::NAN);
        if let Some(min) = min.filter(|&min| x < min) {
            self.problem(
                "too_small",
                format!("Too small: expected number to be >={min}"),
            );
            return None;
        }
        if let Some(max) = max.filter(|&max| x > max) {
            self.problem("too_big", format!("Too big: expected number to be <={max}"));
            return None;
        }
        Some(js_number(n))
    }

    fn check_list(&mut self, item: &Ty, value: &Value) -> Option<Value> {
        let Value::Array(items) = value else {
            self.invalid_type("array", Some(value));
            return None;
        };
        if let Some(max) = self.caps.items.filter(|&max| items.len() > max) {
            self.problem(
                "too_big",
                format!("Too big: expected array to have <={max} items"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, v) in items.iter().enumerate() {
            self.path.push(Value::from(i));
            match self.check(item, v) {
                Some(v) => out.push(v),
                None => ok = false,
            }
            self.path.pop();
        }
        ok.then_some(Value::Array(out))
    }

    fn check_dict(&mut self, item: &Ty, value: &Value) -> Option<Value> {
        let Value::Object(entries) = value else {
            self.invalid_type("record", Some(value));
            return None;
        };
        if let Some(max) = self.caps.entries.filter(|&max| entries.len() > max) {
            self.problem(
                "too_big",
                format!("Too big: expected object to have <={max} keys"),
            );
            return None;
        }
        let mut out = Map::new();
        let mut ok = true;
        for (k, v) in entries {
            self.path.push(Value::from(k.as_str()));
            if let Some(max) = self.caps.string.filter(|&max| utf16_len(k) > max) {
                self.problem(
                    "too_big",
                    format!("Too big: expected key to have <={max} characters"),
                );
                ok = false;
            } else if let Some(v) = self.check(item, v) {
                out.insert(k.clone(), v);
            } else {
                ok = false;
            }
            self.path.pop();
        }
        ok.then_some(Value::Object(out))
    }

    fn check_obj(&mut self, o: &Obj, value: &Value) -> Option<Value> {
        let Value::Object(input) = value else {
            self.invalid_type("object", Some(value));
            return None;
        };
        let mut out = Map::new();
        let mut ok = true;
        for f in &o.fields {
            self.path.push(Value::from(f.key));
            match (input.get(f.key), &f.absent) {
                (Some(v), _) => match self.check(&f.ty, v) {
                    Some(v) => {
                        out.insert(f.key.to_string(), v);
                    }
                    None => ok = false,
                },
                (None, Absent::Skip) => {}
                (None, Absent::Default(d)) => {
                    out.insert(f.key.to_string(), d.clone());
                }
                (None, Absent::Fail) => {
                    ok = false;
                    match &f.ty {
                        // zod reports a missing enum as a bad option, like any other value.
                        Ty::OneOf(_) => {
                            self.check(&f.ty, &Value::Null);
                        }
                        ty => self.invalid_type(expected_name(ty), None),
                    }
                }
            }
            self.path.pop();
        }
        if let Unknown::Reject = o.unknown {
            let unknown: Vec<String> = input
                .keys()
                .filter(|k| !o.fields.iter().any(|f| f.key == k.as_str()))
                .cloned()
                .collect();
            if !unknown.is_empty() {
                let quoted: Vec<String> = unknown.iter().map(|k| json!(k).to_string()).collect();
                let plural = if unknown.len() > 1 { "s" } else { "" };
                let mut d = Detail::new(
                    self.path.clone(),
                    "unrecognized_keys",
                    format!("Unrecognized key{plural}: {}", quoted.join(", ")),
                );
                d.keys = Some(unknown);
                self.details.push(d);
                ok = false;
            }
        }
        ok.then_some(Value::Object(out))
    }
}

/// zod's name for what a [`Ty`] expects.
fn expected_name(ty: &Ty) -> &'static str {
    match ty {
        Ty::Str { .. } | Ty::OneOf(_) => "string",
        Ty::Bool => "boolean",
        Ty::Num { .. } => "number",
        Ty::List(_) => "array",
        Ty::Dict(_) => "record",
        Ty::Obj(_) => "object",
    }
}

/// zod's name for what a JSON value is.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A number as JavaScript would print it back: integral floats in the exact range become
/// integers (`1.0` → `1`, `-0.0` → `0`).
fn js_number(n: &Number) -> Value {
    if n.is_f64() {
        if let Some(x) = n.as_f64() {
            if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER {
                return Value::from(x as i64);
            }
        }
    }
    Value::Number(n.clone())
}

/// Runs `ty` over an object and hands back the normalised object.
fn check_object(ty: &Ty, value: &Value, caps: Caps) -> Result<Map<String, Value>, Vec<Detail>> {
    match Checker::run(ty, value, caps)? {
        Value::Object(m) => Ok(m),
        // A `Ty::Obj` only ever yields objects.
        _ => Err(Vec::new()),
    }
}

/// Checks complete preferences against the stored schema and normalises them.
fn normalise(prefs: &Map<String, Value>) -> Result<Map<String, Value>, Vec<Detail>> {
    check_object(&stored_schema(), &Value::Object(prefs.clone()), NO_CAPS)
}

/// `user "alice": preferences.tts.speed: Too big: …; …` for a stored-file error.
fn describe(user: &str, details: &[Detail]) -> String {
    let mut parts: Vec<String> = details
        .iter()
        .take(MAX_REASON_PROBLEMS)
        .map(|d| format!("{}: {}", key_path(&d.path), d.message))
        .collect();
    if details.len() > MAX_REASON_PROBLEMS {
        parts.push(format!("and {} more", details.len() - MAX_REASON_PROBLEMS));
    }
    format!("user {user:?}: {}", parts.join("; "))
}

/// `preferences.gitCredentials[0].type`; odd keys are quoted: `keyboardShortcuts["a b"]`.
fn key_path(path: &[Value]) -> String {
    let mut s = String::from("preferences");
    for seg in path {
        match seg {
            Value::String(k)
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                s.push('.');
                s.push_str(k);
            }
            other => {
                s.push('[');
                s.push_str(&other.to_string());
                s.push(']');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The operations

/// A user's preferences as GET shows them (before redaction) and the time of the last write:
/// stored keys laid over [`defaults`], checked and normalised with the stored schema. A user
/// with nothing stored gets the defaults and `0`. A stored value that breaks the schema is
/// [`StoreError`] naming the user and the key path; it never falls back to defaults.
pub fn effective(file: &SettingsFile, user: &str) -> Result<(Map<String, Value>, i64), StoreError> {
    let mut merged = defaults();
    let updated_at = match file.users.get(user) {
        Some(entry) => {
            for (k, v) in &entry.preferences {
                merged.insert(k.clone(), v.clone());
            }
            entry.updated_at
        }
        None => 0,
    };
    let prefs = normalise(&merged)
        .map_err(|details| StoreError::invalid(SETTINGS_FILE, describe(user, &details)))?;
    Ok((prefs, updated_at))
}

/// Checks a PATCH body against the strict patch schema (reference §7.2 plus our caps) and
/// returns it normalised (extra keys inside `customCommands` items and `notifications`
/// dropped). Every problem is reported; one bad key fails the whole body.
pub fn validate_patch(body: &Value) -> Result<Map<String, Value>, SettingsError> {
    check_object(&patch_schema(), body, PATCH_CAPS).map_err(SettingsError::Validation)
}

/// Lays a patch from [`validate_patch`] over `current` (from [`effective`]): whole-value
/// replacement, except `tts`/`stt`, which are merged one level deep and only when the current
/// one has a non-empty `apiKey` (TTS checked first). The result is normalised with the
/// stored schema.
pub fn apply_patch(
    current: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Map<String, Value>, SettingsError> {
    let mut merged = current.clone();
    for (k, v) in patch {
        if k != "tts" && k != "stt" {
            merged.insert(k.clone(), v.clone());
        }
    }
    for (key, not_configured) in [
        ("tts", SettingsError::TtsNotConfigured),
        ("stt", SettingsError::SttNotConfigured),
    ] {
        let Some(update) = patch.get(key) else {
            continue;
        };
        let stored = current.get(key).and_then(Value::as_object);
        let configured = stored
            .and_then(|s| s.get("apiKey"))
            .and_then(Value::as_str)
            .is_some_and(|k| !k.is_empty());
        let (Some(stored), true) = (stored, configured) else {
            return Err(not_configured);
        };
        let mut next = stored.clone();
        match update {
            Value::Object(fields) => {
                for (k, v) in fields {
                    next.insert(k.clone(), v.clone());
                }
                merged.insert(key.to_string(), Value::Object(next));
            }
            // Not from `validate_patch`; let the schema below reject it.
            other => {
                merged.insert(key.to_string(), other.clone());
            }
        }
    }
    normalise(&merged).map_err(SettingsError::Validation)
}

/// Replaces every non-empty secret with `"[redacted]"`: `tts.apiKey`, `stt.apiKey`, the
/// git credentials' `token`, `sshPrivateKey`, `sshPrivateKeyEncrypted` and `passphrase`, and
/// `lastKnownGoodConfig`. Empty strings stay empty, so a client still sees "not set".
pub fn redact(prefs: &mut Map<String, Value>) {
    fn hide(slot: Option<&mut Value>) {
        if let Some(v) = slot {
            if v.as_str().is_some_and(|s| !s.is_empty()) {
                *v = Value::from(REDACTED);
            }
        }
    }
    for key in ["tts", "stt"] {
        if let Some(Value::Object(o)) = prefs.get_mut(key) {
            hide(o.get_mut("apiKey"));
        }
    }
    if let Some(Value::Array(creds)) = prefs.get_mut("gitCredentials") {
        for cred in creds.iter_mut().filter_map(Value::as_object_mut) {
            for key in CREDENTIAL_SECRETS {
                hide(cred.get_mut(*key));
            }
        }
    }
    hide(prefs.get_mut("lastKnownGoodConfig"));
}

/// The GET/PATCH response body.
fn response(mut prefs: Map<String, Value>, updated_at: i64, expose_secrets: bool) -> Value {
    if !expose_secrets {
        redact(&mut prefs);
    }
    json!({"preferences": prefs, "updatedAt": updated_at})
}

/// `GET /api/internal/settings`: `{"preferences": {...}, "updatedAt": <ms>}` for `user`
/// (already validated by the caller).
pub fn get(store: &Store, user: &str, expose_secrets: bool) -> Result<Value, SettingsError> {
    let file: SettingsFile = store.load(SETTINGS_FILE)?;
    let (prefs, updated_at) = effective(&file, user)?;
    Ok(response(prefs, updated_at, expose_secrets))
}

/// `PATCH /api/internal/settings`: validates `body` before taking the lock, then applies it in
/// one locked read-modify-write that writes nothing on any error. Returns the GET shape with
/// `updatedAt = now_ms`.
pub fn patch(
    store: &Store,
    user: &str,
    body: &Value,
    now_ms: i64,
    expose_secrets: bool,
) -> Result<Value, SettingsError> {
    let patch = validate_patch(body)?;
    let prefs = store.update(SETTINGS_FILE, |file: &mut SettingsFile| {
        let (current, _) = effective(file, user)?;
        let next = apply_patch(&current, &patch)?;
        file.users.insert(
            user.to_string(),
            UserEntry {
                preferences: next.clone(),
                updated_at: now_ms,
            },
        );
        Ok::<_, SettingsError>(next)
    })?;
    Ok(response(prefs, now_ms, expose_secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use std::fs;
    use std::path::PathBuf;

    /// The reference's full defaults (§7.1), written out once, in order.
    fn reference_defaults() -> Value {
        json!({
            "theme": "dark",
            "mode": "build",
            "autoScroll": true,
            "expandDiffs": true,
            "expandToolCalls": false,
            "showReasoning": false,
            "simpleChatMode": false,
            "leaderKey": "Ctrl+O",
            "directShortcuts": ["submit", "abort"],
            "keyboardShortcuts": {
                "submit": "Ctrl+Enter",
                "abort": "Escape",
                "toggleMode": "T",
                "undo": "Z",
                "redo": "Shift+Z",
                "compact": "K",
                "fork": "F",
                "settings": ",",
                "sessions": "S",
                "newSession": "N",
                "closeSession": "W",
                "toggleSidebar": "B",
                "selectModel": "M",
                "variantCycle": "Ctrl+T"
            },
            "customCommands": [],
            "gitCredentials": [],
            "gitIdentity": {"name": "OpenCode Agent", "email": ""},
            "tts": {
                "enabled": false,
                "provider": "external",
                "autoPlay": false,
                "endpoint": "https://api.openai.com",
                "apiKey": "",
                "voice": "alloy",
                "model": "tts-1",
                "speed": 1,
                "availableVoices": [],
                "availableModels": [],
                "lastVoicesFetch": 0,
                "lastModelsFetch": 0
            },
            "stt": {
                "enabled": false,
                "provider": "builtin",
                "endpoint": "https://api.openai.com",
                "apiKey": "",
                "model": "",
                "language": "en-US",
                "availableModels": [],
                "lastModelsFetch": 0
            },
            "notifications": {
                "enabled": false,
                "events": {
                    "permissionAsked": true,
                    "questionAsked": true,
                    "sessionError": true,
                    "sessionIdle": false
                }
            },
            "repoSortMode": "recent",
            "serverEnvVars": [],
            "disabledDefaultServerEnvVars": []
        })
    }

    /// Defaults with some top-level keys replaced.
    fn defaults_with(changes: Value) -> Value {
        let mut d = defaults();
        for (k, v) in object(changes) {
            d.insert(k, v);
        }
        Value::Object(d)
    }

    /// Serialised with key order, so order differences fail too.
    fn text(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    /// The details of a rejected patch, as the client sees them.
    fn rejected(body: Value) -> Value {
        match validate_patch(&body) {
            Err(SettingsError::Validation(d)) => serde_json::to_value(d).unwrap(),
            other => panic!("expected a validation error for {body}, got {other:?}"),
        }
    }

    fn accepted(body: Value) -> Value {
        match validate_patch(&body) {
            Ok(m) => Value::Object(m),
            Err(e) => panic!("expected {body} to pass, got {e:?}"),
        }
    }

    fn issue(path: Value, code: &str, message: &str) -> Value {
        json!([{"path": path, "code": code, "message": message}])
    }

    fn unknown(path: Value, keys: &[&str]) -> Value {
        let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        let plural = if keys.len() > 1 { "s" } else { "" };
        json!([{
            "path": path,
            "code": "unrecognized_keys",
            "message": format!("Unrecognized key{plural}: {}", quoted.join(", ")),
            "keys": keys,
        }])
    }

    fn temp_store(name: &str) -> (PathBuf, Store) {
        let d =
            std::env::temp_dir().join(format!("assistantd-settings-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let s = Store::new(&d);
        (d, s)
    }

    fn seed(dir: &std::path::Path, file: Value) -> Vec<u8> {
        let bytes = serde_json::to_vec_pretty(&file).unwrap();
        fs::write(dir.join(SETTINGS_FILE), &bytes).unwrap();
        bytes
    }

    fn file_json(dir: &std::path::Path) -> Value {
        serde_json::from_slice(&fs::read(dir.join(SETTINGS_FILE)).unwrap()).unwrap()
    }

    fn with_user(user: &str, preferences: Value, updated_at: i64) -> SettingsFile {
        let mut f = SettingsFile::default();
        f.users.insert(
            user.into(),
            UserEntry {
                preferences: object(preferences),
                updated_at,
            },
        );
        f
    }

    // --- defaults and reads -----------------------------------------------------------------

    #[test]
    fn defaults_are_the_reference_object_in_order() {
        let d = Value::Object(defaults());
        assert_eq!(d, reference_defaults());
        assert_eq!(text(&d), text(&reference_defaults()));
        assert_eq!(d["keyboardShortcuts"].as_object().unwrap().len(), 14);
    }

    #[test]
    fn unknown_user_reads_as_defaults_at_zero() {
        let (prefs, at) = effective(&SettingsFile::default(), "nobody").unwrap();
        assert_eq!(text(&Value::Object(prefs)), text(&reference_defaults()));
        assert_eq!(at, 0);
        let (prefs, at) = effective(&with_user("alice", json!({}), 9), "bob").unwrap();
        assert_eq!(Value::Object(prefs), reference_defaults());
        assert_eq!(at, 0);
    }

    #[test]
    fn stored_preferences_are_laid_over_defaults_and_normalised() {
        let stored = json!({
            "customAgents": [{"name": "x"}],
            "somethingOld": 1,
            "repoOrder": [3, 1.0, -0.0, 2.5],
            "lastKnownGoodConfig": "{}",
            "defaultModel": "anthropic/claude",
            "theme": "light",
            "tts": {"apiKey": "sk-1", "speed": 1.5, "extra": true},
            "stt": {"enabled": true},
            "gitCredentials": [{"name": "gh", "host": "github.com", "token": "t", "id": "c1", "x": 1}]
        });
        let (prefs, at) = effective(&with_user("alice", stored, 42), "alice").unwrap();
        let mut tts = default_tts();
        tts.insert("apiKey".into(), json!("sk-1"));
        tts.insert("speed".into(), json!(1.5));
        let mut stt = default_stt();
        stt.insert("enabled".into(), json!(true));
        let expected = json!({
            "theme": "light",
            "mode": "build",
            "defaultModel": "anthropic/claude",
            "autoScroll": true,
            "expandDiffs": true,
            "expandToolCalls": false,
            "showReasoning": false,
            "simpleChatMode": false,
            "leaderKey": "Ctrl+O",
            "directShortcuts": ["submit", "abort"],
            "keyboardShortcuts": reference_defaults()["keyboardShortcuts"],
            "customCommands": [],
            "gitCredentials": [
                {"id": "c1", "name": "gh", "host": "github.com", "type": "pat", "token": "t"}
            ],
            "gitIdentity": {"name": "OpenCode Agent", "email": ""},
            "tts": tts,
            "stt": stt,
            "notifications": reference_defaults()["notifications"],
            "lastKnownGoodConfig": "{}",
            "repoOrder": [3, 1, 0, 2.5],
            "repoSortMode": "recent",
            "serverEnvVars": [],
            "disabledDefaultServerEnvVars": []
        });
        assert_eq!(text(&Value::Object(prefs)), text(&expected));
        assert_eq!(at, 42);
    }

    #[test]
    fn stored_values_that_break_the_schema_are_errors_naming_user_and_key() {
        let cases = [
            (
                json!({"theme": "neon"}),
                r#"preferences.theme: Invalid option: expected one of "dark"|"light"|"system""#,
            ),
            (
                json!({"tts": {"speed": 9}}),
                "preferences.tts.speed: Too big: expected number to be <=4",
            ),
            (
                json!({"gitCredentials": [{"name": "a", "host": "b", "type": "gpg"}]}),
                r#"preferences.gitCredentials[0].type: Invalid option: expected one of "pat"|"ssh""#,
            ),
            (
                json!({"gitCredentials": [{"host": "b"}]}),
                "preferences.gitCredentials[0].name: Invalid input: expected string, received undefined",
            ),
            (
                json!({"serverEnvVars": [{"key": "", "value": "v"}]}),
                "preferences.serverEnvVars[0].key: Too small: expected string to have >=1 characters",
            ),
            (
                json!({"keyboardShortcuts": {"a b": 1}}),
                r#"preferences.keyboardShortcuts["a b"]: Invalid input: expected string, received number"#,
            ),
            (
                json!({"notifications": {"enabled": true}}),
                "preferences.notifications.events: Invalid input: expected object, received undefined",
            ),
            (
                json!({"gitIdentity": null}),
                "preferences.gitIdentity: Invalid input: expected object, received null",
            ),
            (
                json!({"lastKnownGoodConfig": 5}),
                "preferences.lastKnownGoodConfig: Invalid input: expected string, received number",
            ),
        ];
        for (stored, reason) in cases {
            let e = effective(&with_user("alice", stored.clone(), 1), "alice").unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("State file settings.json is invalid: user \"alice\": {reason}"),
                "{stored}"
            );
        }
    }

    #[test]
    fn a_long_list_of_stored_problems_is_cut_short() {
        let stored = json!({
            "theme": 1, "mode": 1, "autoScroll": 1, "expandDiffs": 1,
            "expandToolCalls": 1, "showReasoning": 1, "simpleChatMode": 1
        });
        let e = effective(&with_user("u", stored, 1), "u").unwrap_err();
        let msg = e.to_string();
        assert!(msg.ends_with("; and 2 more"), "{msg}");
        assert_eq!(msg.matches("preferences.").count(), MAX_REASON_PROBLEMS);
    }

    // --- patch validation -------------------------------------------------------------------

    fn full_patch() -> Value {
        json!({
            "theme": "system",
            "mode": "plan",
            "defaultModel": "",
            "defaultAgent": "build",
            "autoScroll": false,
            "expandDiffs": false,
            "expandToolCalls": true,
            "showReasoning": true,
            "simpleChatMode": true,
            "leaderKey": "Ctrl+K",
            "directShortcuts": ["submit"],
            "keyboardShortcuts": {"submit": "Enter"},
            "customCommands": [{"name": "n", "description": "d", "promptTemplate": "p"}],
            "tts": {"enabled": true, "provider": "builtin", "autoPlay": true, "voice": "nova", "model": "tts-1-hd", "speed": 2.5},
            "stt": {"enabled": true, "provider": "external", "model": "whisper-1", "language": "de-DE"},
            "notifications": {"enabled": true, "events": {"permissionAsked": false, "questionAsked": false, "sessionError": false, "sessionIdle": true}},
            "repoOrder": [5, 1, 2],
            "repoSortMode": "manual"
        })
    }

    #[test]
    fn every_allowed_key_is_accepted_alone_and_together() {
        let all = full_patch();
        assert_eq!(accepted(all.clone()), all);
        for (k, v) in all.as_object().unwrap() {
            let one = json!({ k: v });
            assert_eq!(accepted(one.clone()), one);
        }
        assert_eq!(accepted(json!({})), json!({}));
        for theme in THEMES {
            accepted(json!({ "theme": theme }));
        }
        for mode in REPO_SORT_MODES {
            accepted(json!({ "repoSortMode": mode }));
        }
        accepted(json!({"tts": {}, "stt": {}, "keyboardShortcuts": {}, "repoOrder": []}));
    }

    #[test]
    fn every_restricted_key_is_rejected() {
        let top = [
            ("gitCredentials", json!([])),
            ("gitIdentity", json!({"name": "a", "email": "b"})),
            ("lastKnownGoodConfig", json!("{}")),
            ("defaultGitCredentialId", json!("c1")),
            ("serverEnvVars", json!([])),
            ("disabledDefaultServerEnvVars", json!([])),
            ("customAgents", json!([])),
            ("preferences", json!({})),
        ];
        for (key, value) in top {
            assert_eq!(
                rejected(json!({ key: value })),
                unknown(json!([]), &[key]),
                "{key}"
            );
        }
        let tts = [
            ("apiKey", json!("k")),
            ("endpoint", json!("https://x")),
            ("availableVoices", json!([])),
            ("availableModels", json!([])),
            ("lastVoicesFetch", json!(0)),
            ("lastModelsFetch", json!(0)),
        ];
        for (key, value) in tts {
            assert_eq!(
                rejected(json!({"tts": { key: value }})),
                unknown(json!(["tts"]), &[key]),
                "tts.{key}"
            );
        }
        let stt = [
            ("apiKey", json!("k")),
            ("endpoint", json!("https://x")),
            ("availableModels", json!([])),
            ("lastModelsFetch", json!(0)),
            ("autoPlay", json!(true)),
            ("voice", json!("v")),
        ];
        for (key, value) in stt {
            assert_eq!(
                rejected(json!({"stt": { key: value }})),
                unknown(json!(["stt"]), &[key]),
                "stt.{key}"
            );
        }
    }

    #[test]
    fn several_unknown_keys_are_one_plural_detail_after_the_field_problems() {
        let d = rejected(
            json!({"zeta": 1, "theme": "neon", "alpha": 2, "tts": {"apiKey": "k", "speed": 0}}),
        );
        assert_eq!(
            d,
            json!([
                {"path": ["theme"], "code": "invalid_value",
                 "message": "Invalid option: expected one of \"dark\"|\"light\"|\"system\""},
                {"path": ["tts", "speed"], "code": "too_small",
                 "message": "Too small: expected number to be >=0.25"},
                {"path": ["tts"], "code": "unrecognized_keys",
                 "message": "Unrecognized key: \"apiKey\"", "keys": ["apiKey"]},
                {"path": [], "code": "unrecognized_keys",
                 "message": "Unrecognized keys: \"zeta\", \"alpha\"", "keys": ["zeta", "alpha"]}
            ])
        );
    }

    #[test]
    fn null_is_never_accepted() {
        let expect = |key: &str| -> Value {
            match key {
                "theme" => issue(
                    json!([key]),
                    "invalid_value",
                    r#"Invalid option: expected one of "dark"|"light"|"system""#,
                ),
                "mode" => issue(
                    json!([key]),
                    "invalid_value",
                    r#"Invalid option: expected one of "plan"|"build""#,
                ),
                "repoSortMode" => issue(
                    json!([key]),
                    "invalid_value",
                    r#"Invalid option: expected one of "recent"|"manual"|"name""#,
                ),
                "defaultModel" | "defaultAgent" | "leaderKey" => issue(
                    json!([key]),
                    "invalid_type",
                    "Invalid input: expected string, received null",
                ),
                "directShortcuts" | "customCommands" | "repoOrder" => issue(
                    json!([key]),
                    "invalid_type",
                    "Invalid input: expected array, received null",
                ),
                "keyboardShortcuts" => issue(
                    json!([key]),
                    "invalid_type",
                    "Invalid input: expected record, received null",
                ),
                "tts" | "stt" | "notifications" => issue(
                    json!([key]),
                    "invalid_type",
                    "Invalid input: expected object, received null",
                ),
                _ => issue(
                    json!([key]),
                    "invalid_type",
                    "Invalid input: expected boolean, received null",
                ),
            }
        };
        for key in full_patch().as_object().unwrap().keys() {
            assert_eq!(rejected(json!({ key: null })), expect(key), "{key}");
        }
        let nested = [
            (
                json!({"tts": {"voice": null}}),
                json!(["tts", "voice"]),
                "invalid_type",
                "Invalid input: expected string, received null",
            ),
            (
                json!({"tts": {"speed": null}}),
                json!(["tts", "speed"]),
                "invalid_type",
                "Invalid input: expected number, received null",
            ),
            (
                json!({"stt": {"provider": null}}),
                json!(["stt", "provider"]),
                "invalid_value",
                r#"Invalid option: expected one of "external"|"builtin""#,
            ),
            (
                json!({"directShortcuts": [null]}),
                json!(["directShortcuts", 0]),
                "invalid_type",
                "Invalid input: expected string, received null",
            ),
            (
                json!({"keyboardShortcuts": {"submit": null}}),
                json!(["keyboardShortcuts", "submit"]),
                "invalid_type",
                "Invalid input: expected string, received null",
            ),
            (
                json!({"repoOrder": [1, null]}),
                json!(["repoOrder", 1]),
                "invalid_type",
                "Invalid input: expected number, received null",
            ),
        ];
        for (body, path, code, message) in nested {
            assert_eq!(rejected(body.clone()), issue(path, code, message), "{body}");
        }
    }

    #[test]
    fn wrong_types_are_rejected_with_zod_messages() {
        let cases = [
            (
                json!({"theme": "neon"}),
                json!(["theme"]),
                "invalid_value",
                r#"Invalid option: expected one of "dark"|"light"|"system""#,
            ),
            (
                json!({"theme": 1}),
                json!(["theme"]),
                "invalid_value",
                r#"Invalid option: expected one of "dark"|"light"|"system""#,
            ),
            (
                json!({"mode": "Build"}),
                json!(["mode"]),
                "invalid_value",
                r#"Invalid option: expected one of "plan"|"build""#,
            ),
            (
                json!({"autoScroll": "true"}),
                json!(["autoScroll"]),
                "invalid_type",
                "Invalid input: expected boolean, received string",
            ),
            (
                json!({"simpleChatMode": 0}),
                json!(["simpleChatMode"]),
                "invalid_type",
                "Invalid input: expected boolean, received number",
            ),
            (
                json!({"defaultModel": 5}),
                json!(["defaultModel"]),
                "invalid_type",
                "Invalid input: expected string, received number",
            ),
            (
                json!({"leaderKey": ["Ctrl"]}),
                json!(["leaderKey"]),
                "invalid_type",
                "Invalid input: expected string, received array",
            ),
            (
                json!({"directShortcuts": "submit"}),
                json!(["directShortcuts"]),
                "invalid_type",
                "Invalid input: expected array, received string",
            ),
            (
                json!({"directShortcuts": ["a", 1]}),
                json!(["directShortcuts", 1]),
                "invalid_type",
                "Invalid input: expected string, received number",
            ),
            (
                json!({"keyboardShortcuts": []}),
                json!(["keyboardShortcuts"]),
                "invalid_type",
                "Invalid input: expected record, received array",
            ),
            (
                json!({"keyboardShortcuts": {"submit": true}}),
                json!(["keyboardShortcuts", "submit"]),
                "invalid_type",
                "Invalid input: expected string, received boolean",
            ),
            (
                json!({"customCommands": {}}),
                json!(["customCommands"]),
                "invalid_type",
                "Invalid input: expected array, received object",
            ),
            (
                json!({"customCommands": ["x"]}),
                json!(["customCommands", 0]),
                "invalid_type",
                "Invalid input: expected object, received string",
            ),
            (
                json!({"customCommands": [{"name": "n", "description": "d"}]}),
                json!(["customCommands", 0, "promptTemplate"]),
                "invalid_type",
                "Invalid input: expected string, received undefined",
            ),
            (
                json!({"notifications": {"enabled": true}}),
                json!(["notifications", "events"]),
                "invalid_type",
                "Invalid input: expected object, received undefined",
            ),
            (
                json!({"notifications": {"events": {"permissionAsked": true, "questionAsked": true, "sessionError": true, "sessionIdle": true}}}),
                json!(["notifications", "enabled"]),
                "invalid_type",
                "Invalid input: expected boolean, received undefined",
            ),
            (
                json!({"notifications": {"enabled": true, "events": {"permissionAsked": true, "questionAsked": true, "sessionError": true}}}),
                json!(["notifications", "events", "sessionIdle"]),
                "invalid_type",
                "Invalid input: expected boolean, received undefined",
            ),
            (
                json!({"repoOrder": ["1"]}),
                json!(["repoOrder", 0]),
                "invalid_type",
                "Invalid input: expected number, received string",
            ),
            (
                json!({"repoSortMode": "date"}),
                json!(["repoSortMode"]),
                "invalid_value",
                r#"Invalid option: expected one of "recent"|"manual"|"name""#,
            ),
            (
                json!({"tts": []}),
                json!(["tts"]),
                "invalid_type",
                "Invalid input: expected object, received array",
            ),
            (
                json!({"tts": {"speed": "1"}}),
                json!(["tts", "speed"]),
                "invalid_type",
                "Invalid input: expected number, received string",
            ),
            (
                json!({"tts": {"provider": "openai"}}),
                json!(["tts", "provider"]),
                "invalid_value",
                r#"Invalid option: expected one of "external"|"builtin""#,
            ),
            (
                json!({"stt": {"enabled": "yes"}}),
                json!(["stt", "enabled"]),
                "invalid_type",
                "Invalid input: expected boolean, received string",
            ),
            (
                json!({"stt": {"language": 1}}),
                json!(["stt", "language"]),
                "invalid_type",
                "Invalid input: expected string, received number",
            ),
        ];
        for (body, path, code, message) in cases {
            assert_eq!(rejected(body.clone()), issue(path, code, message), "{body}");
        }
    }

    #[test]
    fn body_must_be_an_object() {
        for (body, got) in [
            (json!([]), "array"),
            (json!("x"), "string"),
            (json!(null), "null"),
            (json!(1), "number"),
            (json!(true), "boolean"),
        ] {
            assert_eq!(
                rejected(body),
                issue(
                    json!([]),
                    "invalid_type",
                    &format!("Invalid input: expected object, received {got}")
                )
            );
        }
    }

    #[test]
    fn tts_speed_bounds_are_inclusive() {
        for ok in [json!(0.25), json!(4.0), json!(4), json!(1)] {
            accepted(json!({"tts": {"speed": ok}}));
        }
        assert_eq!(
            rejected(json!({"tts": {"speed": 0.24}})),
            issue(
                json!(["tts", "speed"]),
                "too_small",
                "Too small: expected number to be >=0.25"
            )
        );
        assert_eq!(
            rejected(json!({"tts": {"speed": 4.01}})),
            issue(
                json!(["tts", "speed"]),
                "too_big",
                "Too big: expected number to be <=4"
            )
        );
        assert_eq!(
            rejected(json!({"tts": {"speed": -1}})),
            issue(
                json!(["tts", "speed"]),
                "too_small",
                "Too small: expected number to be >=0.25"
            )
        );
    }

    #[test]
    fn numbers_come_back_as_javascript_prints_them() {
        assert_eq!(
            accepted(json!({"repoOrder": [1.0, 2.5, -0.0, 7], "tts": {"speed": 2.0}})),
            json!({"repoOrder": [1, 2.5, 0, 7], "tts": {"speed": 2}})
        );
        assert_eq!(
            text(&accepted(json!({"repoOrder": [1e300]}))),
            r#"{"repoOrder":[1e+300]}"#
        );
    }

    #[test]
    fn extra_keys_inside_commands_and_notifications_are_stripped() {
        let body = json!({
            "customCommands": [{"name": "n", "description": "d", "promptTemplate": "p", "id": 3}],
            "notifications": {"enabled": true, "sound": true,
                "events": {"permissionAsked": true, "questionAsked": true, "sessionError": true, "sessionIdle": true, "x": 1}}
        });
        assert_eq!(
            accepted(body),
            json!({
                "customCommands": [{"name": "n", "description": "d", "promptTemplate": "p"}],
                "notifications": {"enabled": true,
                    "events": {"permissionAsked": true, "questionAsked": true, "sessionError": true, "sessionIdle": true}}
            })
        );
    }

    #[test]
    fn string_limits_count_utf16_units() {
        let at = "😀".repeat(MAX_STRING_LEN / 2);
        assert_eq!(utf16_len(&at), MAX_STRING_LEN);
        let over = format!("{at}a");
        let too_long = format!("Too big: expected string to have <={MAX_STRING_LEN} characters");
        accepted(json!({"leaderKey": at}));
        assert_eq!(
            rejected(json!({"leaderKey": over})),
            issue(json!(["leaderKey"]), "too_big", &too_long)
        );
        accepted(
            json!({"customCommands": [{"name": "n", "description": "d", "promptTemplate": at}]}),
        );
        assert_eq!(
            rejected(
                json!({"customCommands": [{"name": "n", "description": "d", "promptTemplate": over}]})
            ),
            issue(
                json!(["customCommands", 0, "promptTemplate"]),
                "too_big",
                &too_long
            )
        );
        assert_eq!(
            rejected(json!({"tts": {"voice": over}})),
            issue(json!(["tts", "voice"]), "too_big", &too_long)
        );
        assert_eq!(
            rejected(json!({"directShortcuts": ["a", over]})),
            issue(json!(["directShortcuts", 1]), "too_big", &too_long)
        );
        accepted(json!({"keyboardShortcuts": { at.clone(): at }}));
        assert_eq!(
            rejected(json!({"keyboardShortcuts": { over.clone(): "x" }})),
            issue(
                json!(["keyboardShortcuts", over]),
                "too_big",
                &format!("Too big: expected key to have <={MAX_STRING_LEN} characters")
            )
        );
    }

    #[test]
    fn array_and_map_limits() {
        let items = |n: usize| vec![json!("a"); n];
        accepted(json!({"directShortcuts": items(MAX_ARRAY_LEN)}));
        let too_many = format!("Too big: expected array to have <={MAX_ARRAY_LEN} items");
        assert_eq!(
            rejected(json!({"directShortcuts": items(MAX_ARRAY_LEN + 1)})),
            issue(json!(["directShortcuts"]), "too_big", &too_many)
        );
        assert_eq!(
            rejected(json!({"repoOrder": vec![json!(null); MAX_ARRAY_LEN + 1]})),
            issue(json!(["repoOrder"]), "too_big", &too_many)
        );
        let shortcuts = |n: usize| -> Map<String, Value> {
            (0..n).map(|i| (format!("k{i}"), json!("X"))).collect()
        };
        accepted(json!({"keyboardShortcuts": shortcuts(MAX_KEYBOARD_SHORTCUTS)}));
        assert_eq!(
            rejected(json!({"keyboardShortcuts": shortcuts(MAX_KEYBOARD_SHORTCUTS + 1)})),
            issue(
                json!(["keyboardShortcuts"]),
                "too_big",
                &format!("Too big: expected object to have <={MAX_KEYBOARD_SHORTCUTS} keys")
            )
        );
    }

    #[test]
    fn patch_schema_is_a_subset_of_the_stored_schema_in_the_same_order() {
        fn keys(ty: &Ty) -> Vec<&'static str> {
            match ty {
                Ty::Obj(o) => o.fields.iter().map(|f| f.key).collect(),
                _ => Vec::new(),
            }
        }
        let patch = keys(&patch_schema());
        let stored: Vec<_> = keys(&stored_schema())
            .into_iter()
            .filter(|k| patch.contains(k))
            .collect();
        assert_eq!(patch, stored);
        assert_eq!(patch.len(), 18);
    }

    // --- applying patches -------------------------------------------------------------------

    #[test]
    fn values_replace_whole_keys() {
        let patch = validate_patch(&json!({
            "keyboardShortcuts": {"submit": "Enter"},
            "directShortcuts": [],
            "theme": "light"
        }))
        .unwrap();
        let next = apply_patch(&defaults(), &patch).unwrap();
        assert_eq!(
            Value::Object(next),
            defaults_with(json!({
                "keyboardShortcuts": {"submit": "Enter"},
                "directShortcuts": [],
                "theme": "light"
            }))
        );
    }

    #[test]
    fn tts_and_stt_need_a_stored_api_key() {
        let patch = |b: Value| validate_patch(&b).unwrap();
        assert!(matches!(
            apply_patch(&defaults(), &patch(json!({"tts": {}}))),
            Err(SettingsError::TtsNotConfigured)
        ));
        assert!(matches!(
            apply_patch(&defaults(), &patch(json!({"stt": {"language": "de"}}))),
            Err(SettingsError::SttNotConfigured)
        ));
        assert!(matches!(
            apply_patch(&defaults(), &patch(json!({"stt": {}, "tts": {}}))),
            Err(SettingsError::TtsNotConfigured)
        ));
        // Only STT configured: TTS still refused, STT merged.
        let mut current = defaults();
        current["stt"]["apiKey"] = json!("sk-stt");
        assert!(matches!(
            apply_patch(&current, &patch(json!({"stt": {}, "tts": {}}))),
            Err(SettingsError::TtsNotConfigured)
        ));
        let next = apply_patch(&current, &patch(json!({"stt": {"language": "de-DE"}}))).unwrap();
        assert_eq!(next["stt"]["language"], "de-DE");
        assert_eq!(next["stt"]["apiKey"], "sk-stt");
    }

    #[test]
    fn configured_tts_is_merged_one_level_keeping_secrets() {
        let mut current = defaults();
        current["tts"]["apiKey"] = json!("sk-1");
        current["tts"]["endpoint"] = json!("https://tts.example");
        current["tts"]["availableVoices"] = json!(["alloy", "nova"]);
        let patch = validate_patch(&json!({"tts": {"voice": "nova", "speed": 1.25}})).unwrap();
        let next = apply_patch(&current, &patch).unwrap();
        assert_eq!(
            text(&next["tts"]),
            text(&json!({
                "enabled": false,
                "provider": "external",
                "autoPlay": false,
                "endpoint": "https://tts.example",
                "apiKey": "sk-1",
                "voice": "nova",
                "model": "tts-1",
                "speed": 1.25,
                "availableVoices": ["alloy", "nova"],
                "availableModels": [],
                "lastVoicesFetch": 0,
                "lastModelsFetch": 0
            }))
        );
    }

    #[test]
    fn redaction_hides_non_empty_secrets_only() {
        let mut prefs = defaults();
        prefs["tts"]["apiKey"] = json!("sk-tts");
        prefs.insert("lastKnownGoodConfig".into(), json!("{\"a\":1}"));
        prefs.insert(
            "gitCredentials".into(),
            json!([
                {"name": "gh", "host": "github.com", "type": "pat", "token": "ghp_x", "username": "me"},
                {"name": "srv", "host": "git.example", "type": "ssh", "sshPrivateKey": "KEY",
                 "sshPrivateKeyEncrypted": "ENC", "hasPassphrase": true, "passphrase": "", "token": ""}
            ]),
        );
        redact(&mut prefs);
        assert_eq!(prefs["tts"]["apiKey"], REDACTED);
        assert_eq!(prefs["stt"]["apiKey"], "");
        assert_eq!(prefs["lastKnownGoodConfig"], REDACTED);
        assert_eq!(
            prefs["gitCredentials"],
            json!([
                {"name": "gh", "host": "github.com", "type": "pat", "token": "[redacted]", "username": "me"},
                {"name": "srv", "host": "git.example", "type": "ssh", "sshPrivateKey": "[redacted]",
                 "sshPrivateKeyEncrypted": "[redacted]", "hasPassphrase": true, "passphrase": "", "token": ""}
            ])
        );
        let mut plain = defaults();
        redact(&mut plain);
        assert_eq!(Value::Object(plain), reference_defaults());
    }

    // --- through the store ------------------------------------------------------------------

    #[test]
    fn get_of_a_user_with_nothing_stored_writes_nothing() {
        let (dir, store) = temp_store("get-empty");
        let got = get(&store, "default", false).unwrap();
        assert_eq!(
            text(&got),
            text(&json!({"preferences": reference_defaults(), "updatedAt": 0}))
        );
        assert!(!dir.join(SETTINGS_FILE).exists());
    }

    #[test]
    fn get_redacts_unless_secrets_are_exposed() {
        let (dir, store) = temp_store("get-redact");
        seed(
            &dir,
            json!({"users": {"default": {"preferences": {"tts": {"apiKey": "sk-1"}, "lastKnownGoodConfig": "cfg"}, "updatedAt": 5}}}),
        );
        let hidden = get(&store, "default", false).unwrap();
        assert_eq!(hidden["preferences"]["tts"]["apiKey"], REDACTED);
        assert_eq!(hidden["preferences"]["lastKnownGoodConfig"], REDACTED);
        assert_eq!(hidden["updatedAt"], 5);
        let shown = get(&store, "default", true).unwrap();
        assert_eq!(shown["preferences"]["tts"]["apiKey"], "sk-1");
        assert_eq!(shown["preferences"]["lastKnownGoodConfig"], "cfg");
    }

    #[test]
    fn patch_on_alice_leaves_default_untouched() {
        let (dir, store) = temp_store("patch-alice");
        seed(
            &dir,
            json!({"users": {"default": {"preferences": {"theme": "light"}, "updatedAt": 7}}}),
        );
        let out = patch(
            &store,
            "alice",
            &json!({"mode": "plan", "repoOrder": [2, 1]}),
            1_000,
            false,
        )
        .unwrap();
        let alice = defaults_with(json!({"mode": "plan", "repoOrder": [2, 1]}));
        assert_eq!(out, json!({"preferences": alice, "updatedAt": 1_000}));
        let file = file_json(&dir);
        assert_eq!(
            file["users"]["default"],
            json!({"preferences": {"theme": "light"}, "updatedAt": 7})
        );
        assert_eq!(
            file["users"]["alice"],
            json!({"preferences": alice, "updatedAt": 1_000})
        );
        let def = get(&store, "default", false).unwrap();
        assert_eq!(
            def,
            json!({"preferences": defaults_with(json!({"theme": "light"})), "updatedAt": 7})
        );
        assert_eq!(get(&store, "alice", false).unwrap(), out);
    }

    #[test]
    fn empty_patch_rewrites_the_row_normalised() {
        let (dir, store) = temp_store("patch-empty");
        seed(
            &dir,
            json!({"users": {"default": {"preferences": {"customAgents": [], "theme": "system"}, "updatedAt": 1}}}),
        );
        let out = patch(&store, "default", &json!({}), 2, false).unwrap();
        let expected = defaults_with(json!({"theme": "system"}));
        assert_eq!(out, json!({"preferences": expected, "updatedAt": 2}));
        assert_eq!(file_json(&dir)["users"]["default"]["preferences"], expected);
    }

    #[test]
    fn mixed_valid_and_invalid_patch_fails_whole_and_writes_nothing() {
        let (dir, store) = temp_store("patch-mixed");
        let before = seed(
            &dir,
            json!({"users": {"default": {"preferences": {"theme": "light"}, "updatedAt": 7}}}),
        );
        let e = patch(
            &store,
            "default",
            &json!({"theme": "dark", "gitIdentity": {"name": "x", "email": "y"}}),
            9,
            false,
        )
        .unwrap_err();
        let SettingsError::Validation(d) = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            serde_json::to_value(d).unwrap(),
            unknown(json!([]), &["gitIdentity"])
        );
        assert_eq!(fs::read(dir.join(SETTINGS_FILE)).unwrap(), before);
        // Same with no file at all: none is created.
        let (dir, store) = temp_store("patch-mixed-none");
        assert!(patch(
            &store,
            "default",
            &json!({"theme": "dark", "autoScroll": "no"}),
            9,
            false
        )
        .is_err());
        assert!(!dir.join(SETTINGS_FILE).exists());
    }

    #[test]
    fn tts_patch_through_the_store() {
        let (dir, store) = temp_store("patch-tts");
        let before = seed(
            &dir,
            json!({"users": {"default": {"preferences": {}, "updatedAt": 3}}}),
        );
        let e = patch(
            &store,
            "default",
            &json!({"theme": "light", "tts": {"voice": "nova"}}),
            9,
            false,
        )
        .unwrap_err();
        assert!(matches!(e, SettingsError::TtsNotConfigured), "{e:?}");
        assert_eq!(fs::read(dir.join(SETTINGS_FILE)).unwrap(), before);

        seed(
            &dir,
            json!({"users": {"default": {"preferences": {"tts": {"apiKey": "sk-1", "endpoint": "https://tts.example"}}, "updatedAt": 3}}}),
        );
        let out = patch(
            &store,
            "default",
            &json!({"tts": {"voice": "nova", "enabled": true}}),
            9,
            false,
        )
        .unwrap();
        let tts = &out["preferences"]["tts"];
        assert_eq!(tts["apiKey"], REDACTED);
        assert_eq!(tts["endpoint"], "https://tts.example");
        assert_eq!(tts["voice"], "nova");
        assert_eq!(tts["enabled"], true);
        assert_eq!(tts["model"], "tts-1");
        let stored = &file_json(&dir)["users"]["default"]["preferences"]["tts"];
        assert_eq!(stored["apiKey"], "sk-1");
        assert_eq!(stored["voice"], "nova");
        let shown = patch(&store, "default", &json!({"tts": {"speed": 4}}), 10, true).unwrap();
        assert_eq!(shown["preferences"]["tts"]["apiKey"], "sk-1");
        assert_eq!(shown["preferences"]["tts"]["voice"], "nova");
        assert_eq!(shown["updatedAt"], 10);
    }

    #[test]
    fn corrupt_stored_value_is_an_error_and_never_written_over() {
        let (dir, store) = temp_store("corrupt");
        let before = seed(
            &dir,
            json!({"users": {"alice": {"preferences": {"theme": "neon", "tts": {"apiKey": "sk-keep"}}, "updatedAt": 5}}}),
        );
        let reason = r#"State file settings.json is invalid: user "alice": preferences.theme: Invalid option: expected one of "dark"|"light"|"system""#;
        let e = get(&store, "alice", false).unwrap_err();
        assert_eq!(e.to_string(), reason);
        let e = patch(&store, "alice", &json!({"theme": "dark"}), 9, false).unwrap_err();
        assert_eq!(e.to_string(), reason);
        assert_eq!(fs::read(dir.join(SETTINGS_FILE)).unwrap(), before);
        // Other users still work, and writing them keeps alice's entry as it was.
        patch(&store, "bob", &json!({"mode": "plan"}), 9, false).unwrap();
        assert_eq!(
            file_json(&dir)["users"]["alice"],
            json!({"preferences": {"theme": "neon", "tts": {"apiKey": "sk-keep"}}, "updatedAt": 5})
        );
    }

    #[test]
    fn the_file_itself_is_read_strictly_and_tolerantly() {
        let (dir, store) = temp_store("file-shape");
        fs::write(
            dir.join(SETTINGS_FILE),
            "// hand-written\n{\"users\": {\"default\": {\"preferences\": {\"theme\": \"light\",},},},}",
        )
        .unwrap();
        let got = get(&store, "default", false).unwrap();
        assert_eq!(got["preferences"]["theme"], "light");
        assert_eq!(got["updatedAt"], 0);
        for bad in [
            r#"{"user": {}}"#,
            r#"{"users": {"default": {"preferences": {}, "updatedAt": 1, "extra": 1}}}"#,
            r#"{"users": {"default": {"preferences": []}}}"#,
            r#"{"users": []}"#,
        ] {
            fs::write(dir.join(SETTINGS_FILE), bad).unwrap();
            let e = get(&store, "default", false).unwrap_err();
            assert!(
                matches!(&e, SettingsError::Store(s) if matches!(s.kind, crate::store::StoreErrorKind::Invalid(_))),
                "{bad}: {e:?}"
            );
            assert!(patch(&store, "default", &json!({}), 1, false).is_err());
            assert_eq!(fs::read(dir.join(SETTINGS_FILE)).unwrap(), bad.as_bytes());
        }
    }

    #[test]
    fn errors_become_the_reference_responses() {
        let e: ApiError = validate_patch(&json!({"x": 1})).unwrap_err().into();
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": "Invalid request body", "details": unknown(json!([]), &["x"])})
        );
        let e: ApiError = SettingsError::TtsNotConfigured.into();
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": "TTS is not configured. Set up TTS (including credentials) in the UI before adjusting it."})
        );
        let e: ApiError = SettingsError::SttNotConfigured.into();
        assert_eq!(
            e.body(),
            json!({"error": "STT is not configured. Set up STT (including credentials) in the UI before adjusting it."})
        );
        let e: ApiError = SettingsError::Store(StoreError::invalid(SETTINGS_FILE, "bad")).into();
        assert_eq!(e.status(), 500);
        assert_eq!(
            e.body(),
            json!({"error": "State file settings.json is invalid: bad"})
        );
    }
}
