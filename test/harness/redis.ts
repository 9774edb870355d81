import { randomBytes } from 'node:crypto';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { REDIS_SERVER_BIN, checkRedis, startRedisServer, type RedisServer } from '../../builder/redis.js';

/*
 * Debian's redis-server for tests: on a free loopback port, data in a temp dir,
 * AOF on and RDB off (so a stop/start over the same dir loses nothing), stopped
 * by PID. One is shared by the whole run when the runner sets SLIPWAY_TEST_REDIS_URL
 * (started with `node dist/test/harness/redis.js serve`); tests isolate by
 * random key prefixes.
 */
export const SHARED_REDIS_ENV = 'SLIPWAY_TEST_REDIS_URL';

export interface TestRedis extends RedisServer {
  /** stop() then start again on the same port over the same data. */
  restart(): Promise<TestRedis>;
  /** stop() and remove the data directory. */
  cleanup(): Promise<void>;
}

async function ensureInstalled(): Promise<void> {
  await access(REDIS_SERVER_BIN).catch(() => {
    throw new Error(`${REDIS_SERVER_BIN} is missing: apt-get install -y redis-server (test/run.sh does)`);
  });
}

export async function startTestRedis(opts: { dir?: string; port?: number } = {}): Promise<TestRedis> {
  await ensureInstalled();
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'slipway-redis-')));
  const server = await startRedisServer({ dir, port: opts.port });
  return {
    ...server,
    restart: async () => {
      await server.stop();
      return startTestRedis({ dir, port: server.port });
    },
    cleanup: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A key prefix no other test uses. */
export const randomPrefix = (label = 't'): string => `slipway-test-${label}-${randomBytes(5).toString('hex')}`;

/** The run's shared Redis when SLIPWAY_TEST_REDIS_URL is set (release does nothing), else one of its own. */
export async function sharedRedis(): Promise<{ url: string; release(): Promise<void> }> {
  const shared = process.env[SHARED_REDIS_ENV];
  if (shared) {
    await checkRedis(shared).catch((err: Error) => {
      throw new Error(`${SHARED_REDIS_ENV}=${shared} does not answer: ${err.message}`);
    });
    return { url: shared, release: async () => {} };
  }
  const own = await startTestRedis();
  return { url: own.url, release: () => own.cleanup() };
}

/** `node dist/test/harness/redis.js serve`: one redis-server for a whole run, stopped on SIGTERM/SIGINT. */
async function serve(): Promise<void> {
  const redis = await startTestRedis();
  let stopping = false;
  const shutdown = async (code: number) => {
    stopping = true;
    await redis.cleanup();
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown(0));
  process.on('SIGINT', () => void shutdown(0));
  process.stdout.write(`REDIS_URL=${redis.url}\n`);
  await new Promise<void>((r) => redis.child.once('exit', () => r()));
  if (stopping) return;
  process.stderr.write(`redis-server at ${redis.url} exited unexpectedly\n`);
  await shutdown(1);
}

const invokedAs = process.argv[1] ? resolve(process.argv[1]) : '';
if (invokedAs === fileURLToPath(import.meta.url) && process.argv[2] === 'serve') {
  serve().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
