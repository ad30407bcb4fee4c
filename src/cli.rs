//! Command line and configuration: argv → [`Command`] + [`Config`], flag over environment over
//! default (contract §1). Everything is validated here, before any socket is bound.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5003";
pub const DEFAULT_STATE: &str = "./state";
pub const DEFAULT_OPENCODE_URL: &str = "http://127.0.0.1:5551";
/// Upper bound for `--workers`.
pub const MAX_WORKERS: usize = 256;

pub const USAGE: &str = "\
assistantd — the Assistant Internal API of a coding-agent manager

Usage:
  assistantd serve [options]        run the server (creates the state dir first if missing)
  assistantd init [--force] [opts]  create state dir, token, VAPID keys, workspace files
  assistantd token show|rotate      print / replace the internal token
  assistantd vapid generate         print a fresh VAPID key pair
  assistantd --help | --version

Options (flag > environment > default):
  --listen ADDR        ASSISTANTD_LISTEN (or HOST + PORT)   default 127.0.0.1:5003 (port 0: any free port)
  --state DIR          ASSISTANTD_STATE                     default ./state
  --repos-root DIR     REPOS_ROOT                           default <state>/repos
  --workspace DIR      ASSISTANT_WORKSPACE                  default <repos-root>/assistant
  --opencode-url URL   OPENCODE_URL (or OPENCODE_HOST + OPENCODE_SERVER_PORT)  default http://127.0.0.1:5551
  --workers N          ASSISTANTD_WORKERS                   default sized for the machine
  --expose-secrets     return secrets from GET/PATCH settings instead of \"[redacted]\"
  --allow-private-push-endpoints   accept http:// and internal hosts as push endpoints (offline tests)
  --force              (init) rewrite the skills, even edited ones

Environment only: OPENCODE_SERVER_USERNAME (default opencode), OPENCODE_SERVER_PASSWORD,
VAPID_PUBLIC_KEY, VAPID_PRIVATE_KEY, VAPID_SUBJECT, ASSISTANTD_TOKEN.
";

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Serve,
    Init { force: bool },
    TokenShow,
    TokenRotate,
    VapidGenerate,
    Help,
    Version,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub state_dir: PathBuf,
    pub repos_root: PathBuf,
    pub workspace: PathBuf,
    pub opencode_url: String,
    pub opencode_username: String,
    pub opencode_password: Option<String>,
    pub workers: usize,
    pub expose_secrets: bool,
    pub allow_private_push: bool,
    pub fixed_token: Option<String>,
    pub vapid_public: Option<String>,
    pub vapid_private: Option<String>,
    pub vapid_subject: Option<String>,
}

/// Workers sized for the machine: handlers block on fsync and on upstream calls (bounded by
/// deadlines), so a few per core.
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 4).clamp(8, 64)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Parses argv (without the program name) using `env` for variables.
pub fn parse(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Command, Config), String> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut words: Vec<String> = Vec::new();
    let mut flags: std::collections::HashMap<&'static str, String> = Default::default();
    let mut force = false;
    let mut expose = false;
    let mut allow_private = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str().ok_or("arguments must be UTF-8")?.to_string();
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let key: Option<&'static str> = match name.as_str() {
            "--listen" => Some("listen"),
            "--state" => Some("state"),
            "--repos-root" => Some("repos-root"),
            "--workspace" => Some("workspace"),
            "--opencode-url" => Some("opencode-url"),
            "--workers" => Some("workers"),
            _ => None,
        };
        if let Some(key) = key {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .and_then(|v| v.to_str())
                    .ok_or_else(|| format!("{name} needs a value"))?
                    .to_string(),
            };
            flags.insert(key, v);
            continue;
        }
        match a.as_str() {
            "--force" => force = true,
            "--expose-secrets" => expose = true,
            "--allow-private-push-endpoints" => allow_private = true,
            "-h" | "--help" => words.insert(0, "help".into()),
            "-V" | "--version" => words.insert(0, "version".into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s} (see --help)")),
            s => words.push(s.to_string()),
        }
    }
    let cmd = match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["help", ..] => Command::Help,
        ["version", ..] => Command::Version,
        [] | ["serve"] => Command::Serve,
        ["init"] => Command::Init { force },
        ["token", "show"] => Command::TokenShow,
        ["token", "rotate"] => Command::TokenRotate,
        ["vapid", "generate"] => Command::VapidGenerate,
        other => {
            return Err(format!(
                "unknown command {:?} (see --help)",
                other.join(" ")
            ))
        }
    };
    if force && !matches!(cmd, Command::Init { .. }) {
        return Err("--force only applies to init".into());
    }

    let listen = match flags.remove("listen").or_else(|| env("ASSISTANTD_LISTEN")) {
        Some(l) => l,
        None => match (env("HOST"), env("PORT")) {
            (None, None) => DEFAULT_LISTEN.to_string(),
            (h, p) => format!(
                "{}:{}",
                h.as_deref().unwrap_or("127.0.0.1"),
                p.as_deref().unwrap_or("5003")
            ),
        },
    };
    listen
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("--listen {listen:?} is not HOST:PORT with an IP address"))?;

    let state_dir = absolute(Path::new(
        &flags
            .remove("state")
            .or_else(|| env("ASSISTANTD_STATE"))
            .unwrap_or(DEFAULT_STATE.into()),
    ));
    let repos_root = flags
        .remove("repos-root")
        .or_else(|| env("REPOS_ROOT"))
        .map(|p| absolute(Path::new(&p)))
        .unwrap_or_else(|| state_dir.join("repos"));
    let workspace = flags
        .remove("workspace")
        .or_else(|| env("ASSISTANT_WORKSPACE"))
        .map(|p| absolute(Path::new(&p)))
        .unwrap_or_else(|| repos_root.join(crate::repos::ASSISTANT_LOCAL_PATH));

    let opencode_url = match flags.remove("opencode-url").or_else(|| env("OPENCODE_URL")) {
        Some(u) => u,
        None => match (env("OPENCODE_HOST"), env("OPENCODE_SERVER_PORT")) {
            (None, None) => DEFAULT_OPENCODE_URL.to_string(),
            (h, p) => {
                let h = h.unwrap_or_else(|| "127.0.0.1".into());
                // OpenCode binds 0.0.0.0; we talk to it on loopback.
                let h = if h == "0.0.0.0" {
                    "127.0.0.1".to_string()
                } else {
                    h
                };
                format!("http://{h}:{}", p.as_deref().unwrap_or("5551"))
            }
        },
    };
    if !(opencode_url.starts_with("http://") || opencode_url.starts_with("https://")) {
        return Err(format!(
            "--opencode-url {opencode_url:?} must start with http:// or https://"
        ));
    }

    let workers = match flags
        .remove("workers")
        .or_else(|| env("ASSISTANTD_WORKERS"))
    {
        Some(w) => w
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_WORKERS).contains(n))
            .ok_or_else(|| format!("--workers must be a number from 1 to {MAX_WORKERS}"))?,
        None => default_workers(),
    };

    let fixed_token = env("ASSISTANTD_TOKEN");
    if let Some(t) = &fixed_token {
        if !crate::auth::is_valid_token(t) {
            return Err("ASSISTANTD_TOKEN must be 64 lowercase hex characters".into());
        }
    }

    Ok((
        cmd,
        Config {
            listen,
            state_dir,
            repos_root,
            workspace,
            opencode_url,
            opencode_username: env("OPENCODE_SERVER_USERNAME")
                .unwrap_or_else(|| crate::opencode::DEFAULT_USERNAME.into()),
            opencode_password: env("OPENCODE_SERVER_PASSWORD"),
            workers,
            expose_secrets: expose,
            allow_private_push: allow_private,
            fixed_token,
            vapid_public: env("VAPID_PUBLIC_KEY"),
            vapid_private: env("VAPID_PRIVATE_KEY"),
            vapid_subject: env("VAPID_SUBJECT"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], vars: &[(&str, &str)]) -> Result<(Command, Config), String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&args, &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults() {
        let (cmd, c) = run(&[], &[]).unwrap();
        assert_eq!(cmd, Command::Serve);
        assert_eq!(c.listen, "127.0.0.1:5003");
        assert!(c.state_dir.ends_with("state"));
        assert_eq!(c.repos_root, c.state_dir.join("repos"));
        assert_eq!(c.workspace, c.repos_root.join("assistant"));
        assert_eq!(c.opencode_url, "http://127.0.0.1:5551");
        assert_eq!(c.opencode_username, "opencode");
        assert!(c.state_dir.is_absolute());
    }

    #[test]
    fn flag_over_env_over_default() {
        let (_, c) = run(
            &["serve", "--listen", "127.0.0.1:0"],
            &[("ASSISTANTD_LISTEN", "127.0.0.1:7")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        let (_, c) = run(&[], &[("ASSISTANTD_LISTEN", "127.0.0.1:7")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7");
        let (_, c) = run(&[], &[("HOST", "0.0.0.0"), ("PORT", "8080")]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080");
        let (_, c) = run(&["--state=/tmp/s"], &[("ASSISTANTD_STATE", "/tmp/e")]).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.workspace, PathBuf::from("/tmp/s/repos/assistant"));
        let (_, c) = run(
            &[],
            &[("OPENCODE_HOST", "0.0.0.0"), ("OPENCODE_SERVER_PORT", "9")],
        )
        .unwrap();
        assert_eq!(c.opencode_url, "http://127.0.0.1:9");
    }

    #[test]
    fn every_path_opencode_and_worker_setting_by_flag_env_and_default() {
        let env = [
            ("REPOS_ROOT", "/srv/repos"),
            ("ASSISTANT_WORKSPACE", "/srv/ws"),
            ("OPENCODE_URL", "http://127.0.0.1:4096"),
            ("OPENCODE_HOST", "10.0.0.9"),
            ("ASSISTANTD_WORKERS", "3"),
            ("OPENCODE_SERVER_USERNAME", "me"),
            ("OPENCODE_SERVER_PASSWORD", "pw"),
        ];
        let (_, c) = run(&["--state", "/s"], &env).unwrap();
        assert_eq!(c.repos_root, PathBuf::from("/srv/repos"));
        assert_eq!(c.workspace, PathBuf::from("/srv/ws"));
        assert_eq!(
            c.opencode_url, "http://127.0.0.1:4096",
            "OPENCODE_URL wins over the parts"
        );
        assert_eq!(c.workers, 3);
        assert_eq!(c.opencode_username, "me");
        assert_eq!(c.opencode_password.as_deref(), Some("pw"));
        let flags = [
            "--state",
            "/s",
            "--repos-root",
            "/f/repos",
            "--workspace",
            "/f/ws",
            "--opencode-url",
            "https://oc.example:1",
            "--workers",
            "5",
        ];
        let (_, c) = run(&flags, &env).unwrap();
        assert_eq!(c.repos_root, PathBuf::from("/f/repos"));
        assert_eq!(c.workspace, PathBuf::from("/f/ws"));
        assert_eq!(c.opencode_url, "https://oc.example:1");
        assert_eq!(c.workers, 5);
        // The workspace follows REPOS_ROOT when it is not set itself.
        let (_, c) = run(&["--state", "/s"], &[("REPOS_ROOT", "/r")]).unwrap();
        assert_eq!(c.workspace, PathBuf::from("/r/assistant"));
        let (_, c) = run(&["--state", "/s"], &[]).unwrap();
        assert_eq!(c.opencode_username, "opencode");
        assert_eq!(c.opencode_password, None);
        assert_eq!(c.workers, default_workers());
        for bad in ["0", "x", &(MAX_WORKERS + 1).to_string()] {
            assert!(run(&["--workers", bad], &[]).is_err(), "{bad}");
        }
        assert!(run(&[], &[("OPENCODE_URL", "ftp://x")]).is_err());
    }

    #[test]
    fn commands() {
        assert_eq!(
            run(&["init", "--force"], &[]).unwrap().0,
            Command::Init { force: true }
        );
        assert_eq!(
            run(&["token", "rotate"], &[]).unwrap().0,
            Command::TokenRotate
        );
        assert_eq!(run(&["token", "show"], &[]).unwrap().0, Command::TokenShow);
        assert_eq!(
            run(&["vapid", "generate"], &[]).unwrap().0,
            Command::VapidGenerate
        );
        assert_eq!(run(&["serve", "--help"], &[]).unwrap().0, Command::Help);
        assert_eq!(run(&["--version"], &[]).unwrap().0, Command::Version);
        assert!(run(&["bogus"], &[]).is_err());
        assert!(run(&["serve", "--force"], &[]).is_err());
        assert!(run(&["--listen", "nope"], &[]).is_err());
        assert!(run(&["--workers", "0"], &[]).is_err());
        assert!(run(&[], &[("ASSISTANTD_TOKEN", "short")]).is_err());
    }
}
