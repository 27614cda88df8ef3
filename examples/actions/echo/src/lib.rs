//! `echo`: returns its input unchanged. With `print_lines` it writes to standard output and
//! with `log_lines` it logs through the host, to exercise the host's output bounds.

use serde_json::{Map, Value};
use squid_mesh_guest::{Action, ActionError, Context, log};

struct Echo;

impl Action for Echo {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    const NAME: Option<&'static str> = Some("echo");

    fn run(_ctx: &Context, input: Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
        let count = |key: &str| input.get(key).and_then(Value::as_u64).unwrap_or(0);
        for i in 0..count("print_lines") {
            println!("echo line {i}");
        }
        for i in 0..count("log_lines") {
            log::info(&format!("echo log {i}"));
        }
        Ok(input)
    }
}

squid_mesh_guest::export_action!(Echo);
