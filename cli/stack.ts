/*
 * The builder half of `slipway up`: a redis-server of its own (Debian's; AOF
 * on, a free loopback port, data in <state>/redis) and one builder worker in
 * this process (its files in <state>/builder). The Redis URL is written to
 * <state>/redis.url so `slipway trigger …` and `slipway builder` run from the
 * same directory find it without --redis.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildFunction, RedisServer, RunningWorker } from '../builder/index.js';

export interface Stack {
  redisUrl: string;
  redis: RedisServer;
  worker: RunningWorker;
  /** Stops the worker (running builds are left to be picked up again), then Redis. */
  close(): Promise<void>;
}

export async function startStack(stateDir: string, opts: { build?: BuildFunction; concurrency?: number; prefix?: string } = {}): Promise<Stack> {
  const b = await import('../builder/index.js');
  const redis = await b.startRedisServer({ dir: join(stateDir, 'redis') });
  try {
    await writeFile(join(stateDir, 'redis.url'), `${redis.url}\n`);
    const worker = await b.startBuildWorker({
      redisUrl: redis.url,
      prefix: opts.prefix ?? b.DEFAULT_PREFIX,
      root: join(stateDir, 'builder'),
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
