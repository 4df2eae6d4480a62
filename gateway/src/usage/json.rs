//! Reads priced usage fields out of one JSON document (a whole response body, or the data of
//! one SSE event). Pure: no I/O, no clock, no allocation beyond the parsed document.

use creditgate_config::UsageField;
use serde_json::Value;

/// What one JSON document said about the usage fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldsRead {
    /// The value of each field in rule order (`None`: not in this document).
    Values(Vec<Option<u64>>),
    /// The document is not JSON, or a configured field holds something other than a
    /// non-negative integer (a string, a float, a negative number).
    Garbage(String),
}

/// Parses `document` and looks every field up by its path.
pub fn read_fields(document: &[u8], fields: &[UsageField]) -> FieldsRead {
    let value: Value = match serde_json::from_slice(document) {
        Ok(value) => value,
        Err(e) => return FieldsRead::Garbage(format!("not JSON: {e}")),
    };
    let mut values = Vec::with_capacity(fields.len());
    for field in fields {
        let found = field
            .path
            .segments()
            .iter()
            .try_fold(&value, |node, key| node.get(key.as_str()));
        match found {
            None | Some(Value::Null) => values.push(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => values.push(n.as_u64()),
            Some(other) => {
                return FieldsRead::Garbage(format!(
                    "{} is {other}, not a non-negative integer",
                    field.path.as_str()
                ));
            }
        }
    }
    FieldsRead::Values(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_config::UsagePath;

    fn fields(paths: &[&str]) -> Vec<UsageField> {
        paths
            .iter()
            .map(|p| UsageField {
                path: UsagePath::parse(p).expect("valid path"),
                rate: 1,
            })
            .collect()
    }

    #[test]
    fn finds_nested_fields_and_tells_absent_from_garbage() {
        let f = fields(&["usage.prompt_tokens", "usage.completion_tokens"]);
        let body = br#"{"id":"x","usage":{"prompt_tokens":1200,"completion_tokens":300}}"#;
        assert_eq!(
            read_fields(body, &f),
            FieldsRead::Values(vec![Some(1200), Some(300)])
        );
        assert_eq!(
            read_fields(br#"{"usage":{"prompt_tokens":5}}"#, &f),
            FieldsRead::Values(vec![Some(5), None])
        );
        assert_eq!(
            read_fields(br#"{"usage":null}"#, &f),
            FieldsRead::Values(vec![None, None])
        );
        for garbage in [
            &br#"{"usage":{"prompt_tokens":"many"}}"#[..],
            br#"{"usage":{"prompt_tokens":-1}}"#,
            br#"{"usage":{"prompt_tokens":1.5}}"#,
            br#"{"usage":"#,
        ] {
            assert!(
                matches!(read_fields(garbage, &f), FieldsRead::Garbage(_)),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
}
