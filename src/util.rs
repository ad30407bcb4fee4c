//! Small helpers shared by every module: clocks, randomness, UTF-16 lengths (the reference
//! counts string limits in JavaScript `.length` units) and a tolerant JSON reader for files a
//! person wrote by hand (`//` and `/* */` comments, trailing commas).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Length of `s` in UTF-16 code units, as JavaScript's `String.length` counts it.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).expect("the OS random source failed");
    buf
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Parses JSON that may contain `//` and `/* */` comments and trailing commas before `]`/`}`.
/// Comments and commas inside strings are left alone. The error text is serde_json's.
pub fn parse_jsonc(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_json::from_str(&strip_jsonc(text)).map_err(|e| e.to_string())
}

/// Removes comments and trailing commas; keeps line structure so error positions stay right.
pub fn strip_jsonc(text: &str) -> String {
    let b = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            // Copy a whole string literal, honouring escapes.
            out.push(c);
            i += 1;
            while i < b.len() {
                out.push(b[i]);
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(b[i + 1]);
                    i += 2;
                    continue;
                }
                i += 1;
                if b[i - 1] == b'"' {
                    break;
                }
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b',' {
            // A comma followed (after whitespace/comments) by `]` or `}` is dropped.
            let mut j = i + 1;
            loop {
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if b.get(j) == Some(&b'/') && b.get(j + 1) == Some(&b'/') {
                    while j < b.len() && b[j] != b'\n' {
                        j += 1;
                    }
                } else if b.get(j) == Some(&b'/') && b.get(j + 1) == Some(&b'*') {
                    j += 2;
                    while j < b.len() && !(b[j] == b'*' && b.get(j + 1) == Some(&b'/')) {
                        j += 1;
                    }
                    j += 2;
                } else {
                    break;
                }
            }
            if !matches!(b.get(j), Some(b']') | Some(b'}')) {
                out.push(c);
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    // Only ASCII bytes were removed, so the result is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_counts_like_javascript() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("é"), 1);
        assert_eq!(utf16_len("😀"), 2);
    }

    #[test]
    fn jsonc_comments_and_trailing_commas() {
        let v = parse_jsonc(
            br#"{
              // a comment
              "a": [1, 2, ], /* block, } */
              "s": "not // a comment, }",
            }"#,
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1, 2], "s": "not // a comment, }"})
        );
    }

    #[test]
    fn jsonc_keeps_escaped_quotes() {
        let v = parse_jsonc(br#"{"a": "x\"//y", "b": 1,}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": "x\"//y", "b": 1}));
    }

    #[test]
    fn jsonc_rejects_garbage() {
        assert!(parse_jsonc(b"{").is_err());
        assert!(parse_jsonc(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
