//! The `file:line: field: message` diagnostics of every file the product reads (the pricing
//! config here, the sidecar's operations file): one [`ConfigError`] per problem, each with
//! the file, the field path and the line, collected by [`Diagnostics`] into [`ConfigErrors`]
//! so that ops see every mistake in one run.
//!
//! This module only locates, formats and carries errors; it never decides what is valid.

use std::fmt;
use std::ops::Range;

/// One problem found in a pricing config file.
///
/// Displayed as `pricing.toml:12: routes[3].feature: unknown feature "chatt" (known: chat)`;
/// the line is left out when it is unknown and the field when the problem is the whole file
/// (an unreadable file, a TOML syntax error without a key path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to the loader (not canonicalised), e.g. `pricing.toml`.
    pub file: String,
    /// The path of the offending field, e.g. `routes[3].feature` or
    /// `features.chat.cost.amount`; empty when the problem is not tied to one field.
    pub field: String,
    /// The 1-based line of the offending value, when known.
    pub line: Option<u32>,
    /// What is wrong, in one sentence without a trailing period.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config file, in the order of their lines (problems without a
/// line come last). Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Wraps the collected errors, sorting them by line so the report reads top to bottom.
    /// The sort is stable: errors on the same line keep the order they were found in.
    pub fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|error| error.line.unwrap_or(u32::MAX));
        Self { errors }
    }

    /// Wraps the collected errors in the order they were found, for files whose checks
    /// already walk the file section by section (the operations file).
    pub fn in_order_found(errors: Vec<ConfigError>) -> Self {
        Self { errors }
    }

    /// The errors, sorted by line.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether there are no errors (never true for an error returned by the loader).
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Each error rendered on its own line, in order; handy for tests and logs.
    pub fn messages(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.errors.iter().enumerate() {
            if position > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

/// Maps byte offsets in the file text to 1-based line numbers.
#[derive(Debug)]
pub(crate) struct LineIndex {
    /// Byte offset where each line starts; the first entry is always 0.
    line_starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes the line starts of `text`.
    pub(crate) fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        Self { line_starts }
    }

    /// The 1-based line holding `offset`; offsets past the end are on the last line.
    pub(crate) fn line_of(&self, offset: usize) -> u32 {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        u32::try_from(line).unwrap_or(u32::MAX)
    }
}

/// The errors of one file as its checks find them: each report names a field path and is
/// placed on a line from a byte span of the file's text.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    file: &'a str,
    text: &'a str,
    lines: LineIndex,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    /// Starts collecting the errors of `text`, read from the file named `file`.
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            lines: LineIndex::new(text),
            errors: Vec::new(),
        }
    }

    /// Records a problem with `field` on the line where `span` starts (no line without one).
    pub fn report(
        &mut self,
        field: impl Into<String>,
        span: Option<Range<usize>>,
        message: String,
    ) {
        let line = span.map(|span| self.lines.line_of(span.start));
        self.report_on_line(field, line, message);
    }

    /// Records a problem with `field` on a line already known.
    pub fn report_on_line(&mut self, field: impl Into<String>, line: Option<u32>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            field: field.into(),
            line,
            message,
        });
    }

    /// Records a problem with `field` (a dotted path) in the table whose span is `table`, on
    /// the line of the field's key (see [`Diagnostics::key_line`]).
    pub fn report_in_table(&mut self, table: Range<usize>, field: String, message: String) {
        let line = self.key_line(table, &field);
        self.report_on_line(field, Some(line), message);
    }

    /// The 1-based line holding byte `offset` of the text.
    pub fn line_of(&self, offset: usize) -> u32 {
        self.lines.line_of(offset)
    }

    /// The line of `field`'s last key (`key = ...`) in the table that starts at `table`,
    /// searched up to the next table header; the table's first line when the key is not
    /// written there. For files deserialised with a span per table rather than per value.
    pub fn key_line(&self, table: Range<usize>, field: &str) -> u32 {
        let key = field.rsplit('.').next().unwrap_or(field);
        let start = table.start.min(self.text.len());
        let mut offset = start;
        for (index, line) in self.text[start..].split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if index > 0 && trimmed.starts_with('[') && !trimmed.starts_with("[\"") {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return self.lines.line_of(offset);
            }
            offset += line.len();
        }
        self.lines.line_of(start)
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems recorded, in the order they were found.
    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_maps_offsets_to_lines() {
        let index = LineIndex::new("a\nbc\n\nd");
        assert_eq!(index.line_of(0), 1);
        assert_eq!(index.line_of(1), 1);
        assert_eq!(index.line_of(2), 2);
        assert_eq!(index.line_of(5), 3);
        assert_eq!(index.line_of(6), 4);
        assert_eq!(index.line_of(100), 4);
    }

    #[test]
    fn key_lines_find_the_key_inside_its_table() {
        let text = "[a]\nx = 1\ny = 2\n[b]\ny = 3\n";
        let diagnostics = Diagnostics::new("f.toml", text);
        assert_eq!(diagnostics.key_line(0..text.len(), "a.y"), 3);
        // Not written in [a]: the table's own line, not the y of [b].
        assert_eq!(diagnostics.key_line(0..text.len(), "a.z"), 1);
        assert_eq!(diagnostics.key_line(16..text.len(), "b.y"), 5);
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        let error = ConfigError {
            file: "p.toml".into(),
            field: String::new(),
            line: None,
            message: "cannot read".into(),
        };
        assert_eq!(error.to_string(), "p.toml: cannot read");
    }
}
