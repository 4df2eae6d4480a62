//! Hides the credentials in connection strings (Redis and Postgres URLs) before they are
//! printed: in logs, error messages and debug output of the gateway and the sidecar. Pure
//! text work; it must never drop anything but a secret, so the rest of a message still
//! says where the connection went.

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// `text` with every URL password (`scheme://user:PASSWORD@host`) and every `password=`
/// value (URL query parameters, `key=value` connection strings; the name in any case)
/// replaced by [`REDACTED`]. Works on a bare URL and on any message that quotes one.
pub fn redact_secrets(text: &str) -> String {
    redact_password_params(&redact_userinfo(text))
}

/// Characters that end a URL's authority or a parameter's value inside a longer message.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';' | '&' | ')' | ']' | '>' | '`')
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_len = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || (c != '&' && ends_value(c)))
            .unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority.rfind('@').map(|i| authority.split_at(i)) {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

fn redact_password_params(text: &str) -> String {
    const NAME: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find(NAME) {
        let value_start = from + found + NAME.len();
        let value_len = text[value_start..]
            .find(ends_value)
            .unwrap_or(text.len() - value_start);
        out.push_str(&text[copied..value_start]);
        if value_len > 0 {
            out.push_str(REDACTED);
        }
        copied = value_start + value_len;
        from = copied;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_the_password_of_a_url() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            (
                "redis://user:s3cret@redis.internal:6379/0",
                "redis://user:***@redis.internal:6379/0",
            ),
            (
                "rediss://:s3cret@redis.internal/",
                "rediss://:***@redis.internal/",
            ),
            ("redis://:s3cret@host", "redis://:***@host"),
            ("redis://:p@ss@host:1/", "redis://:***@host:1/"),
            ("redis://user@host/", "redis://user@host/"),
            (
                "postgres://ledger:pw@db:5432/ledger?sslmode=require",
                "postgres://ledger:***@db:5432/ledger?sslmode=require",
            ),
            ("not a url", "not a url"),
            ("", ""),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_secrets(url), expected, "{url}");
        }
    }

    #[test]
    fn masks_password_parameters_in_any_case() {
        assert_eq!(
            redact_secrets("redis://host/0?user=a&password=s3cret&protocol=resp3"),
            "redis://host/0?user=a&password=***&protocol=resp3"
        );
        assert_eq!(
            redact_secrets("host=db user=ledger PASSWORD=s3cret dbname=ledger"),
            "host=db user=ledger PASSWORD=*** dbname=ledger"
        );
        assert_eq!(redact_secrets("password="), "password=");
        assert_eq!(
            redact_secrets("postgres://db/l?sslpassword=k1&password=k2"),
            "postgres://db/l?sslpassword=***&password=***"
        );
    }

    #[test]
    fn masks_every_url_in_a_message_and_keeps_the_rest() {
        let message = r#"connecting to Redis at Cluster(["redis://a:one@n1:7000", "redis://b:two@n2:7001/"]) failed: refused"#;
        assert_eq!(
            redact_secrets(message),
            r#"connecting to Redis at Cluster(["redis://a:***@n1:7000", "redis://b:***@n2:7001/"]) failed: refused"#
        );
        assert_eq!(
            redact_secrets("Single(\"redis://u:s3cret@h:1\") and redis://v:x@y"),
            "Single(\"redis://u:***@h:1\") and redis://v:***@y"
        );
    }

    #[test]
    fn never_panics_on_odd_text() {
        for text in [
            "://",
            "://@",
            "a://:@",
            "ü://ä:ö@ß/é?password=ñ",
            "password=password=x",
            "x://\u{0}:\u{0}@",
        ] {
            let redacted = redact_secrets(text);
            assert!(!redacted.contains('ñ'), "{text} -> {redacted}");
        }
    }
}
