/*
 * A builder worker: a BullMQ Worker on queue "builds" that, per job, fetches
 * the context, calls the executor's build(), and keeps the record and the log
 * up to date. Failure policy: a user's failure (BuildError 'user') and a cancel
 * end the build at once (UnrecoverableError: BullMQ does not retry); anything
 * else is infrastructure and is retried with exponential backoff until the
 * job's attempts are used up. A worker that dies mid-build loses its lock; the
 * stalled-job check of another worker puts the job back, and it runs again.
 *
 * Secrets: the worker fetches a build's secrets from the registry (with the
 * build's capability token), keeps them in memory for that build, hides their
 * values in its log, and hands them to the executor; a git source's credentials
 * (the reserved GIT_CREDENTIALS_SECRET) go to the clone only.
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { LogWriter } from './logs.js';
import type { BuildJobData } from './queue.js';
import { finishRecord, getRecord, isTerminal, updateRecord, type BuildFailure } from './records.js';
import { secretMasker } from './redact.js';
import { QUEUE_NAME, connectRedis, keys, type BuilderSpace } from './redis.js';
import { parseSecretsJson } from './secrets-wire.js';
import { prepareSource, type SourceOptions } from './sources.js';
import { BuildError, GIT_CREDENTIALS_SECRET, type BuildFunction, type BuildOptions, type BuildRequest, type BuildResult, type BuildSecret } from './types.js';

export interface BuildWorkerOptions extends BuilderSpace {
  build: BuildFunction;
  /** The worker's directory: contexts, and the executor's own files. */
  root: string;
  concurrency?: number;
  name?: string;
  /** BullMQ lock and stalled-check timing (ms); short in tests. */
  lockDuration?: number;
  stalledInterval?: number;
  /** Times a job may be recovered from a dead worker before it fails. Default 2. */
  maxStalledCount?: number;
  /** How often running builds look for a cancel flag besides the pub/sub message (ms). */
  cancelPollMs?: number;
  /** Run builds that ask for `network=host` (`slipway builder --allow-network-host`). Default false: they fail. */
  allowHostNetwork?: boolean;
  onError?: (err: unknown) => void;
  /** Passed to every build (BuildOptions). */
  limits?: BuildOptions['limits'];
  allowLocalUrls?: boolean;
}

export interface RunningWorker {
  name: string;
  worker: Worker;
  /** Stops taking jobs; waits for running builds unless `force`. */
  close(force?: boolean): Promise<void>;
}

export async function startBuildWorker(opts: BuildWorkerOptions): Promise<RunningWorker> {
  const name = opts.name ?? `${hostname()}:${process.pid}`;
  const redis = connectRedis(opts.redisUrl, `slipway-worker-${name}`);
  const subscriber = connectRedis(opts.redisUrl, `slipway-worker-${name}-cancel`);
  const active = new Map<string, AbortController>();
  const cancelKey = keys(opts.prefix).cancel;
  await subscriber.subscribe(cancelKey);
  subscriber.on('message', (channel: string, id: string) => {
    if (channel === cancelKey) active.get(id)?.abort();
  });
  const poll = setInterval(() => {
    for (const [id, controller] of active) {
      void redis.hget(keys(opts.prefix).record(id), 'cancelRequested').then((v) => v === '1' && controller.abort(), () => undefined);
    }
  }, opts.cancelPollMs ?? 2000);
  poll.unref();

  const processor = (job: Job<BuildJobData>) => runJob(job, { ...opts, name, redis, active });
  // BullMQ leaves a connection it was given open on close(): closed below.
  const bull = connectRedis(opts.redisUrl, `slipway-worker-${name}-bull`);
  const worker = new Worker<BuildJobData>(QUEUE_NAME, processor, {
    connection: bull,
    prefix: opts.prefix,
    name,
    concurrency: opts.concurrency ?? 1,
    lockDuration: opts.lockDuration ?? 30_000,
    stalledInterval: opts.stalledInterval ?? 30_000,
    maxStalledCount: opts.maxStalledCount ?? 2,
  });
  worker.on('error', (err) => opts.onError?.(err));
  // Jobs BullMQ failed itself (stalled too often) never reached runJob's catch.
  worker.on('failed', (job, err) => {
    if (!job?.id || !(err.message || '').includes('stalled')) return;
    void settle(redis, opts.prefix, job.id, 'failed', { message: err.message, kind: 'infrastructure' }).catch(() => undefined);
  });
  await worker.waitUntilReady();
  return {
    name,
    worker,
    close: async (force = false) => {
      clearInterval(poll);
      await worker.close(force);
      bull.disconnect();
      subscriber.disconnect();
      redis.disconnect();
    },
  };
}

interface JobContext extends BuildWorkerOptions {
  name: string;
  redis: Redis;
  active: Map<string, AbortController>;
}

async function runJob(job: Job<BuildJobData>, ctx: JobContext): Promise<{ imageDigest: string }> {
  const id = job.id!;
  const { redis, prefix } = ctx;
  const record = await getRecord(redis, prefix, id);
  if (!record) throw new UnrecoverableError(`build ${id} has no record`);
  // Back from a stall after it had finished (e.g. Redis went away before BullMQ heard of
  // the result): the queue learns the outcome the record already has; nothing runs again.
  if (record.status === 'succeeded') return { imageDigest: record.imageDigest ?? '' };
  if (isTerminal(record.status)) throw new UnrecoverableError(`build ${id} is already ${record.status}`);
  const controller = new AbortController();
  if (record.cancelRequested) controller.abort();
  const attempt = record.attempts + 1;
  const log = new LogWriter(redis, prefix, id);
  const dir = join(ctx.root, 'contexts', id);
  const now = new Date();
  ctx.active.set(id, controller);
  try {
    // False when the record ended meanwhile (a cancel that won the race): then nothing runs.
    const claimed = await updateRecord(redis, prefix, id, {
      status: 'running',
      attempts: attempt,
      worker: ctx.name,
      startedAt: record.startedAt ?? now.toISOString(),
      queuedMs: record.queuedMs ?? now.getTime() - Date.parse(record.createdAt),
    });
    if (!claimed) controller.abort();
    if (record.status === 'running') log.line(`--- worker ${record.worker ?? '?'} stopped during the build; started again on ${ctx.name}`);
    else if (attempt > 1) log.line(`--- attempt ${attempt} of ${job.opts.attempts ?? 1} on ${ctx.name}`);
    log.status('running', { attempt, worker: ctx.name });
    if (job.data.spec.network === 'host' && !ctx.allowHostNetwork) {
      throw new BuildError(`this worker (${ctx.name}) does not run builds with network=host; its operator can allow them with --allow-network-host`, 'user');
    }
    const secrets = await fetchSecrets(job, controller.signal);
    log.maskWith(secretMasker(secrets.flatMap(secretTexts)));
    await prepareSource(job.data.source, dir, log, controller.signal, sourceOptions(job.data, secrets));
    const request: BuildRequest = { id, contextDir: dir, ...job.data.spec, secrets: secrets.filter((s) => s.id !== GIT_CREDENTIALS_SECRET) };
    const result = await ctx.build(request, log, { workerRoot: ctx.root, signal: controller.signal, redisUrl: ctx.redisUrl, limits: ctx.limits, allowLocalUrls: ctx.allowLocalUrls });
    if (controller.signal.aborted) throw new BuildError('the build was cancelled', 'user');
    await succeed(log, ctx, id, result);
    await dropContext(job.data);
    return { imageDigest: result.imageDigest };
  } catch (err) {
    const toThrow = await failure(err, { job, ctx, log, cancelled: controller.signal.aborted });
    const after = await getRecord(redis, prefix, id);
    if (!after || isTerminal(after.status)) await dropContext(job.data);
    throw toThrow;
  } finally {
    ctx.active.delete(id);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function succeed(log: LogWriter, ctx: JobContext, id: string, result: BuildResult): Promise<void> {
  log.line(`built ${result.imageDigest} → ${result.tags.join(', ')} (${result.cacheHits} cached steps, ${(result.durationMs / 1000).toFixed(2)} s)`);
  for (const step of result.steps) log.step(step);
  await log.flush();
  const fields = { imageDigest: result.imageDigest, cacheHits: result.cacheHits };
  if (await finishRecord(ctx.redis, ctx.prefix, id, 'succeeded', fields)) await log.end('succeeded', { imageDigest: result.imageDigest });
}

const authorization = (data: BuildJobData): Record<string, string> => (data.token ? { Authorization: `Bearer ${data.token}` } : {});

/** A finished build's uploaded context is no longer needed; the API removes it on DELETE (its worker's token only). */
async function dropContext(data: BuildJobData): Promise<void> {
  if (data.source.type !== 'upload') return;
  await fetch(data.source.url, { method: 'DELETE', headers: authorization(data) }).then((r) => r.body?.cancel(), () => undefined);
}

/** The build's secrets from the registry (which alone can unseal them); none when it has none. */
async function fetchSecrets(job: Job<BuildJobData>, signal: AbortSignal): Promise<BuildSecret[]> {
  const { data } = job;
  if (!data.secrets) return [];
  if (!data.api) throw new BuildError('the build has secrets but its job names no API to fetch them from', 'infrastructure');
  const url = `${data.api}/api/builds/${job.id}/secrets`;
  let res: Response;
  try {
    res = await fetch(url, { signal, headers: authorization(data) });
  } catch (err) {
    throw new BuildError(`cannot fetch the build's secrets from ${url}: ${err instanceof Error ? err.message : String(err)}`, 'infrastructure');
  }
  const text = await res.text();
  if (res.status === 404) throw new BuildError(`the build's secrets are no longer available at ${url}`, 'user');
  if (!res.ok) throw new BuildError(`fetching the build's secrets from ${url} answered ${res.status}`, 'infrastructure');
  return parseSecretsJson(text, { reserved: true });
}

/** What the log must never show of a secret: its value, and a git credential's password alone. */
function secretTexts(s: BuildSecret): string[] {
  const text = s.value.toString('utf8');
  return s.id === GIT_CREDENTIALS_SECRET ? [text, text.slice(text.indexOf(':') + 1)] : [text];
}

/** The capability token for the context, and a git source's credentials (`user:password`). */
function sourceOptions(data: BuildJobData, secrets: BuildSecret[]): SourceOptions {
  const git = secrets.find((s) => s.id === GIT_CREDENTIALS_SECRET)?.value.toString('utf8');
  if (git === undefined) return { token: data.token };
  const colon = git.indexOf(':');
  const gitCredentials = colon < 0 ? { username: git, password: '' } : { username: git.slice(0, colon), password: git.slice(colon + 1) };
  return { token: data.token, gitCredentials };
}

/** Records the outcome of a failed attempt; returns what to throw to BullMQ. */
async function failure(err: unknown, at: { job: Job<BuildJobData>; ctx: JobContext; log: LogWriter; cancelled: boolean }): Promise<Error> {
  const { job, ctx, log } = at;
  const id = job.id!;
  if (at.cancelled) {
    await settle(ctx.redis, ctx.prefix, id, 'cancelled', { message: 'cancelled while running', kind: 'cancelled' }, log);
    return new UnrecoverableError('cancelled');
  }
  const raw = err instanceof BuildError ? err : new BuildError(err instanceof Error ? err.message : String(err), 'infrastructure');
  // What the executor reports (a RUN's last lines) may hold a secret's value too.
  const be = new BuildError(log.masked(raw.message), raw.kind, raw.detail);
  const lastLines = be.detail.lastLines?.map((l) => log.masked(l)) ?? log.lastLines();
  const failureInfo: BuildFailure = { message: be.message, kind: be.kind, exitCode: be.detail.exitCode, line: be.detail.line, lastLines };
  const maxAttempts = job.opts.attempts ?? 1;
  const final = be.kind === 'user' || job.attemptsMade + 1 >= maxAttempts;
  log.line(`error: ${be.message}${be.detail.exitCode !== undefined ? ` (exit code ${be.detail.exitCode})` : ''}`);
  if (final) {
    await settle(ctx.redis, ctx.prefix, id, 'failed', failureInfo, log);
    return be.kind === 'user' ? new UnrecoverableError(be.message) : be;
  }
  const delay = (typeof job.opts.backoff === 'object' ? (job.opts.backoff.delay ?? 0) : 0) * 2 ** job.attemptsMade;
  log.line(`infrastructure failure; retrying in ${(delay / 1000).toFixed(1)} s (attempt ${job.attemptsMade + 2} of ${maxAttempts})`);
  await log.flush();
  await updateRecord(ctx.redis, ctx.prefix, id, { status: 'queued', error: failureInfo });
  log.status('queued');
  await log.flush();
  return be;
}

/** Finishes a record once and writes the log's end entry. */
async function settle(redis: Redis, prefix: string, id: string, status: 'failed' | 'cancelled', error: BuildFailure, log = new LogWriter(redis, prefix, id)): Promise<void> {
  await log.flush();
  if (await finishRecord(redis, prefix, id, status, { error })) await log.end(status, { error });
}
