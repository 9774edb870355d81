/*
 * The producer side of the BullMQ queue "builds": enqueue a build (record first,
 * then the job, whose id is the build id), cancel one, and read records with
 * their state reconciled against the queue (a job BullMQ failed on its own,
 * e.g. stalled too often, is reported as failed even though no worker said so).
 */
import { randomUUID } from 'node:crypto';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { LogWriter } from './logs.js';
import {
  createRecord,
  finishRecord,
  getRecord,
  isTerminal,
  listRecords,
  pruneRecords,
  requestCancel,
  type BuildRecord,
  type BuildSource,
  type BuildSpec,
} from './records.js';
import { QUEUE_NAME, connectRedis, keys, type BuilderSpace } from './redis.js';

/** What a job carries; the record holds the rest. */
export interface BuildJobData {
  spec: BuildSpec;
  source: BuildSource;
}

export interface QueueOptions {
  /** Attempts for infrastructure failures (a user's failure is never retried). Default 3. */
  attempts?: number;
  /** First retry delay, doubled each time. Default 5 s. */
  backoffMs?: number;
  /** Build records (with logs) kept; older ones are removed as new builds come. Default 10,000. */
  keepRecords?: number;
}

/** Build ids are job ids: BullMQ refuses ids that are plain integers or contain ':'. */
export const newBuildId = (): string => randomUUID();
const ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const isBuildId = (id: string): boolean => ID_RE.test(id);

/** A record still queued/running whose job is gone is declared lost after this long. */
const LOST_AFTER_MS = 10_000;

export class BuildQueue {
  readonly queue: Queue;
  readonly redis: Redis;
  readonly prefix: string;
  private readonly jobOptions: JobsOptions;
  private readonly ownsRedis: boolean;
  private readonly keepRecords: number;

  constructor(
    readonly space: BuilderSpace,
    opts: QueueOptions & { redis?: Redis } = {},
  ) {
    this.prefix = space.prefix;
    this.ownsRedis = !opts.redis;
    this.keepRecords = opts.keepRecords ?? 10_000;
    this.redis = opts.redis ?? connectRedis(space.redisUrl, 'slipway-queue');
    this.queue = new Queue(QUEUE_NAME, { connection: this.redis, prefix: space.prefix });
    this.queue.on('error', () => undefined); // reconnects on its own; callers see failed commands
    this.jobOptions = {
      attempts: Math.max(1, opts.attempts ?? 3),
      backoff: { type: 'exponential', delay: opts.backoffMs ?? 5000 },
      removeOnComplete: { age: 7 * 24 * 3600, count: 10_000 },
      removeOnFail: { age: 30 * 24 * 3600, count: 10_000 },
    };
  }

  /** Records and queues a build; `id` lets a caller store the context under the id first. */
  async enqueue(spec: BuildSpec, source: BuildSource, origin: BuildRecord['origin'], id = newBuildId()): Promise<BuildRecord> {
    const record: BuildRecord = {
      id,
      status: 'queued',
      spec,
      source,
      origin,
      createdAt: new Date().toISOString(),
      attempts: 0,
      maxAttempts: this.jobOptions.attempts ?? 1,
      steps: [],
      cacheHits: 0,
      cancelRequested: false,
    };
    const { steps: _steps, ...stored } = record;
    await createRecord(this.redis, this.prefix, stored);
    const data: BuildJobData = { spec, source };
    await this.queue.add('build', data, { ...this.jobOptions, jobId: id });
    await pruneRecords(this.redis, this.prefix, this.keepRecords);
    return record;
  }

  /** The record, with a state the queue already decided (failed, lost) written into it. */
  async get(id: string): Promise<BuildRecord | null> {
    const record = await getRecord(this.redis, this.prefix, id);
    if (!record || isTerminal(record.status)) return record;
    const job = await this.queue.getJob(id);
    const state = job ? await job.getState() : 'unknown';
    let reason: string | undefined;
    if (state === 'failed') reason = job?.failedReason || 'the queue failed the job';
    else if (state === 'unknown' && Date.now() - Date.parse(record.createdAt) > LOST_AFTER_MS) reason = 'the job is no longer in the queue';
    if (!reason) return record;
    await this.fail(id, reason);
    return getRecord(this.redis, this.prefix, id);
  }

  async list(opts: { limit?: number; offset?: number } = {}): Promise<BuildRecord[]> {
    return listRecords(this.redis, this.prefix, opts);
  }

  /**
   * Cancels a build: a waiting job is removed and the record cancelled here; a
   * running one is flagged and announced, and its worker aborts it. Null when unknown.
   */
  async cancel(id: string): Promise<BuildRecord | null> {
    const record = await getRecord(this.redis, this.prefix, id);
    if (!record || isTerminal(record.status)) return record;
    await requestCancel(this.redis, this.prefix, id);
    const job = await this.queue.getJob(id);
    const state = job ? await job.getState() : 'unknown';
    if (job && (state === 'waiting' || state === 'delayed' || state === 'prioritized')) {
      // remove() fails when a worker locked the job meanwhile; then the worker sees the flag.
      const removed = await job.remove().then(
        () => true,
        () => false,
      );
      if (removed) await this.finish(id, 'cancelled', { message: 'cancelled before it started', kind: 'cancelled' });
    } else if (state === 'unknown' || state === 'failed' || state === 'completed') {
      await this.finish(id, 'cancelled', { message: 'cancelled', kind: 'cancelled' });
    }
    await this.redis.publish(keys(this.prefix).cancel, id);
    return getRecord(this.redis, this.prefix, id);
  }

  async counts(): Promise<Record<string, number>> {
    return this.queue.getJobCounts();
  }

  async close(): Promise<void> {
    await this.queue.close();
    if (this.ownsRedis) this.redis.disconnect();
  }

  private async fail(id: string, message: string): Promise<void> {
    await this.finish(id, 'failed', { message, kind: 'infrastructure' });
  }

  private async finish(id: string, status: 'failed' | 'cancelled', error: BuildRecord['error']): Promise<void> {
    if (await finishRecord(this.redis, this.prefix, id, status, { error })) {
      const log = new LogWriter(this.redis, this.prefix, id);
      log.line(`build ${status}: ${error?.message ?? ''}`);
      await log.end(status, { error });
    }
  }
}
