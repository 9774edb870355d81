import express, { type Express } from 'express';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import { StorageUnavailableError, type Store } from '../storage/index.js';
import { deleteBlob, getBlob } from './blobs.js';
import { BODY_LIMIT_DEFAULTS, declaresBody, drainBody, watchBody, type BodyLimits } from './body-guard.js';
import type { Handler, RegistryOptions, RequestEvents, RouteContext } from './context.js';
import { RegistryError, writeError } from './errors.js';
import { sendJson } from './http.js';
import { catalog, listTags, referrers } from './listing.js';
import { deleteManifest, getManifest, putManifest } from './manifests.js';
import type { RegistryMetrics } from './metrics.js';
import { validateName } from './names.js';
import { makeEvent, type Notifier } from './notifications.js';
import { cancelUpload, completeUpload, patchUpload, startUpload, uploadStatus } from './uploads.js';

interface Route {
  /** The route's label in /metrics. */
  name: string;
  /** Matched against the path after /v2/; group 1 is the name, group 2 the parameter. */
  pattern: RegExp;
  methods: Partial<Record<string, Handler>>;
}

/*
 * The OCI Distribution endpoints. Names may contain '/', so the name is the
 * greedy prefix before the last /blobs/, /manifests/, … and is validated once
 * here, before any handler runs.
 */
const ROUTES: Route[] = [
  { name: 'upload-start', pattern: /^(.+)\/blobs\/uploads\/?()$/, methods: { POST: startUpload } },
  {
    name: 'upload',
    pattern: /^(.+)\/blobs\/uploads\/([^/]+)$/,
    methods: { GET: uploadStatus, PATCH: patchUpload, PUT: completeUpload, DELETE: cancelUpload },
  },
  { name: 'blob', pattern: /^(.+)\/blobs\/([^/]+)$/, methods: { GET: getBlob, HEAD: getBlob, DELETE: deleteBlob } },
  {
    name: 'manifest',
    pattern: /^(.+)\/manifests\/([^/]+)$/,
    methods: { GET: getManifest, HEAD: getManifest, PUT: putManifest, DELETE: deleteManifest },
  },
  { name: 'tags', pattern: /^(.+)\/tags\/list()$/, methods: { GET: listTags } },
  { name: 'referrers', pattern: /^(.+)\/referrers\/([^/]+)$/, methods: { GET: referrers } },
];

export interface RegistryAppOptions extends Partial<RegistryOptions> {
  store: Store;
  log?: (err: unknown) => void;
  /** Served at GET /metrics and fed by every /v2/ request. */
  metrics?: RegistryMetrics;
  /** Where events go (webhooks); absent: events only feed the metrics. */
  notifier?: Notifier;
  /** How long /v2/ request bodies may stall or trickle; unset fields keep BODY_LIMIT_DEFAULTS. */
  bodyLimits?: Partial<BodyLimits>;
}

export type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

type Base = Omit<RouteContext, 'name' | 'param' | 'query' | 'events'>;
type Routed = [Handler, Omit<RouteContext, 'events'>, string];

/** Finds the handler, context and route name for a /v2/ path (without the leading "/v2/"). */
function route(path: string, method: string, query: URLSearchParams, base: Base): Routed {
  if (path === '' ) return [async (_c, _q, res) => sendJson(res, 200, {}), { ...base, name: '', param: '', query }, 'base'];
  if (path === '_catalog') {
    if (method !== 'GET') throw new RegistryError('UNSUPPORTED', undefined, `${method} is not supported here`);
    return [catalog, { ...base, name: '', param: '', query }, 'catalog'];
  }
  for (const r of ROUTES) {
    const m = r.pattern.exec(path);
    if (!m) continue;
    const handler = r.methods[method];
    if (!handler) {
      throw new RegistryError('UNSUPPORTED', undefined, `${method} is not supported here`, { Allow: Object.keys(r.methods).join(', ') });
    }
    return [handler, { ...base, name: validateName(m[1]!), param: decodeParam(m[2] ?? ''), query }, r.name];
  }
  throw new RegistryError('NOT_FOUND', undefined, `no such endpoint: ${method} /v2/${path}`);
}

/**
 * A path parameter with its percent-escapes decoded. One that does not decode
 * (`%ZZ`, a cut UTF-8 sequence, a bare `%`) is passed on as it is: no tag,
 * digest or upload id may hold a '%', so its handler refuses it with its own
 * code (TAG_INVALID, DIGEST_INVALID, BLOB_UPLOAD_UNKNOWN), as any other invalid value.
 */
function decodeParam(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/**
 * The registry's request listener. The OCI API under /v2/ is dispatched
 * directly on node:http: it is the hot path (a manifest GET does little else),
 * and express's per-request machinery measured 13k req/s against 64k for a
 * bare listener here. Everything else goes to an express app (management API,
 * dashboard and hooks as they come).
 */
export function createRegistryApp(opts: RegistryAppOptions): RequestListener & { express: Express } {
  const base = { store: opts.store, options: { deleteEnabled: opts.deleteEnabled ?? true, redirect: opts.redirect ?? false } };
  const log = opts.log ?? ((err: unknown) => console.error(err));
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  const { metrics, notifier } = opts;
  const limits: BodyLimits = { ...BODY_LIMIT_DEFAULTS, ...opts.bodyLimits };
  const fail = (err: unknown, req: IncomingMessage, res: ServerResponse) => {
    writeError(err, req, res, log);
    if (res.statusCode >= 500) metrics?.storageError(err instanceof StorageUnavailableError ? 'unavailable' : 'internal');
    // Answered before the body was read (or all of it): drop the rest, up to a bound, so the client reads the answer.
    drainBody(req, limits.drainBytes);
  };
  const cutBody = (req: IncomingMessage, res: ServerResponse, reason: 'idle' | 'slow') => {
    if (!res.headersSent) {
      const message =
        reason === 'idle' ? `no body byte came for ${limits.idleTimeoutMs} ms` : `the body came slower than ${limits.minRate} bytes/s`;
      writeError(new RegistryError('REQUEST_TIMEOUT', { reason }, message, { Connection: 'close' }), req, res, log);
    }
    // Ending the request ends the handler's storage work on it, which frees its upload session.
    const end = () => req.destroy();
    res.once('finish', end);
    setTimeout(end, 1000).unref();
  };

  const listener = (req: IncomingMessage, res: ServerResponse): void => {
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    const url = req.url ?? '/';
    if (url !== '/v2' && !url.startsWith('/v2/')) {
      if (metrics && req.method === 'GET' && (url === '/metrics' || url.startsWith('/metrics?'))) serveMetrics(metrics, res, log);
      else app(req, res);
      return;
    }
    const q = url.indexOf('?');
    const path = (q < 0 ? url : url.slice(0, q)).slice(4);
    const started = performance.now();
    if (declaresBody(req)) watchBody(req, limits, (reason) => cutBody(req, res, reason));
    let routeName = 'unknown';
    if (metrics) res.once('finish', () => metrics.observeRequest(routeName, req.method ?? 'GET', res.statusCode, (performance.now() - started) / 1000));
    try {
      const [handler, partial, name] = route(path, req.method ?? 'GET', new URLSearchParams(q < 0 ? '' : url.slice(q + 1)), base);
      routeName = name;
      const ctx: RouteContext = { ...partial, events: requestEvents(req, partial.name, name, metrics, notifier) };
      handler(ctx, req, res).catch((err: unknown) => fail(err, req, res));
    } catch (err) {
      fail(err, req, res);
    }
  };
  return Object.assign(listener, { express: app });
}

function serveMetrics(metrics: RegistryMetrics, res: ServerResponse, log: (err: unknown) => void): void {
  metrics.render().then(
    (text) => {
      res.statusCode = 200;
      res.setHeader('Content-Type', metrics.contentType);
      res.setHeader('Content-Length', Buffer.byteLength(text));
      res.end(text);
    },
    (err: unknown) => {
      log(err);
      res.statusCode = 500;
      res.end();
    },
  );
}

const HOSTNAME = hostname();
const NO_EVENTS: RequestEvents = { emit: () => {} };

/** Binds a request's events to its repository and connection; counts bytes, queues notifications. */
function requestEvents(req: IncomingMessage, repository: string, routeName: string, metrics?: RegistryMetrics, notifier?: Notifier): RequestEvents {
  if (!metrics && !notifier) return NO_EVENTS;
  return {
    emit(action, { transferred, tag, ...subject }) {
      if (transferred) {
        if (action === 'pull') metrics?.bytesOut(transferred);
        else if (action === 'push') metrics?.bytesIn(transferred);
      }
      if (!notifier) return;
      const host = req.headers.host ?? '';
      const kind = routeName === 'manifest' ? 'manifests' : 'blobs';
      const target = {
        ...subject,
        length: subject.size,
        repository,
        url: subject.digest ? `http://${host}/v2/${repository}/${kind}/${subject.digest}` : '',
        ...(tag === undefined ? {} : { tag }),
      };
      const request = {
        id: crypto.randomUUID(),
        addr: `${req.socket.remoteAddress ?? ''}:${req.socket.remotePort ?? ''}`,
        host,
        method: req.method ?? '',
        useragent: req.headers['user-agent'] ?? '',
      };
      notifier.enqueue(makeEvent(action, target, request, `${HOSTNAME}:${req.socket.localPort ?? ''}`));
    },
  };
}
