import express, { type Express } from 'express';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Store } from '../storage/index.js';
import { deleteBlob, getBlob } from './blobs.js';
import type { Handler, RegistryOptions, RouteContext } from './context.js';
import { RegistryError, writeError } from './errors.js';
import { sendJson } from './http.js';
import { catalog, listTags, referrers } from './listing.js';
import { deleteManifest, getManifest, putManifest } from './manifests.js';
import { validateName } from './names.js';
import { cancelUpload, completeUpload, patchUpload, startUpload, uploadStatus } from './uploads.js';

interface Route {
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
  { pattern: /^(.+)\/blobs\/uploads\/?()$/, methods: { POST: startUpload } },
  {
    pattern: /^(.+)\/blobs\/uploads\/([^/]+)$/,
    methods: { GET: uploadStatus, PATCH: patchUpload, PUT: completeUpload, DELETE: cancelUpload },
  },
  { pattern: /^(.+)\/blobs\/([^/]+)$/, methods: { GET: getBlob, HEAD: getBlob, DELETE: deleteBlob } },
  {
    pattern: /^(.+)\/manifests\/([^/]+)$/,
    methods: { GET: getManifest, HEAD: getManifest, PUT: putManifest, DELETE: deleteManifest },
  },
  { pattern: /^(.+)\/tags\/list()$/, methods: { GET: listTags } },
  { pattern: /^(.+)\/referrers\/([^/]+)$/, methods: { GET: referrers } },
];

export interface RegistryAppOptions extends Partial<RegistryOptions> {
  store: Store;
  log?: (err: unknown) => void;
}

export type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

/** Finds the handler and context for a /v2/ path (without the leading "/v2/"). */
function route(path: string, method: string, query: URLSearchParams, base: Omit<RouteContext, 'name' | 'param' | 'query'>): [Handler, RouteContext] {
  if (path === '' ) return [async (_c, _q, res) => sendJson(res, 200, {}), { ...base, name: '', param: '', query }];
  if (path === '_catalog') {
    if (method !== 'GET') throw new RegistryError('UNSUPPORTED', undefined, `${method} is not supported here`);
    return [catalog, { ...base, name: '', param: '', query }];
  }
  for (const r of ROUTES) {
    const m = r.pattern.exec(path);
    if (!m) continue;
    const handler = r.methods[method];
    if (!handler) {
      throw new RegistryError('UNSUPPORTED', undefined, `${method} is not supported here`, { Allow: Object.keys(r.methods).join(', ') });
    }
    return [handler, { ...base, name: validateName(m[1]!), param: decodeURIComponent(m[2] ?? ''), query }];
  }
  throw new RegistryError('NOT_FOUND', undefined, `no such endpoint: ${method} /v2/${path}`);
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

  const listener = (req: IncomingMessage, res: ServerResponse): void => {
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    const url = req.url ?? '/';
    if (url !== '/v2' && !url.startsWith('/v2/')) {
      app(req, res);
      return;
    }
    const q = url.indexOf('?');
    const path = (q < 0 ? url : url.slice(0, q)).slice(4);
    try {
      const [handler, ctx] = route(path, req.method ?? 'GET', new URLSearchParams(q < 0 ? '' : url.slice(q + 1)), base);
      handler(ctx, req, res).catch((err: unknown) => writeError(err, req, res, log));
    } catch (err) {
      writeError(err, req, res, log);
    }
  };
  return Object.assign(listener, { express: app });
}
