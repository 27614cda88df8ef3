"""Write Squid Mesh actions in Python.

An action is a WebAssembly component that runs one step of a workflow. This module hides the
WIT plumbing of `wit/step.wit`: write a function taking a `Context` and the input object (a
`dict`) and returning the output object (a `dict`), raise `ActionError` to fail the step with
a code, and export it:

    from squid_mesh_guest import ActionError, export, log

    def run(ctx, order):
        if not order.get("items"):
            raise ActionError.fatal("empty_order", "an order needs at least one line")
        log.info(f"order {order['order_id']} valid")
        return {"order_id": order["order_id"]}

    WitWorld = export(run, name="orders.validate", version="1.0.0",
                      summary="Checks an order's lines")

Build it with componentize-py (see docs/actions-python.md):

    componentize-py -d wit -w action componentize -p guest-sdk/python -p <dir> app -o app.wasm

Any other exception escaping `run` is a bug, as a panic is in Rust: the component traps and the
host reports a `trap` step error carrying the traceback it captured from standard error.
"""

import json

from componentize_py_types import Err
from wit_world import WitWorld as _Exports
from wit_world.imports import host, types

__all__ = [
    "ActionError",
    "Context",
    "export",
    "field",
    "log",
    "schedule_work",
    "start_child_run",
]


class ActionError(Exception):
    """A step error: a machine-readable code, a message, and whether a retry may help."""

    def __init__(self, code, message, *, retryable=False, retry_after_ms=None, details=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        # Only JSON objects are kept, as in the Rust SDK.
        self.details = details if isinstance(details, dict) else None

    @classmethod
    def fatal(cls, code, message, details=None):
        """An error that retrying cannot fix (bad data, a declined card)."""
        return cls(code, message, details=details)

    @classmethod
    def retryable(cls, code, message, retry_after_ms=None, details=None):
        """An error a later attempt may not hit; `retry_after_ms` overrides the backoff."""
        return cls(code, message, retryable=True, retry_after_ms=retry_after_ms, details=details)

    def _to_wit(self):
        return types.StepError(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
            details=None if self.details is None else _dumps(self.details),
        )


class Context:
    """Where the current attempt sits in its workflow run."""

    def __init__(self, ctx):
        self.run_id = ctx.run_id
        self.workflow = ctx.workflow
        self.step = ctx.step
        # Starts at 1; a retry increments it, a redelivery does not.
        self.attempt = ctx.attempt
        self.runnable_key = ctx.runnable_key
        # This attempt's key: the same across its redeliveries, new for a retry.
        self.idempotency_key = ctx.idempotency_key
        # The step's key: the same across retries and redeliveries. Pass it to systems that
        # must act once per step (a payment provider), so a retry does not act twice.
        self.step_idempotency_key = ctx.step_idempotency_key
        self.continue_after_ms = None

    def trace_parent(self):
        """The W3C `traceparent` of this attempt's span (or None): send it as the `traceparent`
        header of outbound calls so they join the run's trace."""
        return host.trace_parent()

    def continue_after(self, ms):
        """Asks the host to continue the run only after `ms` milliseconds, once this succeeds."""
        self.continue_after_ms = int(ms)


class log:
    """Logging through the host, attributed to the current step attempt."""

    @staticmethod
    def trace(message):
        host.log(host.Level.TRACE, message)

    @staticmethod
    def debug(message):
        host.log(host.Level.DEBUG, message)

    @staticmethod
    def info(message):
        host.log(host.Level.INFO, message)

    @staticmethod
    def warn(message):
        host.log(host.Level.WARN, message)

    @staticmethod
    def error(message):
        host.log(host.Level.ERROR, message)


_MISSING = object()
_KINDS = {
    str: "a string",
    int: "an integer",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


def field(obj, name, kind, default=_MISSING):
    """Reads `obj[name]` and checks its type; raises `ActionError` `invalid_input` otherwise.

    `bool` is not accepted where `int` is asked for, as in JSON.
    """
    if name not in obj or obj[name] is None:
        if default is _MISSING:
            raise ActionError.fatal("invalid_input", f"input does not match: missing field `{name}`")
        return default
    value = obj[name]
    wrong_bool = kind is int and isinstance(value, bool)
    if not isinstance(value, kind) or wrong_bool:
        raise ActionError.fatal(
            "invalid_input",
            f"input does not match: field `{name}` must be {_KINDS.get(kind, kind.__name__)}",
        )
    return value


def start_child_run(workflow, payload, child_key, trigger=None):
    """Starts a child run of `workflow` from the current step; returns the child's run id.

    The same `child_key` from the same step returns the same child, also across retries. The
    registry must grant the action the `child_runs` capability; otherwise this raises a
    retryable `ActionError` `child_run_refused` carrying the host's reason.
    """
    try:
        return host.start_child_run(workflow, trigger, _dumps(payload), child_key)
    except Err as refused:
        raise ActionError.retryable("child_run_refused", str(refused.value)) from None


def schedule_work(work):
    """Adds dynamic work to the run from the current step; returns the host's receipt (a dict:
    `key`, `duplicate`, `nodes`, ...).

    `work` is a dict: `key`, `nodes` (each `id`, `action`, optional `input`, `retry`,
    `output`), optional `edges`, `join`, `reason`, `metadata`. The step's successors wait
    until the work has finished; the same work under the same key is added once, also across
    retries. The registry must grant the action `dynamic_work`. A refused work raises
    `ActionError` `invalid_dynamic_work` (not retryable); other refusals raise a retryable
    `dynamic_work_refused`.
    """
    try:
        return json.loads(host.schedule_work(_dumps(work)))
    except Err as refused:
        reason = str(refused.value)
        if reason.startswith("invalid_dynamic_work"):
            raise ActionError.fatal("invalid_dynamic_work", reason) from None
        raise ActionError.retryable("dynamic_work_refused", reason) from None


def _dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def export(run, *, name, version, summary, input_schema=None, output_schema=None):
    """Builds the component's exports from `run(ctx, input) -> dict`.

    Assign the result to `WitWorld` at the top level of the app module: componentize-py looks
    the exports up under that name.
    """
    description = types.ActionDescription(
        name=name,
        version=version,
        summary=summary,
        input_schema=None if input_schema is None else _dumps(input_schema),
        output_schema=None if output_schema is None else _dumps(output_schema),
    )

    class WitWorld(_Exports):
        def run(self, ctx, input):
            try:
                data = json.loads(input)
            except ValueError as e:
                raise Err(ActionError.fatal("invalid_input", f"input is not JSON: {e}")._to_wit())
            if not isinstance(data, dict):
                raise Err(
                    ActionError.fatal("invalid_input", "input must be a JSON object")._to_wit()
                )
            context = Context(ctx)
            try:
                output = run(context, data)
            except ActionError as e:
                raise Err(e._to_wit()) from None
            if not isinstance(output, dict):
                raise Err(
                    ActionError.fatal(
                        "invalid_output", "output must serialize to a JSON object"
                    )._to_wit()
                )
            return types.StepSuccess(
                output=_dumps(output), continue_after_ms=context.continue_after_ms
            )

        def describe(self):
            return description

    return WitWorld
