//! `telemetry`: durable steps/s with tracing and metrics on against off, in one process and
//! one run of the program. "On" is what `squid-mesh worker --otel --metrics-addr` installs:
//! the OpenTelemetry layer exporting every span over OTLP/HTTP (batched) to a local collector
//! that accepts and drops everything, and the Prometheus recorder fanned out with the OTLP
//! metrics recorder. A switch turns both off between rounds; rounds alternate off and on so
//! the machine's drift hits both alike.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use opentelemetry::trace::TracerProvider as _;
use squid_mesh::actions::ActionRegistry;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::{Backend, Figure, drain_runs, drop_schema, echo_action, pg_backend};

/// Whether telemetry records (spans and metrics) right now.
static ON: AtomicBool = AtomicBool::new(false);

/// A recorder that hands out no-op handles while [`ON`] is off.
struct Switch<R>(R);

impl<R: Recorder> Recorder for Switch<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if ON.load(Ordering::Relaxed) {
            self.0.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if ON.load(Ordering::Relaxed) {
            self.0.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if ON.load(Ordering::Relaxed) {
            self.0.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// An OTLP/HTTP endpoint that reads each request and answers 200 with an empty body.
fn no_op_collector() -> Result<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(read) = stream.try_clone() else { return };
                let mut reader = BufReader::new(read);
                let mut stream = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err()
                        || stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Installs the switched pipelines; returns the providers to flush at the end.
fn install() -> Result<(
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::metrics::SdkMeterProvider,
)> {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let port = no_op_collector()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()?;
    let traces = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .build();
    let points = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .build()?;
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(points)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(traces.tracer("bench"))
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            ON.load(Ordering::Relaxed) && m.target().starts_with("squid_mesh")
        }));
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .context("installing the tracing subscriber")?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let otel = metrics_exporter_otel::OpenTelemetryRecorder::new(meters.meter("bench"));
    let fanout = metrics_util::layers::FanoutBuilder::default()
        .add_recorder(prometheus)
        .add_recorder(otel)
        .build();
    metrics::set_global_recorder(Switch(fanout)).map_err(|e| anyhow::anyhow!("{e}"))?;
    squid_mesh::telemetry::describe_metrics();
    Ok((traces, meters))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn telemetry(smoke: bool) -> Result<Vec<Figure>> {
    let (traces, meters) = install()?;
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let runs = if smoke { 16 } else { 1_000 };
    let rounds = if smoke { 1 } else { 3 };
    let workers = 8;
    let mut figures = Vec::new();
    let pg = pg_backend().await;
    let mut backends = vec![Backend::Sqlite(dir.path().join("unused"))];
    backends.extend(pg.clone());
    for template in &backends {
        let mut rates = [Vec::new(), Vec::new()];
        // Round 0 warms up (compiled component, connections, page cache) and is not counted.
        for round in 0..=rounds * 2 {
            let on = round % 2 == 0 && round > 0;
            let backend = match template {
                Backend::Sqlite(_) => Backend::Sqlite(dir.path().join(format!("t{round}.db"))),
                Backend::Postgres { url, schema } => Backend::Postgres {
                    url: url.clone(),
                    schema: format!("{schema}_t{round}"),
                },
            };
            let engine = backend.engine(&registry, dir.path()).await?;
            ON.store(on, Ordering::SeqCst);
            let (steps, _, _) = drain_runs(&engine, runs, workers).await?;
            ON.store(false, Ordering::SeqCst);
            engine.close().await;
            drop(engine);
            drop_schema(&backend).await;
            if round > 0 {
                rates[usize::from(on)].push(steps);
            }
        }
        let [off, on] = rates.map(median);
        let name = template.name();
        figures.push(Figure {
            name: format!("{name} durable steps/s, telemetry off, {workers} workers"),
            value: off,
            unit: "steps/s",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} durable steps/s, telemetry on, {workers} workers"),
            value: on,
            unit: "steps/s",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} telemetry on / off"),
            value: on / off,
            unit: "x",
            target: Some(">= 0.95".into()),
        });
    }
    tokio::task::spawn_blocking(move || {
        let _ = traces.shutdown();
        let _ = meters.shutdown();
    })
    .await?;
    Ok(figures)
}
