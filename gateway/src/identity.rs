//! Who is calling: the API key in the request, hashed with SHA-256 for lookup, or a
//! customer id set by a trusted auth layer in front. Pure functions; the lookups that need
//! the store live in [`crate::store_client`].

use creditgate_config::Identity;
use creditgate_protocol::keys::validate_id;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

/// The SHA-256 of an API key's plaintext, the only form in which keys are stored.
pub fn api_key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What the request says about its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'r> {
    /// A customer id from the trusted auth-layer header.
    TrustedCustomer(&'r str),
    /// An API key to look up.
    ApiKey(&'r str),
    /// Nothing usable; the message says what is missing, naming the header.
    Missing(String),
}

fn header<'r>(req: &'r RequestHeader, name: &str) -> Option<&'r str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the credential from the request as `[identity]` says.
pub fn credential<'r>(identity: &Identity, req: &'r RequestHeader) -> Credential<'r> {
    if let Some(trusted) = &identity.trusted_customer_header
        && let Some(customer) = header(req, trusted)
    {
        return match validate_id("customer", customer) {
            Ok(()) => Credential::TrustedCustomer(customer),
            Err(message) => Credential::Missing(format!("header {trusted}: {message}")),
        };
    }
    let Some(value) = header(req, &identity.header) else {
        return Credential::Missing(format!("missing API key: no {} header", identity.header));
    };
    match identity.key_in(value) {
        Some(key) => Credential::ApiKey(key),
        None => Credential::Missing(match &identity.scheme {
            Some(scheme) => format!(
                "malformed {} header: expected \"{scheme} <api key>\"",
                identity.header
            ),
            None => format!("empty {} header", identity.header),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditgate_config::PricingConfig;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/search", None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        req
    }

    #[test]
    fn reads_a_bearer_key_and_names_the_header_when_missing() {
        let config = PricingConfig::from_toml_str("", "p.toml").unwrap();
        let id = config.identity();
        let req = request(&[("Authorization", "Bearer demo-key")]);
        assert_eq!(credential(id, &req), Credential::ApiKey("demo-key"));
        assert_eq!(
            credential(id, &request(&[])),
            Credential::Missing("missing API key: no authorization header".into())
        );
        assert_eq!(
            credential(id, &request(&[("authorization", "Basic abc")])),
            Credential::Missing(
                "malformed authorization header: expected \"Bearer <api key>\"".into()
            )
        );
    }

    #[test]
    fn a_customer_header_is_trusted_only_when_configured() {
        let plain = PricingConfig::from_toml_str("", "p.toml").unwrap();
        let req = request(&[("x-authenticated-customer", "acme")]);
        assert!(matches!(
            credential(plain.identity(), &req),
            Credential::Missing(_)
        ));
        let trusting = PricingConfig::from_toml_str(
            "[identity]\ntrusted_customer_header = \"x-authenticated-customer\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            credential(trusting.identity(), &req),
            Credential::TrustedCustomer("acme")
        );
    }

    #[test]
    fn hashes_like_sha256sum() {
        // printf %s demo-key | sha256sum
        assert_eq!(
            hex::encode(api_key_hash("demo-key")),
            "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
        );
    }
}
