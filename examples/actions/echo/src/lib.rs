//! `echo`: returns its input unchanged.
//!
//! A few optional input fields make it probe its sandbox, so tests can show what an action
//! can and cannot reach: `sleep_ms` sleeps (a slow step), `print_lines` writes to standard output, `log_lines` logs through
//! the host, `env_var` reads an environment variable, `read_file` reads a file, `connect`
//! opens a TCP connection, `start_child` (`{workflow, key, payload}`) starts a child run and
//! `trace: true` returns the step's `traceparent`. Each probe's result is added to the output.

use serde_json::{Map, Value, json};
use squid_mesh_guest::{Action, ActionError, Context, log};

struct Echo;

impl Action for Echo {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    const NAME: Option<&'static str> = Some("echo");

    fn run(ctx: &Context, input: Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
        let count = |key: &str| input.get(key).and_then(Value::as_u64).unwrap_or(0);
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        if count("sleep_ms") > 0 {
            std::thread::sleep(std::time::Duration::from_millis(count("sleep_ms")));
        }
        for i in 0..count("print_lines") {
            println!("echo line {i}");
        }
        for i in 0..count("log_lines") {
            log::info(&format!("echo log {i}"));
        }
        let mut output = input.clone();
        if input.get("trace") == Some(&Value::Bool(true)) {
            output.insert("trace_parent".into(), json!(ctx.trace_parent()));
        }
        if let Some(name) = text("env_var") {
            output.insert("env_value".into(), json!(std::env::var(name).ok()));
        }
        if let Some(path) = text("read_file") {
            let result = match std::fs::read_to_string(path) {
                Ok(contents) => json!({ "ok": contents }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            output.insert("file".into(), result);
        }
        if let Some(addr) = text("connect") {
            let result = match std::net::TcpStream::connect(addr) {
                Ok(_) => json!({ "ok": true }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            output.insert("connect_result".into(), result);
        }
        if let Some(child) = input.get("start_child") {
            let workflow = child
                .get("workflow")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let key = child.get("key").and_then(Value::as_str).unwrap_or_default();
            let payload = child.get("payload").cloned().unwrap_or_else(|| json!({}));
            let result = match squid_mesh_guest::start_child_run(workflow, None, &payload, key) {
                Ok(id) => json!({ "ok": id }),
                Err(e) => json!({ "error": e.to_string() }),
            };
            output.insert("child".into(), result);
        }
        Ok(output)
    }
}

squid_mesh_guest::export_action!(Echo);
