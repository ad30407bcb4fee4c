//! Provisioning of the Assistant workspace: the directory where OpenCode runs the `assistant`
//! agent (repo id 0). Run by `init` and at every `serve` start (contract §11).
//!
//! Files, relative to the workspace dir:
//!
//! | file | policy |
//! |---|---|
//! | `.opencode/internal-token` | always equal to the state token, mode 0600, no newline |
//! | `AGENTS.md`, `.opencode/agents/assistant.md`, the four `SKILL.md` | *managed* (below) |
//! | `opencode.json` | created when missing, never touched afterwards (it may hold comments and the user's own configuration), not even by `--force` |
//! | `.opencode/.assistantd-managed.json` | the manifest of what we generated |
//!
//! The texts live in `src/workspace/` and are compiled in with `include_str!`; the skills carry
//! a `{{BASE_URL}}` placeholder replaced by [`WorkspaceConfig::api_base_url`].
//!
//! A managed file is (re)written when it is missing, or when its bytes are still a version
//! assistantd generated, which is recognised in two independent ways:
//!
//! 1. its SHA-256 is listed for that path in the manifest, which records every version we
//!    wrote (the last [`MANIFEST_MAX_HASHES`]); this recognises texts of older assistantd
//!    releases after an upgrade;
//! 2. it is the current template rendered with *some* base URL (an `http://` or `https://`
//!    string without whitespace, the same at every placeholder); this recognises a file
//!    generated for another port even when the manifest was lost or the workspace copied.
//!
//! Anything else was edited by a person: it is kept and a warning is returned. `force`
//! (`init --force`) replaces an edited skill, never an edited `AGENTS.md` or `assistant.md`:
//! the contract creates those two only when missing, and the persona is where the agent keeps
//! the user's lasting preferences, so no flag throws them away (delete the file instead). Unchanged files are not rewritten (same inode and
//! mtime), so a restart with the same port touches nothing.

use crate::store::write_atomic;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The placeholder in templates that becomes the API base URL.
pub const BASE_URL_PLACEHOLDER: &str = "{{BASE_URL}}";
/// The workspace copy of the token, relative to the workspace dir.
pub const TOKEN_FILE: &str = ".opencode/internal-token";
/// Exact mode of the token file.
pub const TOKEN_MODE: u32 = 0o600;
/// Mode of the other files we create (an existing file's mode is kept on rewrite).
pub const FILE_MODE: u32 = 0o644;
/// The OpenCode configuration, relative to the workspace dir.
pub const OPENCODE_JSON: &str = "opencode.json";
/// Our record of generated versions, relative to the workspace dir.
pub const MANIFEST_FILE: &str = ".opencode/.assistantd-managed.json";
/// How many generated versions the manifest remembers per file (oldest dropped first).
pub const MANIFEST_MAX_HASHES: usize = 32;
/// The skills, in the order their files are written and their examples listed.
pub const SKILLS: [&str; 4] = [
    "schedule-management",
    "notifications",
    "manager-settings",
    "repo-management",
];

/// One managed file: where it goes and the template it is rendered from.
struct Template {
    path: &'static str,
    text: &'static str,
    /// Whether `init --force` replaces a copy a person edited (the skills), or not even that
    /// (`AGENTS.md` and the persona: the user's own words).
    force_replaces: bool,
}

/// Every managed file, in write order.
const TEMPLATES: [Template; 6] = [
    Template {
        path: "AGENTS.md",
        text: include_str!("workspace/AGENTS.md"),
        force_replaces: false,
    },
    Template {
        path: ".opencode/agents/assistant.md",
        text: include_str!("workspace/assistant.md"),
        force_replaces: false,
    },
    Template {
        path: ".opencode/skills/schedule-management/SKILL.md",
        text: include_str!("workspace/skills/schedule-management.md"),
        force_replaces: true,
    },
    Template {
        path: ".opencode/skills/notifications/SKILL.md",
        text: include_str!("workspace/skills/notifications.md"),
        force_replaces: true,
    },
    Template {
        path: ".opencode/skills/manager-settings/SKILL.md",
        text: include_str!("workspace/skills/manager-settings.md"),
        force_replaces: true,
    },
    Template {
        path: ".opencode/skills/repo-management/SKILL.md",
        text: include_str!("workspace/skills/repo-management.md"),
        force_replaces: true,
    },
];

/// Where the workspace is and what the skills should call.
#[derive(Debug, Clone)]
pub struct WorkspaceConfig {
    /// The workspace directory, absolute (it is also what OpenCode is told to dispose).
    pub dir: PathBuf,
    /// The Internal API base as the agent reaches it, such as
    /// `http://localhost:5003/api/internal`. A trailing `/` is dropped.
    pub api_base_url: String,
}

/// What we were doing when the filesystem said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateDir,
    Read,
    Write,
}

/// A provisioning step that failed, with the path it was about. Goes to the log only.
#[derive(Debug)]
pub struct WorkspaceError {
    pub path: PathBuf,
    pub action: Action,
    pub source: io::Error,
}

impl WorkspaceError {
    fn new(path: impl Into<PathBuf>, action: Action, source: io::Error) -> Self {
        WorkspaceError {
            path: path.into(),
            action,
            source,
        }
    }
}

impl fmt::Display for WorkspaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.action {
            Action::CreateDir => "create directory",
            Action::Read => "read",
            Action::Write => "write",
        };
        write!(
            f,
            "workspace: could not {verb} {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for WorkspaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes the workspace files (see the module docs) and returns warnings for the log: files
/// kept because a person edited them, files replaced because of `force`, a manifest that could
/// not be read. Stops at the first filesystem error; the token is written first, so the agent
/// can authenticate even when a later step fails.
pub fn provision(
    cfg: &WorkspaceConfig,
    token: &str,
    force: bool,
) -> Result<Vec<String>, WorkspaceError> {
    let dir = cfg.dir.as_path();
    fs::create_dir_all(dir).map_err(|e| WorkspaceError::new(dir, Action::CreateDir, e))?;
    write_token(dir, token)
        .map_err(|e| WorkspaceError::new(dir.join(TOKEN_FILE), Action::Write, e))?;

    let mut warnings = Vec::new();
    let mut manifest = Manifest::load(dir, &mut warnings);
    let base_url = normalize_base_url(&cfg.api_base_url);
    for t in &TEMPLATES {
        let content = render(t.text, base_url);
        if let Some(w) = sync_managed(dir, t, &content, force, &mut manifest)? {
            warnings.push(w);
        }
    }
    if let Some(w) = sync_opencode_json(dir, force)? {
        warnings.push(w);
    }
    manifest.save_if_changed(dir)?;
    Ok(warnings)
}

/// Makes `<dir>/.opencode/internal-token` hold exactly `token` (no newline) with mode 0600.
/// The mode is corrected first, even when the content is already right, so the secret is
/// never readable by others in between; a changed token is then replaced atomically. A
/// symlink in its place is removed rather than written through.
pub fn write_token(dir: &Path, token: &str) -> io::Result<()> {
    let path = dir.join(TOKEN_FILE);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_file() => {
            if meta.permissions().mode() & 0o7777 != TOKEN_MODE {
                fs::set_permissions(&path, fs::Permissions::from_mode(TOKEN_MODE))?;
            }
            if fs::read(&path)? == token.as_bytes() {
                return Ok(());
            }
        }
        Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(&path)?,
        // A directory or other odd thing: the rename in write_atomic fails and says so.
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_atomic(&path, token.as_bytes(), TOKEN_MODE)?;
    // write_atomic keeps the mode of a file that was there; another process may have put one
    // there since our check.
    if fs::metadata(&path)?.permissions().mode() & 0o7777 != TOKEN_MODE {
        fs::set_permissions(&path, fs::Permissions::from_mode(TOKEN_MODE))?;
    }
    Ok(())
}

/// The `sh` examples of every skill in `dir`, in file order: `(skill name, command)`. The
/// command is the fenced block's text as written (line continuations kept), meant for
/// `sh -c` with `dir` as the working directory (it reads `.opencode/internal-token`). A skill
/// file that cannot be read contributes nothing.
pub fn skill_curl_examples(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for skill in SKILLS {
        let path = dir.join(skill_path(skill));
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for block in sh_blocks(&text) {
            out.push((skill.to_string(), block));
        }
    }
    out
}

/// The contents of every ```` ```sh ```` fenced block in `markdown`, without the fences and
/// without a final newline.
pub fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(Vec::new()),
            None => {}
            Some(lines) if line.trim_end() == "```" => {
                out.push(lines.join("\n"));
                current = None;
            }
            Some(lines) => lines.push(line),
        }
    }
    out
}

/// `SKILL.md` of `skill`, relative to the workspace dir.
pub fn skill_path(skill: &str) -> String {
    format!(".opencode/skills/{skill}/SKILL.md")
}

/// The generated `opencode.json`: 2-space JSON with a final newline.
pub fn opencode_json() -> String {
    let value = serde_json::json!({
        "default_agent": "assistant",
        "instructions": ["AGENTS.md"],
        "permission": {
            "read": "allow",
            "edit": "allow",
            "glob": "allow",
            "grep": "allow",
            "list": "allow",
            "bash": "allow",
            "external_directory": "ask"
        },
        "agent": { "assistant": { "mode": "primary" } }
    });
    let mut text = serde_json::to_string_pretty(&value).expect("a literal serialises");
    text.push('\n');
    text
}

/// `template` with every placeholder replaced by `base_url`.
fn render(template: &str, base_url: &str) -> String {
    template.replace(BASE_URL_PLACEHOLDER, base_url)
}

fn normalize_base_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Whether `text` is `template` rendered with some plausible base URL. The placeholder count
/// and the fixed parts' length fix the URL's length, so one slice and one comparison decide.
fn is_rendering_of(template: &str, text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    let parts: Vec<&str> = template.split(BASE_URL_PLACEHOLDER).collect();
    let placeholders = parts.len() - 1;
    if placeholders == 0 {
        return text == template;
    }
    let fixed: usize = parts.iter().map(|p| p.len()).sum();
    let Some(variable) = text.len().checked_sub(fixed) else {
        return false;
    };
    if variable % placeholders != 0 {
        return false;
    }
    let start = parts[0].len();
    let Some(url) = text.get(start..start + variable / placeholders) else {
        return false;
    };
    is_plausible_base_url(url) && render(template, url) == text
}

fn is_plausible_base_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty())
        && !url.ends_with('/')
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::util::hex(&Sha256::digest(bytes))
}

/// Brings one managed file up to date; returns a warning when it was kept or force-replaced.
fn sync_managed(
    dir: &Path,
    t: &Template,
    content: &str,
    force: bool,
    manifest: &mut Manifest,
) -> Result<Option<String>, WorkspaceError> {
    let path = dir.join(t.path);
    let existing = match fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(WorkspaceError::new(path, Action::Read, e)),
    };
    let warning = match existing {
        None => None,
        Some(bytes) if bytes == content.as_bytes() => {
            // Ours and current. Remember it in case the manifest was lost.
            manifest.record(t.path, content.as_bytes());
            return Ok(None);
        }
        Some(bytes) if manifest.contains(t.path, &bytes) || is_rendering_of(t.text, &bytes) => None,
        Some(_) if force && t.force_replaces => Some(format!(
            "workspace: replaced {} although it was edited by hand (--force)",
            t.path
        )),
        Some(_) if !t.force_replaces => {
            return Ok(Some(format!(
                "workspace: kept {} because it was edited by hand; \
                 delete it to get the generated version",
                t.path
            )))
        }
        Some(_) => {
            return Ok(Some(format!(
                "workspace: kept {} because it was edited by hand; \
                 `assistantd init --force` replaces it with the generated version",
                t.path
            )))
        }
    };
    write_file(&path, content.as_bytes())?;
    manifest.record(t.path, content.as_bytes());
    Ok(warning)
}

/// Creates `opencode.json` when missing. An existing one is the user's and stays; with
/// `force` a warning says so when it differs from what we would generate.
fn sync_opencode_json(dir: &Path, force: bool) -> Result<Option<String>, WorkspaceError> {
    let path = dir.join(OPENCODE_JSON);
    let content = opencode_json();
    match fs::read(&path) {
        Ok(bytes) if force && bytes != content.as_bytes() => Ok(Some(format!(
            "workspace: kept {OPENCODE_JSON}; assistantd never overwrites an existing one \
             (delete it to get the generated version)"
        ))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_file(&path, content.as_bytes())?;
            Ok(None)
        }
        Err(e) => Err(WorkspaceError::new(path, Action::Read, e)),
    }
}

/// Atomic write of a non-secret file, creating its directory.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WorkspaceError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| WorkspaceError::new(parent, Action::CreateDir, e))?;
    }
    write_atomic(path, bytes, FILE_MODE).map_err(|e| WorkspaceError::new(path, Action::Write, e))
}

/// The SHA-256 of every version of each managed file that we wrote, by relative path.
/// Stored as `{"about": "...", "files": {"AGENTS.md": ["<hex>", ...]}}`, oldest first.
#[derive(Debug, Default)]
struct Manifest {
    files: BTreeMap<String, Vec<String>>,
    changed: bool,
}

const MANIFEST_ABOUT: &str = "Written by assistantd: SHA-256 of every version of a managed \
workspace file it generated. A file whose hash is listed here is replaced when assistantd \
starts; a file someone edited is kept.";

impl Manifest {
    /// Reads the manifest; a missing one is empty. One that cannot be read or understood is
    /// treated as empty (the template match still recognises current files) and rewritten.
    fn load(dir: &Path, warnings: &mut Vec<String>) -> Manifest {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Manifest::default(),
            Err(e) => return Manifest::unreadable(warnings, &e.to_string()),
        };
        match Manifest::parse(&bytes) {
            Ok(files) => Manifest {
                files,
                changed: false,
            },
            Err(reason) => Manifest::unreadable(warnings, &reason),
        }
    }

    fn unreadable(warnings: &mut Vec<String>, reason: &str) -> Manifest {
        warnings.push(format!(
            "workspace: ignored {MANIFEST_FILE} ({reason}); it will be written anew"
        ));
        Manifest {
            files: BTreeMap::new(),
            changed: true,
        }
    }

    fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Vec<String>>, String> {
        let value = crate::util::parse_jsonc(bytes)?;
        let files = value
            .get("files")
            .and_then(|f| f.as_object())
            .ok_or("no \"files\" object")?;
        let mut out = BTreeMap::new();
        for (path, hashes) in files {
            let hashes = hashes
                .as_array()
                .ok_or_else(|| format!("\"files\".\"{path}\" is not an array"))?;
            let hashes = hashes
                .iter()
                .map(|h| h.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("\"files\".\"{path}\" holds a non-string"))?;
            out.insert(path.clone(), hashes);
        }
        Ok(out)
    }

    fn contains(&self, path: &str, bytes: &[u8]) -> bool {
        let hash = sha256_hex(bytes);
        self.files
            .get(path)
            .is_some_and(|hashes| hashes.contains(&hash))
    }

    fn record(&mut self, path: &str, bytes: &[u8]) {
        let hash = sha256_hex(bytes);
        let hashes = self.files.entry(path.to_string()).or_default();
        if hashes.contains(&hash) {
            return;
        }
        hashes.push(hash);
        if hashes.len() > MANIFEST_MAX_HASHES {
            let excess = hashes.len() - MANIFEST_MAX_HASHES;
            hashes.drain(..excess);
        }
        self.changed = true;
    }

    fn save_if_changed(&self, dir: &Path) -> Result<(), WorkspaceError> {
        if !self.changed {
            return Ok(());
        }
        let value = serde_json::json!({ "about": MANIFEST_ABOUT, "files": self.files });
        let mut text = serde_json::to_string_pretty(&value).expect("a map of strings serialises");
        text.push('\n');
        write_file(&dir.join(MANIFEST_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER_TOKEN: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const BASE_5003: &str = "http://localhost:5003/api/internal";
    const BASE_6000: &str = "http://localhost:6000/api/internal";
    const NOTIFICATIONS: &str = ".opencode/skills/notifications/SKILL.md";

    /// Every file provision writes, relative to the workspace.
    const ALL_FILES: [&str; 9] = [
        TOKEN_FILE,
        "AGENTS.md",
        OPENCODE_JSON,
        ".opencode/agents/assistant.md",
        ".opencode/skills/schedule-management/SKILL.md",
        ".opencode/skills/notifications/SKILL.md",
        ".opencode/skills/manager-settings/SKILL.md",
        ".opencode/skills/repo-management/SKILL.md",
        MANIFEST_FILE,
    ];

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!(
                "assistantd-workspace-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        /// The workspace lives one level down so provision has to create it.
        fn cfg(&self, base: &str) -> WorkspaceConfig {
            WorkspaceConfig {
                dir: self.0.join("repos/assistant"),
                api_base_url: base.to_string(),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn read(dir: &Path, rel: &str) -> String {
        fs::read_to_string(dir.join(rel)).unwrap()
    }

    /// (inode, mtime in ns): changes whenever a file is replaced.
    fn identity(dir: &Path, rel: &str) -> (u64, i64, i64) {
        let m = fs::metadata(dir.join(rel)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    }

    fn snapshot(dir: &Path) -> Vec<(u64, i64, i64)> {
        ALL_FILES.iter().map(|f| identity(dir, f)).collect()
    }

    fn kept_warning(rel: &str) -> String {
        format!(
            "workspace: kept {rel} because it was edited by hand; \
             `assistantd init --force` replaces it with the generated version"
        )
    }

    fn kept_for_good_warning(rel: &str) -> String {
        format!(
            "workspace: kept {rel} because it was edited by hand; \
             delete it to get the generated version"
        )
    }

    #[test]
    fn fresh_provision_writes_every_file_with_exact_modes() {
        let t = TempDir::new("fresh");
        let cfg = t.cfg(BASE_5003);
        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), Vec::<String>::new());
        let dir = &cfg.dir;
        for f in ALL_FILES {
            let want = if f == TOKEN_FILE { 0o600 } else { 0o644 };
            assert_eq!(mode(&dir.join(f)), want, "{f}");
        }
        assert_eq!(fs::read(dir.join(TOKEN_FILE)).unwrap(), TOKEN.as_bytes());
        assert_eq!(read(dir, "AGENTS.md"), include_str!("workspace/AGENTS.md"));
        assert_eq!(
            read(dir, ".opencode/agents/assistant.md"),
            include_str!("workspace/assistant.md")
        );
        assert_eq!(
            read(dir, NOTIFICATIONS),
            include_str!("workspace/skills/notifications.md")
                .replace("{{BASE_URL}}", "http://localhost:5003/api/internal")
        );
        assert_eq!(
            read(dir, OPENCODE_JSON),
            r#"{
  "default_agent": "assistant",
  "instructions": [
    "AGENTS.md"
  ],
  "permission": {
    "read": "allow",
    "edit": "allow",
    "glob": "allow",
    "grep": "allow",
    "list": "allow",
    "bash": "allow",
    "external_directory": "ask"
  },
  "agent": {
    "assistant": {
      "mode": "primary"
    }
  }
}
"#
        );
        // The manifest knows exactly the six managed files, one version each.
        let manifest = Manifest::parse(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        let paths: Vec<&str> = manifest.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                ".opencode/agents/assistant.md",
                ".opencode/skills/manager-settings/SKILL.md",
                ".opencode/skills/notifications/SKILL.md",
                ".opencode/skills/repo-management/SKILL.md",
                ".opencode/skills/schedule-management/SKILL.md",
                "AGENTS.md",
            ]
        );
        assert!(manifest.values().all(|h| h.len() == 1));
        assert_eq!(
            manifest["AGENTS.md"][0],
            sha256_hex(include_str!("workspace/AGENTS.md").as_bytes())
        );
    }

    #[test]
    fn second_provision_with_same_inputs_rewrites_nothing() {
        let t = TempDir::new("idempotent");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let before = snapshot(&cfg.dir);
        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), Vec::<String>::new());
        assert_eq!(snapshot(&cfg.dir), before);
        // A trailing slash on the base URL makes no difference either.
        let slash = t.cfg("http://localhost:5003/api/internal/");
        assert_eq!(
            provision(&slash, TOKEN, false).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(snapshot(&cfg.dir), before);
    }

    #[test]
    fn port_change_regenerates_unedited_skills_only() {
        let t = TempDir::new("port");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let agents = identity(&cfg.dir, "AGENTS.md");
        let persona = identity(&cfg.dir, ".opencode/agents/assistant.md");
        let config = identity(&cfg.dir, OPENCODE_JSON);

        let cfg6000 = t.cfg(BASE_6000);
        assert_eq!(
            provision(&cfg6000, TOKEN, false).unwrap(),
            Vec::<String>::new()
        );
        for skill in SKILLS {
            let text = read(&cfg.dir, &skill_path(skill));
            assert!(
                text.contains("http://localhost:6000/api/internal/"),
                "{skill}"
            );
            assert!(!text.contains("5003"), "{skill}");
        }
        // Files without the base URL were already current: untouched.
        assert_eq!(identity(&cfg.dir, "AGENTS.md"), agents);
        assert_eq!(identity(&cfg.dir, ".opencode/agents/assistant.md"), persona);
        assert_eq!(identity(&cfg.dir, OPENCODE_JSON), config);
        // The manifest now remembers both versions of each skill.
        let manifest = Manifest::parse(&fs::read(cfg.dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest[NOTIFICATIONS].len(), 2);
        assert_eq!(manifest["AGENTS.md"].len(), 1);
    }

    #[test]
    fn port_change_is_recognised_without_the_manifest() {
        let t = TempDir::new("nomanifest");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        fs::remove_file(cfg.dir.join(MANIFEST_FILE)).unwrap();
        let cfg6000 = t.cfg("https://assistant.example:6000/api/internal");
        assert_eq!(
            provision(&cfg6000, TOKEN, false).unwrap(),
            Vec::<String>::new()
        );
        assert!(read(&cfg.dir, NOTIFICATIONS)
            .contains("\n    https://assistant.example:6000/api/internal\n"));
        assert!(cfg.dir.join(MANIFEST_FILE).exists());
    }

    #[test]
    fn an_older_generated_version_in_the_manifest_is_upgraded() {
        let t = TempDir::new("legacy");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        // Pretend an older release wrote this text, and recorded it.
        let old = "---\nname: notifications\n---\nold text\n";
        fs::write(cfg.dir.join(NOTIFICATIONS), old).unwrap();
        let mut manifest = Manifest::load(&cfg.dir, &mut Vec::new());
        manifest.record(NOTIFICATIONS, old.as_bytes());
        manifest.save_if_changed(&cfg.dir).unwrap();

        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), Vec::<String>::new());
        assert_eq!(
            read(&cfg.dir, NOTIFICATIONS),
            render(include_str!("workspace/skills/notifications.md"), BASE_5003)
        );
    }

    #[test]
    fn an_edited_skill_is_kept_with_a_warning_and_force_replaces_it() {
        let t = TempDir::new("edited");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let edited = read(&cfg.dir, NOTIFICATIONS).replace("one per step", "one per tiny step");
        assert_ne!(edited, read(&cfg.dir, NOTIFICATIONS));
        fs::write(cfg.dir.join(NOTIFICATIONS), &edited).unwrap();

        // Kept, also across a port change; the other skills still follow the port.
        let cfg6000 = t.cfg(BASE_6000);
        assert_eq!(
            provision(&cfg6000, TOKEN, false).unwrap(),
            vec![kept_warning(NOTIFICATIONS)]
        );
        assert_eq!(read(&cfg.dir, NOTIFICATIONS), edited);
        assert!(read(&cfg.dir, &skill_path("repo-management")).contains("localhost:6000"));

        // --force replaces it, says so, and the result is then current.
        assert_eq!(
            provision(&cfg6000, TOKEN, true).unwrap(),
            vec![format!(
                "workspace: replaced {NOTIFICATIONS} although it was edited by hand (--force)"
            )]
        );
        assert_eq!(
            read(&cfg.dir, NOTIFICATIONS),
            render(include_str!("workspace/skills/notifications.md"), BASE_6000)
        );
        assert_eq!(
            provision(&cfg6000, TOKEN, false).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn edited_agents_md_and_persona_are_kept_even_by_force() {
        let t = TempDir::new("persona");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let persona = ".opencode/agents/assistant.md";
        let mut text = read(&cfg.dir, persona);
        text.push_str("- Answer in German.\n");
        fs::write(cfg.dir.join(persona), &text).unwrap();
        fs::write(cfg.dir.join("AGENTS.md"), "# My notes\n").unwrap();
        let kept = vec![
            kept_for_good_warning("AGENTS.md"),
            kept_for_good_warning(persona),
        ];
        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), kept);
        assert_eq!(read(&cfg.dir, persona), text);
        assert_eq!(read(&cfg.dir, "AGENTS.md"), "# My notes\n");
        // Not even --force (the user's own words); a deleted one comes back as generated.
        assert_eq!(provision(&cfg, TOKEN, true).unwrap(), kept);
        assert_eq!(read(&cfg.dir, persona), text);
        assert_eq!(read(&cfg.dir, "AGENTS.md"), "# My notes\n");
        fs::remove_file(cfg.dir.join("AGENTS.md")).unwrap();
        assert_eq!(
            provision(&cfg, TOKEN, true).unwrap(),
            vec![kept_for_good_warning(persona)]
        );
        assert_eq!(
            read(&cfg.dir, "AGENTS.md"),
            include_str!("workspace/AGENTS.md")
        );
    }

    #[test]
    fn a_deleted_managed_file_is_recreated() {
        let t = TempDir::new("deleted");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        fs::remove_dir_all(cfg.dir.join(".opencode/skills")).unwrap();
        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), Vec::<String>::new());
        assert_eq!(skill_curl_examples(&cfg.dir).len(), 25);
    }

    #[test]
    fn opencode_json_is_never_overwritten() {
        let t = TempDir::new("opencode");
        let cfg = t.cfg(BASE_5003);
        fs::create_dir_all(&cfg.dir).unwrap();
        let mine = "{\n  // my model\n  \"model\": \"anthropic/claude-sonnet-4\",\n}\n";
        fs::write(cfg.dir.join(OPENCODE_JSON), mine).unwrap();
        assert_eq!(provision(&cfg, TOKEN, false).unwrap(), Vec::<String>::new());
        assert_eq!(read(&cfg.dir, OPENCODE_JSON), mine);
        assert_eq!(
            provision(&cfg, TOKEN, true).unwrap(),
            vec![format!(
                "workspace: kept opencode.json; assistantd never overwrites an existing one \
                 (delete it to get the generated version)"
            )]
        );
        assert_eq!(read(&cfg.dir, OPENCODE_JSON), mine);
        // Our own version, once written, is not rewritten either (and force is quiet about it).
        fs::remove_file(cfg.dir.join(OPENCODE_JSON)).unwrap();
        provision(&cfg, TOKEN, false).unwrap();
        let before = identity(&cfg.dir, OPENCODE_JSON);
        assert_eq!(provision(&cfg, TOKEN, true).unwrap(), Vec::<String>::new());
        assert_eq!(identity(&cfg.dir, OPENCODE_JSON), before);
    }

    #[test]
    fn token_follows_the_state_token_and_is_always_0600() {
        let t = TempDir::new("token");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let path = cfg.dir.join(TOKEN_FILE);

        // A rotated token is written, still 0600.
        provision(&cfg, OTHER_TOKEN, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), OTHER_TOKEN.as_bytes());
        assert_eq!(mode(&path), 0o600);

        // A world-readable old copy (the reference's default) is fixed and replaced.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        provision(&cfg, TOKEN, false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), TOKEN.as_bytes());
        assert_eq!(mode(&path), 0o600);

        // Right content, wrong mode: only chmod, the file stays the same one.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let before = identity(&cfg.dir, TOKEN_FILE);
        write_token(&cfg.dir, TOKEN).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(identity(&cfg.dir, TOKEN_FILE), before);

        // A trailing newline is not "the same token".
        fs::write(&path, format!("{TOKEN}\n")).unwrap();
        write_token(&cfg.dir, TOKEN).unwrap();
        assert_eq!(fs::read(&path).unwrap(), TOKEN.as_bytes());

        // A symlink is replaced by a file, and its target is left alone.
        let target = t.0.join("elsewhere");
        fs::write(&target, "not a token").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_token(&cfg.dir, TOKEN).unwrap();
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read(&path).unwrap(), TOKEN.as_bytes());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_to_string(&target).unwrap(), "not a token");
        assert_eq!(mode(&target), 0o644);
    }

    #[test]
    fn write_token_creates_the_opencode_dir() {
        let t = TempDir::new("tokendir");
        write_token(&t.0, TOKEN).unwrap();
        assert_eq!(fs::read(t.0.join(TOKEN_FILE)).unwrap(), TOKEN.as_bytes());
        assert_eq!(mode(&t.0.join(TOKEN_FILE)), 0o600);
    }

    #[test]
    fn a_broken_manifest_is_reported_and_rewritten() {
        let t = TempDir::new("badmanifest");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        fs::write(cfg.dir.join(MANIFEST_FILE), "{\"files\": 3}").unwrap();
        assert_eq!(
            provision(&cfg, TOKEN, false).unwrap(),
            vec![format!(
                "workspace: ignored {MANIFEST_FILE} (no \"files\" object); it will be written anew"
            )]
        );
        let manifest = Manifest::parse(&fs::read(cfg.dir.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest.len(), 6);
    }

    #[test]
    fn manifest_keeps_a_bounded_history() {
        let mut m = Manifest::default();
        for i in 0..(MANIFEST_MAX_HASHES + 5) {
            m.record("AGENTS.md", format!("v{i}").as_bytes());
        }
        assert_eq!(m.files["AGENTS.md"].len(), MANIFEST_MAX_HASHES);
        assert!(!m.contains("AGENTS.md", b"v4"));
        assert!(m.contains("AGENTS.md", b"v5"));
        assert!(m.contains(
            "AGENTS.md",
            format!("v{}", MANIFEST_MAX_HASHES + 4).as_bytes()
        ));
    }

    #[test]
    fn template_matching_accepts_any_base_url_but_nothing_else() {
        let tpl = "a {{BASE_URL}} b\n{{BASE_URL}}/x\n";
        let cases: [(&str, bool); 9] = [
            ("a http://h:1/api b\nhttp://h:1/api/x\n", true),
            ("a https://example.org b\nhttps://example.org/x\n", true),
            // Two different URLs, an edit elsewhere, no URL at all, not a URL.
            ("a http://h:1/api b\nhttp://h:2/api/x\n", false),
            ("a http://h:1/api c\nhttp://h:1/api/x\n", false),
            ("a  b\n/x\n", false),
            ("a ftp://h b\nftp://h/x\n", false),
            ("a http://h x b\nhttp://h x/x\n", false),
            ("a http:// b\nhttp:///x\n", false),
            ("a http://h/ b\nhttp://h//x\n", false),
        ];
        for (text, want) in cases {
            assert_eq!(is_rendering_of(tpl, text.as_bytes()), want, "{text:?}");
        }
        assert!(is_rendering_of("plain", b"plain"));
        assert!(!is_rendering_of("plain", b"plain!"));
        assert!(!is_rendering_of(tpl, &[0xff, 0xfe]));
        for t in &TEMPLATES {
            assert!(is_rendering_of(
                t.text,
                render(t.text, BASE_5003).as_bytes()
            ));
        }
    }

    #[test]
    fn every_skill_has_front_matter_sections_base_url_and_examples() {
        for (skill, t) in SKILLS.iter().zip(&TEMPLATES[2..]) {
            assert_eq!(t.path, skill_path(skill));
            let text = render(t.text, BASE_5003);
            assert!(
                text.starts_with(&format!("---\nname: {skill}\ndescription: ")),
                "{skill}"
            );
            for heading in ["## When to load", "## Authentication", "## Base URL"] {
                assert!(
                    text.contains(&format!("\n{heading}\n")),
                    "{skill}: {heading}"
                );
            }
            assert!(
                text.contains("\n    http://localhost:5003/api/internal\n"),
                "{skill}"
            );
            assert!(text.contains("`.opencode/internal-token`"), "{skill}");
            assert!(!text.contains("{{"), "{skill}");
            assert!(!sh_blocks(&text).is_empty(), "{skill}");
        }
        let persona = TEMPLATES[1].text;
        assert!(persona.starts_with("---\ndescription: "));
        assert!(persona.contains("\nmode: primary\npermission:\n  read: allow\n"));
        assert!(persona.contains("  external_directory: ask\n---\n"));
    }

    #[test]
    fn sh_blocks_takes_only_sh_fences() {
        let md = "x\n```sh\ncurl a \\\n  b\n```\n```json\n{}\n```\n```sh\ncurl c\n```\n";
        assert_eq!(sh_blocks(md), ["curl a \\\n  b", "curl c"]);
        assert_eq!(sh_blocks("```sh\nunterminated\n"), Vec::<String>::new());
    }

    /// Runs every example through `sh` with `curl` replaced by a function that prints its
    /// arguments, from the workspace dir, and checks what curl would have been asked to do.
    #[test]
    fn every_curl_example_is_one_runnable_command_against_the_api() {
        let t = TempDir::new("curl");
        let cfg = t.cfg(BASE_5003);
        provision(&cfg, TOKEN, false).unwrap();
        let examples = skill_curl_examples(&cfg.dir);

        let mut seen = Vec::new();
        for (skill, command) in &examples {
            assert!(command.starts_with("curl -sS "), "{command}");
            let script = format!("curl() {{ printf '%s\\n' \"$@\"; }}\n{command}\n");
            let out = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .current_dir(&cfg.dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "{command}: {out:?}");
            let args: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            let (mut method, mut url, mut body) = ("GET".to_string(), None, None);
            let mut headers = Vec::new();
            let mut it = args.iter().skip(1); // -sS
            assert_eq!(args[0], "-sS");
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-X" => method = it.next().unwrap().clone(),
                    "-H" => headers.push(it.next().unwrap().clone()),
                    "-d" => body = Some(it.next().unwrap().clone()),
                    u if u.starts_with("http") && url.is_none() => url = Some(u.to_string()),
                    other => panic!("unexpected curl argument {other:?} in {command}"),
                }
            }
            let url = url.expect("a URL");
            let path = url
                .strip_prefix(BASE_5003)
                .unwrap_or_else(|| panic!("{url} is not under the base URL"));
            assert!(
                headers.contains(&format!("Authorization: Bearer {TOKEN}")),
                "{command}"
            );
            if let Some(body) = &body {
                serde_json::from_str::<serde_json::Value>(body)
                    .unwrap_or_else(|e| panic!("{command}: body is not JSON: {e}"));
                assert!(headers.contains(&"Content-Type: application/json".to_string()));
                assert_ne!(method, "GET");
            }
            seen.push(format!("{skill} {method} {path}"));
        }
        assert_eq!(
            seen,
            [
                "schedule-management POST /repos/0/schedules",
                "schedule-management POST /repos/0/schedules",
                "schedule-management GET /repos/0/schedules",
                "schedule-management GET /schedules/all",
                "schedule-management GET /repos/0/schedules/1",
                "schedule-management PATCH /repos/0/schedules/1",
                "schedule-management PATCH /repos/0/schedules/2",
                "schedule-management POST /repos/0/schedules/1/run",
                "schedule-management GET /repos/0/schedules/1/runs?limit=10",
                "schedule-management GET /repos/0/schedules/1/runs/1",
                "schedule-management GET /schedules/all/runs?repoId=0&jobId=1&limit=20&offset=0",
                "schedule-management GET /schedules/all/runs?status=failed&triggerSource=schedule",
                "schedule-management POST /repos/0/schedules/1/runs/1/cancel",
                "schedule-management DELETE /repos/0/schedules/1/runs/1",
                "schedule-management DELETE /repos/0/schedules/1/runs",
                "schedule-management DELETE /repos/0/schedules/1",
                "notifications POST /notifications/send",
                "notifications POST /notifications/send?userId=default",
                "manager-settings GET /settings",
                "manager-settings GET /settings?userId=default",
                "manager-settings PATCH /settings",
                "manager-settings PATCH /settings",
                "manager-settings POST /assistant/reload",
                "repo-management GET /repos",
                "repo-management GET /repos?userId=default",
            ]
        );
    }
}
