//! `[identity]` and `[[api_keys]]`: how the gateway tells customers apart, and which
//! hashed keys name which customer.
//!
//! Key values are never echoed in errors: a mistaken entry may be the plaintext key.

use std::collections::HashMap;

use toml::Spanned;

use super::Checker;
use super::syntax::{is_http_token, parse_sha256};
use crate::limits::{
    DEFAULT_CUSTOMER_HEADER, DEFAULT_IDENTITY_HEADER, DEFAULT_IDENTITY_SCHEME,
    DEFAULT_STRIP_HEADERS, MAX_API_KEY_NAME_LEN,
};
use crate::model::{ApiKey, Identity};
use crate::schema::{ApiKeyFile, IdentityFile};

impl Checker<'_> {
    pub(super) fn identity(&mut self, identity: IdentityFile) -> Identity {
        let IdentityFile {
            header,
            scheme,
            trusted_customer_header,
            customer_header,
            strip_headers,
        } = identity;
        let header_span = header.as_ref().map(Spanned::span);
        let header = match header {
            None => DEFAULT_IDENTITY_HEADER.to_owned(),
            Some(header) => self
                .http_header_name("identity.header", &header)
                .unwrap_or_default(),
        };
        let scheme = self.identity_scheme(scheme, &header);
        let trusted_span = trusted_customer_header.as_ref().map(Spanned::span);
        let trusted_customer_header = trusted_customer_header.and_then(|trusted| {
            self.http_header_name("identity.trusted_customer_header", &trusted)
        });
        let customer_span = customer_header.as_ref().map(Spanned::span);
        let customer_header = match customer_header {
            None => DEFAULT_CUSTOMER_HEADER.to_owned(),
            Some(customer_header) => self
                .http_header_name("identity.customer_header", &customer_header)
                .unwrap_or_default(),
        };
        if !header.is_empty() && customer_header == header {
            self.report(
                "identity.customer_header",
                customer_span.or(header_span),
                format!(
                    "{customer_header:?} is also identity.header: the gateway sets this header \
                     towards the upstream and would replace the API key with the customer id"
                ),
            );
        }
        if let Some(trusted) = &trusted_customer_header
            && !customer_header.is_empty()
            && *trusted == customer_header
        {
            self.report(
                "identity.trusted_customer_header",
                trusted_span,
                format!(
                    "{trusted:?} is also identity.customer_header, which the gateway strips \
                     from client requests and sets itself; let the auth layer in front use \
                     another header"
                ),
            );
        }
        let strip_headers = self.strip_headers(strip_headers, &customer_header);
        Identity {
            header,
            scheme,
            trusted_customer_header,
            customer_header,
            strip_headers,
        }
    }

    /// The scheme before the key: `Bearer` by default for the default header, none for
    /// other headers or when written as `""`.
    fn identity_scheme(&mut self, scheme: Option<Spanned<String>>, header: &str) -> Option<String> {
        match scheme {
            None => (header == DEFAULT_IDENTITY_HEADER).then(|| DEFAULT_IDENTITY_SCHEME.to_owned()),
            Some(scheme) if scheme.get_ref().is_empty() => None,
            Some(scheme) if is_http_token(scheme.get_ref()) => Some(scheme.into_inner()),
            Some(scheme) => {
                self.report(
                    "identity.scheme",
                    Some(scheme.span()),
                    format!(
                        "{:?} is not a valid scheme: write the word before the key without \
                         spaces (e.g. \"Bearer\"), or \"\" when the header carries the key alone",
                        scheme.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// The headers stripped from client requests, each once, always including the customer
    /// header the gateway sets itself.
    fn strip_headers(
        &mut self,
        strip_headers: Option<Vec<Spanned<String>>>,
        customer_header: &str,
    ) -> Vec<String> {
        let mut strip: Vec<String> = Vec::new();
        match strip_headers {
            None => strip.extend(DEFAULT_STRIP_HEADERS.iter().map(|name| (*name).to_owned())),
            Some(names) => {
                for (index, written) in names.iter().enumerate() {
                    let field = format!("identity.strip_headers[{index}]");
                    let Some(name) = self.http_header_name(&field, written) else {
                        continue;
                    };
                    if let Some(first) = strip.iter().position(|seen| *seen == name) {
                        self.report(
                            field,
                            Some(written.span()),
                            format!("{name:?} is already listed at strip_headers[{first}]"),
                        );
                    }
                    strip.push(name);
                }
            }
        }
        if !strip.iter().any(|name| name == customer_header) {
            strip.push(customer_header.to_owned());
        }
        strip
    }

    pub(super) fn api_keys(&mut self, keys: Vec<Spanned<ApiKeyFile>>) -> HashMap<[u8; 32], ApiKey> {
        let mut valid = HashMap::new();
        // hash -> (index, line) of its first appearance
        let mut seen: HashMap<[u8; 32], (usize, u32)> = HashMap::new();
        for (index, api_key) in keys.into_iter().enumerate() {
            let path = format!("api_keys[{index}]");
            let ApiKeyFile {
                customer,
                sha256,
                name,
            } = api_key.into_inner();
            let mut ok = self.identifier(&format!("{path}.customer"), &customer, "customer id");
            // The value is never echoed: a mistaken entry may be the plaintext key.
            let hash = match parse_sha256(sha256.get_ref()) {
                Ok(hash) => Some(hash),
                Err(problem) => {
                    self.report(
                        format!("{path}.sha256"),
                        Some(sha256.span()),
                        format!(
                            "must be the SHA-256 of the key as 64 lower-case hex digits \
                             (printf %s 'KEY' | sha256sum), but {problem}; never write the key \
                             itself"
                        ),
                    );
                    None
                }
            };
            let name = name.and_then(|name| {
                let text = name.get_ref();
                if text.trim().is_empty()
                    || text.len() > MAX_API_KEY_NAME_LEN
                    || text.contains(char::is_control)
                {
                    ok = false;
                    self.report(
                        format!("{path}.name"),
                        Some(name.span()),
                        format!(
                            "must be 1 to {MAX_API_KEY_NAME_LEN} bytes of printable text, got \
                             {text:?}"
                        ),
                    );
                    None
                } else {
                    Some(name.into_inner())
                }
            });
            let Some(hash) = hash else { continue };
            let line = self.line_of(sha256.span().start);
            if let Some(&(first, first_line)) = seen.get(&hash) {
                self.report(
                    format!("{path}.sha256"),
                    Some(sha256.span()),
                    format!(
                        "the same hash as api_keys[{first}] (line {first_line}): one key can \
                         identify only one customer"
                    ),
                );
                continue;
            }
            seen.insert(hash, (index, line));
            if ok {
                let api_key = ApiKey {
                    customer: customer.into_inner(),
                    name,
                };
                valid.insert(hash, api_key);
            }
        }
        valid
    }
}
