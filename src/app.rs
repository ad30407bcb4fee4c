//! The application context shared by every worker, and the start-up work that builds it:
//! state dir creation (`init`), the token, temp-file cleanup, workspace provisioning.

use crate::auth::{self, TokenStore};
use crate::cli::Config;
use crate::opencode;
use crate::push::{self, PushClient, VapidKeys};
use crate::ratelimit::{RateLimiter, RELOAD_RATE, SEND_RATE};
use crate::repos::{RepoPaths, ScheduleRepos};
use crate::schedules::{Schedules, SchedulesDeps, SystemClock};
use crate::store::{self, Store, ViewCache};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Name of the token file in the state dir.
pub const TOKEN_FILE: &str = "internal-token";
/// Mode of the token file and other secrets.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of the state dir we create.
const STATE_DIR_MODE: u32 = 0o700;
/// Empty state files `init` creates when missing: (file, content).
const EMPTY_STATE: [(&str, &str); 4] = [
    ("settings.json", "{\n  \"users\": {}\n}\n"),
    ("repos.json", "{\n  \"repos\": []\n}\n"),
    ("subscriptions.json", "{\n  \"subscriptions\": []\n}\n"),
    ("schedules.json", "{\n  \"jobs\": [],\n  \"runs\": []\n}\n"),
];

/// Everything a handler may use.
pub struct App {
    pub cfg: Config,
    pub store: Store,
    pub tokens: TokenStore,
    pub send_limiter: RateLimiter,
    pub reload_limiter: RateLimiter,
    pub opencode: opencode::Client,
    pub repo_paths: RepoPaths,
    /// `None` when no VAPID keys exist: sends answer 503.
    pub vapid: Option<VapidKeys>,
    pub push_client: PushClient,
    /// Serialised GET views, valid while their files are unchanged.
    pub views: ViewCache,
    pub schedules: Schedules,
}

fn ms_of(t: io::Result<SystemTime>) -> Option<i64> {
    t.ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Creates the state dir with empty state files (only the missing ones) and the token.
pub fn init_state(cfg: &Config) -> io::Result<Vec<String>> {
    let mut made = Vec::new();
    if !cfg.state_dir.exists() {
        fs::create_dir_all(&cfg.state_dir)?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(STATE_DIR_MODE))?;
        made.push(cfg.state_dir.display().to_string());
    }
    for (file, content) in EMPTY_STATE {
        let p = cfg.state_dir.join(file);
        if !p.exists() {
            store::write_atomic(&p, content.as_bytes(), store::STATE_FILE_MODE)?;
            made.push(file.to_string());
        }
    }
    if cfg.fixed_token.is_none() && ensure_token_file(&cfg.state_dir)? {
        made.push(TOKEN_FILE.to_string());
    }
    // VAPID keys, unless the environment provides them or a file exists already.
    let store = Store::new(&cfg.state_dir);
    let vapid_file = store.path(push::vapid::VAPID_FILE);
    if cfg.vapid_public.is_none() && cfg.vapid_private.is_none() && !vapid_file.exists() {
        let subject = cfg
            .vapid_subject
            .as_deref()
            .unwrap_or(push::vapid::INIT_DEFAULT_SUBJECT);
        let keys = VapidKeys::generate(subject).map_err(io::Error::other)?;
        keys.save(&store)?;
        made.push(push::vapid::VAPID_FILE.to_string());
    }
    Ok(made)
}

/// Creates `state/internal-token` when missing (true when created) and keeps it 0600.
pub fn ensure_token_file(state_dir: &Path) -> io::Result<bool> {
    let p = state_dir.join(TOKEN_FILE);
    if p.exists() {
        auth::read_token_file(&p)?;
        keep_secret_mode(&p)?;
        return Ok(false);
    }
    store::write_atomic(&p, auth::generate_token().as_bytes(), SECRET_MODE)?;
    Ok(true)
}

/// Makes an existing secret file (token, vapid.json) mode 0600 again if someone loosened it.
/// A read-only state dir keeps serving: that is logged rather than refused.
fn keep_secret_mode(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(p)?.permissions().mode() & 0o777;
    if mode != SECRET_MODE {
        if let Err(e) = fs::set_permissions(p, fs::Permissions::from_mode(SECRET_MODE)) {
            eprintln!("warning: cannot make {} mode 0600: {e}", p.display());
        }
    }
    Ok(())
}

/// The token in force: `ASSISTANTD_TOKEN` or the state file.
pub fn current_token(cfg: &Config) -> io::Result<String> {
    match &cfg.fixed_token {
        Some(t) => Ok(t.clone()),
        None => auth::read_token_file(&cfg.state_dir.join(TOKEN_FILE)),
    }
}

/// Replaces the token in the state dir and the workspace copy; returns the new token.
pub fn rotate_token(cfg: &Config) -> io::Result<String> {
    if cfg.fixed_token.is_some() {
        return Err(io::Error::other(
            "the token comes from ASSISTANTD_TOKEN; change that instead",
        ));
    }
    let t = auth::generate_token();
    store::write_atomic(&cfg.state_dir.join(TOKEN_FILE), t.as_bytes(), SECRET_MODE)?;
    crate::workspace::write_token(&cfg.workspace, &t)?;
    Ok(t)
}

/// The skills' base URL for a server on `port`.
pub fn api_base_url(port: u16) -> String {
    format!("http://localhost:{port}/api/internal")
}

/// Writes the workspace token copy and the managed files; warnings go to the log.
pub fn provision_workspace(cfg: &Config, port: u16, force: bool) -> Result<(), String> {
    let token = current_token(cfg).map_err(|e| format!("token: {e}"))?;
    let ws = crate::workspace::WorkspaceConfig {
        dir: cfg.workspace.clone(),
        api_base_url: api_base_url(port),
    };
    let warnings = crate::workspace::provision(&ws, &token, force)
        .map_err(|e| format!("workspace {}: {e}", cfg.workspace.display()))?;
    for w in warnings {
        eprintln!("workspace: {w}");
    }
    Ok(())
}

/// Port the skills document when no server is running (`init`): the one `--listen` names,
/// or the default when that is 0.
pub fn documented_port(cfg: &Config) -> u16 {
    cfg.listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.port())
        .filter(|p| *p != 0)
        .unwrap_or(5003)
}

impl App {
    /// Builds the app for `serve` on `port` (the real bound port, used in the skills' base URL).
    /// A missing state dir is first created as by `init`; an existing one only gets a token.
    pub fn open(cfg: Config, port: u16) -> Result<App, String> {
        let fresh = !cfg.state_dir.exists();
        if fresh {
            init_state(&cfg)
                .map_err(|e| format!("cannot create state dir {}: {e}", cfg.state_dir.display()))?;
        } else if cfg.fixed_token.is_none() {
            ensure_token_file(&cfg.state_dir)
                .map_err(|e| format!("token file in {}: {e}", cfg.state_dir.display()))?;
        }
        let store = Store::new(&cfg.state_dir);
        let cleaned = store.clean_temp_files();
        if cleaned > 0 {
            eprintln!("removed {cleaned} temp file(s) left by an interrupted write");
        }
        let tokens = match &cfg.fixed_token {
            Some(t) => TokenStore::fixed(t.clone()),
            None => {
                let workspace = cfg.workspace.clone();
                TokenStore::from_file(cfg.state_dir.join(TOKEN_FILE))
                    .map_err(|e| format!("token file: {e}"))?
                    .on_change(Box::new(move |t| {
                        match crate::workspace::write_token(&workspace, t) {
                            Ok(()) => eprintln!("token rotated; workspace copy updated"),
                            Err(e) => eprintln!("warning: token rotated, but the workspace copy in {} could not be written: {e}", workspace.display()),
                        }
                    }))
            }
        };
        let started = crate::util::now_ms();
        let repo_paths = RepoPaths {
            repos_root: cfg.repos_root.clone(),
            workspace: cfg.workspace.clone(),
            assistant_cloned_at: 0,
            assistant_accessed_at: started,
        };
        let vapid = push::vapid::load(
            cfg.vapid_public.as_deref(),
            cfg.vapid_private.as_deref(),
            cfg.vapid_subject.as_deref(),
            &store,
        )
        .map_err(|e| format!("VAPID: {e}"))?;
        let vapid_file = cfg.state_dir.join(push::vapid::VAPID_FILE);
        if vapid_file.exists() {
            keep_secret_mode(&vapid_file).map_err(|e| format!("VAPID: {e}"))?;
        }
        match &vapid {
            None => eprintln!("push: no VAPID keys (env or vapid.json); sends answer 503"),
            Some(k) if k.subject_is_placeholder() => eprintln!(
                "push: VAPID subject is the placeholder {}; set VAPID_SUBJECT or edit vapid.json \
                 so push services can reach you",
                k.subject
            ),
            Some(_) => {}
        }
        push::crypto::init();
        let opencode = opencode::Client::new(
            &cfg.opencode_url,
            &cfg.opencode_username,
            cfg.opencode_password.as_deref(),
        );
        let schedules = Schedules::new(SchedulesDeps {
            store: Arc::new(Store::new(&cfg.state_dir)),
            opencode: opencode.clone(),
            repos: Arc::new(ScheduleRepos {
                store: Store::new(&cfg.state_dir),
                paths: repo_paths.clone(),
            }),
            workspace: cfg.workspace.clone(),
            clock: Arc::new(SystemClock),
        });
        // Like the reference, a workspace that cannot be written is logged, not fatal: the
        // API still serves (e.g. a read-only state dir).
        if let Err(e) = provision_workspace(&cfg, port, false) {
            eprintln!("warning: {e}");
        }
        let mut app = App {
            cfg,
            store,
            tokens,
            send_limiter: RateLimiter::new(SEND_RATE),
            reload_limiter: RateLimiter::new(RELOAD_RATE),
            opencode,
            repo_paths,
            vapid,
            push_client: PushClient::new(),
            views: ViewCache::default(),
            schedules,
        };
        app.repo_paths.assistant_cloned_at = fs::metadata(&app.cfg.workspace)
            .ok()
            .and_then(|m| ms_of(m.created()).or_else(|| ms_of(m.modified())))
            .unwrap_or(started);
        Ok(app)
    }
}
