// `conformance`: every part of the action contract, selected by the input's `op` field.
//
// The same action exists in Rust (examples/actions/conformance) and Python
// (examples/actions-py/conformance); tests/tests/conformance.rs runs one list of cases against
// each build through the real host.

import { ActionError, exportAction, field, log } from '../../../guest-sdk/javascript/squid-mesh-guest.js';

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

function conformance(ctx, input) {
  const op = field(input, 'op', 'string');
  switch (op) {
    case 'transform': {
      const text = field(input, 'text', 'string');
      const numbers = field(input, 'numbers', 'list', []);
      if (!numbers.every((n) => Number.isSafeInteger(n))) {
        throw ActionError.fatal('invalid_input', 'input does not match: `numbers` must hold integers');
      }
      const chars = [...text];
      return {
        upper: text.toUpperCase(),
        reversed: chars.reverse().join(''),
        length: chars.length,
        sum: numbers.reduce((a, b) => a + b, 0),
        context: {
          run_id: ctx.runId,
          workflow: ctx.workflow,
          step: ctx.step,
          attempt: ctx.attempt,
          runnable_key: ctx.runnableKey,
          idempotency_key: ctx.idempotencyKey,
          step_idempotency_key: ctx.stepIdempotencyKey,
        },
      };
    }
    case 'echo':
      return { value: input.value ?? null };
    case 'fail_retryable':
      throw ActionError.retryable('dependency_busy', 'the dependency is busy', field(input, 'retry_after_ms', 'integer'));
    case 'fail_fatal': {
      const reason = field(input, 'reason', 'string');
      throw ActionError.fatal('request_rejected', `rejected: ${reason}`, { reason, attempt: ctx.attempt });
    }
    case 'log': {
      const lines = field(input, 'lines', 'list');
      for (const line of lines) {
        if (!LEVELS.includes(line?.level) || typeof line.message !== 'string') {
          throw ActionError.fatal('invalid_input', 'input does not match: each line needs a level and a message');
        }
        log[line.level](line.message);
      }
      return { logged: lines.length };
    }
    case 'continue':
      ctx.continueAfter(field(input, 'after_ms', 'integer'));
      return { continued: true };
    case 'spin': {
      let n = 0;
      for (;;) n += 1;
    }
    case 'allocate': {
      const mib = field(input, 'mib', 'integer');
      const block = new Uint8Array(mib << 20);
      for (let i = 0; i < block.length; i += 4096) block[i] = 1;
      return { allocated_mib: mib };
    }
    case 'crash':
      throw new Error(field(input, 'message', 'string'));
    default:
      throw ActionError.fatal('unknown_op', `unknown op ${op}`, { op });
  }
}

export const { run, describe } = exportAction(conformance, {
  name: 'conformance',
  version: '1.0.0',
  summary: 'Exercises the action contract: transformation, step errors, logs, continue-after and sandbox limits',
  inputSchema: {
    type: 'object',
    required: ['op'],
    properties: {
      op: {
        type: 'string',
        enum: ['transform', 'echo', 'fail_retryable', 'fail_fatal', 'log', 'continue', 'spin', 'allocate', 'crash'],
      },
    },
  },
});
