//! End-to-end tests of Squid Mesh: real components, real databases, real processes.
//!
//! The `e2e-worker` binary is a minimal host process the tests start, stop and kill.

/// Runs `body(url, schema)` against a fresh Postgres schema named after `tag`, then drops it.
/// Outside CI, `SQUID_MESH_SKIP_POSTGRES` skips it with a loud message.
pub fn on_postgres(tag: &str, body: impl FnOnce(&str, &str)) {
    let url = std::env::var("SQUID_MESH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if std::env::var_os("SQUID_MESH_SKIP_POSTGRES").is_some()
        && std::env::var("CI").as_deref() != Ok("true")
    {
        eprintln!("\n!!!!! SKIPPING POSTGRES: SQUID_MESH_SKIP_POSTGRES is set !!!!!\n");
        return;
    }
    let schema = format!("sm_{tag}_{}", std::process::id());
    body(&url, &schema);
    let _ = std::process::Command::new("psql")
        .args([
            url.as_str(),
            "-qc",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
}
