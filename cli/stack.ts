/*
 * The builder half of `slipway up`: a redis-server of its own (Debian's; AOF
 * on, a free loopback port, data in <state>/redis, a fresh random password each
 * start) and one builder worker in this process (its files in <state>/builder).
 * The Redis URL, password included, is written to <state>/redis.url (0600) so
 * `slipway trigger …` and `slipway builder` run from the same directory find it
 * without --redis. The state directory is 0700 whatever the umask: it holds the
 * AOF (build records, sealed trigger secrets) and the secrets key.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildFunction, RedisServer, RunningWorker } from '../builder/index.js';
import { prepareWorkerRoot, workerBuildOptions } from './build.js';

export interface Stack {
  redisUrl: string;
  redis: RedisServer;
  worker: RunningWorker;
  /** Stops the worker (running builds are left to be picked up again), then Redis. */
  close(): Promise<void>;
}

export async function startStack(stateDir: string, opts: { build?: BuildFunction; concurrency?: number; prefix?: string } = {}): Promise<Stack> {
  const b = await import('../builder/index.js');
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await chmod(stateDir, 0o700);
  const redis = await b.startRedisServer({ dir: join(stateDir, 'redis'), password: randomBytes(24).toString('hex') });
  try {
    await writePrivate(join(stateDir, 'redis.url'), `${redis.url}\n`);
    const builderRoot = join(stateDir, 'builder');
    await prepareWorkerRoot(builderRoot);
    const worker = await b.startBuildWorker({
      ...(await workerBuildOptions({})),
      redisUrl: redis.url,
      prefix: opts.prefix ?? b.DEFAULT_PREFIX,
      root: builderRoot,
      concurrency: opts.concurrency ?? 1,
      build: opts.build ?? b.build,
      onError: (err) => console.error('slipway builder:', err),
    });
    return {
      redisUrl: redis.url,
      redis,
      worker,
      close: async () => {
        await worker.close(true);
        await redis.stop();
      },
    };
  } catch (err) {
    await redis.stop();
    throw err;
  }
}

/** Writes `file` readable by its owner only, also when it existed with wider modes. */
async function writePrivate(file: string, text: string): Promise<void> {
  const handle = await open(file, 'w', 0o600);
  try {
    await handle.chmod(0o600);
    await handle.writeFile(text);
  } finally {
    await handle.close();
  }
}
