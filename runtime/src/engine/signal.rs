//! Control commands as signals: one value shape for start, resume, approve, reject, cancel
//! and replay, applied through `Engine::apply_signal`, recorded as a receipt in the same
//! transaction as its effect, and exchanged with other systems as a CloudEvents-shaped JSON
//! envelope.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::journal::RunId;
use crate::redact::RedactionPolicy;
use crate::spec::SpecProblem;
pub use crate::vocab::CommandKind as SignalKind;
use crate::vocab::Timestamp;

/// A control command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Unique id of this signal.
    pub id: String,
    /// The command.
    pub kind: SignalKind,
    /// The run it targets (every kind but the starts).
    pub run_id: Option<RunId>,
    /// Command arguments (see [`SignalKind`]); for manual commands `{actor?, comment?}`.
    pub payload: Map<String, Value>,
    /// Free metadata; secret-looking keys are redacted before they are stored.
    pub metadata: Map<String, Value>,
    /// When the command was issued.
    pub occurred_at: Timestamp,
    /// Repeating a command with the same key returns the first result and writes nothing.
    pub idempotency_key: Option<String>,
}

impl Signal {
    /// A signal of `kind` for `run_id`, issued at `occurred_at`.
    pub fn new(kind: SignalKind, run_id: Option<RunId>, occurred_at: Timestamp) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            run_id,
            payload: Map::new(),
            metadata: Map::new(),
            occurred_at,
            idempotency_key: None,
        }
    }

    /// The CloudEvents-shaped JSON envelope.
    pub fn to_envelope(&self) -> Value {
        let mut e = json!({
            "specversion": "1.0",
            "id": self.id,
            "source": "squid-mesh",
            "type": self.kind.event_type(),
            "time": self.occurred_at.to_rfc3339(),
            "datacontenttype": "application/json",
            "data": self.payload,
        });
        if let Some(run) = self.run_id {
            e["subject"] = json!(run.to_string());
        }
        if let Some(key) = &self.idempotency_key {
            e["squidmeshidempotencykey"] = json!(key);
        }
        if !self.metadata.is_empty() {
            e["squidmeshmetadata"] = Value::Object(self.metadata.clone());
        }
        e
    }

    /// Parses an envelope strictly: required attributes present and well-formed, no unknown
    /// attributes, a known type, a subject for run commands.
    ///
    /// # Errors
    ///
    /// Every problem found, with the attribute as path.
    pub fn from_envelope(envelope: &Value) -> Result<Self, Vec<SpecProblem>> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, message: String| {
            problems.push(SpecProblem {
                path: path.to_owned(),
                code: "invalid_signal".to_owned(),
                message,
            });
        };
        let Some(obj) = envelope.as_object() else {
            problem("", "a signal envelope must be a JSON object".into());
            return Err(problems);
        };
        const KNOWN: [&str; 10] = [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "data",
            "subject",
            "squidmeshidempotencykey",
            "squidmeshmetadata",
        ];
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) {
                problem(k, format!("unknown attribute {k}"));
            }
        }
        let text = |k: &str| obj.get(k).and_then(Value::as_str);
        if text("specversion") != Some("1.0") {
            problem("specversion", "must be \"1.0\"".into());
        }
        let id = text("id").filter(|s| !s.is_empty()).map(str::to_owned);
        if id.is_none() {
            problem("id", "a non-empty id is required".into());
        }
        if text("source").is_none_or(str::is_empty) {
            problem("source", "a non-empty source is required".into());
        }
        if let Some(ct) = obj.get("datacontenttype")
            && ct != "application/json"
        {
            problem(
                "datacontenttype",
                "only application/json is accepted".into(),
            );
        }
        let kind = text("type").and_then(SignalKind::from_event_type);
        if kind.is_none() {
            problem(
                "type",
                format!(
                    "unknown type {:?}; expected dev.squid-mesh.<start|cron_start|resume|approve|reject|cancel|replay>",
                    obj.get("type")
                ),
            );
        }
        let occurred_at = text("time")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| Timestamp(t.timestamp_micros()));
        if occurred_at.is_none() {
            problem("time", "an RFC 3339 time is required".into());
        }
        let run_id = match obj.get("subject") {
            None => None,
            Some(v) => match v.as_str().and_then(|s| s.parse::<RunId>().ok()) {
                Some(id) => Some(id),
                None => {
                    problem("subject", "the subject must be a run id (UUID)".into());
                    None
                }
            },
        };
        if let Some(k) = kind
            && !matches!(k, SignalKind::Start | SignalKind::CronStart)
            && run_id.is_none()
            && obj.get("subject").is_none()
        {
            problem(
                "subject",
                format!("a {} signal needs the run id as subject", k.as_str()),
            );
        }
        let payload = match obj.get("data") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                problem("data", "data must be a JSON object".into());
                Map::new()
            }
        };
        let metadata = match obj.get("squidmeshmetadata") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                problem("squidmeshmetadata", "metadata must be a JSON object".into());
                Map::new()
            }
        };
        let idempotency_key = match obj.get("squidmeshidempotencykey") {
            None => None,
            Some(Value::String(k)) if !k.is_empty() => Some(k.clone()),
            Some(_) => {
                problem(
                    "squidmeshidempotencykey",
                    "must be a non-empty string".into(),
                );
                None
            }
        };
        match (problems.is_empty(), id, kind, occurred_at) {
            (true, Some(id), Some(kind), Some(occurred_at)) => Ok(Self {
                id,
                kind,
                run_id,
                payload,
                metadata,
                occurred_at,
                idempotency_key,
            }),
            _ => Err(problems),
        }
    }
}

/// Who decided and why, for `resume`, `approve` and `reject`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManualAttrs {
    /// The actor: a non-empty string or a non-empty object. Required to approve or reject.
    pub actor: Option<Value>,
    /// A non-empty comment.
    pub comment: Option<String>,
    /// Free metadata (secret-looking keys are redacted).
    pub metadata: Map<String, Value>,
    /// Repeating the command with this key returns the first result.
    pub idempotency_key: Option<String>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl ManualAttrs {
    /// Sets `actor`.
    #[must_use]
    pub fn actor(mut self, value: Value) -> Self {
        self.actor = Some(value);
        self
    }

    /// Sets `metadata`.
    #[must_use]
    pub fn metadata(mut self, value: Map<String, Value>) -> Self {
        self.metadata = value;
        self
    }
}

impl ManualAttrs {
    /// Attributes with an actor.
    pub fn by(actor: impl Into<Value>) -> Self {
        Self {
            actor: Some(actor.into()),
            ..Self::default()
        }
    }

    /// Adds a comment.
    #[must_use]
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

static DEFAULT_POLICY: std::sync::LazyLock<RedactionPolicy> =
    std::sync::LazyLock::new(RedactionPolicy::default);

/// Whether a key names a secret, by the default [`RedactionPolicy`].
pub fn is_secret_key(key: &str) -> bool {
    DEFAULT_POLICY.is_secret_key(key)
}

/// Replaces the value of every secret-looking key, at any depth, with `"[REDACTED]"`, by
/// the default [`RedactionPolicy`].
pub fn redact(value: &Value) -> Value {
    DEFAULT_POLICY.keys(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_case() {
        let v = json!({"Authorization": "Bearer x", "nested": [{"API_KEY": "k", "db-password": "p", "ok": 1}], "claim_token": "t", "note": "fine"});
        assert_eq!(
            redact(&v),
            json!({"Authorization": "[REDACTED]", "nested": [{"API_KEY": "[REDACTED]", "db-password": "[REDACTED]", "ok": 1}], "claim_token": "[REDACTED]", "note": "fine"})
        );
    }

    #[test]
    fn envelopes_round_trip_and_are_parsed_strictly() {
        let mut s = Signal::new(
            SignalKind::Approve,
            Some(RunId::random()),
            Timestamp::from_millis(1_795_608_000_000),
        );
        s.payload.insert("actor".into(), json!("ana"));
        s.idempotency_key = Some("k1".into());
        s.metadata.insert("ticket".into(), json!("OPS-1"));
        assert_eq!(Signal::from_envelope(&s.to_envelope()).expect("parses"), s);

        let mut bad = s.to_envelope();
        bad["type"] = json!("dev.squid-mesh.explode");
        bad["extra"] = json!(1);
        bad.as_object_mut().expect("object").remove("subject");
        let problems = Signal::from_envelope(&bad).expect_err("invalid");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"type") && paths.contains(&"extra"),
            "{paths:?}"
        );
        assert!(Signal::from_envelope(&json!([1])).is_err());
    }
}
