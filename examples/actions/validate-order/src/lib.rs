//! `orders.validate`: checks an order's lines and computes its total.

use serde::{Deserialize, Serialize};
use squid_mesh_guest::{Action, ActionError, Context, log};

#[derive(Deserialize)]
struct Order {
    order_id: String,
    #[serde(default)]
    items: Vec<Line>,
    #[serde(default = "default_currency")]
    currency: String,
}

#[derive(Deserialize)]
struct Line {
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
}

fn default_currency() -> String {
    "EUR".to_owned()
}

#[derive(Serialize)]
struct Validated {
    order_id: String,
    total_cents: i64,
    item_count: i64,
    currency: String,
}

struct ValidateOrder;

impl Action for ValidateOrder {
    type Input = Order;
    type Output = Validated;

    const NAME: Option<&'static str> = Some("orders.validate");

    fn run(ctx: &Context, order: Order) -> Result<Validated, ActionError> {
        if order.items.is_empty() {
            return Err(ActionError::fatal(
                "empty_order",
                "an order needs at least one line",
            ));
        }
        let mut total: i64 = 0;
        let mut count: i64 = 0;
        for (i, line) in order.items.iter().enumerate() {
            if line.quantity <= 0 || line.unit_price_cents < 0 {
                return Err(ActionError::fatal(
                    "invalid_line",
                    format!(
                        "line {i} ({}) has a non-positive quantity or a negative price",
                        line.sku
                    ),
                )
                .with_details(serde_json::json!({ "line": i, "sku": line.sku })));
            }
            total = line
                .quantity
                .checked_mul(line.unit_price_cents)
                .and_then(|l| total.checked_add(l))
                .ok_or_else(|| ActionError::fatal("total_overflow", "order total overflows"))?;
            count += line.quantity;
        }
        if order.currency.len() != 3 {
            return Err(ActionError::fatal(
                "invalid_currency",
                "currency must be an ISO 4217 code",
            ));
        }
        log::info(&format!(
            "order {} valid for run {}: {count} items, {total} {}",
            order.order_id,
            ctx.run_id(),
            order.currency
        ));
        Ok(Validated {
            order_id: order.order_id,
            total_cents: total,
            item_count: count,
            currency: order.currency,
        })
    }

    fn input_schema() -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "type": "object",
            "required": ["order_id", "items"],
            "properties": {
                "order_id": {"type": "string"},
                "currency": {"type": "string", "minLength": 3, "maxLength": 3},
                "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["sku", "quantity", "unit_price_cents"],
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "unit_price_cents": {"type": "integer", "minimum": 0}
                    }
                }}
            }
        }))
    }

    fn output_schema() -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "type": "object",
            "required": ["order_id", "total_cents", "item_count", "currency"],
            "properties": {
                "order_id": {"type": "string"},
                "total_cents": {"type": "integer"},
                "item_count": {"type": "integer"},
                "currency": {"type": "string"}
            }
        }))
    }
}

squid_mesh_guest::export_action!(ValidateOrder);
