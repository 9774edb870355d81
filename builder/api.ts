/*
 * /api/builds on the registry process, and the mount that adds it and
 * /hooks/git to the registry's express app.
 *
 *   POST   /api/builds?t=REF&t=…&dockerfile=&buildargs={}&target=&nocache=1&network=&labels={}
 *          body: the context as a tar stream (Content-Type application/x-tar), or, with
 *          secrets, application/vnd.slipway.build+tar: one JSON line of secrets, then the
 *          tar (secrets-wire.ts) → 201 the build record with `cancelToken` (given only here)
 *   GET    /api/builds[?limit=&offset=]           records, newest first
 *   GET    /api/builds/<id>                       one record (status, timings, steps, cache hits, digest, error)
 *   GET    /api/builds/<id>/log[?follow=1]        text/plain lines; ?format=ndjson (or Accept:
 *          application/x-ndjson) gives every entry as JSON; Accept: text/event-stream gives SSE
 *          (Last-Event-ID resumes). With follow, the response ends when the build does.
 *   POST   /api/builds/<id>/cancel                202 the record; needs the build's cancel token
 *   GET|DELETE /api/builds/<id>/context           for the worker: the stored context
 *   GET    /api/builds/<id>/secrets               for the worker: the secrets, unsealed
 *
 * Records are shown with build-arg names only (values "<redacted>") and secret ids
 * only. The worker's routes need the build's capability token (Authorization: Bearer,
 * from the job); without it they answer 404, as for a build that does not exist.
 * Every route that reads Redis answers 503 with Retry-After at once while Redis is away.
 */
import { randomBytes } from 'node:crypto';
import { Router, type ErrorRequestHandler, type Express, type Request, type RequestHandler, type Response } from 'express';
import type { Store } from '../storage/index.js';
import { ContextTooLargeError, deleteContext, openContext, storeContext } from './build-context.js';
import { gitHookHandlers } from './hooks.js';
import { followLog, readLog, type LogEntry } from './logs.js';
import { BuildQueue, isBuildId, newBuildId } from './queue.js';
import { isTerminal, tokenMatches, type BuildRecord, type BuildSpec } from './records.js';
import { DEFAULT_PREFIX, RedisUnreachableError, asRedisUnreachable, pingRedis, whenRedisUp } from './redis.js';
import { redactUrls } from './redact.js';
import { MAX_SECRETS_BYTES, SECRETS_CONTENT_TYPE, readSecretsLine, secretsJson } from './secrets-wire.js';
import { BadRequestError, parseBuildQuery } from './spec.js';
import type { BuildSecret } from './types.js';

export interface BuilderRoutesOptions {
  redisUrl: string;
  prefix?: string;
  store: Store;
  /** Secret for webhooks of repositories whose trigger has none (SLIPWAY_HOOK_SECRET). */
  hookSecret?: string;
  /** Base URL workers use to reach this API (SLIPWAY_PUBLIC_URL); wins over `registryUrl`. */
  publicUrl?: string;
  /**
   * The registry's own URL (its listen address). Never a request's Host header: that
   * would let a caller send the worker anywhere. Without either, the address the
   * request came in on (the socket's local end) is used.
   */
  registryUrl?: string;
  /**
   * Key sealing build secrets in Redis (builder/seal.ts loadSecretsKey). Without one,
   * a key of this process only: secrets of builds queued before a restart are lost.
   */
  secretsKey?: Buffer;
  /** Whether builds may ask for `network=host` (SLIPWAY_BUILD_ALLOW_HOST_NETWORK). Default false. */
  allowHostNetwork?: boolean;
  /** Largest context accepted, bytes. Default 2 GiB. */
  contextLimit?: number;
  attempts?: number;
  backoffMs?: number;
}

class ForbiddenError extends Error {
  readonly status = 403;
}

/** Adds /api/builds and /hooks/git to the registry's express app. */
export function mountBuilder(app: Express, opts: BuilderRoutesOptions): { queue: BuildQueue; close(): Promise<void> } {
  const queue = new BuildQueue(
    { redisUrl: opts.redisUrl, prefix: opts.prefix ?? DEFAULT_PREFIX },
    { attempts: opts.attempts, backoffMs: opts.backoffMs, secretsKey: opts.secretsKey ?? randomBytes(32), apiUrl: opts.publicUrl ?? opts.registryUrl },
  );
  app.use('/api/builds', buildsRouter(queue, opts));
  app.post('/hooks/git', redisUp(queue, opts.redisUrl), ...gitHookHandlers({ queue, secret: opts.hookSecret, secretsKey: opts.secretsKey }), errorHandler(queue, opts.redisUrl));
  return { queue, close: () => queue.close() };
}

type RouterOptions = Pick<BuilderRoutesOptions, 'store' | 'publicUrl' | 'registryUrl' | 'contextLimit' | 'redisUrl' | 'allowHostNetwork'>;

export function buildsRouter(queue: BuildQueue, opts: RouterOptions): Router {
  const router = Router();
  const limit = opts.contextLimit ?? 2 * 1024 ** 3;
  router.use(redisUp(queue, opts.redisUrl));

  router.post('/', async (req, res) => {
    const spec: BuildSpec = parseBuildQuery(new URL(req.originalUrl, 'http://x').searchParams);
    if (spec.network === 'host' && !opts.allowHostNetwork) {
      throw new ForbiddenError('builds with network=host are not allowed by this server (its operator can allow them: SLIPWAY_BUILD_ALLOW_HOST_NETWORK=1)');
    }
    const withSecrets = req.is(SECRETS_CONTENT_TYPE) === SECRETS_CONTENT_TYPE;
    const declared = Number(req.get('content-length') ?? NaN);
    if (declared > limit + (withSecrets ? MAX_SECRETS_BYTES : 0)) throw new ContextTooLargeError(limit);
    await pingRedis(queue.redis, opts.redisUrl);
    const secrets: BuildSecret[] = withSecrets ? await readSecretsLine(req) : [];
    spec.secrets = secrets.map((s) => s.id);
    const id = newBuildId();
    // A client that goes away mid-upload leaves nothing behind: the stored part is cancelled.
    const gone = new AbortController();
    req.on('close', () => req.complete || gone.abort());
    const stored = await storeContext(opts.store, id, req, limit, gone.signal);
    const api = apiBase(req, opts);
    const source = { type: 'upload' as const, url: `${api}/api/builds/${id}/context`, ...stored };
    const submitted = await queue.enqueue(spec, source, 'api', { id, secrets, apiUrl: api }).catch(async (err: unknown) => {
      await deleteContext(opts.store, id).catch(() => undefined);
      throw err;
    });
    res.status(201).location(`/api/builds/${id}`).json({ ...shown(submitted), cancelToken: submitted.cancelToken });
  });

  router.get('/', async (req, res) => {
    const n = (v: unknown, d: number) => (typeof v === 'string' && /^\d+$/.test(v) ? Math.min(Number(v), 1000) : d);
    res.json((await queue.list({ limit: n(req.query.limit, 50), offset: n(req.query.offset, 0) })).map(shown));
  });

  router.get('/:id', async (req, res) => {
    const record = await found(queue, req.params.id!, res);
    if (record) res.json(shown(record));
  });

  router.post('/:id/cancel', async (req, res) => {
    const id = req.params.id!;
    if (!(await found(queue, id, res))) return;
    if (!(await tokenMatches(queue.redis, queue.prefix, id, 'cancel', bearer(req)))) {
      throw new ForbiddenError(`cancelling build ${id} needs its cancel token (Authorization: Bearer …), given once when the build was submitted`);
    }
    const record = await queue.cancel(id);
    // A build cancelled before any worker took it leaves its context behind otherwise.
    if (record?.status === 'cancelled' && record.source.type === 'upload') await deleteContext(opts.store, record.id);
    res.status(202).json(record && shown(record));
  });

  router.get('/:id/log', async (req, res) => {
    const id = req.params.id!;
    if (!(await found(queue, id, res))) return;
    await sendLog(queue, id, req, res);
  });

  router.get('/:id/context', async (req, res) => {
    const id = req.params.id!;
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const body = (await workerMayRead(queue, id, req)) ? await openContext(opts.store, id, ac.signal) : null;
    if (!body) return void res.status(404).json({ error: `no stored context for build ${id}` });
    res.type('application/x-tar');
    body.pipe(res);
  });

  // Deleting needs the token only: the worker deletes the context after the build ended.
  router.delete('/:id/context', async (req, res) => {
    const id = req.params.id!;
    if (!isBuildId(id) || !(await tokenMatches(queue.redis, queue.prefix, id, 'worker', bearer(req)))) {
      return void res.status(404).json({ error: `no stored context for build ${id}` });
    }
    await deleteContext(opts.store, id);
    res.status(204).end();
  });

  router.get('/:id/secrets', async (req, res) => {
    const id = req.params.id!;
    if (!(await workerMayRead(queue, id, req))) return void res.status(404).json({ error: `no build ${id}` });
    res.set('Cache-Control', 'no-store');
    res.type('application/json').send(secretsJson(await queue.secretsOf(id)));
  });

  router.use(errorHandler(queue, opts.redisUrl));
  return router;
}

/** Where workers reach this API: configured, else the registry's own address; never the Host header. */
function apiBase(req: Request, opts: RouterOptions): string {
  const configured = opts.publicUrl ?? opts.registryUrl;
  if (configured) return configured.replace(/\/$/, '');
  const addr = (req.socket.localAddress ?? '127.0.0.1').replace(/^::ffff:/, '');
  return `http://${addr.includes(':') ? `[${addr}]` : addr}:${req.socket.localPort}`;
}

const bearer = (req: Request): string | undefined => /^Bearer\s+(\S+)$/i.exec(req.get('authorization') ?? '')?.[1];

/** The worker's token of a build that has not ended: what opens its context and secrets. */
async function workerMayRead(queue: BuildQueue, id: string, req: Request): Promise<boolean> {
  if (!isBuildId(id) || !(await tokenMatches(queue.redis, queue.prefix, id, 'worker', bearer(req)))) return false;
  const record = await queue.get(id);
  return !!record && !isTerminal(record.status);
}

const REDACTED = '<redacted>';

/** A record as the API shows it: build-arg values hidden (they may hold tokens). */
function shown<T extends BuildRecord>(record: T): BuildRecord {
  const { cancelToken: _hidden, ...rest } = record as T & { cancelToken?: string };
  const buildArgs = Object.fromEntries(Object.keys(record.spec.buildArgs).map((k) => [k, REDACTED]));
  return { ...rest, spec: { ...record.spec, buildArgs } };
}

async function found(queue: BuildQueue, id: string, res: Response) {
  const record = isBuildId(id) ? await queue.get(id) : null;
  if (!record) res.status(404).json({ error: `no build ${id}` });
  return record;
}

type Format = 'text' | 'ndjson' | 'sse';

function formatOf(req: Request): Format {
  const f = req.query.format;
  if (f === 'ndjson' || f === 'sse' || f === 'text') return f;
  const accept = req.get('accept') ?? '';
  return accept.includes('text/event-stream') ? 'sse' : accept.includes('application/x-ndjson') ? 'ndjson' : 'text';
}

function render(entry: LogEntry, format: Format): string {
  if (format === 'text') return entry.type === 'line' ? `${entry.text}\n` : '';
  if (format === 'ndjson') return `${JSON.stringify(entry)}\n`;
  return `id: ${entry.id}\nevent: ${entry.type}\ndata: ${JSON.stringify(entry)}\n\n`;
}

async function sendLog(queue: BuildQueue, id: string, req: Request, res: Response): Promise<void> {
  const format = formatOf(req);
  const follow = req.query.follow === '1' || req.query.follow === 'true';
  res.type(format === 'text' ? 'text/plain; charset=utf-8' : format === 'ndjson' ? 'application/x-ndjson' : 'text/event-stream');
  res.set('Cache-Control', 'no-cache');
  res.set('X-Accel-Buffering', 'no');
  res.flushHeaders();
  const write = (s: string) => (s && !res.write(s) ? new Promise<void>((ok) => res.once('drain', ok)) : undefined);
  if (!follow) {
    for await (const entry of readLog(queue.redis, queue.prefix, id)) await write(render(entry, format));
    res.end();
    return;
  }
  // XREAD BLOCK holds a connection: each follower gets its own, dropped when the client goes.
  const conn = queue.redis.duplicate();
  conn.on('error', () => undefined);
  res.on('close', () => conn.disconnect());
  const after = req.get('last-event-id') ?? '0';
  const finished = async () => isTerminal((await queue.get(id))?.status ?? 'failed');
  try {
    for await (const entry of followLog(conn, queue.prefix, id, { after, finished })) {
      if (res.destroyed) break;
      await write(render(entry, format));
    }
  } finally {
    conn.disconnect();
    res.end();
  }
}

/** 503 (with Retry-After) at once while the queue's Redis is away, instead of a hung request. */
function redisUp(queue: BuildQueue, url: string): RequestHandler {
  return (_req, _res, next) => {
    whenRedisUp(queue.redis, url);
    next();
  };
}

function errorHandler(queue: BuildQueue, redisUrl: string): ErrorRequestHandler {
  return (thrown: unknown, req, res, next) => {
    if (res.headersSent) return next(thrown);
    const err = asRedisUnreachable(thrown, queue.redis, redisUrl);
    // A refused upload is drained so the client reads this answer rather than a reset.
    if (!req.readableEnded) req.resume();
    const status =
      err instanceof RedisUnreachableError ? 503
      : err instanceof ContextTooLargeError ? 413
      : err instanceof BadRequestError ? 400
      : ((err as { status?: number }).status ?? 500);
    if (status === 503) res.set('Retry-After', '5');
    res.status(status).json({ error: redactUrls(err instanceof Error ? err.message : String(err)) });
  };
}
