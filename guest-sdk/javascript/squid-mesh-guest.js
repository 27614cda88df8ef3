// Write Squid Mesh actions in JavaScript.
//
// An action is a WebAssembly component that runs one step of a workflow. This module hides
// the WIT plumbing of `wit/step.wit`: write a function taking a context and the input object
// and returning the output object, throw an `ActionError` to fail the step with a code, and
// export what `exportAction` returns:
//
//     import { ActionError, exportAction, log } from './squid-mesh-guest.js';
//
//     export const { run, describe } = exportAction((ctx, order) => {
//       if (!order.items?.length) throw ActionError.fatal('empty_order', 'an order needs a line');
//       log.info(`order ${order.order_id} valid`);
//       return { order_id: order.order_id };
//     }, { name: 'orders.validate', version: '1.0.0', summary: "Checks an order's lines" });
//
// Build it with componentize-js (see docs/actions-javascript.md):
//
//     componentize-js app.js --wit wit -n action -d http fetch-event -o app.wasm
//
// Any other exception escaping the function is a bug, as a panic is in Rust: the component
// traps and the host reports a `trap` step error carrying the message it captured from
// standard error.

import * as host from 'squid-mesh:step/host@0.2.0';

/** A step error: a machine-readable code, a message, and whether a retry may help. */
export class ActionError extends Error {
  constructor(code, message, { retryable = false, retryAfterMs, details } = {}) {
    super(`${code}: ${message}`);
    this.code = code;
    this.reason = message;
    this.retryable = retryable;
    this.retryAfterMs = retryAfterMs;
    // Only JSON objects are kept, as in the Rust SDK.
    this.details = isObject(details) ? details : undefined;
  }

  /** An error that retrying cannot fix (bad data, a declined card). */
  static fatal(code, message, details) {
    return new ActionError(code, message, { details });
  }

  /** An error a later attempt may not hit; `retryAfterMs` overrides the step's backoff. */
  static retryable(code, message, retryAfterMs, details) {
    return new ActionError(code, message, { retryable: true, retryAfterMs, details });
  }

  toWit() {
    return {
      code: this.code,
      message: this.reason,
      retryable: this.retryable,
      retryAfterMs: this.retryAfterMs == null ? undefined : BigInt(this.retryAfterMs),
      details: this.details === undefined ? undefined : JSON.stringify(this.details),
    };
  }
}

/** Logging through the host, attributed to the current step attempt. */
export const log = {
  trace: (message) => host.log('trace', message),
  debug: (message) => host.log('debug', message),
  info: (message) => host.log('info', message),
  warn: (message) => host.log('warn', message),
  error: (message) => host.log('error', message),
};

const KINDS = {
  string: ['a string', (v) => typeof v === 'string'],
  integer: ['an integer', (v) => Number.isSafeInteger(v)],
  boolean: ['a boolean', (v) => typeof v === 'boolean'],
  list: ['a list', (v) => Array.isArray(v)],
  object: ['an object', isObject],
};

/**
 * Reads `obj[name]` and checks its kind (`string`, `integer`, `boolean`, `list`, `object`);
 * throws an `invalid_input` `ActionError` otherwise. A missing or null field gives `fallback`
 * when one is passed.
 */
export function field(obj, name, kind, ...fallback) {
  const value = obj[name];
  if (value === undefined || value === null) {
    if (fallback.length > 0) return fallback[0];
    throw ActionError.fatal('invalid_input', `input does not match: missing field \`${name}\``);
  }
  const [label, check] = KINDS[kind];
  if (!check(value)) {
    throw ActionError.fatal('invalid_input', `input does not match: field \`${name}\` must be ${label}`);
  }
  return value;
}

/**
 * Starts a child run of `workflow` from the current step; returns the child's run id.
 *
 * The same `childKey` from the same step returns the same child, also across retries. The
 * registry must grant the action the `child_runs` capability; otherwise this throws a
 * retryable `child_run_refused` `ActionError` carrying the host's reason.
 */
export function startChildRun(workflow, payload, childKey, trigger) {
  try {
    return host.startChildRun(workflow, trigger, JSON.stringify(payload), childKey);
  } catch (refused) {
    throw ActionError.retryable('child_run_refused', String(refused?.payload ?? refused));
  }
}

/**
 * Adds dynamic work to the run from the current step; returns the host's receipt (`key`,
 * `duplicate`, `nodes`, ...). `work` is an object: `key`, `nodes` (each `id`, `action`,
 * optional `input`, `retry`, `output`), optional `edges`, `join`, `reason`, `metadata`. The
 * step's successors wait until the work has finished; the same work under the same key is
 * added once, also across retries. The registry must grant the action `dynamic_work`. A
 * refused work throws a non-retryable `invalid_dynamic_work` `ActionError`; other refusals a
 * retryable `dynamic_work_refused`.
 */
export function scheduleWork(work) {
  let receipt;
  try {
    receipt = host.scheduleWork(JSON.stringify(work));
  } catch (refused) {
    const reason = String(refused?.payload ?? refused);
    if (reason.startsWith('invalid_dynamic_work')) {
      throw ActionError.fatal('invalid_dynamic_work', reason);
    }
    throw ActionError.retryable('dynamic_work_refused', reason);
  }
  return JSON.parse(receipt);
}

/**
 * Builds the component's `run` and `describe` exports from `fn(ctx, input) -> object`.
 *
 * `ctx` holds `runId`, `workflow`, `step`, `attempt` (from 1; a retry increments it, a
 * redelivery does not), `runnableKey`, `idempotencyKey` (this attempt's key, the same across
 * its redeliveries), `stepIdempotencyKey` (the step's key, the same across retries and
 * redeliveries: pass it to systems that must act once per step), `traceParent()` (the W3C
 * `traceparent` of the attempt's span, for outbound calls) and `continueAfter(ms)`.
 */
export function exportAction(fn, { name, version, summary, inputSchema, outputSchema }) {
  const description = {
    name,
    version,
    summary,
    inputSchema: inputSchema === undefined ? undefined : JSON.stringify(inputSchema),
    outputSchema: outputSchema === undefined ? undefined : JSON.stringify(outputSchema),
  };
  const run = (wctx, text) => {
    let input;
    try {
      input = JSON.parse(text);
    } catch (e) {
      throw ActionError.fatal('invalid_input', `input is not JSON: ${e.message}`).toWit();
    }
    if (!isObject(input)) {
      throw ActionError.fatal('invalid_input', 'input must be a JSON object').toWit();
    }
    let continueAfterMs;
    const ctx = {
      runId: wctx.runId,
      workflow: wctx.workflow,
      step: wctx.step,
      attempt: wctx.attempt,
      runnableKey: wctx.runnableKey,
      idempotencyKey: wctx.idempotencyKey,
      stepIdempotencyKey: wctx.stepIdempotencyKey,
      traceParent() {
        return host.traceParent();
      },
      continueAfter(ms) {
        continueAfterMs = BigInt(ms);
      },
    };
    let output;
    try {
      output = fn(ctx, input);
    } catch (e) {
      if (e instanceof ActionError) throw e.toWit();
      // A bug: report it on stderr and trap, so the host sees a `trap` with the message.
      console.error(`action failed: ${e}\n${e?.stack ?? ''}`);
      trap();
    }
    if (!isObject(output)) {
      throw ActionError.fatal('invalid_output', 'output must serialize to a JSON object').toWit();
    }
    return { output: JSON.stringify(output), continueAfterMs };
  };
  return { run, describe: () => description };
}

function isObject(v) {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// An exception escaping an export with a `result` type is taken as its error payload. This
// one is not a step error (it has no code), so lowering it fails and the component traps.
function trap() {
  throw { trap: true };
}
