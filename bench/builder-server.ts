/*
 * Wire-less fallback for the builder benchmark, used only while `slipway registry` does not mount
 * /api/builds yet: the registry app over filesystem storage with builder/'s routes mounted
 * (mountBuilder), as `slipway registry` will run it. Prints "listening on URL" like the CLI.
 * Run as `node dist/bench/builder-server.js --data DIR --redis URL`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { mountBuilder } from '../builder/index.js';
import { createRegistryApp } from '../registry/index.js';
import { FilesystemDriver, createStore } from '../storage/index.js';

const { values } = parseArgs({ options: { data: { type: 'string' }, redis: { type: 'string' } } });
if (!values.data || !values.redis) throw new Error('usage: builder-server.js --data DIR --redis URL');
const store = createStore(new FilesystemDriver(values.data));
const app = createRegistryApp({ store, log: (err) => console.error('bench registry:', err) });
const mounted = mountBuilder(app.express, { redisUrl: values.redis, store });
const server = createServer(app);
server.listen(0, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`));
const stop = () => {
  server.closeAllConnections();
  server.close();
  void mounted.close().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
