//! Reading a JSON request body field by field, so every bad input is a 400 naming its
//! field: malformed JSON, unknown fields, wrong types, negative or too large amounts.

use creditgate_protocol::MAX_AMOUNT;
use creditgate_protocol::keys::validate_id;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Longest free-text field (notes, reasons, payment references), bytes.
pub const TEXT_MAX_LEN: usize = 512;

/// A request body: a JSON object whose fields are taken one by one; [`Body::finish`]
/// refuses any field left over.
pub struct Body(Map<String, Value>);

impl Body {
    /// Parses the body; an empty body is an empty object.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::field("(body)", "the body must be a JSON object")),
            Err(e) => Err(ApiError::field("(body)", format!("malformed JSON: {e}"))),
        }
    }

    /// An optional string.
    pub fn opt_str(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.0.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::field(field, "must be a string")),
        }
    }

    /// A required string.
    pub fn str(&mut self, field: &str) -> Result<String, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| ApiError::field(field, "is required"))
    }

    /// An optional id (`[A-Za-z0-9_.@-]`, 1 to 128 bytes).
    pub fn opt_id(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        let value = self.opt_str(field)?;
        if let Some(v) = &value {
            validate_id(field, v).map_err(|m| ApiError::field(field, m))?;
        }
        Ok(value)
    }

    /// A required id.
    pub fn id(&mut self, field: &str) -> Result<String, ApiError> {
        self.opt_id(field)?
            .ok_or_else(|| ApiError::field(field, "is required"))
    }

    /// Optional free text, at most [`TEXT_MAX_LEN`] bytes, without control characters.
    pub fn opt_text(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        let value = self.opt_str(field)?;
        if let Some(v) = &value {
            if v.len() > TEXT_MAX_LEN {
                return Err(ApiError::field(
                    field,
                    format!("must be at most {TEXT_MAX_LEN} bytes"),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(ApiError::field(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        Ok(value)
    }

    /// An optional whole number from 0 to 2^53−1.
    pub fn opt_u64(&mut self, field: &str) -> Result<Option<u64>, ApiError> {
        match self.0.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= MAX_AMOUNT => Ok(Some(v)),
                Some(_) => Err(ApiError::field(
                    field,
                    format!("must be at most {MAX_AMOUNT}"),
                )),
                None => Err(ApiError::field(
                    field,
                    "must be a whole number, not negative",
                )),
            },
            Some(_) => Err(ApiError::field(field, "must be a whole number")),
        }
    }

    /// A required amount from 1 to 2^53−1.
    pub fn amount(&mut self, field: &str) -> Result<u64, ApiError> {
        match self.opt_u64(field)? {
            None => Err(ApiError::field(field, "is required")),
            Some(0) => Err(ApiError::field(field, "must be at least 1")),
            Some(v) => Ok(v),
        }
    }

    /// Refuses fields not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            Some(k) => Err(ApiError::field(k, "unknown field")),
            None => Ok(()),
        }
    }
}
