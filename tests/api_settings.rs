//! Settings over HTTP: the full default object, strict PATCH, all-or-nothing writes, corrupt
//! files reported and left alone, secrets redacted, userId rules.

use crate::util::*;
use serde_json::{json, Value};

fn defaults() -> Value {
    json!({
        "theme": "dark", "mode": "build", "autoScroll": true, "expandDiffs": true,
        "expandToolCalls": false, "showReasoning": false, "simpleChatMode": false,
        "leaderKey": "Ctrl+O", "directShortcuts": ["submit", "abort"],
        "keyboardShortcuts": {
            "submit": "Ctrl+Enter", "abort": "Escape", "toggleMode": "T", "undo": "Z",
            "redo": "Shift+Z", "compact": "K", "fork": "F", "settings": ",", "sessions": "S",
            "newSession": "N", "closeSession": "W", "toggleSidebar": "B", "selectModel": "M",
            "variantCycle": "Ctrl+T"
        },
        "customCommands": [], "gitCredentials": [],
        "gitIdentity": {"name": "OpenCode Agent", "email": ""},
        "tts": {"enabled": false, "provider": "external", "autoPlay": false,
                "endpoint": "https://api.openai.com", "apiKey": "", "voice": "alloy",
                "model": "tts-1", "speed": 1, "availableVoices": [], "availableModels": [],
                "lastVoicesFetch": 0, "lastModelsFetch": 0},
        "stt": {"enabled": false, "provider": "builtin", "endpoint": "https://api.openai.com",
                "apiKey": "", "model": "", "language": "en-US", "availableModels": [],
                "lastModelsFetch": 0},
        "notifications": {"enabled": false, "events": {"permissionAsked": true,
                "questionAsked": true, "sessionError": true, "sessionIdle": false}},
        "repoSortMode": "recent", "serverEnvVars": [], "disabledDefaultServerEnvVars": []
    })
}

fn server(tag: &str, args: &[&str]) -> (TempDir, TestServer) {
    let d = TempDir::new(tag);
    let s = TestServer::start(&d.join("state"), args, &[]);
    (d, s)
}

fn settings_bytes(s: &TestServer) -> Vec<u8> {
    std::fs::read(s.state.join("settings.json")).unwrap()
}

#[test]
fn defaults_compared_whole_with_updated_at_zero() {
    let (_d, s) = server("set-defaults", &[]);
    for q in ["", "?userId=", "?userId=default", "?userId=nobody"] {
        let r = s.call("GET", &format!("/api/internal/settings{q}"), None);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({"preferences": defaults(), "updatedAt": 0}),
            "{q}"
        );
    }
}

#[test]
fn patch_returns_the_get_shape_and_persists() {
    let (_d, s) = server("set-patch", &[]);
    let patch = json!({"theme": "light", "autoScroll": false, "repoOrder": [3, 1],
                       "keyboardShortcuts": {"submit": "Enter"},
                       "customCommands": [{"name": "n", "description": "d", "promptTemplate": "p", "extra": 1}],
                       "notifications": {"enabled": true, "events": {"permissionAsked": false,
                           "questionAsked": true, "sessionError": true, "sessionIdle": true}}});
    let r = s.call("PATCH", "/api/internal/settings", Some(&patch.to_string()));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    let mut want = defaults();
    want["theme"] = json!("light");
    want["autoScroll"] = json!(false);
    want["repoOrder"] = json!([3, 1]);
    want["keyboardShortcuts"] = json!({"submit": "Enter"});
    want["customCommands"] = json!([{"name": "n", "description": "d", "promptTemplate": "p"}]);
    want["notifications"] = patch["notifications"].clone();
    assert_eq!(body["preferences"], want);
    let at = body["updatedAt"].as_i64().unwrap();
    assert!(at > 1_700_000_000_000);
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(r.json(), json!({"preferences": want, "updatedAt": at}));
    // On disk: plain JSON, only this user.
    let disk: Value = serde_json::from_slice(&settings_bytes(&s)).unwrap();
    assert_eq!(disk["users"]["default"]["updatedAt"], json!(at));
    assert_eq!(disk["users"]["default"]["preferences"]["theme"], "light");
    assert!(disk["users"].get("alice").is_none());
    // Another user is separate.
    let r = s.call("GET", "/api/internal/settings?userId=alice", None);
    assert_eq!(r.json(), json!({"preferences": defaults(), "updatedAt": 0}));
    // An empty patch is valid.
    let r = s.call("PATCH", "/api/internal/settings?userId=alice", Some("{}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["preferences"], defaults());
}

#[test]
fn bad_patches_are_400_and_write_nothing() {
    let (_d, s) = server("set-bad", &[]);
    let ok = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"theme":"light"}"#),
    );
    assert_eq!(ok.status, 200);
    let stored = settings_bytes(&s);
    let restricted = [
        r#"{"gitCredentials":[]}"#,
        r#"{"gitIdentity":{"name":"x","email":"y"}}"#,
        r#"{"lastKnownGoodConfig":"x"}"#,
        r#"{"defaultGitCredentialId":"x"}"#,
        r#"{"serverEnvVars":[]}"#,
        r#"{"disabledDefaultServerEnvVars":[]}"#,
        r#"{"customAgents":[]}"#,
        r#"{"tts":{"apiKey":"k"}}"#,
        r#"{"tts":{"endpoint":"http://x"}}"#,
        r#"{"tts":{"availableVoices":[]}}"#,
        r#"{"tts":{"availableModels":[]}}"#,
        r#"{"tts":{"lastVoicesFetch":1}}"#,
        r#"{"tts":{"lastModelsFetch":1}}"#,
        r#"{"stt":{"apiKey":"k"}}"#,
        r#"{"stt":{"endpoint":"http://x"}}"#,
        r#"{"stt":{"availableModels":[]}}"#,
        r#"{"stt":{"lastModelsFetch":1}}"#,
        r#"{"bogus":1}"#,
    ];
    let wrong = [
        r#"{"theme":null}"#,
        r#"{"theme":"neon"}"#,
        r#"{"autoScroll":"yes"}"#,
        r#"{"mode":1}"#,
        r#"{"directShortcuts":"submit"}"#,
        r#"{"keyboardShortcuts":{"a":1}}"#,
        r#"{"notifications":{"enabled":true}}"#,
        r#"{"repoOrder":["1"]}"#,
        r#"{"repoSortMode":"random"}"#,
        r#"{"tts":{"speed":0.24}}"#,
        r#"{"tts":null}"#,
        r#"[]"#,
        r#""x""#,
        r#"null"#,
        r#"{"theme":"light","bogus":true}"#,
        r#"{"theme":"light","autoScroll":null}"#,
    ];
    for body in restricted.iter().chain(wrong.iter()) {
        let r = s.call("PATCH", "/api/internal/settings", Some(body));
        assert_eq!(r.status, 400, "{body}");
        let j = r.json();
        assert_eq!(j["error"], "Invalid request body", "{body}");
        assert!(!j["details"].as_array().unwrap().is_empty(), "{body}");
        assert_eq!(settings_bytes(&s), stored, "{body} changed the file");
    }
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"bogus":1,"other":2}"#),
    );
    assert_eq!(
        r.json()["details"],
        json!([{"path": [], "code": "unrecognized_keys", "keys": ["bogus", "other"],
                "message": "Unrecognized keys: \"bogus\", \"other\""}])
    );
    for body in ["{", "", "{'a':1}"] {
        let r = s.call("PATCH", "/api/internal/settings", Some(body));
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"error": "Invalid JSON"})),
            "{body:?}"
        );
    }
    assert_eq!(settings_bytes(&s), stored);
}

#[test]
fn string_limits_count_utf16_units() {
    let (_d, s) = server("set-utf16", &[]);
    let max = 10_000;
    // 5,000 emoji = 10,000 UTF-16 units: at the limit.
    let at = "😀".repeat(max / 2);
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(&json!({"leaderKey": at}).to_string()),
    );
    assert_eq!(r.status, 200);
    let over = format!("{at}a");
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(&json!({"leaderKey": over}).to_string()),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["details"][0]["code"], "too_big");
    assert_eq!(r.json()["details"][0]["path"], json!(["leaderKey"]));
}

#[test]
fn tts_and_stt_need_a_stored_api_key_and_secrets_are_redacted() {
    let d = TempDir::new("set-tts");
    let state = d.join("state");
    assert_eq!(
        run_cli(&["init", "--state", state.to_str().unwrap()], &[]).0,
        0
    );
    let s = TestServer::start(&state, &[], &[]);
    let r = s.call("PATCH", "/api/internal/settings", Some(r#"{"tts":{}}"#));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "TTS is not configured. Set up TTS (including credentials) in the UI before adjusting it."})
    );
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"stt":{"enabled":true}}"#),
    );
    assert_eq!(
        r.json(),
        json!({"error": "STT is not configured. Set up STT (including credentials) in the UI before adjusting it."})
    );
    let stored = json!({"users": {"default": {"preferences": {
        "tts": {"apiKey": "sk-tts-SECRET", "endpoint": "https://tts.example"},
        "gitCredentials": [{"name": "gh", "host": "github.com", "token": "ghp_SECRET"}],
        "lastKnownGoodConfig": "{\"secret\":true}"
    }, "updatedAt": 5}}});
    std::fs::write(state.join("settings.json"), stored.to_string()).unwrap();
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"tts":{"voice":"nova","speed":4}}"#),
    );
    assert_eq!(r.status, 200);
    let p = &r.json()["preferences"];
    assert_eq!(p["tts"]["apiKey"], "[redacted]");
    assert_eq!(p["tts"]["endpoint"], "https://tts.example");
    assert_eq!(p["tts"]["voice"], "nova");
    assert_eq!(p["tts"]["speed"], json!(4));
    assert_eq!(p["gitCredentials"][0]["token"], "[redacted]");
    assert_eq!(p["gitCredentials"][0]["type"], "pat");
    assert_eq!(p["lastKnownGoodConfig"], "[redacted]");
    assert_eq!(p["stt"]["apiKey"], "", "empty secrets are not redacted");
    // The secret itself stays on disk, untouched by the merge.
    let disk: Value =
        serde_json::from_slice(&std::fs::read(state.join("settings.json")).unwrap()).unwrap();
    assert_eq!(
        disk["users"]["default"]["preferences"]["tts"]["apiKey"],
        "sk-tts-SECRET"
    );
    assert!(!s.log_text().contains("SECRET"));
    drop(s);
    let s = TestServer::start(&state, &["--expose-secrets"], &[]);
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(r.json()["preferences"]["tts"]["apiKey"], "sk-tts-SECRET");
    assert_eq!(
        r.json()["preferences"]["gitCredentials"][0]["token"],
        "ghp_SECRET"
    );
}

#[test]
fn invalid_user_ids_are_400() {
    let (_d, s) = server("set-user", &[]);
    let long = "a".repeat(65);
    for q in ["..%2Fx", "../x", long.as_str(), "a%00b", ".hidden", "a%2Fb"] {
        for m in ["GET", "PATCH"] {
            let r = s.call(m, &format!("/api/internal/settings?userId={q}"), Some("{}"));
            assert_eq!(
                (r.status, r.json()),
                (400, json!({"error": "Invalid userId"})),
                "{m} {q}"
            );
        }
    }
    let ok = "a".repeat(64);
    assert_eq!(
        s.call("GET", &format!("/api/internal/settings?userId={ok}"), None)
            .status,
        200
    );
    assert_eq!(
        s.call("GET", "/api/internal/settings?userId=me%40x.org", None)
            .status,
        200
    );
}

#[test]
fn corrupt_settings_is_500_naming_the_file_and_bytes_stay() {
    let (_d, s) = server("set-corrupt", &[]);
    let cases: Vec<&[u8]> = vec![
        b"{\"users\": {",
        b"",
        b"\xff\xfe\x00",
        br#"{"users": {"default": {"preferences": {"theme": "neon"}, "updatedAt": 1}}}"#,
        br#"{"users": []}"#,
    ];
    for bad in cases {
        std::fs::write(s.state.join("settings.json"), bad).unwrap();
        for (m, body) in [("GET", None), ("PATCH", Some(r#"{"theme":"light"}"#))] {
            let r = s.call(m, "/api/internal/settings", body);
            assert_eq!(r.status, 500, "{m} {:?}", String::from_utf8_lossy(bad));
            let e = r.json()["error"].as_str().unwrap().to_string();
            assert!(e.starts_with("State file settings.json "), "{e}");
            assert_eq!(settings_bytes(&s), bad);
        }
        // Other domains keep working.
        assert_eq!(s.call("GET", "/api/internal/repos", None).status, 200);
    }
    // A broken entry of another user is kept byte for byte when this user writes.
    let mixed = br#"{"users": {"alice": {"preferences": {"theme": "neon"}, "updatedAt": 1}}}"#;
    std::fs::write(s.state.join("settings.json"), mixed).unwrap();
    let r = s.call("GET", "/api/internal/settings?userId=alice", None);
    assert_eq!(r.status, 500);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(e.contains("alice") && e.contains("theme"), "{e}");
}

#[test]
fn hand_written_settings_with_comments_are_read() {
    let (_d, s) = server("set-jsonc", &[]);
    let text = b"// edited by hand\n{\"users\": {\"default\": {\"preferences\": {\"theme\": \"system\", /* why not */}, \"updatedAt\": 7,},},}\n";
    std::fs::write(s.state.join("settings.json"), text).unwrap();
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["preferences"]["theme"], "system");
    assert_eq!(r.json()["updatedAt"], 7);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// A state dir that cannot be written: a read-only tmpfs as root (root ignores mode bits),
/// mode 0500 otherwise.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn make(path: &std::path::Path, fill: impl FnOnce(&std::path::Path)) -> ReadOnlyDir {
        std::fs::create_dir_all(path).unwrap();
        let mounted = is_root()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        fill(path);
        if mounted {
            let ok = std::process::Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "remount read-only failed");
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        ReadOnlyDir {
            path: path.to_path_buf(),
            mounted,
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(&self.path)
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700));
        }
    }
}

#[test]
fn read_only_state_dir_reads_work_and_writes_are_500() {
    let d = TempDir::new("set-ro");
    let state = d.join("state");
    let ro = ReadOnlyDir::make(&state, |p| {
        let (code, _, err) = run_cli(&["init", "--state", p.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{err}");
        std::fs::write(
            p.join("settings.json"),
            r#"{"users":{"default":{"preferences":{"theme":"light"},"updatedAt":3}}}"#,
        )
        .unwrap();
    });
    let s = TestServer::start(&ro.path, &[], &[]);
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["preferences"]["theme"], "light");
    assert_eq!(s.call("GET", "/api/internal/repos", None).status, 200);
    let r = s.call(
        "PATCH",
        "/api/internal/settings",
        Some(r#"{"theme":"dark"}"#),
    );
    assert_eq!(r.status, 500);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.starts_with("State file settings.json could not be"),
        "a clear message naming the file: {e}"
    );
    assert!(
        e.contains("Read-only file system") || e.contains("Permission denied"),
        "{e}"
    );
    let r = s.call("GET", "/api/internal/settings", None);
    assert_eq!(r.json()["preferences"]["theme"], "light");
}
