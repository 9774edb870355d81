/*
 * Redis for the builder: connections with a clear error when the server is not
 * there, the key layout, and a redis-server of our own for `slipway up` and tests.
 *
 * Keys (every one under a prefix, default "slipway", so several installations
 * or test runs can share one Redis):
 *   <prefix>:build-index            ZSET   build ids scored by creation order
 *   <prefix>:build-sequence         STRING the last creation order given out
 *   <prefix>:build:<id>             HASH   the build record (records.ts)
 *   <prefix>:build:<id>:steps       HASH   step index → BuildStep JSON
 *   <prefix>:build:<id>:log         STREAM log entries {t: line|step|status|end, d} (logs.ts)
 *   <prefix>:build:<id>:secrets     HASH   secret id → value sealed under the registry's key
 *                                          (aad "<id>/<secret id>"); deleted when the build ends
 *   <prefix>:triggers               HASH   "<repo>#<branch>" → Trigger JSON (triggers.ts)
 *   <prefix>:hook-delivery:<id>     STRING a webhook delivery already accepted (expires)
 *   <prefix>:hook-body:<sha256>     STRING the delivery id that first brought this webhook body (expires)
 *   <prefix>:cancel                 pub/sub channel: build ids to cancel
 *   <prefix>:builds:*               BullMQ's queue "builds" (BullMQ prefix = <prefix>)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { redactUrl, redactUrls } from './redact.js';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
export const DEFAULT_PREFIX = 'slipway';
export const QUEUE_NAME = 'builds';

/** Where the builder's data lives in Redis. */
export interface BuilderSpace {
  redisUrl: string;
  prefix: string;
}

export const keys = (prefix: string) => ({
  index: `${prefix}:build-index`,
  sequence: `${prefix}:build-sequence`,
  record: (id: string) => `${prefix}:build:${id}`,
  steps: (id: string) => `${prefix}:build:${id}:steps`,
  log: (id: string) => `${prefix}:build:${id}:log`,
  secrets: (id: string) => `${prefix}:build:${id}:secrets`,
  triggers: `${prefix}:triggers`,
  delivery: (id: string) => `${prefix}:hook-delivery:${id}`,
  hookBody: (sha256: string) => `${prefix}:hook-body:${sha256}`,
  cancel: `${prefix}:cancel`,
});

export class RedisUnreachableError extends Error {
  /** The URL without its credentials: this message reaches HTTP clients and logs. */
  readonly url: string;
  constructor(url: string, cause: string) {
    super(
      `Redis at ${redactUrl(url)} is not reachable (${cause}). Start one (\`slipway up\` starts its own) ` +
        `or point --redis / SLIPWAY_REDIS_URL at a running Redis.`,
    );
    this.url = redactUrl(url);
  }
}

/**
 * A long-lived connection: reconnects forever and queues commands while Redis
 * is away (what BullMQ workers need: `maxRetriesPerRequest: null`).
 *
 * `failFast` is for connections that serve HTTP requests: a command waiting while
 * Redis is away fails at the next failed reconnect (`maxRetriesPerRequest: 0`), and
 * any command fails after `commandTimeout`, so a request answers 503 instead of hanging.
 */
export function connectRedis(url: string, name = 'slipway', opts: { failFast?: boolean } = {}): Redis {
  const options = opts.failFast ? { maxRetriesPerRequest: 0, commandTimeout: REQUEST_COMMAND_TIMEOUT_MS } : { maxRetriesPerRequest: null };
  const redis = new Redis(url, { ...options, connectionName: name, lazyConnect: false });
  // Reconnection is automatic; the error is kept to explain a failed pingRedis.
  redis.on('error', (err: Error) => lastErrors.set(redis, err.message));
  redis.on('ready', () => {
    lastErrors.delete(redis);
    wasReady.add(redis);
  });
  return redis;
}

/** Longer than any blocking read of a request (a log follower's XREAD BLOCK waits 2 s). */
const REQUEST_COMMAND_TIMEOUT_MS = 5000;
const lastErrors = new WeakMap<Redis, string>();
const wasReady = new WeakSet<Redis>();

/**
 * Throws RedisUnreachableError at once when the connection is down (it failed, or
 * it was up and is reconnecting); a connection still making its first attempt is
 * let through (its commands wait for it, bounded by the fail-fast options).
 */
export function whenRedisUp(redis: Redis, url: string): void {
  if (redis.status === 'ready') return;
  const why = lastErrors.get(redis) ?? (wasReady.has(redis) ? `the connection is ${redis.status}` : undefined);
  if (why) throw new RedisUnreachableError(url, why);
}

/** A command that failed because Redis is away, as RedisUnreachableError; any other error as it is. */
export function asRedisUnreachable(err: unknown, redis: Redis, url: string): unknown {
  if (err instanceof RedisUnreachableError || !(err instanceof Error)) return err;
  const lost = err.name === 'MaxRetriesPerRequestError' || /Command timed out|Connection is closed|Stream isn't writeable|ECONNREFUSED|ECONNRESET/.test(err.message);
  return lost ? new RedisUnreachableError(url, lastErrors.get(redis) ?? err.message) : err;
}

/** Resolves when Redis answers PING within `timeoutMs`; otherwise RedisUnreachableError. */
export async function checkRedis(url: string, timeoutMs = 3000): Promise<void> {
  const probe = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  let last = 'no answer';
  probe.on('error', (err: Error) => (last = err.message));
  try {
    await withTimeout(probe.connect().then(() => probe.ping()), timeoutMs, () => `no answer within ${timeoutMs} ms`);
  } catch (err) {
    throw new RedisUnreachableError(url, err instanceof Error && err.message ? errorCause(err.message, last) : last);
  } finally {
    probe.disconnect();
  }
}

/** PING on an existing connection, failing fast instead of waiting for a reconnect. */
export async function pingRedis(redis: Redis, url: string, timeoutMs = 2000): Promise<void> {
  // A connection that failed before fails fast; one still being made is given the time.
  const failed = lastErrors.get(redis);
  if (redis.status !== 'ready' && failed) throw new RedisUnreachableError(url, failed);
  try {
    await withTimeout(redis.ping(), timeoutMs, () => `no answer within ${timeoutMs} ms`);
  } catch (err) {
    throw new RedisUnreachableError(url, lastErrors.get(redis) ?? (err instanceof Error ? err.message : String(err)));
  }
}

function errorCause(message: string, last: string): string {
  return /Connection is closed|Stream isn't writeable/.test(message) ? last : message;
}

async function withTimeout<T>(p: Promise<T>, ms: number, why: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(why())), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A loopback port that nothing listens on now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', () => ok()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

export const REDIS_SERVER_BIN = '/usr/bin/redis-server';

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  pid: number;
  child: ChildProcess;
  /** SIGTERM (Redis flushes the AOF) and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
}

/**
 * Starts Debian's redis-server on loopback with its data in `dir`: AOF on
 * (every write logged, fsync each second), RDB snapshots off, no daemonizing.
 * `port` 0 picks a free one; pass the old port to restart over the same data.
 * `password` makes it require AUTH (the URL returned carries it). The data is
 * private whatever the caller's umask: `dir` 0700, and redis-server runs under
 * umask 077 so its AOF files are 0600. The password reaches it on stdin
 * (`redis-server -`), never on a command line that `ps` shows every user.
 */
export async function startRedisServer(opts: { dir: string; port?: number; readyTimeoutMs?: number; password?: string }): Promise<RedisServer> {
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  await chmod(opts.dir, 0o700);
  const port = opts.port || (await freePort());
  const args = ['-', '--bind', '127.0.0.1', '--port', String(port), '--dir', opts.dir, '--appendonly', 'yes', '--save', '', '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'];
  const child = spawn('/bin/sh', ['-c', 'umask 077; exec "$0" "$@"', REDIS_SERVER_BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin!.on('error', () => undefined); // an exit before reading it is reported below
  child.stdin!.end(opts.password ? `requirepass ${opts.password}\n` : '');
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  child.stderr!.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
  const exited = new Promise<void>((r) => {
    child.once('exit', () => r());
    child.once('error', (err) => {
      output += `\n${err.message}`;
      r();
    });
  });
  const url = opts.password ? `redis://:${encodeURIComponent(opts.password)}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`;
  const shown = redactUrl(url);
  const signal = async (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
      const hint = child.pid === undefined || child.exitCode === 127 ? ' (install it: apt-get install redis-server)' : '';
      throw new Error(`${REDIS_SERVER_BIN} exited before it answered on ${shown}${hint}:\n${output}`);
    }
    try {
      await checkRedis(url, 1000);
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        await signal('SIGKILL');
        throw new Error(`redis-server did not answer on ${shown}: ${redactUrls((err as Error).message)}\n${output}`);
      }
      await sleep(50);
    }
  }
  return { url, port, dir: opts.dir, pid: child.pid, child, stop: () => signal('SIGTERM'), kill: () => signal('SIGKILL') };
}
