//! Repos (contract §7): `repos.json` plus the synthetic repo 0, the Assistant workspace.
//! Ordering: ids in the user's `repoOrder` first, by position (a repeated id takes its last
//! position, unknown ids are ignored), then the rest by display name, case-insensitively, ties
//! by id. Absent values are absent keys, never `null`.

use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

pub const REPOS_FILE: &str = "repos.json";
/// Id of the Assistant workspace repo; always listed, never stored.
pub const ASSISTANT_REPO_ID: i64 = 0;
/// `localPath` of the Assistant workspace repo.
pub const ASSISTANT_LOCAL_PATH: &str = "assistant";
const CLONE_STATUSES: [&str; 3] = ["cloning", "ready", "error"];

/// A repo as stored (the wire shape without `fullPath`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Repo {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    pub local_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    pub clone_status: String,
    pub cloned_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pulled: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accessed_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_code_config_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_not_true")]
    pub is_worktree: Option<bool>,
    #[serde(default, skip_serializing_if = "is_not_true")]
    pub is_local: Option<bool>,
}

fn is_not_true(v: &Option<bool>) -> bool {
    *v != Some(true)
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReposFile {
    #[serde(default)]
    pub repos: Vec<Repo>,
}

/// Where repos live on disk.
#[derive(Debug, Clone)]
pub struct RepoPaths {
    pub repos_root: PathBuf,
    pub workspace: PathBuf,
    /// `clonedAt` / `lastAccessedAt` of repo 0.
    pub assistant_cloned_at: i64,
    pub assistant_accessed_at: i64,
}

impl Repo {
    /// The Assistant workspace as a repo.
    pub fn assistant(paths: &RepoPaths) -> Repo {
        Repo {
            id: ASSISTANT_REPO_ID,
            name: None,
            repo_url: None,
            local_path: ASSISTANT_LOCAL_PATH.into(),
            source_path: None,
            branch: None,
            default_branch: Some("main".into()),
            clone_status: "ready".into(),
            cloned_at: paths.assistant_cloned_at,
            last_pulled: None,
            last_accessed_at: Some(paths.assistant_accessed_at),
            open_code_config_name: None,
            is_worktree: None,
            is_local: None,
        }
    }

    /// `sourcePath` if set, else `<repos-root>/<localPath>`; the workspace for repo 0.
    pub fn full_path(&self, paths: &RepoPaths) -> PathBuf {
        if self.id == ASSISTANT_REPO_ID {
            return paths.workspace.clone();
        }
        match self.source_path.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => PathBuf::from(s),
            None => paths.repos_root.join(&self.local_path),
        }
    }

    /// The name people see (reference §8.1).
    pub fn display_name(&self) -> String {
        if let Some(n) = self
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            return n.to_string();
        }
        let local = basename(&self.local_path);
        if let Some(url) = self.repo_url.as_deref().filter(|u| !u.trim().is_empty()) {
            return url_repo_name(url)
                .or(local)
                .unwrap_or_else(|| "Repository".into());
        }
        if let Some(src) = self.source_path.as_deref().and_then(basename) {
            return src;
        }
        local.unwrap_or_else(|| "Repository".into())
    }

    /// The wire object: the stored fields plus `fullPath`.
    pub fn to_wire(&self, paths: &RepoPaths) -> Value {
        serde_json::to_value(self.wire(paths)).unwrap_or(Value::Null)
    }

    /// The wire shape, borrowed: serialised straight to bytes, with no `Value` tree between.
    fn wire<'a>(&'a self, paths: &RepoPaths) -> WireRepo<'a> {
        WireRepo {
            id: self.id,
            name: self.name.as_deref(),
            repo_url: self.repo_url.as_deref(),
            local_path: &self.local_path,
            full_path: self.full_path(paths).to_string_lossy().into_owned(),
            source_path: self.source_path.as_deref(),
            branch: self.branch.as_deref(),
            default_branch: self.default_branch.as_deref(),
            clone_status: &self.clone_status,
            cloned_at: self.cloned_at,
            last_pulled: self.last_pulled,
            last_accessed_at: self.last_accessed_at,
            open_code_config_name: self.open_code_config_name.as_deref(),
            is_worktree: self.is_worktree,
            is_local: self.is_local,
        }
    }
}

/// A repo on the wire: [`Repo`]'s fields in the documented order, `fullPath` right after
/// `localPath`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRepo<'a> {
    id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo_url: Option<&'a str>,
    local_path: &'a str,
    full_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_branch: Option<&'a str>,
    clone_status: &'a str,
    cloned_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_pulled: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_accessed_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_code_config_name: Option<&'a str>,
    #[serde(skip_serializing_if = "is_not_true")]
    is_worktree: Option<bool>,
    #[serde(skip_serializing_if = "is_not_true")]
    is_local: Option<bool>,
}

#[derive(Serialize)]
struct WireList<'a> {
    repos: Vec<WireRepo<'a>>,
}

fn basename(p: &str) -> Option<String> {
    let t = p.trim().trim_end_matches('/');
    let b = t.rsplit('/').next().unwrap_or("");
    (!b.is_empty()).then(|| b.to_string())
}

/// `https://github.com/o/repo.git/` → `repo`; `git@host:o/repo.git` → `repo`.
fn url_repo_name(url: &str) -> Option<String> {
    let t = url.trim().trim_end_matches('/');
    let t = t.strip_suffix(".git").unwrap_or(t).trim_end_matches('/');
    let last = t.rsplit(['/', ':']).next().unwrap_or("");
    (!last.is_empty() && !last.contains('@')).then(|| last.to_string())
}

/// Checks what serde cannot: unique positive ids, known statuses, relative local paths.
pub fn validate(file: &ReposFile) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in file.repos.iter().enumerate() {
        if r.id <= ASSISTANT_REPO_ID {
            return Err(format!(
                "repos[{i}].id must be a positive integer (0 is the Assistant)"
            ));
        }
        if !seen.insert(r.id) {
            return Err(format!("repos[{i}].id {} is repeated", r.id));
        }
        if !CLONE_STATUSES.contains(&r.clone_status.as_str()) {
            return Err(format!(
                "repos[{i}].cloneStatus must be one of cloning, ready, error"
            ));
        }
        let lp = Path::new(&r.local_path);
        if r.local_path.is_empty()
            || lp.is_absolute()
            || lp.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "repos[{i}].localPath must be a relative path inside the repos root"
            ));
        }
    }
    Ok(())
}

/// All stored repos, validated.
pub fn load(store: &Store) -> Result<Vec<Repo>, StoreError> {
    let file: ReposFile = store.load(REPOS_FILE)?;
    validate(&file).map_err(|e| StoreError::invalid(REPOS_FILE, e))?;
    Ok(file.repos)
}

/// One repo by id (repo 0 included).
pub fn find(store: &Store, paths: &RepoPaths, id: i64) -> Result<Option<Repo>, StoreError> {
    if id == ASSISTANT_REPO_ID {
        return Ok(Some(Repo::assistant(paths)));
    }
    Ok(load(store)?.into_iter().find(|r| r.id == id))
}

/// Orders repos as contract §7 says, given the user's `repoOrder` (JSON numbers).
pub fn order(mut repos: Vec<Repo>, repo_order: &[Value]) -> Vec<Repo> {
    let mut pos: HashMap<i64, usize> = HashMap::new();
    for (i, v) in repo_order.iter().enumerate() {
        if let Some(id) = v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64) {
            pos.insert(id, i); // later positions overwrite: the last one wins
        }
    }
    repos.sort_by_cached_key(|r| match pos.get(&r.id) {
        Some(p) => (0, *p, String::new(), r.id),
        None => (1, 0, r.display_name().to_lowercase(), r.id),
    });
    repos
}

/// The `repoOrder` of `user` as stored in settings.json, read leniently: repos keep working
/// (in name order) when settings.json is broken; the settings routes report that file.
pub fn repo_order_of(store: &Store, user: &str) -> Vec<Value> {
    let file: Result<Value, _> = store.load::<Value>(crate::settings::SETTINGS_FILE);
    file.ok()
        .and_then(|v| {
            v.pointer(&format!(
                "/users/{}/preferences/repoOrder",
                escape_pointer(user)
            ))
            .cloned()
        })
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `GET /api/internal/repos`: `{"repos":[…]}` for `user`, as JSON bytes.
pub fn list(store: &Store, paths: &RepoPaths, user: &str) -> Result<Vec<u8>, StoreError> {
    let mut repos = load(store)?;
    repos.push(Repo::assistant(paths));
    let ordered = order(repos, &repo_order_of(store, user));
    let list = WireList {
        repos: ordered.iter().map(|r| r.wire(paths)).collect(),
    };
    Ok(serde_json::to_vec(&list).unwrap_or_default())
}

/// The schedules domain's view of repos (ids other than 0).
pub struct ScheduleRepos {
    pub store: Store,
    pub paths: RepoPaths,
}

impl crate::schedules::RepoLookup for ScheduleRepos {
    fn repo(&self, id: i64) -> Result<Option<crate::schedules::RepoInfo>, StoreError> {
        Ok(
            find(&self.store, &self.paths, id)?.map(|r| crate::schedules::RepoInfo {
                id: r.id,
                name: r.display_name(),
                local_path: r.local_path.clone(),
                repo_url: r.repo_url.clone().unwrap_or_default(),
                dir: r.full_path(&self.paths),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repo(id: i64, name: Option<&str>, local: &str) -> Repo {
        serde_json::from_value(json!({
            "id": id, "name": name, "localPath": local, "cloneStatus": "ready", "clonedAt": 1
        }))
        .unwrap()
    }

    fn ids(v: &[Repo]) -> Vec<i64> {
        v.iter().map(|r| r.id).collect()
    }

    #[test]
    fn display_names() {
        let mut r = repo(1, Some("  Nice  "), "x/local");
        assert_eq!(r.display_name(), "Nice");
        r.name = Some("  ".into());
        r.repo_url = Some("https://github.com/o/widget.git/".into());
        assert_eq!(r.display_name(), "widget");
        r.repo_url = Some("git@github.com:o/gadget.git".into());
        assert_eq!(r.display_name(), "gadget");
        r.repo_url = None;
        r.source_path = Some("/src/thing/".into());
        assert_eq!(r.display_name(), "thing");
        r.source_path = None;
        assert_eq!(r.display_name(), "local");
    }

    #[test]
    fn ordering_rules() {
        let repos = vec![
            repo(1, Some("beta"), "b"),
            repo(2, Some("Alpha"), "a"),
            repo(3, Some("gamma"), "g"),
            repo(4, Some("alpha"), "a2"),
            repo(0, None, "assistant"),
        ];
        // No order: by name case-insensitively, ties by id.
        assert_eq!(ids(&order(repos.clone(), &[])), vec![2, 4, 0, 1, 3]);
        // repoOrder first; a repeated id takes its last position; unknown ids ignored.
        let o = [json!(3), json!(99), json!(1), json!(3), json!(0)];
        assert_eq!(ids(&order(repos, &o)), vec![1, 3, 0, 2, 4]);
    }

    #[test]
    fn absent_values_are_absent_keys() {
        let paths = RepoPaths {
            repos_root: "/r".into(),
            workspace: "/r/assistant".into(),
            assistant_cloned_at: 5,
            assistant_accessed_at: 6,
        };
        assert_eq!(
            repo(7, None, "p").to_wire(&paths),
            json!({"id":7,"localPath":"p","fullPath":"/r/p","cloneStatus":"ready","clonedAt":1})
        );
        assert_eq!(
            Repo::assistant(&paths).to_wire(&paths),
            json!({"id":0,"localPath":"assistant","fullPath":"/r/assistant","defaultBranch":"main",
                   "cloneStatus":"ready","clonedAt":5,"lastAccessedAt":6})
        );
    }

    #[test]
    fn validation() {
        let ok = ReposFile {
            repos: vec![repo(1, None, "a")],
        };
        assert!(validate(&ok).is_ok());
        for bad in [
            repo(0, None, "a"),
            repo(1, None, "../x"),
            repo(1, None, "/abs"),
        ] {
            assert!(validate(&ReposFile { repos: vec![bad] }).is_err());
        }
        assert!(validate(&ReposFile {
            repos: vec![repo(1, None, "a"), repo(1, None, "b")]
        })
        .is_err());
    }
}
