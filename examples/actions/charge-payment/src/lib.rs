//! `payments.charge`: charges a payment, and fails on demand so workflows can show retries,
//! error routes and compensation without a real payment provider.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use squid_mesh_guest::{Action, ActionError, Context, log};

#[derive(Deserialize)]
struct Charge {
    order_id: String,
    amount_cents: i64,
    /// Fail with a retryable `gateway_unavailable` error until this attempt number.
    #[serde(default)]
    succeed_on_attempt: u32,
    /// Delay the gateway asks for before the next attempt, in milliseconds.
    #[serde(default)]
    retry_after_ms: Option<u64>,
    /// Decline the card: a non-retryable error.
    #[serde(default)]
    decline: bool,
    /// Panic with this message (to show how the host reports a crashed action).
    #[serde(default)]
    panic_with: Option<String>,
}

#[derive(Serialize)]
struct Charged {
    charge_id: String,
    order_id: String,
    amount_cents: i64,
    attempt: u32,
}

struct ChargePayment;

impl Action for ChargePayment {
    type Input = Charge;
    type Output = Charged;

    const NAME: Option<&'static str> = Some("payments.charge");

    fn input_schema() -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "type": "object",
            "required": ["order_id", "amount_cents"],
            "additionalProperties": false,
            "properties": {
                "order_id": {"type": "string"},
                "amount_cents": {"type": "integer"},
                "succeed_on_attempt": {"type": "integer", "minimum": 0},
                "retry_after_ms": {"type": "integer", "minimum": 0},
                "decline": {"type": "boolean"},
                "panic_with": {"type": "string"}
            }
        }))
    }

    fn output_schema() -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "type": "object",
            "required": ["charge_id", "order_id", "amount_cents", "attempt"],
            "additionalProperties": false,
            "properties": {
                "charge_id": {"type": "string"},
                "order_id": {"type": "string"},
                "amount_cents": {"type": "integer"},
                "attempt": {"type": "integer"}
            }
        }))
    }

    fn run(ctx: &Context, charge: Charge) -> Result<Charged, ActionError> {
        if let Some(message) = charge.panic_with {
            panic!("{message}");
        }
        if charge.amount_cents <= 0 {
            return Err(ActionError::fatal(
                "invalid_amount",
                "amount must be positive",
            ));
        }
        if charge.decline {
            return Err(ActionError::fatal("card_declined", "the card was declined")
                .with_details(serde_json::json!({ "order_id": charge.order_id })));
        }
        if ctx.attempt() < charge.succeed_on_attempt {
            log::warn(&format!("gateway unavailable on attempt {}", ctx.attempt()));
            let mut err =
                ActionError::retryable("gateway_unavailable", "the payment gateway is unavailable");
            if let Some(ms) = charge.retry_after_ms {
                err = err.retry_after(Duration::from_millis(ms));
            }
            return Err(err);
        }
        // The step's key is the same across retries and redeliveries, so a gateway sees one
        // charge even when an attempt timed out after charging and was retried.
        let charge_id = format!("ch_{}", fnv1a(ctx.step_idempotency_key()));
        log::info(&format!(
            "charged {} cents as {charge_id}",
            charge.amount_cents
        ));
        Ok(Charged {
            charge_id,
            order_id: charge.order_id,
            amount_cents: charge.amount_cents,
            attempt: ctx.attempt(),
        })
    }
}

fn fnv1a(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

squid_mesh_guest::export_action!(ChargePayment);
