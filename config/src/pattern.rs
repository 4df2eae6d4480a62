//! Route path patterns: parsing, matching one path (the slow, obviously-right way) and the
//! "covers" relation that validation uses to find shadowed routes.
//!
//! The fast lookup over many patterns lives in `route_table`; this module must stay the
//! plain definition that the route table is tested against.
//!
//! Syntax: a pattern starts with `/` and is a list of `/`-separated segments, each one of
//! - a literal (`v1`, `chat.completions`): matches exactly that segment, case-sensitively;
//! - a parameter `{name}`: matches any one non-empty segment;
//! - `*`, only as the last segment: matches any remaining segments, including none.
//!
//! Paths are split the same way after dropping a `?query` or `#fragment`, and empty
//! segments are ignored: `/v1/chat/`, `//v1//chat` and `/v1/chat` are the same path. This
//! is deliberate: an upstream that collapses slashes must not let `/v1//chat` slip past the
//! `/v1/chat` route unpriced.

use std::fmt;

use crate::limits::{MAX_PATTERN_LEN, MAX_PATTERN_SEGMENTS};

/// The longest parameter name in a pattern, in bytes.
const MAX_PARAM_NAME_LEN: usize = 64;

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `{name}`: matches any one non-empty segment.
    Param(Box<str>),
    /// `*` (always last): matches the rest of the path, possibly nothing.
    Wildcard,
}

/// A parsed route path pattern such as `/v1/files/{id}/*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    raw: Box<str>,
    segments: Box<[Segment]>,
}

impl PathPattern {
    /// Parses `raw`, returning a one-line explanation on failure.
    pub fn parse(raw: &str) -> Result<PathPattern, String> {
        if raw.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "path pattern is {} bytes long, the limit is {MAX_PATTERN_LEN}",
                raw.len()
            ));
        }
        let Some(body) = raw.strip_prefix('/') else {
            return Err(format!("path pattern {raw:?} must start with \"/\""));
        };
        if body.is_empty() {
            return Ok(PathPattern {
                raw: raw.into(),
                segments: Box::new([]),
            });
        }
        if body.ends_with('/') {
            return Err(format!(
                "path pattern {raw:?} ends with \"/\"; trailing slashes are ignored when \
                 matching, so write {:?}",
                raw.trim_end_matches('/')
            ));
        }
        let parts: Vec<&str> = body.split('/').collect();
        if parts.len() > MAX_PATTERN_SEGMENTS {
            return Err(format!(
                "path pattern {raw:?} has {} segments, the limit is {MAX_PATTERN_SEGMENTS}",
                parts.len()
            ));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (position, part) in parts.iter().enumerate() {
            let segment = parse_segment(part)
                .map_err(|problem| format!("path pattern {raw:?}: {problem}"))?;
            if segment == Segment::Wildcard && position + 1 != parts.len() {
                return Err(format!(
                    "path pattern {raw:?}: \"*\" may only be the last segment"
                ));
            }
            if let Segment::Param(name) = &segment {
                let repeated = segments
                    .iter()
                    .any(|earlier| matches!(earlier, Segment::Param(other) if other == name));
                if repeated {
                    return Err(format!(
                        "path pattern {raw:?}: parameter {{{name}}} appears twice"
                    ));
                }
            }
            segments.push(segment);
        }
        Ok(PathPattern {
            raw: raw.into(),
            segments: segments.into_boxed_slice(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The parsed segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether `path` (which may carry a query string) matches this pattern. This is the
    /// reference definition, linear in the segments and allocation-free.
    pub fn matches(&self, path: &str) -> bool {
        let mut path_segments = path_segments(path);
        for segment in self.segments.iter() {
            match segment {
                Segment::Wildcard => return true,
                Segment::Param(_) => {
                    if path_segments.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(literal) => {
                    if path_segments.next() != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        path_segments.next().is_none()
    }

    /// Whether every path matched by `other` is also matched by `self`. Parameter names do
    /// not matter: `/a/{x}` and `/a/{y}` cover each other.
    pub fn covers(&self, other: &PathPattern) -> bool {
        let mut theirs = other.segments.iter();
        for mine in self.segments.iter() {
            if *mine == Segment::Wildcard {
                return true;
            }
            let covered = match (mine, theirs.next()) {
                (Segment::Literal(a), Some(Segment::Literal(b))) => a == b,
                (Segment::Param(_), Some(Segment::Literal(_) | Segment::Param(_))) => true,
                _ => false,
            };
            if !covered {
                return false;
            }
        }
        theirs.next().is_none()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The non-empty segments of a request path, after dropping any `?query` or `#fragment`.
pub fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path[..end].split('/').filter(|segment| !segment.is_empty())
}

fn parse_segment(part: &str) -> Result<Segment, String> {
    if part.is_empty() {
        return Err("empty segment (\"//\")".to_owned());
    }
    if part == "*" {
        return Ok(Segment::Wildcard);
    }
    if let Some(inner) = part.strip_prefix('{') {
        let Some(name) = inner.strip_suffix('}') else {
            return Err(format!("segment {part:?} opens \"{{\" without closing it"));
        };
        if name.is_empty() {
            return Err("empty parameter name \"{}\"".to_owned());
        }
        let valid = name.len() <= MAX_PARAM_NAME_LEN
            && name
                .bytes()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
        if !valid {
            return Err(format!(
                "parameter name {name:?} must be letters, digits and \"_\", not starting \
                 with a digit, at most {MAX_PARAM_NAME_LEN} bytes"
            ));
        }
        return Ok(Segment::Param(name.into()));
    }
    if part == "." || part == ".." {
        return Err(format!("dot segment {part:?} is not allowed"));
    }
    if let Some(bad) = part.chars().find(|c| !is_literal_char(*c)) {
        return Err(format!(
            "segment {part:?} contains {bad:?}; literals may use letters, digits and \
             -._~!$&'()+,;=:@%, and \"{{name}}\" or \"*\" must fill a whole segment"
        ));
    }
    Ok(Segment::Literal(part.into()))
}

/// The characters RFC 3986 allows in a path segment (`pchar`), minus `*`, which is reserved
/// for the wildcard.
fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(raw: &str) -> PathPattern {
        PathPattern::parse(raw).expect(raw)
    }

    #[test]
    fn parses_the_three_segment_kinds() {
        let parsed = pattern("/v1/files/{id}/*");
        assert_eq!(
            parsed.segments(),
            &[
                Segment::Literal("v1".into()),
                Segment::Literal("files".into()),
                Segment::Param("id".into()),
                Segment::Wildcard,
            ]
        );
        assert!(pattern("/").segments().is_empty());
    }

    #[test]
    fn rejects_bad_patterns() {
        for (raw, expected) in [
            ("v1", "must start with \"/\""),
            ("/v1/", "ends with \"/\""),
            ("/a//b", "empty segment"),
            ("/*/a", "\"*\" may only be the last segment"),
            ("/a/{}", "empty parameter name"),
            ("/a/{x", "without closing"),
            ("/a/{1x}", "parameter name \"1x\""),
            ("/{x}/{x}", "appears twice"),
            ("/a/b*", "contains '*'"),
            ("/a?b=1", "contains '?'"),
            ("/a/x{y}", "contains '{'"),
            ("/a/../b", "dot segment"),
        ] {
            let error = PathPattern::parse(raw).expect_err(raw);
            assert!(error.contains(expected), "{raw}: {error}");
        }
    }

    #[test]
    fn matches_paths_ignoring_empty_segments_and_query() {
        let chat = pattern("/v1/chat");
        assert!(chat.matches("/v1/chat"));
        assert!(chat.matches("/v1/chat/"));
        assert!(chat.matches("//v1//chat?stream=true"));
        assert!(!chat.matches("/v1/chat/x"));
        assert!(!chat.matches("/v1/Chat"));
        let file = pattern("/files/{id}");
        assert!(file.matches("/files/42"));
        assert!(!file.matches("/files"));
        assert!(!file.matches("/files/"));
        let rest = pattern("/v1/*");
        assert!(rest.matches("/v1"));
        assert!(rest.matches("/v1/a/b/c"));
        assert!(!rest.matches("/v2"));
        assert!(pattern("/").matches("/"));
        assert!(pattern("/").matches("/?a=b"));
        assert!(pattern("/*").matches("/anything"));
    }

    #[test]
    fn covers_follows_the_matching_rules() {
        assert!(pattern("/v1/*").covers(&pattern("/v1/chat")));
        assert!(pattern("/v1/*").covers(&pattern("/v1")));
        assert!(pattern("/v1/*").covers(&pattern("/v1/*")));
        assert!(pattern("/a/{x}").covers(&pattern("/a/b")));
        assert!(pattern("/a/{x}").covers(&pattern("/a/{y}")));
        assert!(!pattern("/a/b").covers(&pattern("/a/{x}")));
        assert!(!pattern("/a/{x}").covers(&pattern("/a/*")));
        assert!(!pattern("/a/{x}").covers(&pattern("/a/b/c")));
        assert!(!pattern("/a/b/*").covers(&pattern("/a/*")));
        assert!(!pattern("/a").covers(&pattern("/a/b")));
    }
}
