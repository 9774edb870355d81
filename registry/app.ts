import express, { type Express, type NextFunction, type Request, type Response } from 'express';
import type { Store } from '../storage/index.js';
import { deleteBlob, getBlob } from './blobs.js';
import type { Handler, RegistryOptions } from './context.js';
import { RegistryError, errorMiddleware } from './errors.js';
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

export function createRegistryApp(opts: RegistryAppOptions): Express {
  const options: RegistryOptions = { deleteEnabled: opts.deleteEnabled ?? true, redirect: opts.redirect ?? false };
  const { store } = opts;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('query parser', 'simple');

  app.use((_req: Request, res: Response, next: NextFunction) => {
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    next();
  });

  app.get(['/v2', '/v2/'], (_req, res) => {
    res.json({});
  });

  app.use('/v2', (req: Request, res: Response, next: NextFunction) => {
    const path = req.path.slice(1);
    if (path === '_catalog') {
      if (req.method !== 'GET') return next(new RegistryError('UNSUPPORTED'));
      return catalog({ store, options, name: '', param: '' }, req, res).catch(next);
    }
    for (const route of ROUTES) {
      const m = route.pattern.exec(path);
      if (!m) continue;
      const handler = route.methods[req.method];
      if (!handler) {
        res.setHeader('Allow', Object.keys(route.methods).join(', '));
        return next(new RegistryError('UNSUPPORTED', undefined, `${req.method} is not supported here`));
      }
      let ctx;
      try {
        ctx = { store, options, name: validateName(m[1]!), param: decodeURIComponent(m[2] ?? '') };
      } catch (err) {
        return next(err);
      }
      return handler(ctx, req, res).catch(next);
    }
    next();
  });

  app.use((req: Request, _res: Response, next: NextFunction) => {
    next(new RegistryError('NOT_FOUND', undefined, `no such endpoint: ${req.method} ${req.path}`));
  });
  app.use(errorMiddleware(opts.log ?? ((err) => console.error(err))));
  return app;
}
