//! Logs, metrics and traces of the CLI: logs on stderr (text or JSON) that never tangle with
//! the worker's progress line, the Prometheus endpoint (`--metrics-addr`), and the
//! OpenTelemetry pipeline (`--otel`, configured by the standard `OTEL_*` variables).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Bucket bounds of the duration histograms, in seconds.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of the batch-size histogram.
const UNITS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Set while the worker's progress line is on the terminal: the next log record clears it
/// first (the line is drawn again at the next tick).
pub static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Draws the progress line (`\r`, no newline) and marks it shown.
pub fn draw_progress(line: &str) {
    let mut e = io::stderr().lock();
    let _ = write!(e, "\r\x1b[2K{line}");
    let _ = e.flush();
    PROGRESS_SHOWN.store(true, Ordering::SeqCst);
}

/// Ends the progress line, if one is shown.
pub fn end_progress() {
    if PROGRESS_SHOWN.swap(false, Ordering::SeqCst) {
        let _ = writeln!(io::stderr());
    }
}

/// Stderr for log records: clears a shown progress line before each record.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrRecord;

    fn make_writer(&'a self) -> Self::Writer {
        StderrRecord
    }
}

struct StderrRecord;

impl Write for StderrRecord {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut e = io::stderr().lock();
        if PROGRESS_SHOWN.swap(false, Ordering::SeqCst) {
            e.write_all(b"\r\x1b[2K")?;
        }
        e.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// What to set up.
pub struct Options<'a> {
    /// `text` or `json`.
    pub format: &'a str,
    /// `--log-level`, else `SQUID_MESH_LOG`, else `RUST_LOG`, else `default_level`.
    pub level: Option<&'a str>,
    /// The filter when nothing else names one.
    pub default_level: &'a str,
    /// Export spans (and metrics) over OTLP.
    pub otel: bool,
}

/// Shuts the pipelines down (flushing what they hold) when dropped.
#[derive(Default)]
pub struct Guard {
    #[cfg(feature = "otel")]
    otel: Option<otel::Providers>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.otel.take() {
            p.shutdown();
        }
    }
}

/// Installs the log subscriber (and the OpenTelemetry layer when asked).
///
/// # Errors
///
/// A filter that does not parse, or an OpenTelemetry pipeline that cannot be built.
pub fn init(o: &Options<'_>) -> Result<Guard> {
    let filter = match o.level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| anyhow!("--log-level {level:?}: {e}"))?
        }
        None => EnvFilter::try_from_env("SQUID_MESH_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new(o.default_level)),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(Stderr);
    let logs = if o.format == "json" {
        fmt.json()
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    let registry = tracing_subscriber::registry().with(logs);
    #[allow(unused_mut)]
    let mut guard = Guard::default();
    if o.otel {
        #[cfg(feature = "otel")]
        {
            let (layer, providers) = otel::pipeline()?;
            registry.with(layer).try_init()?;
            guard.otel = Some(providers);
            return Ok(guard);
        }
        #[cfg(not(feature = "otel"))]
        return Err(anyhow!(
            "this squid-mesh was built without OpenTelemetry (cargo feature `otel`)"
        ));
    }
    registry.try_init()?;
    Ok(guard)
}

/// Serves the Prometheus text format at `addr` (any path) from now on, and the OTLP metrics
/// pipeline too when `--otel` set one up.
///
/// # Errors
///
/// When the address cannot be bound or a recorder is already installed.
pub fn serve_metrics(addr: Option<SocketAddr>, guard: &Guard) -> Result<()> {
    #[cfg(feature = "otel")]
    let otel = guard.otel.as_ref().map(otel::Providers::recorder);
    #[cfg(not(feature = "otel"))]
    let otel: Option<metrics_util::layers::Fanout> = {
        let _ = guard;
        None
    };
    let prometheus = match addr {
        Some(addr) => {
            let (recorder, exporter) = metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets(SECONDS)
                .context("histogram buckets")?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        squid_mesh::telemetry::names::COMMIT_BATCH.into(),
                    ),
                    UNITS,
                )
                .context("histogram buckets")?
                .build()
                .with_context(|| format!("serving metrics on {addr}"))?;
            tokio::spawn(async move {
                if let Err(e) = exporter.await {
                    tracing::error!("metrics endpoint: {e:?}");
                }
            });
            Some(recorder)
        }
        None => None,
    };
    let installed = match (prometheus, otel) {
        (None, None) => return Ok(()),
        (Some(p), None) => metrics::set_global_recorder(p).map_err(|e| anyhow!("{e}")),
        (None, Some(o)) => metrics::set_global_recorder(o).map_err(|e| anyhow!("{e}")),
        (Some(p), Some(o)) => metrics::set_global_recorder(
            metrics_util::layers::FanoutBuilder::default()
                .add_recorder(p)
                .add_recorder(o)
                .build(),
        )
        .map_err(|e| anyhow!("{e}")),
    };
    installed.context("installing the metrics recorder")?;
    squid_mesh::telemetry::describe_metrics();
    Ok(())
}

#[cfg(feature = "otel")]
mod otel {
    //! The OTLP pipeline: spans through `tracing-opentelemetry`, metrics through the `metrics`
    //! facade, both over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default,
    //! or `http/json`) to `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`).

    use anyhow::{Result, anyhow};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;

    pub struct Providers {
        traces: SdkTracerProvider,
        metrics: SdkMeterProvider,
        endpoint: String,
    }

    impl Providers {
        /// The OTLP metrics recorder, with the same histogram bounds as Prometheus.
        pub fn recorder(&self) -> metrics_exporter_otel::OpenTelemetryRecorder {
            use opentelemetry::metrics::MeterProvider as _;
            let recorder =
                metrics_exporter_otel::OpenTelemetryRecorder::new(self.metrics.meter("squid-mesh"));
            for m in squid_mesh::telemetry::METRICS {
                if m.kind == squid_mesh::telemetry::MetricKind::Histogram {
                    let bounds = if m.name == squid_mesh::telemetry::names::COMMIT_BATCH {
                        super::UNITS
                    } else {
                        super::SECONDS
                    };
                    recorder.set_histogram_bounds(&metrics::KeyName::from(m.name), bounds.to_vec());
                }
            }
            recorder
        }

        pub fn shutdown(self) {
            let endpoint = &self.endpoint;
            if let Err(e) = self.traces.shutdown() {
                eprintln!(
                    "warning: could not flush spans to the OTLP collector at {endpoint}: {e}"
                );
            }
            if let Err(e) = self.metrics.shutdown() {
                eprintln!(
                    "warning: could not flush metrics to the OTLP collector at {endpoint} (is it running?): {e}"
                );
            }
        }
    }

    /// The collector's endpoint, refused when this build cannot reach it.
    fn endpoint() -> Result<String> {
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ] {
            if let Ok(value) = std::env::var(name)
                && !value.is_empty()
                && !value.starts_with("http://")
            {
                return Err(anyhow!(
                    "{name}={value:?}: this build exports over plain HTTP; give an http:// URL (a local collector can forward over TLS)"
                ));
            }
        }
        if std::env::var("OTEL_EXPORTER_OTLP_COMPRESSION")
            .is_ok_and(|v| !v.is_empty() && v != "none")
        {
            return Err(anyhow!(
                "OTEL_EXPORTER_OTLP_COMPRESSION: this build sends OTLP uncompressed; unset it"
            ));
        }
        Ok(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "http://localhost:4318".into()))
    }

    fn protocol() -> Result<Protocol> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let value = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        match value.as_str() {
            "http/protobuf" => Ok(Protocol::HttpBinary),
            "http/json" => Ok(Protocol::HttpJson),
            "grpc" => Err(anyhow!(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this build exports over HTTP; use http/protobuf (collector port 4318)"
            )),
            other => Err(anyhow!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: expected http/protobuf or http/json"
            )),
        }
    }

    fn resource() -> Resource {
        let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
        let b = Resource::builder();
        if named {
            b.build()
        } else {
            b.with_service_name("squid-mesh").build()
        }
    }

    /// The `tracing` layer exporting the runtime's spans, and the providers to flush at exit.
    pub fn pipeline<S>() -> Result<(impl Layer<S>, Providers)>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let endpoint = endpoint()?;
        let protocol = protocol()?;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|e| anyhow!("OTLP span exporter: {e}"))?;
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource())
            .build();
        let points = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|e| anyhow!("OTLP metric exporter: {e}"))?;
        let metrics = SdkMeterProvider::builder()
            .with_periodic_exporter(points)
            .with_resource(resource())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(traces.tracer("squid-mesh"))
            .with_filter(Targets::new().with_target("squid_mesh", tracing::Level::INFO));
        tracing::debug!("exporting spans and metrics over OTLP to {endpoint}");
        Ok((
            layer,
            Providers {
                traces,
                metrics,
                endpoint,
            },
        ))
    }
}
