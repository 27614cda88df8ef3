"""`payments.charge`: charges a payment, and fails on demand so workflows can show retries,
error routes and compensation without a real payment provider.

The Python twin of examples/actions/charge-payment: same input, output and errors.
"""

from squid_mesh_guest import ActionError, export, field, log


def run(ctx, charge):
    order_id = field(charge, "order_id", str)
    amount_cents = field(charge, "amount_cents", int)
    succeed_on_attempt = field(charge, "succeed_on_attempt", int, 0)
    retry_after_ms = field(charge, "retry_after_ms", int, None)
    decline = field(charge, "decline", bool, False)
    panic_with = field(charge, "panic_with", str, None)
    if panic_with is not None:
        raise RuntimeError(panic_with)
    if amount_cents <= 0:
        raise ActionError.fatal("invalid_amount", "amount must be positive")
    if decline:
        raise ActionError.fatal(
            "card_declined", "the card was declined", details={"order_id": order_id}
        )
    if ctx.attempt < succeed_on_attempt:
        log.warn(f"gateway unavailable on attempt {ctx.attempt}")
        raise ActionError.retryable(
            "gateway_unavailable",
            "the payment gateway is unavailable",
            retry_after_ms=retry_after_ms,
        )
    # The step's key is the same across retries and redeliveries, so a gateway sees one
    # charge even when an attempt timed out after charging and was retried.
    charge_id = f"ch_{fnv1a(ctx.step_idempotency_key)}"
    log.info(f"charged {amount_cents} cents as {charge_id}")
    return {
        "charge_id": charge_id,
        "order_id": order_id,
        "amount_cents": amount_cents,
        "attempt": ctx.attempt,
    }


def fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


WitWorld = export(
    run,
    name="payments.charge",
    version="0.1.0",
    summary="Charges a payment; can be told to fail, retryably or not",
    input_schema={
        "type": "object",
        "required": ["order_id", "amount_cents"],
        "additionalProperties": False,
        "properties": {
            "order_id": {"type": "string"},
            "amount_cents": {"type": "integer"},
            "succeed_on_attempt": {"type": "integer", "minimum": 0},
            "retry_after_ms": {"type": "integer", "minimum": 0},
            "decline": {"type": "boolean"},
            "panic_with": {"type": "string"},
        },
    },
    output_schema={
        "type": "object",
        "required": ["charge_id", "order_id", "amount_cents", "attempt"],
        "additionalProperties": False,
        "properties": {
            "charge_id": {"type": "string"},
            "order_id": {"type": "string"},
            "amount_cents": {"type": "integer"},
            "attempt": {"type": "integer"},
        },
    },
)
