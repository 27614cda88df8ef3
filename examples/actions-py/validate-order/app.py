"""`orders.validate`: checks an order's lines and computes its total.

The Python twin of examples/actions/validate-order: same input, output, errors and schemas.
"""

from squid_mesh_guest import ActionError, export, field, log

I64_MAX = (1 << 63) - 1


def run(ctx, order):
    order_id = field(order, "order_id", str)
    items = field(order, "items", list, [])
    currency = field(order, "currency", str, "EUR")
    if not items:
        raise ActionError.fatal("empty_order", "an order needs at least one line")
    total = 0
    count = 0
    for i, line in enumerate(items):
        if not isinstance(line, dict):
            raise ActionError.fatal("invalid_input", f"input does not match: line {i} is not an object")
        sku = field(line, "sku", str)
        quantity = field(line, "quantity", int)
        price = field(line, "unit_price_cents", int)
        if quantity <= 0 or price < 0:
            raise ActionError.fatal(
                "invalid_line",
                f"line {i} ({sku}) has a non-positive quantity or a negative price",
                details={"line": i, "sku": sku},
            )
        total += quantity * price
        if total > I64_MAX:
            raise ActionError.fatal("total_overflow", "order total overflows")
        count += quantity
    if len(currency) != 3:
        raise ActionError.fatal("invalid_currency", "currency must be an ISO 4217 code")
    log.info(f"order {order_id} valid for run {ctx.run_id}: {count} items, {total} {currency}")
    return {"order_id": order_id, "total_cents": total, "item_count": count, "currency": currency}


WitWorld = export(
    run,
    name="orders.validate",
    version="0.1.0",
    summary="Checks an order's lines and computes its total",
    input_schema={
        "type": "object",
        "required": ["order_id", "items"],
        "properties": {
            "order_id": {"type": "string"},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sku", "quantity", "unit_price_cents"],
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "unit_price_cents": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
    },
    output_schema={
        "type": "object",
        "required": ["order_id", "total_cents", "item_count", "currency"],
        "properties": {
            "order_id": {"type": "string"},
            "total_cents": {"type": "integer"},
            "item_count": {"type": "integer"},
            "currency": {"type": "string"},
        },
    },
)
