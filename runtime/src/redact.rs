//! Redaction of secrets in what the runtime stores and shows: the values of secret-looking
//! keys (`password`, `api_key`, `Authorization`, `*_token`, ...) at any depth, and secrets
//! written into text (`token=...`, `Authorization: Bearer ...`, `"password": "..."`).
//!
//! Command metadata (by key: it is data) and step errors (message and details, by key and in
//! text) pass through one [`RedactionPolicy`] before they are written, so no secret an
//! action put in an error lands in the journal, the attempts, the run's error or any view of
//! them. The policy is the
//! engine's (`EngineBuilder::redaction`): more secret words can be added, or it can be
//! turned off for a host that stores no secrets. Pure: no IO.

use regex::Regex;
use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Words that make a key secret (compared case-insensitively, `-` read as `_`): the key is
/// the word, or starts or ends with it as a `_`-separated part; any key containing
/// `password` or `secret` is secret too.
pub const SECRET_WORDS: [&str; 10] = [
    "token",
    "password",
    "authorization",
    "api_key",
    "secret",
    "private_key",
    "credential",
    "refresh_token",
    "access_token",
    "claim_token",
];

/// Secret-looking parts of keys that are not in [`SECRET_WORDS`] but common in the wild:
/// run-together and short forms.
const COMPACT_WORDS: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "apikey",
    "privatekey",
    "accesstoken",
    "refreshtoken",
    "authtoken",
    "clientsecret",
    "credential",
    "authorization",
    "cookie",
];

/// Which keys and which text count as secret.
#[derive(Debug, Clone)]
pub struct RedactionPolicy {
    enabled: bool,
    /// Extra words added by the host, in snake case.
    extra: Vec<String>,
    /// `Bearer xyz`, `Basic xyz` with a credential-shaped value.
    scheme: Regex,
    /// `key=value`, `"key": "value"`, `Header-Name: value` for secret keys.
    assignment: Regex,
    /// `scheme://user:password@host`.
    url: Regex,
}

impl Default for RedactionPolicy {
    fn default() -> Self {
        Self::with_words(Vec::new(), true)
    }
}

/// `key` in snake case: camelCase split, `-` and spaces read as `_`, lowercased.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        match c {
            '-' | ' ' | '.' => out.push('_'),
            _ => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

impl RedactionPolicy {
    fn with_words(extra: Vec<String>, enabled: bool) -> Self {
        // The secret word must end the key (`db_password`, `x-api-key`, `accessToken`), so
        // `token_count` or `max_tokens` are not secrets.
        let words = SECRET_WORDS
            .iter()
            .map(|w| (*w).to_owned())
            .chain(extra.iter().cloned())
            .map(|w| regex::escape(&w).replace('_', "[_-]?"))
            .chain(COMPACT_WORDS.iter().map(|w| (*w).to_owned()))
            .chain(["pwd".to_owned()])
            .collect::<Vec<_>>()
            .join("|");
        let key = format!(r"(?:[a-z0-9]+[_-])*(?:{words})");
        // `=` after any such key; `:` only after a quoted key (JSON) or a header name, so
        // prose such as "refresh token: connection refused" stays as it is.
        let assignment = Regex::new(&format!(
            r#"(?i)((?-u:\b)(?:{key})\s*=\s*|\\?["'](?:{key})\\?["']\s*:\s*|(?-u:\b)(?:authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token)\s*:\s*)(\\?"[^"\\]*(?:\\"|"|$)|'[^']*'?|[^\s,;&"'}}\]]+)"#
        ))
        .expect("the assignment pattern is built from escaped words");
        let scheme = Regex::new(r"(?i)(?-u:\b)(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
            .expect("the scheme pattern is fixed");
        let url = Regex::new(r"([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@")
            .expect("the url pattern is fixed");
        Self {
            enabled,
            extra,
            scheme,
            assignment,
            url,
        }
    }

    /// Redacts nothing (for a host whose actions never report secrets).
    pub fn off() -> Self {
        Self::with_words(Vec::new(), false)
    }

    /// Also treats keys ending in `word` (and text assigning to them) as secret. An empty
    /// word is ignored.
    #[must_use]
    pub fn with_secret_word(self, word: &str) -> Self {
        let word = snake(word.trim());
        if word.is_empty() {
            return self;
        }
        let mut extra = self.extra;
        extra.push(word);
        Self::with_words(extra, self.enabled)
    }

    /// Whether a key names a secret: one of [`SECRET_WORDS`] (or the host's words) as a
    /// `_`-separated part at its start or end, whatever the case or separator
    /// (`apiKey`, `X-Api-Key`, `db_password`), or a run-together form (`apikey`, `passwd`).
    pub fn is_secret_key(&self, key: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let k = snake(key);
        let compact = k.replace('_', "");
        let parts: Vec<&str> = k.split('_').filter(|p| !p.is_empty()).collect();
        SECRET_WORDS
            .iter()
            .map(|w| (*w).to_owned())
            .chain(self.extra.iter().cloned())
            .any(|w| k == w || k.ends_with(&format!("_{w}")) || k.starts_with(&format!("{w}_")))
            || COMPACT_WORDS.iter().any(|w| compact.contains(w))
            || parts.iter().any(|p| {
                matches!(*p, "pwd" | "token") && parts.len() > 1 && parts.last() == Some(p)
            })
    }

    /// `text` with every secret written into it replaced by [`REDACTED`]: values assigned
    /// to secret keys (`token=...`, `"password": "..."`, `Authorization: ...`), credentials
    /// after `Bearer` or `Basic`, and passwords in URLs.
    pub fn text(&self, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let text = self.url.replace_all(text, format!("${{1}}{REDACTED}@"));
        let text = self
            .scheme
            .replace_all(&text, format!("${{1}}${{2}}{REDACTED}"));
        self.assignment
            .replace_all(&text, format!("${{1}}{REDACTED}"))
            .into_owned()
    }

    /// `value` with the value of every secret-looking key, at any depth, replaced by
    /// [`REDACTED`] (strings are left as they are: use for data such as command metadata).
    pub fn keys(&self, value: &Value) -> Value {
        self.walk(value, false)
    }

    /// [`Self::keys`], and secrets written into strings redacted as in [`Self::text`]: for
    /// what describes a failure (a step error's details).
    pub fn value(&self, value: &Value) -> Value {
        self.walk(value, true)
    }

    fn walk(&self, value: &Value, texts: bool) -> Value {
        if !self.enabled {
            return value.clone();
        }
        match value {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let v = if self.is_secret_key(k) {
                            Value::String(REDACTED.into())
                        } else {
                            self.walk(v, texts)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.walk(v, texts)).collect())
            }
            Value::String(s) if texts => Value::String(self.text(s)),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_in_text_are_redacted() {
        let p = RedactionPolicy::default();
        for (given, expected) in [
            (
                "call failed: token=abc123 user=ana",
                "call failed: token=[REDACTED] user=ana",
            ),
            (
                "upstream said 401 with Authorization: Bearer eyJhbGciOi.xyz",
                "upstream said 401 with Authorization: [REDACTED] [REDACTED]",
            ),
            (
                r#"body {"password": "hunter2", "apiKey":"k-1", "user": "ana"}"#,
                r#"body {"password": [REDACTED], "apiKey":[REDACTED], "user": "ana"}"#,
            ),
            (
                r#"Debug: {\"password\":\"x\"}"#,
                r#"Debug: {\"password\":[REDACTED]}"#,
            ),
            ("db_password=s3cret&host=x", "db_password=[REDACTED]&host=x"),
            (
                "GET /cb?access_token=t0k3n&page=2",
                "GET /cb?access_token=[REDACTED]&page=2",
            ),
            (
                "x-api-key: 12345 rejected",
                "x-api-key: [REDACTED] rejected",
            ),
            (
                "Cookie: sid=abc; theme=dark",
                "Cookie: [REDACTED]; theme=dark",
            ),
            (
                "cannot reach postgres://app:hunter2@db:5432/app",
                "cannot reach postgres://app:[REDACTED]@db:5432/app",
            ),
            (
                "Authorization: Basic YWxhZGRpbjpvcGVu",
                "Authorization: [REDACTED] [REDACTED]",
            ),
            // Prose and ordinary data stay as they are.
            (
                "refresh token: connection refused",
                "refresh token: connection refused",
            ),
            ("invalid token format", "invalid token format"),
            ("basic auth failed", "basic auth failed"),
            (
                "max_tokens=100 token_count=3",
                "max_tokens=100 token_count=3",
            ),
            ("secretary: Ana", "secretary: Ana"),
            ("nothing to hide here", "nothing to hide here"),
        ] {
            assert_eq!(p.text(given), expected, "{given}");
        }
        assert_eq!(RedactionPolicy::off().text("token=abc"), "token=abc");
    }

    #[test]
    fn secret_keys_and_strings_in_values_are_redacted() {
        let p = RedactionPolicy::default()
            .with_secret_word("pin")
            .with_secret_word("  ");
        let v = json!({"Authorization": "Bearer x", "nested": [{"API_KEY": "k", "db-password": "p", "ok": 1}], "note": "retry with token=abc", "card_pin": "1234", "pinned": true, "apiKey": "k2", "accessToken": "t", "Cookie": "c", "passwd": "p", "max_tokens": 100, "plan": "basic monthly"});
        assert_eq!(
            p.value(&v),
            json!({"Authorization": "[REDACTED]", "nested": [{"API_KEY": "[REDACTED]", "db-password": "[REDACTED]", "ok": 1}], "note": "retry with token=[REDACTED]", "card_pin": "[REDACTED]", "pinned": true, "apiKey": "[REDACTED]", "accessToken": "[REDACTED]", "Cookie": "[REDACTED]", "passwd": "[REDACTED]", "max_tokens": 100, "plan": "basic monthly"})
        );
        // Data (command metadata) is redacted by key only: strings are kept.
        assert_eq!(
            p.keys(&json!({"note": "token=abc", "password": "x"})),
            json!({"note": "token=abc", "password": "[REDACTED]"})
        );
        assert!(!p.text("shipping: today, mapping=1").contains(REDACTED));
    }
}
