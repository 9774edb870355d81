/*
 * For information only: what `slipway build` costs once its client stops loading the whole
 * builder (bullmq, ioredis, express, the executor) through builder/index.ts just to pack the
 * context. Same steps as cli/build.ts's buildAction (pack, submit, follow the log, read the
 * record), but importing only build-context.js and spec.js. Deep imports on purpose: this file
 * measures the proposed light client door; it is not a pattern for the product.
 * Run as `node dist/bench/builder-cli-light.js SERVER REF CONTEXT`.
 */
import { resolve } from 'node:path';
import { packContext } from '../builder/build-context.js';
import { buildQuery, validateRef } from '../builder/spec.js';
import { apiJson, followBuild, submitBuild } from '../cli/build-client.js';

const [server, ref, context] = process.argv.slice(2);
if (!server || !ref || !context) throw new Error('usage: builder-cli-light.js SERVER REF CONTEXT');
const packed = await packContext(resolve(context), 'Dockerfile');
const spec = { tags: [validateRef(ref)], dockerfile: packed.dockerfile, buildArgs: {}, labels: {}, noCache: false, network: 'none' as const, secrets: [] };
const record = await submitBuild(server, buildQuery(spec), packed.stream);
await followBuild(server, record.id, (e) => (e.type === 'line' ? void process.stdout.write(`${e.text}\n`) : undefined));
const done = await apiJson<{ status: string; imageDigest?: string }>(server, `/api/builds/${record.id}`);
if (done.status !== 'succeeded') throw new Error(`build ${record.id} ${done.status}`);
console.log(done.imageDigest);
