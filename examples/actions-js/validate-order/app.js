// `orders.validate`: checks an order's lines and computes its total.
//
// The JavaScript twin of examples/actions/validate-order: same input, output, errors and schemas.

import { ActionError, exportAction, field, log } from '../../../guest-sdk/javascript/squid-mesh-guest.js';

function validateOrder(ctx, order) {
  const orderId = field(order, 'order_id', 'string');
  const items = field(order, 'items', 'list', []);
  const currency = field(order, 'currency', 'string', 'EUR');
  if (items.length === 0) {
    throw ActionError.fatal('empty_order', 'an order needs at least one line');
  }
  let total = 0;
  let count = 0;
  items.forEach((line, i) => {
    if (typeof line !== 'object' || line === null || Array.isArray(line)) {
      throw ActionError.fatal('invalid_input', `input does not match: line ${i} is not an object`);
    }
    const sku = field(line, 'sku', 'string');
    const quantity = field(line, 'quantity', 'integer');
    const price = field(line, 'unit_price_cents', 'integer');
    if (quantity <= 0 || price < 0) {
      throw ActionError.fatal(
        'invalid_line',
        `line ${i} (${sku}) has a non-positive quantity or a negative price`,
        { line: i, sku },
      );
    }
    total += quantity * price;
    // JSON numbers are exact up to 2^53 here, not 2^63 as in Rust.
    if (!Number.isSafeInteger(total)) {
      throw ActionError.fatal('total_overflow', 'order total overflows');
    }
    count += quantity;
  });
  if ([...currency].length !== 3) {
    throw ActionError.fatal('invalid_currency', 'currency must be an ISO 4217 code');
  }
  log.info(`order ${orderId} valid for run ${ctx.runId}: ${count} items, ${total} ${currency}`);
  return { order_id: orderId, total_cents: total, item_count: count, currency };
}

export const { run, describe } = exportAction(validateOrder, {
  name: 'orders.validate',
  version: '0.1.0',
  summary: "Checks an order's lines and computes its total",
  inputSchema: {
    type: 'object',
    required: ['order_id', 'items'],
    properties: {
      order_id: { type: 'string' },
      currency: { type: 'string', minLength: 3, maxLength: 3 },
      items: {
        type: 'array',
        items: {
          type: 'object',
          required: ['sku', 'quantity', 'unit_price_cents'],
          properties: {
            sku: { type: 'string' },
            quantity: { type: 'integer', minimum: 1 },
            unit_price_cents: { type: 'integer', minimum: 0 },
          },
        },
      },
    },
  },
  outputSchema: {
    type: 'object',
    required: ['order_id', 'total_cents', 'item_count', 'currency'],
    properties: {
      order_id: { type: 'string' },
      total_cents: { type: 'integer' },
      item_count: { type: 'integer' },
      currency: { type: 'string' },
    },
  },
});
