//! `payments.refund`: refunds a charge. Used as the compensation of `payments.charge`.

use serde::{Deserialize, Serialize};
use squid_mesh_guest::{Action, ActionError, Context, log};

#[derive(Deserialize)]
struct Refund {
    charge_id: String,
    amount_cents: i64,
}

/// A refund asked for directly, or as the compensation of a `payments.charge` step (the
/// host hands a compensation the undone step's input and output under `step`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Request {
    Direct(Refund),
    Compensation { step: CompensatedStep },
}

#[derive(Deserialize)]
struct CompensatedStep {
    output: Refund,
}

#[derive(Serialize)]
struct Refunded {
    refund_id: String,
    charge_id: String,
    refunded_cents: i64,
}

struct RefundPayment;

impl Action for RefundPayment {
    type Input = Request;
    type Output = Refunded;

    const NAME: Option<&'static str> = Some("payments.refund");

    fn run(ctx: &Context, request: Request) -> Result<Refunded, ActionError> {
        let refund = match request {
            Request::Direct(r) => r,
            Request::Compensation { step } => step.output,
        };
        if !refund.charge_id.starts_with("ch_") {
            return Err(ActionError::fatal(
                "unknown_charge",
                format!("no charge {}", refund.charge_id),
            ));
        }
        log::info(&format!(
            "refunding {} cents of {}",
            refund.amount_cents, refund.charge_id
        ));
        Ok(Refunded {
            refund_id: format!("re_{}", &refund.charge_id[3..]),
            charge_id: refund.charge_id,
            refunded_cents: refund.amount_cents,
        })
        .inspect(|_| log::debug(&format!("refund attempt {}", ctx.attempt())))
    }
}

squid_mesh_guest::export_action!(RefundPayment);
