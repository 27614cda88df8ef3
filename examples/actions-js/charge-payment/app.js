// `payments.charge`: charges a payment, and fails on demand so workflows can show retries,
// error routes and compensation without a real payment provider.
//
// The JavaScript twin of examples/actions/charge-payment: same input, output and errors.

import { ActionError, exportAction, field, log } from '../../../guest-sdk/javascript/squid-mesh-guest.js';

function chargePayment(ctx, charge) {
  const orderId = field(charge, 'order_id', 'string');
  const amountCents = field(charge, 'amount_cents', 'integer');
  const succeedOnAttempt = field(charge, 'succeed_on_attempt', 'integer', 0);
  const retryAfterMs = field(charge, 'retry_after_ms', 'integer', undefined);
  const decline = field(charge, 'decline', 'boolean', false);
  const panicWith = field(charge, 'panic_with', 'string', undefined);
  if (panicWith !== undefined) {
    throw new Error(panicWith);
  }
  if (amountCents <= 0) {
    throw ActionError.fatal('invalid_amount', 'amount must be positive');
  }
  if (decline) {
    throw ActionError.fatal('card_declined', 'the card was declined', { order_id: orderId });
  }
  if (ctx.attempt < succeedOnAttempt) {
    log.warn(`gateway unavailable on attempt ${ctx.attempt}`);
    throw ActionError.retryable('gateway_unavailable', 'the payment gateway is unavailable', retryAfterMs);
  }
  // The step's key is the same across retries and redeliveries, so a gateway sees one
  // charge even when an attempt timed out after charging and was retried.
  const chargeId = `ch_${fnv1a(ctx.stepIdempotencyKey)}`;
  log.info(`charged ${amountCents} cents as ${chargeId}`);
  return { charge_id: chargeId, order_id: orderId, amount_cents: amountCents, attempt: ctx.attempt };
}

function fnv1a(text) {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(text)) {
    h ^= BigInt(b);
    h = BigInt.asUintN(64, h * 0x100000001b3n);
  }
  return h.toString(16).padStart(16, '0');
}

export const { run, describe } = exportAction(chargePayment, {
  name: 'payments.charge',
  version: '0.1.0',
  summary: 'Charges a payment; can be told to fail, retryably or not',
  inputSchema: {
    type: 'object',
    required: ['order_id', 'amount_cents'],
    additionalProperties: false,
    properties: {
      order_id: {type: 'string'},
      amount_cents: {type: 'integer'},
      succeed_on_attempt: {type: 'integer', minimum: 0},
      retry_after_ms: {type: 'integer', minimum: 0},
      decline: {type: 'boolean'},
      panic_with: {type: 'string'},
    },
  },
  outputSchema: {
    type: 'object',
    required: ['charge_id', 'order_id', 'amount_cents', 'attempt'],
    additionalProperties: false,
    properties: {
      charge_id: {type: 'string'},
      order_id: {type: 'string'},
      amount_cents: {type: 'integer'},
      attempt: {type: 'integer'},
    },
  },
});
