//! Redaction of secrets in what the runtime stores and shows: the values of secret-looking
//! keys (`password`, `api_key`, `Authorization`, `*_token`, ...) at any depth, and secrets
//! written into text (`token=...`, `Authorization: Bearer ...`, `"password": "..."`).
//!
//! Command metadata and step errors (message and details) pass through one
//! [`RedactionPolicy`] before they are written, so no secret an action put in an error lands
//! in the journal, the attempts, the run's error or any view of them. The policy is the
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

/// Which keys and which text count as secret.
#[derive(Debug, Clone)]
pub struct RedactionPolicy {
    enabled: bool,
    words: Vec<String>,
    /// `Bearer xyz`, `Basic xyz`.
    scheme: Regex,
    /// `key=value`, `key: value`, `"key": "value"` for secret-looking keys.
    assignment: Regex,
}

impl Default for RedactionPolicy {
    fn default() -> Self {
        Self::with_words(SECRET_WORDS.iter().map(|w| (*w).to_owned()).collect(), true)
    }
}

impl RedactionPolicy {
    fn with_words(words: Vec<String>, enabled: bool) -> Self {
        let alternatives = words
            .iter()
            .map(|w| regex::escape(w).replace('_', "[_-]?"))
            .chain(["passw(?:or)?d".to_owned(), "apikey".to_owned()])
            .collect::<Vec<_>>()
            .join("|");
        let assignment = Regex::new(&format!(
            r#"(?i)(["']?[a-z0-9_-]*(?:{alternatives})[a-z0-9_-]*["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&"'}}\]]+)"#
        ))
        .expect("the assignment pattern is built from escaped words");
        let scheme = Regex::new(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{4,}")
            .expect("the scheme pattern is fixed");
        Self {
            enabled,
            words,
            scheme,
            assignment,
        }
    }

    /// Redacts nothing (for a host whose actions never report secrets).
    pub fn off() -> Self {
        Self::with_words(Vec::new(), false)
    }

    /// Also treats keys made of `word` (and text assigning to them) as secret.
    #[must_use]
    pub fn with_secret_word(self, word: &str) -> Self {
        let mut words = self.words;
        words.push(word.to_ascii_lowercase().replace('-', "_"));
        Self::with_words(words, self.enabled)
    }

    /// Whether a key names a secret.
    pub fn is_secret_key(&self, key: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let k = key.to_ascii_lowercase().replace('-', "_");
        self.words
            .iter()
            .any(|w| k == *w || k.ends_with(&format!("_{w}")) || k.starts_with(&format!("{w}_")))
            || k.contains("password")
            || k.contains("secret")
    }

    /// `text` with every secret written into it replaced by [`REDACTED`].
    pub fn text(&self, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let once = self
            .scheme
            .replace_all(text, format!("${{1}}${{2}}{REDACTED}"));
        self.assignment
            .replace_all(&once, format!("${{1}}{REDACTED}"))
            .into_owned()
    }

    /// `value` with the value of every secret-looking key, at any depth, replaced by
    /// [`REDACTED`], and secrets written into its strings redacted as in [`Self::text`].
    pub fn value(&self, value: &Value) -> Value {
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
                            self.value(v)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::String(s) => Value::String(self.text(s)),
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
                r#"body {"password": "hunter2", "api_key": "k-1", "user": "ana"}"#,
                r#"body {"password": [REDACTED], "api_key": [REDACTED], "user": "ana"}"#,
            ),
            ("db_password=s3cret&host=x", "db_password=[REDACTED]&host=x"),
            ("nothing to hide here", "nothing to hide here"),
        ] {
            assert_eq!(p.text(given), expected, "{given}");
        }
        assert_eq!(RedactionPolicy::off().text("token=abc"), "token=abc");
    }

    #[test]
    fn secret_keys_and_strings_in_values_are_redacted() {
        let p = RedactionPolicy::default().with_secret_word("pin");
        let v = json!({"Authorization": "Bearer x", "nested": [{"API_KEY": "k", "db-password": "p", "ok": 1}], "note": "retry with token=abc", "card_pin": "1234", "pinned": true});
        assert_eq!(
            p.value(&v),
            json!({"Authorization": "[REDACTED]", "nested": [{"API_KEY": "[REDACTED]", "db-password": "[REDACTED]", "ok": 1}], "note": "retry with token=[REDACTED]", "card_pin": "[REDACTED]", "pinned": true})
        );
    }
}
