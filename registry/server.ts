import type { Express } from 'express';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { purgeUploads, type Store } from '../storage/index.js';
import { createRegistryApp } from './app.js';
import type { BodyLimits } from './body-guard.js';
import { createMetrics, type RegistryMetrics } from './metrics.js';
import { startNotifier, type NotificationSettings } from './notifications.js';

export interface RegistryServerOptions {
  store: Store;
  host: string;
  port: number;
  deleteEnabled?: boolean;
  redirect?: boolean;
  /** Upload sessions older than this (ms) are removed at start and hourly. Default 7 days. */
  uploadMaxAge?: number;
  log?: (err: unknown) => void;
  /** How long request bodies may stall or trickle (registry/body-guard.ts); unset fields keep the defaults. */
  bodyLimits?: Partial<BodyLimits>;
  /** Webhooks; their queue lives in the Redis at `redisUrl`, which is then required. */
  notifications?: NotificationSettings | null;
  redisUrl?: string;
}

export interface RunningRegistry {
  url: string;
  port: number;
  server: Server;
  /** The express app that serves every route outside /v2/ (management API, hooks). */
  express: Express;
  /** What GET /metrics serves; GC callers report here (recordGcRun). */
  metrics: RegistryMetrics;
  close(): Promise<void>;
}

const HOUR = 3600_000;

export async function startRegistry(opts: RegistryServerOptions): Promise<RunningRegistry> {
  const metrics = createMetrics();
  if (opts.notifications && !opts.redisUrl) {
    throw new Error('notifications need Redis for their delivery queue: set redis (--redis, SLIPWAY_REDIS_URL or `redis:` in the config) or remove the notifications section');
  }
  const notifier = opts.notifications ? startNotifier(opts.notifications, opts.redisUrl!, opts.log ?? ((err) => console.error(err))) : undefined;
  if (notifier) metrics.setBacklogSource(notifier.backlog);
  const app = createRegistryApp({ ...opts, metrics, notifier });
  const server = createServer(app);
  // Blob uploads may take long: no overall request deadline, only one for headers.
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const maxAge = opts.uploadMaxAge ?? 7 * 24 * HOUR;
  const janitor = () => purgeUploads(opts.store, maxAge).catch((err: unknown) => opts.log?.(err));
  void janitor();
  const timer = setInterval(janitor, HOUR);
  timer.unref();
  const { port } = server.address() as AddressInfo;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}`,
    port,
    server,
    express: app.express,
    metrics,
    close: async () => {
      clearInterval(timer);
      server.closeIdleConnections();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        setTimeout(() => {
          server.closeAllConnections();
        }, 2000).unref();
      });
      await notifier?.close();
    },
  };
}
