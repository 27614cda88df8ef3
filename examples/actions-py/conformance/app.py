"""`conformance`: every part of the action contract, selected by the input's `op` field.

The same action exists in Rust (examples/actions/conformance) and JavaScript
(examples/actions-js/conformance); tests/tests/conformance.rs runs one list of cases against
each build through the real host.
"""

from squid_mesh_guest import ActionError, export, field, log

LEVELS = {
    "trace": log.trace,
    "debug": log.debug,
    "info": log.info,
    "warn": log.warn,
    "error": log.error,
}


def run(ctx, input):
    op = field(input, "op", str)
    if op == "transform":
        text = field(input, "text", str)
        numbers = field(input, "numbers", list, [])
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise ActionError.fatal("invalid_input", "input does not match: `numbers` must hold integers")
        return {
            "upper": text.upper(),
            "reversed": text[::-1],
            "length": len(text),
            "sum": sum(numbers),
            "context": {
                "run_id": ctx.run_id,
                "workflow": ctx.workflow,
                "step": ctx.step,
                "attempt": ctx.attempt,
                "runnable_key": ctx.runnable_key,
                "idempotency_key": ctx.idempotency_key,
                "step_idempotency_key": ctx.step_idempotency_key,
            },
        }
    if op == "echo":
        return {"value": input.get("value")}
    if op == "fail_retryable":
        raise ActionError.retryable(
            "dependency_busy",
            "the dependency is busy",
            retry_after_ms=field(input, "retry_after_ms", int),
        )
    if op == "fail_fatal":
        reason = field(input, "reason", str)
        raise ActionError.fatal(
            "request_rejected",
            f"rejected: {reason}",
            details={"reason": reason, "attempt": ctx.attempt},
        )
    if op == "log":
        lines = field(input, "lines", list)
        for line in lines:
            level = line.get("level") if isinstance(line, dict) else None
            if level not in LEVELS or not isinstance(line.get("message"), str):
                raise ActionError.fatal(
                    "invalid_input", "input does not match: each line needs a level and a message"
                )
            LEVELS[level](line["message"])
        return {"logged": len(lines)}
    if op == "continue":
        ctx.continue_after(field(input, "after_ms", int))
        return {"continued": True}
    if op == "spin":
        n = 0
        while True:
            n += 1
    if op == "allocate":
        mib = field(input, "mib", int)
        block = bytearray(mib << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return {"allocated_mib": mib}
    if op == "crash":
        raise RuntimeError(field(input, "message", str))
    raise ActionError.fatal("unknown_op", f"unknown op {op}", details={"op": op})


WitWorld = export(
    run,
    name="conformance",
    version="1.0.0",
    summary="Exercises the action contract: transformation, step errors, logs, continue-after and sandbox limits",
    input_schema={
        "type": "object",
        "required": ["op"],
        "properties": {
            "op": {
                "type": "string",
                "enum": [
                    "transform",
                    "echo",
                    "fail_retryable",
                    "fail_fatal",
                    "log",
                    "continue",
                    "spin",
                    "allocate",
                    "crash",
                ],
            }
        },
    },
)
