//! Reading a request target the way upstreams read it: the path in its normal form (RFC 3986
//! §6.2.2: percent-encoded unreserved characters decoded, the hex of the other escapes in
//! upper case, §5.2.4 dot segments removed, and repeated slashes collapsed), and query
//! parameters by their decoded names and values, as HTML forms encode them.
//!
//! The gateway matches routes against the normal path and forwards that path, so what is
//! priced is what is served. A path that servers disagree on (an encoded slash, a NUL, a
//! backslash, a `;` path parameter, a `..` above the root, a broken escape) is refused
//! rather than guessed at.
//!
//! Pure: no I/O, no state; every function is total over any input string.

use std::borrow::Cow;
use std::fmt;

/// Why a request path is refused (the gateway answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`: some servers decode it into a separator, others keep it in the segment.
    EncodedSlash,
    /// A raw or encoded (`%00`) NUL byte, which C-based servers take for the end.
    Nul,
    /// A raw or encoded (`%5C`) backslash, which some servers read as a slash.
    Backslash,
    /// A raw `;`: servlet-style servers strip `;params` from each segment before routing
    /// (`/v1/ping;x=1` is `/v1/ping`, `..;` is `..`), others keep them.
    PathParameter,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// More `..` segments than segments before them.
    AboveRoot,
    /// A path that is neither empty, `*`, nor starts with `/`.
    NotAbsolute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EncodedSlash => "it contains an encoded slash (%2F)",
            Self::Nul => "it contains a NUL byte",
            Self::Backslash => "it contains a backslash, which some servers read as a slash",
            Self::PathParameter => {
                "it contains \";\" (a path parameter), which some servers strip before routing"
            }
            Self::BadEscape => "it contains a \"%\" that is not followed by two hex digits",
            Self::AboveRoot => "its \"..\" segments go above the root",
            Self::NotAbsolute => "it does not start with \"/\"",
        })
    }
}

impl std::error::Error for PathError {}

/// The normal form of request path `path` (without the query): unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) decoded, other escapes with upper-case hex, repeated slashes
/// collapsed, then `.` and `..` segments removed. A trailing slash is kept; the empty path
/// is `/`; `*` (the `OPTIONS *` target) is itself.
///
/// Normalising a normal path returns it unchanged, so an upstream that normalises again
/// serves the path the gateway priced.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.is_empty() || path == "*" {
        return Ok(if path.is_empty() { "/" } else { "*" }.to_string());
    }
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let decoded = decode_unreserved(rest)?;
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        // A trailing slash survives only where the input ends in a directory: `/a/`, `/a/.`
        // or `/a/b/..` all name the directory `/a/`.
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            segment => kept.push(segment),
        }
    }
    let mut normal = String::with_capacity(decoded.len() + 1);
    for segment in &kept {
        normal.push('/');
        normal.push_str(segment);
    }
    if kept.is_empty() || trailing_slash {
        normal.push('/');
    }
    Ok(normal)
}

/// `path` with escapes of unreserved characters decoded and the others in upper case;
/// refuses raw or encoded NUL and backslash, raw `;`, encoded slashes and broken escapes.
/// An encoded `;` (`%3B`) stays encoded: every server reads it as part of the segment.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut plain_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b'%' => {
                decoded.push_str(&path[plain_from..i]);
                let byte = hex_pair(bytes.get(i + 1..i + 3)).ok_or(PathError::BadEscape)?;
                match byte {
                    b'/' => return Err(PathError::EncodedSlash),
                    0 => return Err(PathError::Nul),
                    b'\\' => return Err(PathError::Backslash),
                    byte if is_unreserved(byte) => decoded.push(char::from(byte)),
                    byte => decoded.push_str(&format!("%{byte:02X}")),
                }
                i += 3;
                plain_from = i;
            }
            _ => i += 1,
        }
    }
    decoded.push_str(&path[plain_from..]);
    Ok(decoded)
}

/// RFC 3986 §2.3: the characters whose escapes mean the same as the character.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The byte that two hex digits spell, if `pair` is two hex digits.
fn hex_pair(pair: Option<&[u8]>) -> Option<u8> {
    let [high, low] = pair? else { return None };
    let digit = |byte: &u8| char::from(*byte).to_digit(16);
    u8::try_from(digit(high)? * 16 + digit(low)?).ok()
}

/// Every value of query parameter `name` in `query` (the raw query string, without `?`),
/// in order, decoded as HTML forms are (`+` is a space, `%XX` a byte, a broken escape is
/// kept as written, bytes that are not UTF-8 become U+FFFD).
///
/// Read as widely as any common server reads a query, so that no server sees a value the
/// gateway missed: parameters are separated by `&` or `;`, and names are compared after
/// decoding, ignoring ASCII case. A parameter without `=` has the value `""`.
pub fn query_values<'q>(query: &'q str, name: &str) -> Vec<Cow<'q, str>> {
    query
        .split(['&', ';'])
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            form_decode(key)
                .eq_ignore_ascii_case(name)
                .then(|| form_decode(value))
        })
        .collect()
}

/// One name or value of an `application/x-www-form-urlencoded` string, decoded; borrowed
/// when there is nothing to decode.
pub fn form_decode(encoded: &str) -> Cow<'_, str> {
    if !encoded.contains(['%', '+']) {
        return Cow::Borrowed(encoded);
    }
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex_pair(bytes.get(i + 1..i + 3))) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn paths_are_normalised() {
        for (path, normal) in [
            ("", "/"),
            ("/", "/"),
            ("*", "*"),
            ("/v1/ping", "/v1/ping"),
            ("/v1/./ping", "/v1/ping"),
            ("/v1/%70ing", "/v1/ping"),
            ("/v1/x/../ping", "/v1/ping"),
            ("/v1//ping", "/v1/ping"),
            ("//v1///ping//", "/v1/ping/"),
            ("/v1/%2e%2E/v1/ping", "/v1/ping"),
            ("/v1/ping/.", "/v1/ping/"),
            ("/v1/ping/x/..", "/v1/ping/"),
            ("/v1/..", "/"),
            ("/%7Euser/%41%62", "/~user/Ab"),
            ("/a%3fb%e2%82%ac", "/a%3Fb%E2%82%AC"),
            ("/v1/ping%3bx=1", "/v1/ping%3Bx=1"),
            ("/%25%32%46", "/%252F"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ] {
            assert_eq!(normalize_path(path), Ok(normal.to_string()), "{path:?}");
        }
    }

    #[test]
    fn paths_servers_disagree_on_are_refused() {
        for (path, error) in [
            ("/v1%2Fping", PathError::EncodedSlash),
            ("/v1%2fping", PathError::EncodedSlash),
            ("/v1/ping%00", PathError::Nul),
            ("/v1/ping\0", PathError::Nul),
            ("/v1\\ping", PathError::Backslash),
            ("/v1%5cping", PathError::Backslash),
            ("/v1/ping;x=1", PathError::PathParameter),
            ("/v1/x/..;/ping", PathError::PathParameter),
            ("/v1/%zzping", PathError::BadEscape),
            ("/v1/ping%4", PathError::BadEscape),
            ("/v1/ping%", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/v1/../../ping", PathError::AboveRoot),
            ("/v1/%2e%2e/%2E%2E/ping", PathError::AboveRoot),
            ("/a/%2e%2e%2fb", PathError::EncodedSlash),
            ("v1/ping", PathError::NotAbsolute),
        ] {
            assert_eq!(normalize_path(path), Err(error), "{path:?}");
        }
        assert_eq!(
            PathError::AboveRoot.to_string(),
            "its \"..\" segments go above the root"
        );
    }

    #[test]
    fn query_values_are_decoded_and_all_found() {
        let values = |query, name| -> Vec<String> {
            query_values(query, name)
                .into_iter()
                .map(Cow::into_owned)
                .collect()
        };
        assert_eq!(values("pages=%31%30", "pages"), ["10"]);
        assert_eq!(values("%70ages=10", "pages"), ["10"]);
        assert_eq!(values("pages=1&pages=10", "pages"), ["1", "10"]);
        assert_eq!(values("pages=+10", "pages"), [" 10"]);
        assert_eq!(values("pages=%2B10", "pages"), ["+10"]);
        assert_eq!(values("x=1;PAGES=3&Pages=4", "pages"), ["3", "4"]);
        assert_eq!(values("flag&x=1", "flag"), [""]);
        assert_eq!(values("pages=%zz&pages=%", "pages"), ["%zz", "%"]);
        assert_eq!(values("pages=%ff", "pages"), ["\u{fffd}"]);
        assert!(values("ab=1&", "a").is_empty());
        assert!(values("", "a").is_empty());
        assert!(matches!(form_decode("plain"), Cow::Borrowed("plain")));
    }

    /// Spellings of the same path that every normalising server serves as that path.
    fn obfuscated(path: &str, choices: &[u8]) -> String {
        let mut spelled = String::new();
        let mut choice = choices.iter().cycle();
        for segment in path.split('/').skip(1) {
            spelled.push('/');
            match choice.next().copied().unwrap_or(0) % 4 {
                1 => spelled.push_str("./"),
                2 => spelled.push('/'),
                3 => spelled.push_str("detour/../"),
                _ => {}
            }
            for byte in segment.bytes() {
                if choice.next().copied().unwrap_or(0) % 2 == 1 && is_unreserved(byte) {
                    // Both hex cases: servers decode either.
                    spelled.push_str(&format!("%{byte:02x}"));
                } else {
                    spelled.push(char::from(byte));
                }
            }
        }
        spelled
    }

    fn form_encoded(text: &str, choices: &[u8]) -> String {
        let mut choice = choices.iter().cycle();
        text.bytes()
            .map(
                |byte| match (byte, choice.next().copied().unwrap_or(0) % 2) {
                    (b' ', 1) => "+".to_string(),
                    (byte, 1) => format!("%{byte:02X}"),
                    (byte, _) if byte.is_ascii_alphanumeric() => char::from(byte).to_string(),
                    (byte, _) => format!("%{byte:02x}"),
                },
            )
            .collect()
    }

    proptest! {
        #[test]
        fn normalising_never_panics_and_is_idempotent(path in "\\PC{0,40}") {
            if let Ok(normal) = normalize_path(&path) {
                prop_assert_eq!(normalize_path(&normal), Ok(normal.clone()));
                prop_assert!(normal == "*" || normal.starts_with('/'));
                prop_assert!(!normal.contains("//"));
            }
        }

        #[test]
        fn mutated_paths_never_panic(
            path in "(/[a-z0-9.%]{0,4}){0,6}",
            mutations in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        ) {
            let mut bytes = path.into_bytes();
            for (at, byte) in mutations {
                let at = at % (bytes.len() + 1);
                bytes.insert(at, byte);
            }
            let path = String::from_utf8_lossy(&bytes);
            if let Ok(normal) = normalize_path(&path) {
                prop_assert_eq!(normalize_path(&normal), Ok(normal.clone()));
            }
        }

        #[test]
        fn obfuscated_spellings_normalise_the_same(
            path in "(/[a-zA-Z0-9_~-]{1,6}){1,5}/?",
            choices in prop::collection::vec(any::<u8>(), 1..32),
        ) {
            let spelled = obfuscated(&path, &choices);
            prop_assert_eq!(normalize_path(&spelled), Ok(path.clone()), "{}", spelled);
        }

        #[test]
        fn equivalent_query_encodings_give_the_same_values(
            name in "[a-z_]{1,8}",
            value in "[ -~]{0,8}",
            other in "[a-z]{1,4}=[a-z0-9]{0,4}",
            choices in prop::collection::vec(any::<u8>(), 1..16),
        ) {
            let plain = format!("{other}&{}={}", form_encoded(&name, &[0]), form_encoded(&value, &[0]));
            let spelled = format!(
                "{other};{}={}",
                form_encoded(&name.to_ascii_uppercase(), &choices),
                form_encoded(&value, &choices),
            );
            let expected = if other.split('=').next() == Some(name.as_str()) { 2 } else { 1 };
            let read = |query: &str| -> Vec<String> {
                query_values(query, &name).into_iter().map(Cow::into_owned).collect()
            };
            let found = read(&plain);
            prop_assert_eq!(found.len(), expected);
            prop_assert_eq!(found.last(), Some(&value));
            prop_assert_eq!(read(&spelled), found);
        }

        #[test]
        fn query_reading_never_panics(query in "\\PC{0,60}", name in "\\PC{0,8}") {
            let _ = query_values(&query, &name);
        }
    }
}
