//! Building an engine: the database, the action host, the clock, the policies.

use super::*;

/// Where the engine keeps its state.
#[derive(Debug, Clone)]
pub(super) enum DatabaseConfig {
    Sqlite(PathBuf),
    Postgres(String),
    SqlitePool(sqlx::SqlitePool),
    PostgresPool(sqlx::PgPool),
}

/// Builds an [`Engine`].
#[derive(Debug)]
pub struct EngineBuilder {
    database: Option<DatabaseConfig>,
    registry: Option<ActionRegistry>,
    host: Option<ActionHost>,
    host_config: HostConfig,
    clock: Arc<dyn Clock>,
    default_queue: String,
    migrate: bool,
    synchronous: Synchronous,
    pg_schema: String,
    pg_max_connections: u32,
    redaction: RedactionPolicy,
    max_dynamic_nodes: u32,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            database: None,
            registry: None,
            host: None,
            host_config: HostConfig::default(),
            clock: Arc::new(SystemClock),
            default_queue: "default".into(),
            migrate: true,
            synchronous: Synchronous::Full,
            pg_schema: "squid_mesh".into(),
            pg_max_connections: 16,
            redaction: RedactionPolicy::default(),
            max_dynamic_nodes: super::dynamic::DEFAULT_MAX_DYNAMIC_NODES,
        }
    }
}

impl EngineBuilder {
    /// Keeps state in the SQLite file at `path` (created if missing).
    #[must_use]
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.database = Some(DatabaseConfig::Sqlite(path.into()));
        self
    }

    /// Keeps state in Postgres at `url`.
    #[must_use]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.database = Some(DatabaseConfig::Postgres(url.into()));
        self
    }

    /// Keeps state in the database file of a SQLite pool the host already has (the tables
    /// live beside the host's own). The engine opens connections of its own to that file,
    /// with its own settings (WAL, busy timeout, `synchronous`); the pool itself is not used.
    #[must_use]
    pub fn sqlite_pool(mut self, pool: sqlx::SqlitePool) -> Self {
        self.database = Some(DatabaseConfig::SqlitePool(pool));
        self
    }

    /// Uses a Postgres pool the host already has; the tables live in
    /// [`EngineBuilder::postgres_schema`] whatever the connections' `search_path`.
    #[must_use]
    pub fn postgres_pool(mut self, pool: sqlx::PgPool) -> Self {
        self.database = Some(DatabaseConfig::PostgresPool(pool));
        self
    }

    /// `postgres://...` or `postgresql://...` selects Postgres; `sqlite://PATH` or a plain
    /// path selects SQLite.
    #[must_use]
    pub fn database_url(self, url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            self.postgres(url)
        } else {
            self.sqlite(url.strip_prefix("sqlite://").unwrap_or(url))
        }
    }

    /// Postgres schema holding the tables (default `squid_mesh`).
    #[must_use]
    pub fn postgres_schema(mut self, schema: impl Into<String>) -> Self {
        self.pg_schema = schema.into();
        self
    }

    /// Most Postgres connections (default 16).
    #[must_use]
    pub fn postgres_max_connections(mut self, n: u32) -> Self {
        self.pg_max_connections = n;
        self
    }

    /// SQLite durability (default [`Synchronous::Full`]).
    #[must_use]
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// The registry actions resolve through (default: empty).
    #[must_use]
    pub fn registry(mut self, registry: ActionRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// A ready action host (its registry is used); otherwise one is built from the registry
    /// and [`EngineBuilder::host_config`].
    #[must_use]
    pub fn action_host(mut self, host: ActionHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Settings of the action host built by the engine.
    #[must_use]
    pub fn host_config(mut self, config: HostConfig) -> Self {
        self.host_config = config;
        self
    }

    /// The clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Queue used when none is given (default `default`).
    #[must_use]
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = queue.into();
        self
    }

    /// What counts as a secret in command metadata and step errors (message and details),
    /// redacted before anything is stored (default: [`RedactionPolicy::default`]).
    #[must_use]
    pub fn redaction(mut self, policy: RedactionPolicy) -> Self {
        self.redaction = policy;
        self
    }

    /// Most nodes (the join included) one call of host code may add to a run as dynamic
    /// work (default 10,000). An action's bound is its own `max_dynamic_nodes` limit.
    #[must_use]
    pub fn max_dynamic_nodes(mut self, n: u32) -> Self {
        self.max_dynamic_nodes = n;
        self
    }

    /// Whether `build` applies migrations (default true).
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Connects, migrates and returns the engine.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] without a database or with a bad queue name,
    /// [`EngineError::Store`] when the database cannot be opened or migrated,
    /// [`EngineError::Action`] when the action host cannot be built.
    pub async fn build(self) -> Result<Engine> {
        if !valid_name(&self.default_queue) {
            return Err(EngineError::invalid_option(
                "default_queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        let store = match self.database {
            None => {
                return Err(EngineError::invalid_option(
                    "database",
                    "set a SQLite path or a Postgres URL",
                ));
            }
            Some(DatabaseConfig::Sqlite(path)) => {
                AnyStore::Sqlite(SqliteStore::open(&path, self.synchronous).await?)
            }
            Some(DatabaseConfig::SqlitePool(pool)) => {
                // The engine works on the pool's file through connections of its own.
                let options = pool.connect_options();
                let path = options.get_filename();
                if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
                    return Err(EngineError::invalid_option(
                        "sqlite_pool",
                        "the pool must be on a database file (an in-memory database cannot be shared)",
                    ));
                }
                AnyStore::Sqlite(SqliteStore::open(path, self.synchronous).await?)
            }
            Some(DatabaseConfig::PostgresPool(pool)) => {
                AnyStore::Postgres(PostgresStore::from_pool(pool, &self.pg_schema)?)
            }
            Some(DatabaseConfig::Postgres(url)) => AnyStore::Postgres(
                PostgresStore::connect(&url, &self.pg_schema, self.pg_max_connections).await?,
            ),
        };
        if self.migrate {
            match &store {
                AnyStore::Sqlite(s) => s.migrate().await?,
                AnyStore::Postgres(s) => s.migrate().await?,
            }
        }
        let host = match self.host {
            Some(h) => h,
            None => ActionHost::new(self.registry.unwrap_or_default(), self.host_config)?,
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                host,
                clock: self.clock,
                default_queue: self.default_queue,
                workflows: RwLock::new(BTreeMap::new()),
                definitions: Mutex::new(HashMap::new()),
                stored_definitions: Mutex::new(std::collections::HashSet::new()),
                idle: Mutex::new(Vec::new()),
                next_idle: std::sync::atomic::AtomicU64::new(0),
                wakeup: Arc::new(tokio::sync::Notify::new()),
                redaction: self.redaction,
                max_dynamic_nodes: self.max_dynamic_nodes,
                schedule_wakeup: Arc::new(tokio::sync::Notify::new()),
                batcher: batch::Batcher::default(),
                catalog: catalog::CatalogCache::default(),
                next_requeue: std::sync::atomic::AtomicI64::new(i64::MIN),
                outcomes: Default::default(),
                fenced: Default::default(),
                claiming: std::sync::atomic::AtomicU64::new(0),
                sampled_queues: Mutex::new(Vec::new()),
                run_waiters: Mutex::new(HashMap::new()),
            }),
        };
        engine.refresh_catalog().await?;
        Ok(engine)
    }
}
