//! An incremental `text/event-stream` reader for usage: splits the bytes the gateway
//! forwards into lines as they pass, counts events, and parses as JSON only the `data:`
//! lines that mention a configured usage field. It keeps at most one partial line (bounded
//! by the inspection limit), never the stream.

use creditgate_config::UsageField;

use super::json::{FieldsRead, read_fields};

/// The usage seen so far in one stream.
#[derive(Debug)]
pub struct SseUsage {
    /// Last value seen of each field, in rule order.
    pub values: Vec<Option<u64>>,
    /// Events with data dispatched so far (a blank line ends an event).
    pub events: u64,
    /// Why the last usage-looking line could not be read, if one could not.
    pub garbage: Option<String>,
    /// A line longer than the inspection limit was skipped.
    pub over_limit: bool,
}

/// Reads a stream chunk by chunk.
#[derive(Debug)]
pub struct SseReader {
    usage: SseUsage,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Skipping the rest of a line that grew past the limit.
    skipping: bool,
    /// The current event has at least one data line.
    event_has_data: bool,
    line_max_bytes: usize,
    /// One searcher per field for its innermost key, built once per stream: most lines
    /// are content, and this rules them out without parsing.
    leaf_finders: Vec<memchr::memmem::Finder<'static>>,
}

impl SseReader {
    /// A reader for `fields`, skipping lines longer than `line_max_bytes`.
    pub fn new(fields: &[UsageField], line_max_bytes: usize) -> Self {
        let fields_count = fields.len();
        let leaf_finders = fields
            .iter()
            .map(|field| memchr::memmem::Finder::new(field.path.leaf().as_bytes()).into_owned())
            .collect();
        Self {
            usage: SseUsage {
                values: vec![None; fields_count],
                events: 0,
                garbage: None,
                over_limit: false,
            },
            partial: Vec::new(),
            skipping: false,
            event_has_data: false,
            line_max_bytes,
            leaf_finders,
        }
    }

    /// Reads the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8], fields: &[UsageField]) {
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr(b'\n', chunk) else {
                self.keep_partial(chunk);
                return;
            };
            let (head, rest) = (&chunk[..end], &chunk[end + 1..]);
            chunk = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            // A line over the limit is skipped however it arrives, whole in one chunk or in
            // pieces: the upstream's chunk boundaries must not change the settlement.
            if self.partial.len() + head.len() > self.line_max_bytes {
                self.partial.clear();
                self.usage.over_limit = true;
            } else if self.partial.is_empty() {
                self.line(head, fields);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, fields);
                line.clear();
                self.partial = line;
            }
        }
    }

    /// The usage seen so far; the stream may end here (a last event without its blank line
    /// still counts).
    pub fn finish(mut self, fields: &[UsageField]) -> SseUsage {
        if !self.skipping && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, fields);
        }
        if self.event_has_data {
            self.usage.events += 1;
        }
        self.usage
    }

    fn keep_partial(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > self.line_max_bytes {
            self.partial.clear();
            self.skipping = true;
            self.usage.over_limit = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn line(&mut self, line: &[u8], fields: &[UsageField]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if std::mem::take(&mut self.event_has_data) {
                self.usage.events += 1;
            }
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        self.event_has_data = true;
        let data = data.strip_prefix(b" ").unwrap_or(data);
        // Most events carry content, not usage: look for a field's name before parsing.
        let mentions_usage = self
            .leaf_finders
            .iter()
            .any(|finder| !finder.needle().is_empty() && finder.find(data).is_some());
        if !mentions_usage {
            return;
        }
        match read_fields(data, fields) {
            FieldsRead::Values(values) => {
                for (last, value) in self.usage.values.iter_mut().zip(values) {
                    if value.is_some() {
                        *last = value;
                    }
                }
            }
            FieldsRead::Garbage(why) => self.usage.garbage = Some(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_config::UsagePath;

    fn fields() -> Vec<UsageField> {
        ["usage.prompt_tokens", "usage.completion_tokens"]
            .iter()
            .map(|p| UsageField {
                path: UsagePath::parse(p).expect("valid path"),
                rate: 1,
            })
            .collect()
    }

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
        : keep-alive comment\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn reads_the_final_usage_event_whatever_the_chunking() {
        let f = fields();
        for size in [1, 3, 7, 64, STREAM.len()] {
            let mut reader = SseReader::new(&f, 1024);
            for chunk in STREAM.as_bytes().chunks(size) {
                reader.feed(chunk, &f);
            }
            let usage = reader.finish(&f);
            assert_eq!(usage.values, [Some(12), Some(2)], "chunks of {size}");
            assert_eq!(usage.events, 4, "chunks of {size}");
            assert!(usage.garbage.is_none() && !usage.over_limit);
        }
    }

    #[test]
    fn long_lines_are_skipped_and_garbage_is_reported() {
        let f = fields();
        let mut reader = SseReader::new(&f, 40);
        let long = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(100));
        for chunk in long.as_bytes().chunks(10) {
            reader.feed(chunk, &f);
        }
        reader.feed(b"data: {\"usage\":{\"prompt_tokens\":\"x\"}}\n\n", &f);
        let usage = reader.finish(&f);
        assert!(usage.over_limit);
        assert!(usage.garbage.is_some());
        assert_eq!(usage.values, [None, None]);
        assert_eq!(
            usage.events, 1,
            "the skipped line's event has no data line read"
        );
    }
}
