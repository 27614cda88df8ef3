//! `squid-mesh`: run and operate Squid Mesh from a terminal.
//!
//! Works against `--database` (a SQLite file by default, or a Postgres URL), whose action
//! catalog holds the approved actions every process runs. Human-readable output by default,
//! `--json` for scripts; errors go to stderr with a non-zero exit code (2 for bad input,
//! 3 for a run that does not exist, 1 for everything else). `start --wait` exits 1 when the
//! run failed or was cancelled, 4 when it is still going at the deadline.

mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use squid_mesh::clock::Timestamp;
use squid_mesh::engine::{
    Approval, CatalogAction, CatalogCommand, CommandOptions, DynamicWorkSpec, ManualAttrs,
    ReplayOptions, ScheduleCommand, ScheduleInfo,
};
use squid_mesh::inspect::{InspectOptions, Page, Redact, RunFilter, Scope, render};
use squid_mesh::spec::editor::{self, EditorInput, EditorProblem, EditorReport, SpecDiff};
use squid_mesh::{
    ActionKey, ActionLimits, Capabilities, Digest, Engine, EngineError, HostConfig, RunId,
    RunStatus, StartOptions, Worker, WorkflowSpec,
};

/// `print!` that ends the program quietly (exit 0) when stdout is closed, as when the output
/// is piped into `head`, instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*), false)
    };
}

/// `println!`, with the same handling of a closed stdout as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*), true)
    };
}

fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
        Ok(()) => {}
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "squid-mesh",
    version,
    about = "Run and operate Squid Mesh workflows"
)]
struct Cli {
    /// SQLite file or Postgres URL (`postgres://...`).
    #[arg(
        long,
        global = true,
        env = "SQUID_MESH_DATABASE",
        default_value = "squid-mesh.db"
    )]
    database: String,
    /// Postgres schema holding the tables.
    #[arg(
        long,
        global = true,
        env = "SQUID_MESH_SCHEMA",
        default_value = "squid_mesh"
    )]
    schema: String,
    /// Directory of compiled components (default: `.squid-mesh-cache` next to a SQLite
    /// database, or in the working directory for Postgres).
    #[arg(long, global = true, env = "SQUID_MESH_CACHE")]
    cache: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Logs on stderr as `text` or `json` (one object a line, with the current span's
    /// fields: run id, step, trace id). Never mixed into stdout.
    #[arg(long, global = true, env = "SQUID_MESH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Which logs to show, as a `RUST_LOG` filter (`info`, `warn,squid_mesh::action=debug`).
    /// Default: `SQUID_MESH_LOG`, else `RUST_LOG`, else for `worker` warnings and what
    /// actions log, in their step's span (`warn,squid_mesh::action=info,squid_mesh::telemetry=info`),
    /// errors only for other commands.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Most Postgres connections this process opens (each worker process needs its own share
    /// of the server's `max_connections`).
    #[arg(
        long,
        global = true,
        env = "SQUID_MESH_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    max_connections: u32,
    /// What run views show: `external` (status and shape), `operator` (also errors, timing
    /// and command types, no payloads) or `auditor` (everything).
    #[arg(long, global = true, env = "SQUID_MESH_SCOPE", default_value = "auditor", value_parser = parse_scope)]
    scope: Scope,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the tables.
    Migrate,
    /// The action catalog: approve, disable, enable, revoke, list, show, export, import.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Check or draw a workflow spec file (JSON or TOML).
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Start a run of the workflow in a spec file.
    Start(StartArgs),
    /// Run a worker pool until interrupted (or until idle with --exit-when-idle).
    Worker(WorkerArgs),
    /// List and inspect runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Resume a paused run.
    Resume(ManualArgs),
    /// Approve a run waiting at an approval gate.
    Approve(ManualArgs),
    /// Reject a run waiting at an approval gate.
    Reject(ManualArgs),
    /// Cancel a run.
    Cancel(CancelArgs),
    /// Start a new run from a run's trigger and input.
    Replay(ReplayArgs),
    /// Cron schedules: workers fire them, once per window across all processes.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Serve the dashboard and the workflow editor over the database (read-only unless
    /// `--tokens` gives tokens that may act).
    Dashboard(DashboardArgs),
    /// Print a shell completion script (`squid-mesh completions bash > /etc/bash_completion.d/squid-mesh`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum SchedulesCommand {
    /// Store (or update) a schedule for every cron trigger of a spec file.
    Apply {
        /// The workflow spec file (JSON or TOML).
        file: PathBuf,
        /// Queue of the runs it starts (default: the default queue).
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        who: WhoArgs,
    },
    /// Every schedule with its state and next window.
    List,
    /// One schedule with its latest windows and its audit trail.
    Show {
        #[command(flatten)]
        which: ScheduleArgs,
        /// How many of the latest windows to show.
        #[arg(long, default_value_t = 20)]
        fires: u32,
    },
    /// Stop firing until resumed.
    Pause {
        #[command(flatten)]
        which: ScheduleArgs,
        #[command(flatten)]
        who: WhoArgs,
    },
    /// Fire again; windows missed meanwhile follow the catch-up policy.
    Resume {
        #[command(flatten)]
        which: ScheduleArgs,
        #[command(flatten)]
        who: WhoArgs,
    },
    /// Delete a schedule (its fired windows and trail stay).
    Remove {
        #[command(flatten)]
        which: ScheduleArgs,
        #[command(flatten)]
        who: WhoArgs,
    },
    /// Start a run for every window in a range that was not handled before.
    Backfill {
        #[command(flatten)]
        which: ScheduleArgs,
        /// First instant of the range (RFC 3339).
        #[arg(long)]
        from: String,
        /// Last instant of the range (RFC 3339).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        who: WhoArgs,
    },
    /// The next windows, in UTC and in the schedule's zone.
    Next {
        #[command(flatten)]
        which: ScheduleArgs,
        /// How many (at most 1,000).
        #[arg(long, short = 'n', default_value_t = 5)]
        count: usize,
    },
}

#[derive(Debug, Args)]
struct ScheduleArgs {
    /// Workflow name.
    workflow: String,
    /// Cron trigger name (may be left out when the workflow has one schedule).
    trigger: Option<String>,
}

#[derive(Debug, Args)]
struct WhoArgs {
    /// Who does it (optional; recorded in the schedule's trail).
    #[arg(long)]
    actor: Option<String>,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
}

impl WhoArgs {
    fn command(&self) -> ScheduleCommand {
        let mut c = ScheduleCommand::default();
        c.actor.clone_from(&self.actor);
        c.comment.clone_from(&self.comment);
        c
    }
}

#[derive(Debug, Subcommand)]
enum ActionsCommand {
    /// Every action of the catalog: its current version (or latest, when it has none).
    List,
    /// One action: every version and its audit trail.
    Show {
        /// Action key.
        key: String,
    },
    /// Approve a component under a key (checked against the action world, stored in the
    /// database): it becomes the key's active version, the previous one is superseded.
    #[command(alias = "add")]
    Approve(ApproveArgs),
    /// Disable a key: new starts refuse it; steps that reach it wait until it is enabled.
    Disable(ChangeArgs),
    /// Enable a disabled key; steps waiting for it run at once.
    Enable(ChangeArgs),
    /// Revoke a version (the current one by default): steps pinned to it fail closed.
    Revoke {
        #[command(flatten)]
        change: ChangeArgs,
        /// The version to revoke: `sha256:...`, or a unique prefix of at least 8 hex digits
        /// (as `list` and `show` print it).
        #[arg(long)]
        digest: Option<String>,
    },
    /// Write the current versions as a manifest and component files into a directory.
    Export {
        /// Directory to write `actions.toml` and `components/` into.
        dir: PathBuf,
    },
    /// Approve every action of a manifest (component paths relative to it).
    Import {
        /// The manifest.
        #[arg(default_value = "actions.toml")]
        manifest: PathBuf,
        #[command(flatten)]
        who: ActorArgs,
    },
    /// Re-check every stored component against its digest and the action world.
    Verify,
}

#[derive(Debug, Args)]
struct ActorArgs {
    /// Who makes the change (recorded in the catalog's trail; default: $USER).
    #[arg(long, env = "SQUID_MESH_ACTOR")]
    actor: Option<String>,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
}

impl ActorArgs {
    fn command(&self) -> Result<CatalogCommand> {
        let actor = self
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| {
                EngineError::invalid_option(
                    "--actor",
                    "say who changes the catalog (or set SQUID_MESH_ACTOR or $USER)",
                )
            })?;
        let mut c = CatalogCommand::by(actor);
        if let Some(comment) = &self.comment {
            c = c.comment(comment.clone());
        }
        Ok(c)
    }
}

#[derive(Debug, Args)]
struct ChangeArgs {
    /// Action key.
    key: String,
    #[command(flatten)]
    who: ActorArgs,
}

#[derive(Debug, Args)]
struct ApproveArgs {
    /// Action key, for example `payments.charge`.
    key: String,
    /// The component file (`.wasm`).
    component: PathBuf,
    /// Refuse the file unless its digest is this (`sha256:...`).
    #[arg(long)]
    digest: Option<String>,
    /// Wall-clock limit per attempt, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory cap, in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Fuel (instruction budget) per attempt.
    #[arg(long)]
    fuel: Option<u64>,
    /// Allow the action to start child runs.
    #[arg(long)]
    allow_child_runs: bool,
    /// Allow the action to add dynamic work to its run (the `schedule-work` host import).
    #[arg(long)]
    allow_dynamic_work: bool,
    /// Most dynamic nodes one step of the action may add (default 10000).
    #[arg(long)]
    max_dynamic_nodes: Option<u32>,
    /// An environment variable the action sees, `NAME=value` (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// A socket address the action may connect to, `ip:port` or `ip:*` (repeatable).
    #[arg(long = "network", value_name = "ADDR")]
    network: Vec<String>,
    /// Let the action resolve host names.
    #[arg(long)]
    dns: bool,
    #[command(flatten)]
    who: ActorArgs,
}

#[derive(Debug, Subcommand)]
enum SpecCommand {
    /// Print every problem of a spec file, each with its JSON pointer path: its shape, and
    /// against the database's action catalog its action keys and the data flow the actions'
    /// schemas allow.
    Validate {
        /// The spec file (JSON, or TOML by its extension).
        file: PathBuf,
        /// Check the spec alone, not against the database (action keys are not checked).
        #[arg(long)]
        offline: bool,
    },
    /// Draw the steps and routes of a spec (`--json`: the editor's graph preview, with the
    /// edge ids run graphs use).
    Graph {
        /// The spec file.
        file: PathBuf,
    },
    /// What a draft changes against a spec: triggers, payload fields, steps, edges, the
    /// fingerprint and the editor section. Runs already started are not affected.
    Diff {
        /// The spec in force.
        old: PathBuf,
        /// The draft.
        new: PathBuf,
    },
    /// Print the JSON Schema of spec files (docs/workflow-spec.schema.json).
    Schema,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// The workflow spec file (JSON or TOML).
    workflow_file: PathBuf,
    /// Trigger name (default: the first).
    #[arg(long)]
    trigger: Option<String>,
    /// The payload, a JSON object.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// The same key and payload start the run once.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Queue of the run's attempts.
    #[arg(long)]
    queue: Option<String>,
    /// Wait up to this many seconds for the run to end (a worker must be running) and print
    /// how it ended; exit 1 if it failed or was cancelled, 4 if it is still going.
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "SQUID_MESH_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: std::net::SocketAddr,
    /// TOML file of `[[tokens]]` entries (`token`, `actor`, `scope`, `can_act`): viewers
    /// sign in with a token, see its scope and, with `can_act`, issue commands as its actor.
    #[arg(long, env = "SQUID_MESH_DASHBOARD_TOKENS")]
    tokens: Option<PathBuf>,
    /// What viewers who have not signed in see: `external`, `operator`, `auditor`, or
    /// `none` to send them to the sign-in page. Default: `operator` without `--tokens`,
    /// `none` with them.
    #[arg(long, value_parser = ["external", "operator", "auditor", "none"])]
    anonymous_scope: Option<String>,
    /// Mark the sign-in cookie `Secure` (HTTPS only): set it behind a TLS proxy.
    #[arg(long)]
    secure_cookies: bool,
    /// Seconds between live refreshes of the runs list (0: off).
    #[arg(long, default_value_t = 5)]
    refresh_secs: u32,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Queues to take work from (repeat the flag for several).
    #[arg(long = "queue", default_value = "default")]
    queues: Vec<String>,
    /// Steps run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Lease of a claim, in seconds (heartbeats renew it at a third).
    #[arg(long, default_value_t = 60)]
    lease_secs: u64,
    /// Stop once no run on the queues has work left (all ended, paused or idle).
    #[arg(long)]
    exit_when_idle: bool,
    /// Seconds to let in-flight steps finish on shutdown.
    #[arg(long, default_value_t = 30)]
    shutdown_secs: u64,
    /// Do not fire cron schedules in this process.
    #[arg(long)]
    no_schedules: bool,
    /// Serve Prometheus metrics on this address (`127.0.0.1:9464`), at any path.
    #[arg(long, env = "SQUID_MESH_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds between samples of the database gauges (queue depth, oldest due age, runs by
    /// status) when metrics are on.
    #[arg(long, default_value_t = 15)]
    metrics_sample_secs: u64,
    /// Export spans and metrics over OpenTelemetry (OTLP over HTTP), configured by the
    /// standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (default http://localhost:4318),
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `http/json`), `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`.
    #[arg(long, env = "SQUID_MESH_OTEL", value_parser = clap::builder::BoolishValueParser::new())]
    otel: bool,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Runs, newest first.
    List(ListArgs),
    /// Everything about one run.
    Show {
        /// Run id.
        id: String,
        /// Include the journal.
        #[arg(long)]
        history: bool,
    },
    /// The run's graph.
    Graph {
        /// Run id.
        id: String,
        /// Include node details (input, output, error, attempts) in JSON.
        #[arg(long)]
        history: bool,
    },
    /// Why the run is where it is, and what can be done.
    Explain {
        /// Run id.
        id: String,
    },
    /// Add dynamic work to a run from a JSON or TOML file (`key`, `origin`, `nodes`, optional
    /// `edges`, `join`, `reason`, `metadata`, `allow_replay`): scheduled unless `--preview` or
    /// `--record` says otherwise.
    Work {
        /// Run id.
        id: String,
        /// The work file.
        file: PathBuf,
        /// Show what adding it would do; write nothing.
        #[arg(long, conflicts_with = "record")]
        preview: bool,
        /// Journal it for inspection only (its nodes never run).
        #[arg(long)]
        record: bool,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Workflow name.
    #[arg(long)]
    workflow: Option<String>,
    /// Status (repeat for several): running, idle, paused, completed, failed, cancelled.
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// Queue.
    #[arg(long)]
    queue: Option<String>,
    /// Text in the run id, workflow, trigger or a step name.
    #[arg(long)]
    search: Option<String>,
    /// Created at or after (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Created before (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// The page token printed by the previous page.
    #[arg(long)]
    after: Option<String>,
}

#[derive(Debug, Args)]
struct ManualArgs {
    /// Run id.
    id: String,
    /// Who decides (required to approve or reject).
    #[arg(long)]
    actor: Option<String>,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
    /// Repeating the command with this key does nothing more.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
struct CancelArgs {
    /// Run id.
    id: String,
    /// Repeating the command with this key does nothing more.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Run id.
    id: String,
    /// Replay even though the run completed irreversible steps.
    #[arg(long)]
    allow_irreversible: bool,
    /// Repeating the command with this key returns the same new run.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// An error with its exit code and, for engine errors, its structured form.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = match error.downcast_ref::<EngineError>() {
            Some(EngineError::RunNotFound { .. } | EngineError::ScheduleNotFound { .. }) => 3,
            Some(
                EngineError::InvalidSpec(_)
                | EngineError::InvalidPayload(_)
                | EngineError::InvalidOption(_)
                | EngineError::InvalidDynamicWork(_)
                | EngineError::InvalidRunId { .. }
                | EngineError::UnknownTrigger { .. }
                | EngineError::UnknownWorkflow { .. }
                | EngineError::InvalidTransition { .. }
                | EngineError::WrongManualStep { .. }
                | EngineError::UnsafeReplay { .. }
                | EngineError::IdempotencyConflict { .. },
            ) => 2,
            Some(EngineError::Action(e)) if bad_action_input(e) => 2,
            None if error
                .downcast_ref::<squid_mesh::ActionError>()
                .is_some_and(bad_action_input) =>
            {
                2
            }
            // A spec file that does not parse is bad input too.
            _ if error
                .chain()
                .any(|c| c.is::<squid_mesh::spec::SpecParseError>()) =>
            {
                2
            }
            _ => 1,
        };
        Self { code, error }
    }
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                anyhow::Error::from(e).into()
            }
        }
    )*};
}
failure_from!(
    std::io::Error,
    serde_json::Error,
    EngineError,
    squid_mesh::ActionError
);

/// Whether an action error is the caller's input (a bad key, file, digest or limit), not a
/// fault of the system.
fn bad_action_input(e: &squid_mesh::ActionError) -> bool {
    use squid_mesh::ActionError as A;
    matches!(
        e,
        A::InvalidKey { .. }
            | A::InvalidDigest { .. }
            | A::UnknownAction { .. }
            | A::Disabled { .. }
            | A::DigestMismatch { .. }
            | A::Io { .. }
            | A::InvalidComponent { .. }
            | A::Manifest { .. }
            | A::InvalidLimits { .. }
            | A::InvalidCapability { .. }
            | A::Revoked { .. }
            | A::NotInCatalog { .. }
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(
            *shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "squid-mesh",
            &mut out,
        );
        return match std::io::Write::write_all(&mut std::io::stdout(), &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Colours only on a terminal; a worker shows what actions log by default.
    let worker = matches!(cli.command, Command::Worker(_));
    let telemetry = match telemetry::init(&telemetry::Options {
        format: &cli.log_format,
        level: cli.log_level.as_deref(),
        default_level: if worker {
            "warn,squid_mesh::action=info,squid_mesh::telemetry=info"
        } else {
            "error"
        },
        otel: matches!(&cli.command, Command::Worker(a) if a.otel),
    }) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json_errors = cli.json;
    let done = runtime.block_on(run(cli, &telemetry));
    // Flushes spans and metrics still held (outside the async runtime: the exporters block).
    drop(runtime);
    drop(telemetry);
    match done {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            report(&f, json_errors);
            ExitCode::from(f.code)
        }
    }
}

fn report(f: &Failure, json_output: bool) {
    let engine = f.error.downcast_ref::<EngineError>();
    if json_output {
        let body = json!({"error": {
            "code": engine.map_or("error", EngineError::code),
            "message": chain_text(&f.error),
            "problems": engine.map(|e| problems_of(e).iter().map(|(path, code, message)| json!({"path": path, "code": code, "message": message})).collect::<Vec<_>>()).unwrap_or_default(),
        }});
        eprintln!("{body}");
        return;
    }
    let problems = engine.map(problems_of).unwrap_or_default();
    match engine {
        Some(e) if !problems.is_empty() => {
            let n = problems.len();
            let context: Vec<String> = f.error.chain().skip(1).map(ToString::to_string).collect();
            let what = if context.is_empty() {
                e.code().to_owned()
            } else {
                format!("{}: {}", context.join(": "), e.code())
            };
            eprintln!(
                "error: {what}, {n} problem{}:",
                if n == 1 { "" } else { "s" }
            );
            for (path, code, message) in &problems {
                let path = if path.is_empty() { "/" } else { path };
                eprintln!("  {path}: {message} ({code})");
            }
        }
        _ => eprintln!("error: {}", chain_text(&f.error)),
    }
}

/// The problems of invalid input, each as (path, code, message).
fn problems_of(e: &EngineError) -> Vec<(String, String, String)> {
    match e {
        EngineError::InvalidDynamicWork(p) => p
            .iter()
            .map(|p| (p.path.clone(), p.code.clone(), p.message.clone()))
            .collect(),
        other => other
            .problems()
            .iter()
            .map(|p| (p.path.clone(), p.code.clone(), p.message.clone()))
            .collect(),
    }
}

/// An error and its causes on one line, each said once: libraries whose message already
/// holds their cause (as sqlx's do) would otherwise print it two or three times.
fn chain_text(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
        .map_err(|e: squid_mesh::inspect::VisibilityError| e.to_string())
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Where compiled components are cached: `--cache`, else next to a SQLite database, else
/// in the working directory.
fn cache_dir(cli: &Cli) -> PathBuf {
    if let Some(dir) = &cli.cache {
        return dir.clone();
    }
    if is_postgres(&cli.database) {
        return PathBuf::from(".squid-mesh-cache");
    }
    let db = Path::new(
        cli.database
            .strip_prefix("sqlite://")
            .unwrap_or(&cli.database),
    );
    match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(".squid-mesh-cache"),
        _ => PathBuf::from(".squid-mesh-cache"),
    }
}

async fn engine(cli: &Cli) -> Result<Engine> {
    let b = Engine::builder().host_config(HostConfig::default().cache_dir(cache_dir(cli)));
    let b = if is_postgres(&cli.database) {
        b.postgres(&cli.database)
            .postgres_schema(&cli.schema)
            .postgres_max_connections(cli.max_connections)
    } else {
        b.sqlite(
            cli.database
                .strip_prefix("sqlite://")
                .unwrap_or(&cli.database),
        )
    };
    b.build()
        .await
        .with_context(|| format!("opening the database {}", shown_database(&cli.database)))
}

/// The engine and the run id a command acts on.
async fn engine_and_run(cli: &Cli, id: &str) -> Result<(Engine, squid_mesh::RunId), Failure> {
    let e = engine(cli).await?;
    let id = id.parse().map_err(EngineError::from)?;
    Ok((e, id))
}

/// The database as messages show it: a Postgres URL's password replaced by `***`.
fn shown_database(database: &str) -> String {
    let Some((scheme, rest)) = database.split_once("://") else {
        return database.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return database.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => database.to_owned(),
    }
}

async fn run(cli: Cli, telemetry: &telemetry::Guard) -> Result<u8, Failure> {
    match &cli.command {
        Command::Migrate => {
            engine(&cli).await?;
            if cli.json {
                print_json(&json!({"migrated": shown_database(&cli.database)}))?;
            } else {
                outln!("database {} is up to date", shown_database(&cli.database));
            }
            Ok(0)
        }
        Command::Actions(cmd) => actions(&cli, cmd).await,
        Command::Spec(cmd) => spec(&cli, cmd).await,
        Command::Start(args) => start(&cli, args).await,
        Command::Worker(args) => worker(&cli, args, telemetry).await,
        Command::Completions { .. } => Ok(0),
        Command::Dashboard(args) => dashboard(&cli, args).await,
        Command::Runs(cmd) => runs(&cli, cmd).await,
        Command::Schedules(cmd) => schedules(&cli, cmd).await,
        Command::Resume(a) | Command::Approve(a) | Command::Reject(a) => {
            let (e, id) = engine_and_run(&cli, &a.id).await?;
            let mut attrs = ManualAttrs::default();
            attrs.actor = a.actor.clone().map(Value::String);
            attrs.comment = a.comment.clone();
            attrs.idempotency_key = a.idempotency_key.clone();
            let snap = match &cli.command {
                Command::Resume(_) => e.resume(id, attrs).await,
                Command::Approve(_) => e.approve(id, attrs).await,
                _ => e.reject(id, attrs).await,
            }?;
            done(&cli, &snap.run_id.to_string(), snap.status)
        }
        Command::Cancel(a) => {
            let (e, id) = engine_and_run(&cli, &a.id).await?;
            let snap = e
                .cancel(id, {
                    let mut o = CommandOptions::default();
                    o.idempotency_key = a.idempotency_key.clone();
                    o
                })
                .await?;
            done(&cli, &snap.run_id.to_string(), snap.status)
        }
        Command::Replay(a) => {
            let (e, id) = engine_and_run(&cli, &a.id).await?;
            let snap = e
                .replay(id, {
                    let mut o = ReplayOptions::default().allow_irreversible(a.allow_irreversible);
                    o.idempotency_key = a.idempotency_key.clone();
                    o
                })
                .await?;
            if cli.json {
                print_json(
                    &json!({"run_id": snap.run_id, "status": snap.status, "replayed_from": snap.replayed_from}),
                )?;
            } else {
                outln!("started run {} replaying {}", snap.run_id, a.id);
            }
            Ok(0)
        }
    }
}

fn done(cli: &Cli, run_id: &str, status: RunStatus) -> Result<u8, Failure> {
    if cli.json {
        print_json(&json!({"run_id": run_id, "status": status}))?;
    } else {
        outln!("run {run_id} is {}", status.as_str());
    }
    Ok(0)
}

fn parse_key(key: &str) -> Result<ActionKey, Failure> {
    Ok(ActionKey::new(key).map_err(squid_mesh::ActionError::from)?)
}

fn parse_digest(digest: &str) -> Result<Digest, Failure> {
    Ok(digest
        .parse::<Digest>()
        .map_err(squid_mesh::ActionError::from)?)
}

/// A version of `key` named by its digest, or by a unique prefix of it (as `actions list`
/// and `show` print them: `sha256:` and 12 hex digits).
async fn version_of(
    catalog: &squid_mesh::engine::Catalog,
    key: &ActionKey,
    text: &str,
) -> Result<Digest, Failure> {
    if let Ok(d) = text.parse::<Digest>() {
        return Ok(d);
    }
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .to_ascii_lowercase();
    if hex.len() < 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return parse_digest(text);
    }
    let detail = catalog.show(key).await?;
    let found: Vec<Digest> = detail
        .versions
        .iter()
        .map(|v| v.digest)
        .filter(|d| d.hex().starts_with(&hex))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(EngineError::invalid_option(
            "--digest",
            &format!("action {key} has no version starting with sha256:{hex}"),
        )
        .into()),
        _ => Err(EngineError::invalid_option(
            "--digest",
            &format!("sha256:{hex} names more than one version of {key}; give more digits"),
        )
        .into()),
    }
}

/// The first 19 characters of a digest (`sha256:` and 12 hex digits).
fn short(digest: &Digest) -> String {
    digest.to_string().chars().take(19).collect()
}

fn print_action_line(a: &CatalogAction) {
    outln!(
        "{:<24}  {:<10}  {:<19}  {:>8}  {:>6}  {} {}",
        a.key.to_string(),
        a.state.as_str(),
        short(&a.digest),
        format!("{}ms", a.limits.timeout_ms),
        format!("{}MiB", a.limits.memory_bytes / (1024 * 1024)),
        a.description.name,
        a.description.version
    );
}

fn limits_of(args: &ApproveArgs) -> Result<ActionLimits, Failure> {
    let mut limits = ActionLimits::default();
    if let Some(t) = args.timeout_ms {
        limits.timeout_ms = t;
    }
    if let Some(m) = args.memory_mb {
        limits.memory_bytes = m.checked_mul(1024 * 1024).ok_or_else(|| {
            EngineError::InvalidOption(vec![squid_mesh::spec::SpecProblem {
                path: "--memory-mb".into(),
                code: "invalid_limits".into(),
                message: format!("{m} MiB is too large: the most is 4096 (4 GiB)"),
            }])
        })?;
    }
    limits.fuel = args.fuel.or(limits.fuel);
    if let Some(n) = args.max_dynamic_nodes {
        limits.max_dynamic_nodes = n;
    }
    Ok(limits)
}

fn capabilities_of(args: &ApproveArgs) -> Result<Capabilities, Failure> {
    let mut env = std::collections::BTreeMap::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(EngineError::invalid_option("--env", "expected NAME=value").into());
        };
        env.insert(name.to_owned(), value.to_owned());
    }
    Ok(Capabilities {
        env,
        network: args.network.clone(),
        dns: args.dns,
        child_runs: args.allow_child_runs,
        dynamic_work: args.allow_dynamic_work,
        ..Capabilities::default()
    })
}

async fn actions(cli: &Cli, cmd: &ActionsCommand) -> Result<u8, Failure> {
    let e = engine(cli).await?;
    let catalog = e.catalog();
    match cmd {
        ActionsCommand::List => {
            let listed = catalog.list().await?;
            if cli.json {
                print_json(&listed)?;
                return Ok(0);
            }
            if listed.is_empty() {
                outln!(
                    "no actions approved; approve one with: squid-mesh actions approve KEY FILE"
                );
                return Ok(0);
            }
            outln!(
                "{:<24}  {:<10}  {:<19}  {:>8}  {:>6}  name",
                "key",
                "state",
                "digest",
                "timeout",
                "memory"
            );
            for a in &listed {
                print_action_line(a);
            }
            Ok(0)
        }
        ActionsCommand::Show { key } => {
            let detail = catalog.show(&parse_key(key)?).await?;
            if cli.json {
                print_json(&detail)?;
                return Ok(0);
            }
            outln!("action {}", detail.key);
            for v in &detail.versions {
                outln!(
                    "  {}  {:<10}  approved by {} at {}",
                    v.digest,
                    v.state.as_str(),
                    v.approved_by,
                    v.approved_at.to_rfc3339()
                );
            }
            if let Some(c) = &detail.current {
                outln!(
                    "  current: {} {} ({}), timeout {}ms, memory {}MiB{}",
                    c.description.name,
                    c.description.version,
                    c.description.summary,
                    c.limits.timeout_ms,
                    c.limits.memory_bytes / (1024 * 1024),
                    if c.capabilities == Capabilities::default() {
                        String::new()
                    } else {
                        format!(", capabilities {}", serde_json::to_string(&c.capabilities)?)
                    }
                );
            }
            outln!("history:");
            for h in &detail.history {
                outln!(
                    "  {}  {:<9} {}  by {}{}",
                    h.at.to_rfc3339(),
                    h.kind.as_str(),
                    short(&h.digest),
                    h.actor,
                    h.comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        ActionsCommand::Approve(args) => {
            let key = parse_key(&args.key)?;
            let mut approval =
                Approval::from_file(key.clone(), &args.component, args.who.command()?)?
                    .limits(limits_of(args)?)
                    .capabilities(capabilities_of(args)?);
            if let Some(d) = &args.digest {
                approval = approval.expect_digest(parse_digest(d)?);
            }
            let approved = catalog.approve(approval).await?;
            if cli.json {
                print_json(&approved)?;
            } else {
                outln!(
                    "approved {key} ({} {}) as {}",
                    approved.description.name,
                    approved.description.version,
                    approved.digest
                );
            }
            Ok(0)
        }
        ActionsCommand::Disable(c) | ActionsCommand::Enable(c) => {
            let key = parse_key(&c.key)?;
            let changed = match cmd {
                ActionsCommand::Disable(_) => catalog.disable(&key, c.who.command()?).await?,
                _ => catalog.enable(&key, c.who.command()?).await?,
            };
            if cli.json {
                print_json(&changed)?;
            } else {
                outln!("action {key} is {}", changed.state.as_str());
            }
            Ok(0)
        }
        ActionsCommand::Revoke { change, digest } => {
            let key = parse_key(&change.key)?;
            let digest = match digest.as_deref() {
                None => None,
                Some(d) => Some(version_of(&catalog, &key, d).await?),
            };
            let revoked = catalog.revoke(&key, digest, change.who.command()?).await?;
            if cli.json {
                print_json(&revoked)?;
            } else {
                outln!("revoked {key} {}", revoked.digest);
            }
            Ok(0)
        }
        ActionsCommand::Export { dir } => {
            let manifest = catalog.export(dir).await?;
            if cli.json {
                print_json(&manifest.actions)?;
            } else {
                outln!(
                    "exported {} action(s) to {}",
                    manifest.actions.len(),
                    dir.join("actions.toml").display()
                );
            }
            Ok(0)
        }
        ActionsCommand::Import { manifest, who } => {
            let report = catalog.import(manifest, who.command()?).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                outln!(
                    "imported {}: {} approved, {} unchanged, {} disabled, {} enabled",
                    manifest.display(),
                    report.approved.len(),
                    report.unchanged.len(),
                    report.disabled.len(),
                    report.enabled.len()
                );
            }
            Ok(0)
        }
        ActionsCommand::Verify => {
            let checks = catalog.verify().await?;
            let failed = checks.iter().filter(|c| !c.ok).count();
            if cli.json {
                print_json(&checks)?;
            } else {
                for c in &checks {
                    match &c.error {
                        None => outln!("ok      {} {}", c.key, short(&c.digest)),
                        Some(e) => outln!("FAILED  {} {}: {e}", c.key, short(&c.digest)),
                    }
                }
            }
            if failed > 0 {
                if !cli.json {
                    eprintln!("error: {failed} stored component(s) failed verification");
                }
                return Ok(1);
            }
            Ok(0)
        }
    }
}

fn read_spec(file: &Path) -> Result<WorkflowSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let toml = file.extension().is_some_and(|e| e == "toml");
    let spec = if toml {
        WorkflowSpec::from_toml(&text)
    } else {
        WorkflowSpec::from_json(&text)
    };
    spec.with_context(|| format!("parsing {}", file.display()))
}

/// A spec file read as an editor document: the spec, or every parse problem.
fn read_document(file: &Path) -> Result<Result<WorkflowSpec, Vec<EditorProblem>>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let input = if file.extension().is_some_and(|e| e == "toml") {
        EditorInput::Toml(&text)
    } else {
        EditorInput::Json(&text)
    };
    Ok(editor::parse(input))
}

fn print_problems(file: &Path, problems: &[EditorProblem]) {
    outln!("{} has {} problem(s):", file.display(), problems.len());
    for p in problems {
        outln!("  {p}");
    }
}

fn problems_json(problems: &[EditorProblem]) -> Vec<Value> {
    problems
        .iter()
        .map(|p| json!({"path": p.path, "code": p.code, "message": p.message}))
        .collect()
}

async fn spec(cli: &Cli, cmd: &SpecCommand) -> Result<u8, Failure> {
    match cmd {
        SpecCommand::Validate { file, offline } => {
            // Against the database's action catalog, unless there is none to read.
            let sqlite_missing = !is_postgres(&cli.database)
                && !Path::new(
                    cli.database
                        .strip_prefix("sqlite://")
                        .unwrap_or(&cli.database),
                )
                .exists();
            let unchecked = if *offline {
                Some("--offline".to_owned())
            } else if sqlite_missing {
                Some(format!("no database at {}; pass --database", cli.database))
            } else {
                None
            };
            let report = match read_document(file)? {
                Err(problems) => EditorReport {
                    problems,
                    ..EditorReport::default()
                },
                Ok(spec) => {
                    let report = match &unchecked {
                        Some(_) => spec.check(None),
                        None => engine(cli).await?.check_spec(&spec).await?,
                    };
                    EditorReport::from_spec(spec, report)
                }
            };
            let checked = unchecked.is_none() && report.spec.is_some();
            if cli.json {
                print_json(&json!({
                    "valid": report.is_valid(),
                    "actions_checked": checked,
                    "problems": problems_json(&report.problems),
                    "warnings": problems_json(&report.warnings),
                }))?;
            } else {
                let why = unchecked.unwrap_or_else(|| "the spec did not parse".to_owned());
                if report.is_valid() && checked {
                    outln!("{} is valid", file.display());
                } else if report.is_valid() {
                    outln!(
                        "{} is valid as a spec; action keys were not checked ({why})",
                        file.display()
                    );
                } else {
                    print_problems(file, &report.problems);
                    if !checked {
                        outln!("  note: action keys were not checked ({why})");
                    }
                }
                for w in &report.warnings {
                    outln!("  warning: {w}");
                }
            }
            Ok(if report.is_valid() { 0 } else { 2 })
        }
        SpecCommand::Graph { file } => {
            let spec = match read_document(file)? {
                Ok(spec) => spec,
                Err(problems) => return Ok(refuse(cli, file, &problems)?),
            };
            let graph = editor::preview_graph(&spec);
            // Drawn anyway, so an editor can show where it is wrong; said on stderr.
            if let Err(problems) = spec.validate(None) {
                eprintln!(
                    "warning: {} has {} problem(s); `squid-mesh spec validate {}` lists them",
                    file.display(),
                    problems.len(),
                    file.display()
                );
            }
            if cli.json {
                print_json(&graph.to_json())?;
                return Ok(0);
            }
            outln!("workflow {}", spec.name);
            for s in &spec.steps {
                let what = match (&s.action, &s.builtin) {
                    (Some(a), _) => a.to_string(),
                    (None, Some(b)) => format!("builtin:{}", b.kind()),
                    _ => String::new(),
                };
                let mut extra = Vec::new();
                if graph.entry_steps.contains(&s.name) {
                    extra.push("entry".to_owned());
                }
                if let Some(r) = &s.retry {
                    extra.push(format!("retry x{}", r.max_attempts));
                }
                if let Some(c) = &s.compensate {
                    extra.push(format!("compensate {c}"));
                }
                if s.irreversible {
                    extra.push("irreversible".into());
                }
                if !s.after.is_empty() {
                    extra.push(format!("after {}", s.after.join(", ")));
                }
                outln!("  {:<20} {:<24} {}", s.name, what, extra.join("; "));
            }
            for t in &spec.transitions {
                let on = match t.on {
                    squid_mesh::spec::Outcome::Ok => "ok",
                    squid_mesh::spec::Outcome::Error => "error",
                };
                let cond = t
                    .condition
                    .as_ref()
                    .map(|c| format!(" when {}", serde_json::to_string(c).unwrap_or_default()))
                    .unwrap_or_default();
                outln!("  {} --{on}--> {}{cond}", t.from, t.to);
            }
            Ok(0)
        }
        SpecCommand::Diff { old, new } => {
            let mut specs = Vec::new();
            for file in [old, new] {
                match read_document(file)? {
                    Ok(spec) => specs.push(spec),
                    Err(problems) => return Ok(refuse(cli, file, &problems)?),
                }
            }
            let d = editor::diff(&specs[0], &specs[1]);
            if cli.json {
                print_json(&d.to_json())?;
            } else {
                print_diff(old, new, &d);
            }
            Ok(0)
        }
        SpecCommand::Schema => {
            print_json(&squid_mesh::spec::json_schema())?;
            Ok(0)
        }
    }
}

/// Prints the parse problems of a file that is not a spec; the exit code of bad input.
fn refuse(cli: &Cli, file: &Path, problems: &[EditorProblem]) -> Result<u8> {
    if cli.json {
        print_json(
            &json!({"valid": false, "file": file.display().to_string(), "problems": problems_json(problems)}),
        )?;
    } else {
        print_problems(file, problems);
    }
    Ok(2)
}

fn print_diff(old: &Path, new: &Path, d: &SpecDiff) {
    fn parts<T>(c: &editor::Changes<T>, changed: impl Fn(&T) -> String) -> String {
        let mut out: Vec<String> = c.added.iter().map(|a| format!("+ {a}")).collect();
        out.extend(c.removed.iter().map(|r| format!("- {r}")));
        out.extend(c.changed.iter().map(|x| format!("~ {}", changed(x))));
        if out.is_empty() {
            "unchanged".to_owned()
        } else {
            out.join(", ")
        }
    }
    let part = |p: &editor::PartChange| format!("{} ({})", p.id, p.fields.join(", "));
    outln!("{} -> {}", old.display(), new.display());
    if let Some(c) = &d.name {
        outln!("  name:        {} -> {}", c.before, c.after);
    }
    if let Some(c) = &d.version {
        let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        outln!("  version:     {} -> {}", v(&c.before), v(&c.after));
    }
    let trigger = |t: &editor::TriggerChange| {
        let mut what = t.fields.clone();
        if !t.payload.is_empty() {
            what.push(format!("payload: {}", parts(&t.payload, part)));
        }
        format!("{} ({})", t.id, what.join("; "))
    };
    outln!("  triggers:    {}", parts(&d.triggers, trigger));
    outln!("  steps:       {}", parts(&d.steps, part));
    outln!("  edges:       {}", parts(&d.edges, part));
    if let Some(c) = &d.entry_steps {
        outln!(
            "  entry steps: {} -> {}",
            c.before.join(", "),
            c.after.join(", ")
        );
    }
    if d.fingerprint_changed {
        outln!(
            "  fingerprint: changed ({} -> {})",
            &d.fingerprint.before[..12],
            &d.fingerprint.after[..12]
        );
    } else {
        outln!("  fingerprint: unchanged");
    }
    outln!(
        "  editor:      {}",
        if d.editor_changed {
            "changed"
        } else {
            "unchanged"
        }
    );
    outln!("  running runs: unaffected ({})", d.note);
}

async fn start(cli: &Cli, args: &StartArgs) -> Result<u8, Failure> {
    let spec = read_spec(&args.workflow_file)?;
    let payload: Value =
        serde_json::from_str(&args.payload).map_err(|e| anyhow!("--payload is not JSON: {e}"))?;
    let e = engine(cli).await?;
    let snap = e
        .start(&spec, args.trigger.as_deref(), payload, {
            let mut o = StartOptions::default();
            o.idempotency_key = args.idempotency_key.clone();
            o.queue = args.queue.clone();
            o
        })
        .await?;
    let Some(secs) = args.wait else {
        if cli.json {
            print_json(
                &json!({"run_id": snap.run_id, "workflow": snap.workflow, "status": snap.status, "queue": snap.queue}),
            )?;
        } else {
            outln!(
                "started run {} of {} on queue {} ({})",
                snap.run_id,
                snap.workflow,
                snap.queue,
                snap.status.as_str()
            );
        }
        return Ok(0);
    };
    if !cli.json {
        outln!(
            "started run {} of {} on queue {}; waiting up to {secs} s",
            snap.run_id,
            snap.workflow,
            snap.queue
        );
    }
    let end = e
        .wait_for_run(snap.run_id, Duration::from_secs(secs))
        .await?;
    let code = match end.status {
        RunStatus::Completed => 0,
        s if s.is_terminal() => 1,
        _ => 4,
    };
    if cli.json {
        print_json(&json!({
            "run_id": end.run_id,
            "workflow": end.workflow,
            "status": end.status,
            "queue": end.queue,
            "ended": end.is_terminal(),
            "context": end.context,
            "error": end.error,
        }))?;
    } else if end.is_terminal() {
        match end.error.as_ref() {
            Some(error) if end.status == RunStatus::Failed => outln!(
                "run {} failed: {} ({})",
                end.run_id,
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or_default()
            ),
            _ => outln!("run {} {}", end.run_id, end.status.as_str()),
        }
    } else {
        outln!(
            "run {} is still {} after {secs} s",
            end.run_id,
            end.status.as_str()
        );
    }
    Ok(code)
}

async fn worker(cli: &Cli, args: &WorkerArgs, telemetry: &telemetry::Guard) -> Result<u8, Failure> {
    telemetry::serve_metrics(args.metrics_addr, telemetry)?;
    let e = engine(cli).await?;
    let lease = Duration::from_secs(args.lease_secs.max(1));
    let metrics_on = args.metrics_addr.is_some() || args.otel;
    let pool = Worker::builder(&e)
        .queues(args.queues.clone())
        .concurrency(args.concurrency)
        .lease_for(lease)
        .heartbeat_interval(Some(lease / 3))
        .schedules(!args.no_schedules)
        .sample_metrics_every(
            metrics_on.then(|| Duration::from_secs(args.metrics_sample_secs.max(1))),
        )
        .start()?;
    if !cli.json {
        outln!(
            "worker started on queue(s) {} (concurrency {}) against {}{}",
            args.queues.join(", "),
            args.concurrency,
            shown_database(&cli.database),
            args.metrics_addr
                .map(|a| format!("; metrics on http://{a}/metrics"))
                .unwrap_or_default()
        );
    }
    let started = std::time::Instant::now();
    // The live progress line only on a terminal: piped, it would be one endless line.
    let interactive = !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    // systemd and Kubernetes stop services with SIGTERM: drain on it as on Ctrl-C.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let reason = loop {
        tokio::select! {
            _ = &mut ctrl_c => break "interrupted",
            _ = term.recv() => break "terminated",
            _ = tick.tick() => {
                let errors = pool.stats().errors.load(std::sync::atomic::Ordering::Relaxed);
                let steps = e.step_totals();
                if interactive {
                    telemetry::draw_progress(&format!(
                        "[worker {}] {:>6.1}s  steps succeeded {}  failed {}  store errors {errors}",
                        args.queues.join(","),
                        started.elapsed().as_secs_f64(),
                        steps.succeeded,
                        steps.failed,
                    ));
                }
                if args.exit_when_idle && !has_work(&e, &args.queues).await? {
                    break "idle";
                }
            }
        }
    };
    if interactive {
        telemetry::draw_progress(&format!("[worker] stopping ({reason}): draining"));
    }
    let errors = pool
        .stats()
        .errors
        .load(std::sync::atomic::Ordering::Relaxed);
    let executed = pool.shutdown(Duration::from_secs(args.shutdown_secs)).await;
    let steps = e.step_totals();
    telemetry::end_progress();
    if cli.json {
        print_json(&json!({
            "stopped": reason,
            "executed": executed,
            "succeeded": steps.succeeded,
            "failed": steps.failed,
            "suspended": steps.suspended,
            "errors": errors,
        }))?;
    } else {
        outln!(
            "worker stopped ({reason}): {executed} step(s) executed ({} succeeded, {} failed, {} stopped at a gate), {errors} store error(s)",
            steps.succeeded,
            steps.failed,
            steps.suspended
        );
    }
    Ok(0)
}

/// Whether a run on the queues can still move without anyone acting: running runs, except
/// those whose steps wait for an action to be approved or enabled, and paused runs whose
/// dynamic work still has attempts to run.
async fn has_work(e: &Engine, queues: &[String]) -> Result<bool> {
    for q in queues {
        let filter = RunFilter::default()
            .queue(q.clone())
            .status(RunStatus::Running)
            .status(RunStatus::Paused);
        let mut page = Page::first(100);
        loop {
            let runs = e.list_runs(&filter, &page).await?;
            for r in &runs.runs {
                if r.status == RunStatus::Paused {
                    let i = e
                        .inspect_run(r.run_id.as_str(), InspectOptions::default())
                        .await?;
                    if i.attempts
                        .iter()
                        .any(|a| a.is_open() && a.waiting_for_action.is_none())
                    {
                        return Ok(true);
                    }
                    continue;
                }
                let why = e
                    .explain_run(r.run_id.as_str(), InspectOptions::default())
                    .await?;
                if why.reason != squid_mesh::inspect::Reason::WaitingForAction {
                    return Ok(true);
                }
            }
            match runs.next_page {
                Some(token) => page = Page::after(100, token),
                None => break,
            }
        }
    }
    Ok(false)
}

fn parse_time(flag: &str, text: &Option<String>) -> Result<Option<Timestamp>> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| Timestamp(d.timestamp_micros()))
                .map_err(|e| anyhow!("{flag} {t:?} is not an RFC 3339 time: {e}"))
        })
        .transpose()
}

async fn runs(cli: &Cli, cmd: &RunsCommand) -> Result<u8, Failure> {
    let e = engine(cli).await?;
    match cmd {
        RunsCommand::List(a) => {
            let mut filter = RunFilter::default().created_between(
                parse_time("--since", &a.since)?,
                parse_time("--until", &a.until)?,
            );
            filter.workflow = a.workflow.clone();
            filter.queue = a.queue.clone();
            filter.search = a.search.clone();
            for s in &a.statuses {
                let status = RunStatus::parse(s).ok_or_else(|| {
                    anyhow!("unknown status {s:?}; expected running, idle, paused, completed, failed or cancelled")
                })?;
                filter = filter.status(status);
            }
            let page = Page {
                limit: a.limit,
                after: a.after.clone(),
            };
            let result = e.list_runs(&filter, &page).await?.redacted(cli.scope);
            if cli.json {
                print_json(&result)?;
            } else {
                out!("{}", render::page_text(&result));
            }
        }
        RunsCommand::Show { id, history } => {
            let opts = InspectOptions::default().include_history(*history);
            let i = e.inspect_run(id, opts).await?.redacted(cli.scope);
            if cli.json {
                print_json(&i)?;
            } else {
                out!("{}", render::inspection_text(&i));
                if let Some(h) = &i.history {
                    outln!("journal:");
                    for entry in h {
                        outln!("  {} {}", entry.at, entry.fact.kind());
                    }
                }
            }
        }
        RunsCommand::Graph { id, history } => {
            let opts = InspectOptions::default().include_history(*history);
            let g = e.inspect_run_graph(id, opts).await?.redacted(cli.scope);
            if cli.json {
                print_json(&g.to_json())?;
            } else {
                out!("{}", render::graph_text(&g));
            }
        }
        RunsCommand::Explain { id } => {
            let x = e
                .explain_run(id, InspectOptions::default())
                .await?
                .redacted(cli.scope);
            if cli.json {
                print_json(&x)?;
            } else {
                out!("{}", render::explanation_text(&x));
            }
        }
        RunsCommand::Work {
            id,
            file,
            preview,
            record,
        } => {
            let work = read_work(file)?;
            let run_id: RunId = id.parse().map_err(EngineError::from)?;
            if *preview {
                let p = e.preview_dynamic_work(run_id, &work).await?;
                if cli.json {
                    print_json(&p)?;
                } else {
                    outln!(
                        "work {} on run {} from {}: {} node(s), {} edge(s){}",
                        p.work.key,
                        p.run_id,
                        p.origin_node_id,
                        p.added_node_ids.len(),
                        p.added_edge_ids.len(),
                        if p.duplicate {
                            " (already there: adding it changes nothing)"
                        } else {
                            ""
                        }
                    );
                    for w in &p.warnings {
                        outln!("warning: {w}");
                    }
                }
            } else {
                let r = if *record {
                    e.record_dynamic_work(run_id, &work).await?
                } else {
                    e.schedule_dynamic_work(run_id, &work).await?
                };
                if cli.json {
                    print_json(&r)?;
                } else {
                    outln!(
                        "work {} {} on run {}: {} node(s){}",
                        r.key,
                        if r.scheduled { "scheduled" } else { "recorded" },
                        r.run_id,
                        r.nodes,
                        if r.duplicate {
                            " (already there: nothing changed)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    Ok(0)
}

/// A dynamic work file (JSON, or TOML by extension); a malformed one is bad input.
fn read_work(file: &Path) -> Result<DynamicWorkSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let toml = file.extension().and_then(|e| e.to_str()) == Some("toml");
    let parsed = if toml {
        DynamicWorkSpec::from_toml(&text)
    } else {
        DynamicWorkSpec::from_json(&text)
    };
    parsed
        .map_err(|problems| anyhow::Error::from(EngineError::InvalidDynamicWork(problems)))
        .with_context(|| format!("reading {}", file.display()))
}

fn print_schedule(s: &ScheduleInfo) {
    let next = match (&s.next_fire_at, &s.next_fire_local) {
        (Some(at), Some(local)) => format!("{local} ({at})"),
        _ => "none (ended)".into(),
    };
    outln!(
        "{}/{}  {}  {:?} in {}  next {next}  missed {}{}",
        s.workflow,
        s.trigger,
        render::status_text(&s.state),
        s.cron,
        s.timezone,
        s.missed,
        s.last_run_id
            .as_deref()
            .map(|r| format!("  last run {r}"))
            .unwrap_or_default(),
    );
}

fn required_time(flag: &str, text: &str) -> Result<Timestamp> {
    Ok(parse_time(flag, &Some(text.to_owned()))?.expect("a time was given"))
}

async fn schedules(cli: &Cli, cmd: &SchedulesCommand) -> Result<u8, Failure> {
    let e = engine(cli).await?;
    let s = e.schedules();
    match cmd {
        SchedulesCommand::Apply { file, queue, who } => {
            let spec = read_spec(file)?;
            let applied = s.apply(&spec, queue.as_deref(), who.command()).await?;
            if cli.json {
                print_json(&applied)?;
            } else {
                for a in &applied {
                    print_schedule(a);
                }
            }
        }
        SchedulesCommand::List => {
            let all = s.list().await?;
            if cli.json {
                print_json(&all)?;
            } else if all.is_empty() {
                outln!(
                    "no schedules (apply a spec with a cron trigger: squid-mesh schedules apply FILE)"
                );
            } else {
                for a in &all {
                    print_schedule(a);
                }
            }
        }
        SchedulesCommand::Show { which, fires } => {
            let d = s
                .show(&which.workflow, which.trigger.as_deref(), *fires)
                .await?;
            if cli.json {
                print_json(&d)?;
            } else {
                print_schedule(&d.schedule);
                let p = &d.schedule.policy;
                outln!(
                    "  policy: catch_up {} (limit {}), overlap {}, jitter {} ms, grace {} ms{}{}",
                    render::status_text(&p.catch_up),
                    p.catch_up_limit,
                    render::status_text(&p.overlap),
                    p.jitter_ms,
                    p.grace_ms,
                    p.start_at
                        .map(|t| format!(", from {t}"))
                        .unwrap_or_default(),
                    p.end_at.map(|t| format!(", until {t}")).unwrap_or_default(),
                );
                if let Some(q) = d.schedule.queued_window {
                    outln!("  queued window {q} waits for the previous run");
                }
                outln!("  windows (newest first):");
                for f in &d.fires {
                    outln!(
                        "    {}  {} by {}  late {} ms  {}",
                        f.scheduled_at,
                        render::status_text(&f.outcome),
                        render::status_text(&f.origin),
                        f.lateness_ms,
                        f.run_id.as_deref().unwrap_or("-")
                    );
                }
                outln!("  trail:");
                for ev in &d.events {
                    outln!(
                        "    {}  {}{}{}",
                        ev.occurred_at,
                        ev.kind,
                        ev.actor
                            .as_deref()
                            .map(|a| format!(" by {a}"))
                            .unwrap_or_default(),
                        ev.comment
                            .as_deref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default(),
                    );
                }
            }
        }
        SchedulesCommand::Pause { which, who } | SchedulesCommand::Resume { which, who } => {
            let info = if matches!(cmd, SchedulesCommand::Pause { .. }) {
                s.pause(&which.workflow, which.trigger.as_deref(), who.command())
                    .await?
            } else {
                s.resume(&which.workflow, which.trigger.as_deref(), who.command())
                    .await?
            };
            if cli.json {
                print_json(&info)?;
            } else {
                print_schedule(&info);
            }
        }
        SchedulesCommand::Remove { which, who } => {
            s.remove(&which.workflow, which.trigger.as_deref(), who.command())
                .await?;
            if cli.json {
                print_json(
                    &json!({"removed": {"workflow": which.workflow, "trigger": which.trigger}}),
                )?;
            } else {
                outln!(
                    "removed the schedule of {}{}",
                    which.workflow,
                    which
                        .trigger
                        .as_deref()
                        .map(|t| format!("/{t}"))
                        .unwrap_or_default()
                );
            }
        }
        SchedulesCommand::Backfill {
            which,
            from,
            to,
            who,
        } => {
            let report = s
                .backfill(
                    &which.workflow,
                    which.trigger.as_deref(),
                    required_time("--from", from)?,
                    required_time("--to", to)?,
                    who.command(),
                )
                .await?;
            if cli.json {
                print_json(&report)?;
            } else {
                outln!(
                    "{} window(s) in range up to {}: started {} run(s), {} handled before",
                    report.windows,
                    report.until,
                    report.started.len(),
                    report.already
                );
                if report.until < required_time("--to", to)? {
                    outln!("windows after now are left to the scheduler");
                }
            }
        }
        SchedulesCommand::Next { which, count } => {
            let d = s.show(&which.workflow, which.trigger.as_deref(), 0).await?;
            let times = s
                .next(&which.workflow, which.trigger.as_deref(), *count)
                .await?;
            let cron =
                squid_mesh::schedule::CronSchedule::parse(&d.schedule.cron, &d.schedule.timezone)
                    .map_err(anyhow::Error::from)?;
            if cli.json {
                let rows: Vec<Value> = times
                    .iter()
                    .map(|t| json!({"at": t, "utc": t.to_rfc3339(), "local": cron.local(*t)}))
                    .collect();
                print_json(&rows)?;
            } else {
                for t in &times {
                    outln!("{}  ({t})", cron.local(*t));
                }
            }
        }
    }
    Ok(0)
}

async fn dashboard(cli: &Cli, args: &DashboardArgs) -> Result<u8, Failure> {
    use squid_mesh_dashboard::{Dashboard, TokenTable};
    // A dashboard over a file that does not exist would create an empty database and show
    // nothing: a mistyped path is an error here.
    let sqlite = cli
        .database
        .strip_prefix("sqlite://")
        .unwrap_or(&cli.database);
    if !is_postgres(&cli.database) && !Path::new(sqlite).exists() {
        return Err(anyhow::anyhow!(
            "no database at {sqlite}: give --database the SQLite file (or Postgres URL) the workers use, or create it with `squid-mesh migrate`"
        )
        .into());
    }
    let e = engine(cli).await?;
    let anonymous_name = args.anonymous_scope.clone().unwrap_or_else(|| {
        if args.tokens.is_some() {
            "none"
        } else {
            "operator"
        }
        .to_owned()
    });
    let anonymous = match anonymous_name.as_str() {
        "none" => None,
        other => Some(parse_scope(other).map_err(anyhow::Error::msg)?),
    };
    let tokens = match &args.tokens {
        Some(path) => Some(TokenTable::from_file(path).map_err(anyhow::Error::from)?),
        None => None,
    };
    if anonymous.is_none() && tokens.is_none() {
        return Err(anyhow::anyhow!(
            "--anonymous-scope none needs --tokens: nobody could see anything"
        )
        .into());
    }
    let mode = match &tokens {
        Some(t) => format!("{} token(s); anonymous viewers: {anonymous_name}", t.len()),
        None => format!("read-only, {anonymous_name} view (no --tokens)"),
    };
    let mut d = Dashboard::new(e.clone())
        .refresh_secs(args.refresh_secs)
        .secure_cookies(args.secure_cookies);
    if let Some(t) = tokens {
        d = d.tokens(t);
    }
    let d = d.anonymous_scope(anonymous);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    eprintln!(
        "squid-mesh dashboard on http://{addr}/ over {} ({mode})",
        shown_database(&cli.database)
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    axum::serve(listener, d.router())
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .context("serving the dashboard")?;
    e.close().await;
    Ok(0)
}
