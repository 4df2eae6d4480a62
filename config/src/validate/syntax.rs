//! The shape of strings the file holds: identifiers, HTTP tokens, hosts, addresses, URLs
//! and key hashes.
//!
//! Pure functions without reports: the sections turn their answers into errors.

use std::net::Ipv6Addr;

use crate::limits::{MAX_HOST_LEN, MAX_IDENTIFIER_LEN, MAX_URL_LEN};

/// `[A-Za-z0-9_.@-]{1,128}`: safe inside Redis keys, which use `:` `/` `,` `|` and spaces
/// as separators.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"_.@-".contains(&byte))
}

/// An RFC 9110 token (header names, authorization schemes) of at most
/// [`MAX_IDENTIFIER_LEN`] bytes.
pub(super) fn is_http_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER_LEN
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Parses 64 lower-case hex digits; the error says what is wrong without repeating the value.
pub(super) fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!("it has {} characters", hex.chars().count()));
    }
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Err("it has upper-case hex digits".to_owned()),
        _ => Err("it has characters that are not hex digits".to_owned()),
    };
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(hash)
}

/// Checks an absolute `http://` or `https://` URL shown to customers.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!("{url:?} must start with https:// or http://"));
    };
    let problem = if url.len() > MAX_URL_LEN {
        format!("is longer than {MAX_URL_LEN} bytes")
    } else if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains spaces or control characters".to_owned()
    } else if rest.split(['/', '?', '#']).next().is_none_or(str::is_empty) {
        "has no host".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("{url:?} is not a valid URL: it {problem}"))
}

/// A DNS-style host name (or IPv4 address): labels of letters, digits and `-`.
pub(super) fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

/// A route host: a host name, or an IPv6 address in brackets.
pub(super) fn is_route_host(host: &str) -> bool {
    match host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => is_host_name(host),
    }
}

/// Checks `host:port` and returns the host part.
pub(super) fn parse_address(address: &str) -> Result<&str, String> {
    let problem = || {
        format!("{address:?} must be host:port, e.g. \"127.0.0.1:8080\" or \"api.internal:443\"")
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(problem)?;
    let port_ok = !port.is_empty()
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port > 0);
    if !port_ok {
        return Err(format!("{address:?} has an invalid port (1 to 65535)"));
    }
    if is_route_host(host) {
        Ok(host)
    } else {
        Err(problem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_redis_key_rules() {
        for good in ["api", "pro_2026", "cus-1.a@b", &"x".repeat(128)] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "a:b", "a/b", "a,b", "a|b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert_eq!(parse_address("127.0.0.1:8080"), Ok("127.0.0.1"));
        assert_eq!(parse_address("api.internal:443"), Ok("api.internal"));
        assert_eq!(parse_address("[::1]:443"), Ok("[::1]"));
        for bad in [
            "localhost",
            "host:0",
            "host:99999",
            ":80",
            "http://x:80",
            "a b:1",
            "[zz]:1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_needs_64_lower_case_hex_digits() {
        let hex = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
        let hash = parse_sha256(hex).expect("valid");
        assert_eq!(hash[0], 0xc4);
        assert_eq!(hash[31], 0x5c);
        assert!(parse_sha256(&hex[..63]).is_err());
        assert!(parse_sha256(&hex.to_ascii_uppercase()).is_err());
        assert!(parse_sha256(&format!("{}g", &hex[..63])).is_err());
        // A multi-byte character of the right byte length is not hex either.
        assert!(parse_sha256(&format!("{}é", &hex[..62])).is_err());
    }

    #[test]
    fn top_up_urls_are_absolute_http_urls() {
        for good in [
            "https://example.com/billing",
            "http://localhost:3000",
            "https://pay.example.com?from=402#credits",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "https:///billing",
            "https://exa mple.com",
            "https://example.com/\n",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_LEN)),
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
