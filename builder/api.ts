/*
 * /api/builds on the registry process, and the mount that adds it and
 * /hooks/git to the registry's express app.
 *
 *   POST   /api/builds?t=REF&t=…&dockerfile=&buildargs={}&target=&nocache=1&network=&secrets=[]&labels={}
 *          body: the context as a tar stream → 201 the build record (Location: /api/builds/<id>)
 *   GET    /api/builds[?limit=&offset=]           records, newest first
 *   GET    /api/builds/<id>                       one record (status, timings, steps, cache hits, digest, error)
 *   GET    /api/builds/<id>/log[?follow=1]        text/plain lines; ?format=ndjson (or Accept:
 *          application/x-ndjson) gives every entry as JSON; Accept: text/event-stream gives SSE
 *          (Last-Event-ID resumes). With follow, the response ends when the build does.
 *   POST   /api/builds/<id>/cancel                202 the record
 *   GET|DELETE /api/builds/<id>/context           for workers: the stored context
 */
import { Router, type ErrorRequestHandler, type Express, type Request, type Response } from 'express';
import type { Store } from '../storage/index.js';
import { ContextTooLargeError, deleteContext, openContext, storeContext } from './build-context.js';
import { gitHookHandlers } from './hooks.js';
import { followLog, readLog, type LogEntry } from './logs.js';
import { BuildQueue, isBuildId, newBuildId } from './queue.js';
import { isTerminal, type BuildSpec } from './records.js';
import { DEFAULT_PREFIX, RedisUnreachableError, pingRedis } from './redis.js';
import { BadRequestError, parseBuildQuery } from './spec.js';

export interface BuilderRoutesOptions {
  redisUrl: string;
  prefix?: string;
  store: Store;
  /** Secret for webhooks of repositories whose trigger has none (SLIPWAY_HOOK_SECRET). */
  hookSecret?: string;
  /** Base URL workers use to fetch contexts; default: the Host the client used. */
  publicUrl?: string;
  /** Largest context accepted, bytes. Default 2 GiB. */
  contextLimit?: number;
  attempts?: number;
  backoffMs?: number;
}

/** Adds /api/builds and /hooks/git to the registry's express app. */
export function mountBuilder(app: Express, opts: BuilderRoutesOptions): { queue: BuildQueue; close(): Promise<void> } {
  const queue = new BuildQueue({ redisUrl: opts.redisUrl, prefix: opts.prefix ?? DEFAULT_PREFIX }, { attempts: opts.attempts, backoffMs: opts.backoffMs });
  app.use('/api/builds', buildsRouter(queue, opts));
  app.post('/hooks/git', ...gitHookHandlers({ queue, secret: opts.hookSecret }), errors);
  return { queue, close: () => queue.close() };
}

export function buildsRouter(queue: BuildQueue, opts: Pick<BuilderRoutesOptions, 'store' | 'publicUrl' | 'contextLimit' | 'redisUrl'>): Router {
  const router = Router();
  const limit = opts.contextLimit ?? 2 * 1024 ** 3;

  router.post('/', async (req, res) => {
    const spec: BuildSpec = parseBuildQuery(new URL(req.originalUrl, 'http://x').searchParams);
    const declared = Number(req.get('content-length') ?? NaN);
    if (declared > limit) throw new ContextTooLargeError(limit);
    await pingRedis(queue.redis, opts.redisUrl);
    const id = newBuildId();
    // A client that goes away mid-upload leaves nothing behind: the stored part is cancelled.
    const gone = new AbortController();
    req.on('close', () => req.complete || gone.abort());
    const stored = await storeContext(opts.store, id, req, limit, gone.signal);
    const base = opts.publicUrl ?? `${req.protocol}://${req.get('host')}`;
    const source = { type: 'upload' as const, url: `${base.replace(/\/$/, '')}/api/builds/${id}/context`, ...stored };
    const record = await queue.enqueue(spec, source, 'api', id).catch(async (err: unknown) => {
      await deleteContext(opts.store, id).catch(() => undefined);
      throw err;
    });
    res.status(201).location(`/api/builds/${id}`).json(record);
  });

  router.get('/', async (req, res) => {
    const n = (v: unknown, d: number) => (typeof v === 'string' && /^\d+$/.test(v) ? Math.min(Number(v), 1000) : d);
    res.json(await queue.list({ limit: n(req.query.limit, 50), offset: n(req.query.offset, 0) }));
  });

  router.get('/:id', async (req, res) => {
    const record = await found(queue, req.params.id!, res);
    if (record) res.json(record);
  });

  router.post('/:id/cancel', async (req, res) => {
    if (!(await found(queue, req.params.id!, res))) return;
    const record = await queue.cancel(req.params.id!);
    // A build cancelled before any worker took it leaves its context behind otherwise.
    if (record?.status === 'cancelled' && record.source.type === 'upload') await deleteContext(opts.store, record.id);
    res.status(202).json(record);
  });

  router.get('/:id/log', async (req, res) => {
    const id = req.params.id!;
    if (!(await found(queue, id, res))) return;
    await sendLog(queue, id, req, res);
  });

  router.get('/:id/context', async (req, res) => {
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const body = isBuildId(req.params.id!) ? await openContext(opts.store, req.params.id!, ac.signal) : null;
    if (!body) return void res.status(404).json({ error: `no stored context for build ${req.params.id}` });
    res.type('application/x-tar');
    body.pipe(res);
  });

  router.delete('/:id/context', async (req, res) => {
    if (isBuildId(req.params.id!)) await deleteContext(opts.store, req.params.id!);
    res.status(204).end();
  });

  router.use(errors);
  return router;
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

const errors: ErrorRequestHandler = (err: unknown, req, res, next) => {
  if (res.headersSent) return next(err);
  // A refused upload is drained so the client reads this answer rather than a reset.
  if (!req.readableEnded) req.resume();
  const status =
    err instanceof RedisUnreachableError ? 503
    : err instanceof ContextTooLargeError ? 413
    : err instanceof BadRequestError ? 400
    : ((err as { status?: number }).status ?? 500);
  res.status(status).json({ error: err instanceof Error ? err.message : String(err) });
};
