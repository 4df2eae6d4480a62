//! Reading values out of a Prometheus text exposition (what `/metrics` answers), so tests
//! can assert on counters without a Prometheus client.
//!
//! Only the sample lines are read; `# HELP` / `# TYPE` lines and timestamps are ignored.

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name, including a histogram's `_bucket` / `_sum` / `_count` suffix.
    pub name: String,
    /// The labels in written order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample line of `text`; lines that do not parse are skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The sum of every sample named `name` whose labels include all of `labels` (other
/// labels may be present too), or `None` if no sample matches.
///
/// `metric_value(text, "creditgate_decisions_total", &[("outcome", "blocked")])` adds
/// up the blocked decisions of every route.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for sample in parse_samples(text) {
        if sample.name == name
            && labels
                .iter()
                .all(|(k, v)| sample.label(k).is_some_and(|have| have == *v))
        {
            *found.get_or_insert(0.0) += sample.value;
        }
    }
    found
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and the text after the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP creditgate_decisions_total Decisions.
# TYPE creditgate_decisions_total counter
creditgate_decisions_total{route="search",outcome="allowed"} 5
creditgate_decisions_total{route="search",outcome="blocked"} 1
creditgate_decisions_total{route="report",outcome="blocked"} 2
creditgate_config_info{hash="a\"b,c}"} 1
creditgate_holds_in_flight 0
creditgate_store_latency_seconds_bucket{le="+Inf"} 7 1700000000
"#;

    #[test]
    fn sums_matching_series() {
        let v = |name, labels: &[(&str, &str)]| metric_value(TEXT, name, labels);
        assert_eq!(
            v(
                "creditgate_decisions_total",
                &[("route", "search"), ("outcome", "allowed")]
            ),
            Some(5.0)
        );
        assert_eq!(
            v("creditgate_decisions_total", &[("outcome", "blocked")]),
            Some(3.0)
        );
        assert_eq!(v("creditgate_holds_in_flight", &[]), Some(0.0));
        assert_eq!(
            v("creditgate_decisions_total", &[("outcome", "replayed")]),
            None
        );
        assert_eq!(
            v("creditgate_store_latency_seconds_bucket", &[("le", "+Inf")]),
            Some(7.0)
        );
    }

    #[test]
    fn unescapes_label_values() {
        let samples = parse_samples(TEXT);
        let info = samples
            .iter()
            .find(|s| s.name == "creditgate_config_info")
            .unwrap();
        assert_eq!(info.label("hash"), Some("a\"b,c}"));
        assert_eq!(info.value, 1.0);
    }
}
