/*
 * The producer side of the BullMQ queue "builds": enqueue a build (record first,
 * then the job, whose id is the build id), cancel one, and read records with
 * their state reconciled against the queue (a job BullMQ failed on its own,
 * e.g. stalled too often, is reported as failed even though no worker said so).
 *
 * Each build gets two capability tokens (records.ts keeps only their sha256): the
 * worker's, carried in the job with the API's URL, and the submitter's, returned
 * once by `enqueue` to cancel with. The worker's token stays valid while the build
 * has not ended, so a retried attempt (another worker, after a stall) fetches the
 * context and secrets again with it; once the build ended it opens nothing.
 */
import { randomUUID } from 'node:crypto';
import { Queue, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { LogWriter } from './logs.js';
import {
  createRecord,
  finishRecord,
  newToken,
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
import { loadSecrets, storeSecrets } from './sealed-secrets.js';
import type { BuildSecret } from './types.js';

/** What a job carries; the record holds the rest. */
export interface BuildJobData {
  spec: BuildSpec;
  source: BuildSource;
  /** The worker's capability token for this build (Authorization: Bearer). */
  token?: string;
  /** Base URL of the registry's API: where the worker fetches the secrets. */
  api?: string;
  /** Whether the build has secrets (user's, or a git source's credentials) to fetch. */
  secrets?: boolean;
}

/** A build as its submitter gets it: the record and, once, the token that cancels it. */
export type SubmittedBuild = BuildRecord & { cancelToken: string };

export interface EnqueueOptions {
  /** The build id, when the caller stored the context under it first. */
  id?: string;
  /** Secret values (sealed at rest with the queue's key); ids only go into the spec. */
  secrets?: readonly BuildSecret[];
  /** Base URL of the API for the worker; default the queue's `apiUrl`. */
  apiUrl?: string;
}

export interface QueueOptions {
  /** Attempts for infrastructure failures (a user's failure is never retried). Default 3. */
  attempts?: number;
  /** First retry delay, doubled each time. Default 5 s. */
  backoffMs?: number;
  /** Build records (with logs) kept; older ones are removed as new builds come. Default 10,000. */
  keepRecords?: number;
  /** Key that seals build secrets at rest (builder/seal.ts); needed to enqueue secrets. */
  secretsKey?: Buffer;
  /** Base URL of the registry's API, handed to workers (secrets, contexts). */
  apiUrl?: string;
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
  private readonly secretsKey?: Buffer;
  private readonly apiUrl?: string;

  constructor(
    readonly space: BuilderSpace,
    opts: QueueOptions & { redis?: Redis } = {},
  ) {
    this.prefix = space.prefix;
    this.ownsRedis = !opts.redis;
    this.keepRecords = opts.keepRecords ?? 10_000;
    this.secretsKey = opts.secretsKey;
    this.apiUrl = opts.apiUrl;
    // Serves HTTP requests: fails fast while Redis is away (503) rather than hang.
    this.redis = opts.redis ?? connectRedis(space.redisUrl, 'slipway-queue', { failFast: true });
    this.queue = new Queue(QUEUE_NAME, { connection: this.redis, prefix: space.prefix });
    this.queue.on('error', () => undefined); // reconnects on its own; callers see failed commands
    this.jobOptions = {
      attempts: Math.max(1, opts.attempts ?? 3),
      backoff: { type: 'exponential', delay: opts.backoffMs ?? 5000 },
      removeOnComplete: { age: 7 * 24 * 3600, count: 10_000 },
      removeOnFail: { age: 30 * 24 * 3600, count: 10_000 },
    };
  }

  /** Records and queues a build, with its secrets sealed beside it. */
  async enqueue(spec: BuildSpec, source: BuildSource, origin: BuildRecord['origin'], opts: EnqueueOptions = {}): Promise<SubmittedBuild> {
    const id = opts.id ?? newBuildId();
    const secrets = opts.secrets ?? [];
    const api = opts.apiUrl ?? this.apiUrl;
    if (secrets.length && !this.secretsKey) throw new Error('this build queue has no secrets key: it cannot keep build secrets');
    if (secrets.length && !api) throw new Error("this build queue does not know the registry's URL: workers could not fetch the build's secrets");
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
    const tokens = { worker: newToken(), cancel: newToken() };
    const data: BuildJobData = { spec, source, token: tokens.worker, api, secrets: secrets.length > 0 };
    try {
      await storeSecrets(this.redis, this.prefix, this.secretsKey!, id, secrets);
      await createRecord(this.redis, this.prefix, stored, tokens);
      await this.queue.add('build', data, { ...this.jobOptions, jobId: id });
    } catch (err) {
      await this.redis.del(keys(this.prefix).secrets(id)).catch(() => undefined);
      throw err;
    }
    await pruneRecords(this.redis, this.prefix, this.keepRecords);
    return { ...record, cancelToken: tokens.cancel };
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

  /** The build's secrets in clear, for its worker (none without a key or when deleted). */
  async secretsOf(id: string): Promise<BuildSecret[]> {
    return this.secretsKey ? loadSecrets(this.redis, this.prefix, this.secretsKey, id) : [];
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
