/*
 * The builder's client door: what `slipway build` needs on a developer's
 * machine (pack the context, encode the request). It loads none of the queue,
 * worker or executor modules: importing builder/index.ts pulls in bullmq and
 * ioredis, which cost 0.2–0.5 s of a no-op rebuild's ~0.4 s here.
 */
export { packContext, type PackStats } from './build-context.js';
export { buildQuery, validateRef } from './spec.js';
export { SECRETS_CONTENT_TYPE, secretsLine } from './secrets-wire.js';
