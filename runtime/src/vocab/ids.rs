//! Identifiers: runs, action keys and component digests.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Identifier of a run: a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub uuid::Uuid);

impl RunId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// A deterministic id derived from `parts` (SHA-256 over length-prefixed parts, formatted
    /// as a version-5-style UUID), so the same idempotency key always names the same run.
    pub fn derived(parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update(format!("{}:{p}|", p.len()).as_bytes());
        }
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x50;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A string that is not a run id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed run id {0:?}: expected a UUID")]
pub struct InvalidRunId(pub String);

impl FromStr for RunId {
    type Err = InvalidRunId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| InvalidRunId(s.to_owned()))
    }
}

/// The key an action is registered and referenced by, for example `orders.validate`.
///
/// 1 to 128 characters from `A-Z a-z 0-9 . _ - : /`, starting with a letter or digit.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(extend("pattern" = "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"))]
pub struct ActionKey(String);

impl ActionKey {
    /// Validates and wraps an action key.
    ///
    /// # Errors
    ///
    /// [`InvalidActionKey`] when the key is empty, too long or has a character outside the
    /// allowed set.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidActionKey> {
        let key = key.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "._-:/".contains(c);
        let starts_well = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if key.len() > 128 || !starts_well || !key.chars().all(valid_char) {
            return Err(InvalidActionKey { key });
        }
        Ok(Self(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ActionKey {
    type Error = InvalidActionKey;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ActionKey> for String {
    fn from(key: ActionKey) -> Self {
        key.0
    }
}

impl FromStr for ActionKey {
    type Err = InvalidActionKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SHA-256 digest pinning a component's exact bytes; written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest([u8; 32]);

impl Digest {
    /// Computes the digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest as 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    /// Parses `sha256:<hex>` (the prefix may be omitted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        match hex::decode_to_slice(hex_part, &mut out) {
            Ok(()) => Ok(Self(out)),
            Err(_) => Err(InvalidDigest {
                digest: s.to_owned(),
            }),
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = InvalidDigest;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.to_string()
    }
}

/// A string that is not a valid action key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid action key {key:?}: use 1-128 characters from A-Z a-z 0-9 . _ - : /, starting with a letter or digit"
)]
pub struct InvalidActionKey {
    /// The rejected key.
    pub key: String,
}

impl InvalidActionKey {
    /// The stable error code, `invalid_action_key`.
    pub fn code(&self) -> &'static str {
        "invalid_action_key"
    }
}

/// A string that is not a `sha256:<64 hex digits>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {digest:?}: expected sha256:<64 hex digits>")]
pub struct InvalidDigest {
    /// The rejected text.
    pub digest: String,
}

impl InvalidDigest {
    /// The stable error code, `invalid_digest`.
    pub fn code(&self) -> &'static str {
        "invalid_digest"
    }
}
