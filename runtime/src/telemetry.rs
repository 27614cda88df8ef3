//! Traces and metrics.
//!
//! **Spans** (through `tracing`): `squid_mesh.start` for each start, `squid_mesh.command` for
//! each control command, and for each step attempt `squid_mesh.step` with two children,
//! `squid_mesh.run` (the action) and `squid_mesh.complete` (recording and applying the
//! outcome). Step spans carry the run id, workflow, step, attempt, queue, action key and
//! digest, and at the end the outcome and error code; an action's log records are events
//! inside its step's span.
//!
//! **Trace context.** Each run stores a W3C `traceparent` when it starts: the caller's
//! current span when OpenTelemetry is on (feature `otel`) and there is one, else a new trace.
//! Every step span of the run, on any worker process, continues that trace; child runs
//! start inside their parent step's span and dynamic work belongs to its run. An action reads
//! its step's `traceparent` with the `trace-parent` host call, to pass on outbound calls.
//!
//! **Metrics** (through the `metrics` facade: whatever recorder the host installs, such as
//! the Prometheus exporter the CLI worker serves with `--metrics-addr`). [`METRICS`] lists
//! them with their meaning; [`describe_metrics`] tells the installed recorder.

use std::fmt;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};

/// A W3C trace context (`traceparent` header value, version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The parent span (8 bytes, not all zero).
    pub span_id: [u8; 8],
    /// Whether the caller sampled the trace.
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace with a random id (sampled).
    pub fn new_root() -> Self {
        let a = uuid::Uuid::new_v4().into_bytes();
        let b = uuid::Uuid::new_v4().into_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&b[..8]);
        Self {
            trace_id: a,
            span_id,
            sampled: true,
        }
    }

    /// The same trace under a new span id (a step or child run continuing it).
    pub fn child(&self) -> Self {
        let b = uuid::Uuid::new_v4().into_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&b[8..]);
        Self { span_id, ..*self }
    }

    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when it is not
    /// one (or names the invalid all-zero trace or span).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" || flags.len() != 2 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// The trace a new run joins: the caller's current span when OpenTelemetry is on and the
/// caller is in one, else `parent` (a child run's parent step) continued, else a new trace.
pub(crate) fn for_new_run(parent: Option<&TraceParent>) -> TraceParent {
    #[cfg(feature = "otel")]
    if let Some(current) = otel::current() {
        return current;
    }
    parent.map_or_else(TraceParent::new_root, TraceParent::child)
}

/// The span of one step attempt, continuing its run's trace.
pub(crate) fn step_span(s: &StepFields<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "squid_mesh.step",
        otel.name = %format_args!("step {}", s.step),
        run_id = %s.run_id,
        workflow = %s.workflow,
        step = %s.step,
        attempt = s.attempt,
        queue = %s.queue,
        trace_id = tracing::field::Empty,
        action = tracing::field::Empty,
        digest = tracing::field::Empty,
        redelivery = s.redelivery,
        outcome = tracing::field::Empty,
        error_code = tracing::field::Empty,
    );
    if let Some(tp) = s.trace {
        span.record("trace_id", tp.trace_id_hex());
        #[cfg(feature = "otel")]
        otel::set_parent(&span, tp);
    }
    span
}

/// What a step span is named by.
pub(crate) struct StepFields<'a> {
    pub run_id: &'a str,
    pub workflow: &'a str,
    pub step: &'a str,
    pub attempt: i64,
    pub queue: &'a str,
    pub redelivery: bool,
    pub trace: Option<&'a TraceParent>,
}

/// The trace context an action (or a child run it starts) continues: the current step span
/// when OpenTelemetry is on, else the run's trace under a new span id.
pub(crate) fn current_or(run: Option<&TraceParent>) -> Option<TraceParent> {
    #[cfg(feature = "otel")]
    if let Some(current) = otel::current() {
        return Some(current);
    }
    run.map(TraceParent::child)
}

/// The kinds of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Set to the value sampled last.
    Gauge,
    /// A distribution of observed values.
    Histogram,
}

/// One metric: its name, kind, unit, labels and meaning.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    /// The name, as exported.
    pub name: &'static str,
    /// What kind of metric it is.
    pub kind: MetricKind,
    /// Labels it carries.
    pub labels: &'static [&'static str],
    /// What it counts or measures.
    pub help: &'static str,
}

macro_rules! metric_names {
    ($($id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        /// Metric names.
        pub mod names {
            $(#[doc = $help] pub const $id: &str = $name;)*
        }
        /// Every metric the runtime records.
        pub const METRICS: &[MetricInfo] = &[
            $(MetricInfo { name: $name, kind: MetricKind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

metric_names! {
    STEPS_STARTED = "squid_mesh_steps_started_total", Counter, ["workflow", "step", "queue"],
        "Step attempts whose action started (redeliveries included).";
    STEPS_FINISHED = "squid_mesh_steps_finished_total", Counter, ["workflow", "step", "queue", "outcome", "error_code"],
        "Step attempts whose outcome was recorded: outcome succeeded, failed (with the error code) or suspended (a pause or approval gate).";
    STEP_DURATION = "squid_mesh_step_duration_seconds", Histogram, ["workflow", "step", "outcome"],
        "From the claim of a step attempt to the commit of its outcome.";
    ACTION_DURATION = "squid_mesh_action_duration_seconds", Histogram, ["action"],
        "The action's own run time (instantiate, call, output).";
    QUEUE_DELAY = "squid_mesh_step_queue_delay_seconds", Histogram, ["queue"],
        "From the time a step attempt became due to its first claim (redeliveries are not counted).";
    START_DELAY = "squid_mesh_step_start_delay_seconds", Histogram, ["queue"],
        "From the claim of a step attempt to the start of its action (catalog check, definition, compiled component).";
    REDELIVERIES = "squid_mesh_redeliveries_total", Counter, ["queue"],
        "Claims that took over an expired lease (its worker died or stalled); give-backs and released steps are not counted.";
    LEASE_EXPIRATIONS = "squid_mesh_lease_expirations_total", Counter, [],
        "Expired leases found and put back in the order their attempts became visible.";
    RETRIES = "squid_mesh_retries_total", Counter, ["workflow", "step"],
        "Retry attempts started (attempt 2 and later, first delivery).";
    LIMIT_HITS = "squid_mesh_action_limit_hits_total", Counter, ["action", "kind"],
        "Actions stopped by a sandbox limit: kind timeout, memory, fuel, stack or output_size.";
    COMMIT_BATCH = "squid_mesh_commit_batch_units", Histogram, ["backend"],
        "Claims and completions written by one group-commit transaction.";
    COMMIT_DURATION = "squid_mesh_commit_duration_seconds", Histogram, ["backend"],
        "Duration of one group-commit transaction, begin to commit.";
    FENCED_WRITES = "squid_mesh_fenced_writes_total", Counter, ["kind", "result"],
        "Postgres writes tried as one statement outside any transaction: kind completion (fenced by the run and the claim the worker holds) or start (fenced by the new run's insert); result written, or missed (the run or the claim had changed, the run existed, or the statement failed: it was then written in a transaction).";
    QUEUE_DEPTH = "squid_mesh_queue_depth", Gauge, ["queue"],
        "Attempts due now and not claimed (sampled by worker pools).";
    QUEUE_OLDEST = "squid_mesh_queue_oldest_due_age_seconds", Gauge, ["queue"],
        "Age of the oldest due attempt of the queue (sampled by worker pools).";
    RUNS = "squid_mesh_runs", Gauge, ["status"],
        "Runs by status (sampled by worker pools).";
}

/// Describes every metric (help text and unit) to the installed recorder; call it after
/// installing one.
pub fn describe_metrics() {
    for m in METRICS {
        let unit = if m.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else {
            None
        };
        match (m.kind, unit) {
            (MetricKind::Counter, _) => describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(u)) => describe_gauge!(m.name, u, m.help),
            (MetricKind::Gauge, None) => describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => describe_histogram!(m.name, m.help),
        }
    }
}

/// A sandbox limit an outcome's error kind reports, as the `kind` label.
pub(crate) fn limit_kind(kind: crate::vocab::StepErrorKind) -> Option<&'static str> {
    use crate::vocab::StepErrorKind as K;
    match kind {
        K::Timeout => Some("timeout"),
        K::MemoryLimit => Some("memory"),
        K::FuelExhausted => Some("fuel"),
        K::StackOverflow => Some("stack"),
        K::OutputTooLarge => Some("output_size"),
        _ => None,
    }
}

/// Records a group-commit transaction.
pub(crate) fn commit(backend: &'static str, units: usize, seconds: f64) {
    histogram!(names::COMMIT_BATCH, "backend" => backend).record(units as f64);
    histogram!(names::COMMIT_DURATION, "backend" => backend).record(seconds);
}

/// Records expired leases put back in order.
pub(crate) fn lease_expirations(n: u64) {
    counter!(names::LEASE_EXPIRATIONS).increment(n);
}

#[cfg(feature = "otel")]
pub mod otel {
    //! OpenTelemetry (feature `otel`): trace context from and to `tracing` spans, and an
    //! OTLP pipeline configured by the standard `OTEL_*` environment variables.

    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
    use opentelemetry::{Context, SpanId, TraceId};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    /// The current span's context, when it is a valid OpenTelemetry one.
    pub(crate) fn current() -> Option<TraceParent> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
        })
    }

    /// Makes `span` a child of the remote span `tp` names.
    pub(crate) fn set_parent(span: &tracing::Span, tp: &TraceParent) {
        let sc = SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.span_id),
            if tp.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }
}
