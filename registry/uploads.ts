import { isStoreError, type UploadStatus } from '../storage/index.js';
import { RegistryError } from './errors.js';
import type { Handler, Request, RouteContext } from './context.js';
import { contentLength, hasBody, noContent, parseContentRange, uploadRange } from './http.js';
import { requestDigest, validateName } from './names.js';

const BLOB_TYPE = 'application/octet-stream';

const sessionHeaders = (name: string, status: UploadStatus): Record<string, string> => ({
  Location: `/v2/${name}/blobs/uploads/${status.uuid}`,
  Range: uploadRange(status.offset),
  'Docker-Upload-UUID': status.uuid,
});

/** Abort storage work when the client goes away. */
function requestSignal(req: Request): AbortSignal {
  const abort = new AbortController();
  req.once('close', () => {
    if (!req.complete) abort.abort();
  });
  return abort.signal;
}

/** A RANGE_INVALID that tells the client where the session really is. */
async function rangeError(ctx: RouteContext, err: unknown): Promise<never> {
  if (isStoreError(err, 'range-mismatch')) {
    const status = await ctx.store.uploads.status(ctx.name, ctx.param).catch(() => null);
    throw new RegistryError('RANGE_INVALID', err.detail, err.message, status ? sessionHeaders(ctx.name, status) : {});
  }
  throw err;
}

/** POST: cross-repository mount, monolithic upload (?digest=), or a new session. */
export const startUpload: Handler = async ({ store, name, query, events }, req, res) => {
  const mount = query.get('mount');
  const from = query.get('from');
  const digest = query.get('digest');
  if (mount !== null && from !== null) {
    const mounted = await store.blobs.mount(name, validateName(from), requestDigest(mount, 'mount'));
    if (mounted) {
      noContent(res, 201, { Location: `/v2/${name}/blobs/${mounted.digest}`, 'Docker-Content-Digest': mounted.digest });
      events.emit('push', { mediaType: BLOB_TYPE, digest: mounted.digest, size: mounted.size });
      return;
    }
  }
  if (digest !== null) {
    const wanted = requestDigest(digest);
    const blob = await store.uploads.putWhole(name, wanted, req, { length: contentLength(req), signal: requestSignal(req) });
    noContent(res, 201, { Location: `/v2/${name}/blobs/${blob.digest}`, 'Docker-Content-Digest': blob.digest });
    events.emit('push', { mediaType: BLOB_TYPE, digest: blob.digest, size: blob.size, transferred: blob.size });
    return;
  }
  const status = await store.uploads.start(name);
  noContent(res, 202, sessionHeaders(name, status));
};

export const uploadStatus: Handler = async ({ store, name, param }, _req, res) => {
  const status = await store.uploads.status(name, param);
  noContent(res, 204, sessionHeaders(name, status));
};

/**
 * PATCH: one chunk, ranged (Content-Range must continue the session) or streamed.
 * A ranged chunk must be exactly the bytes its range spans, whatever the framing:
 * one that is not (chunked, so only seen while reading) is refused whole with 416
 * and the session stays where it was.
 */
export const patchUpload: Handler = async (ctx, req, res) => {
  const range = parseContentRange(req.headers['content-range'] as string | undefined);
  const length = contentLength(req);
  if (range && length !== undefined && range.end - range.start + 1 !== length) {
    throw new RegistryError('RANGE_INVALID', undefined, `Content-Range covers ${range.end - range.start + 1} bytes, Content-Length says ${length}`);
  }
  const status = await ctx.store.uploads
    .append(ctx.name, ctx.param, req, { start: range?.start, end: range?.end, length, signal: requestSignal(req) })
    .catch((err: unknown) => rangeError(ctx, err));
  noContent(res, 202, sessionHeaders(ctx.name, status));
};

/** PUT ?digest=: completes the session, with or without a last chunk. */
export const completeUpload: Handler = async (ctx, req, res) => {
  const digest = requestDigest(ctx.query.get('digest'));
  const range = parseContentRange(req.headers['content-range'] as string | undefined);
  const body = hasBody(req) ? req : undefined;
  const blob = await ctx.store.uploads
    .complete(ctx.name, ctx.param, digest, body, { start: range?.start, end: range?.end, length: contentLength(req), signal: requestSignal(req) })
    .catch((err: unknown) => rangeError(ctx, err));
  noContent(res, 201, { Location: `/v2/${ctx.name}/blobs/${blob.digest}`, 'Docker-Content-Digest': blob.digest });
  ctx.events.emit('push', { mediaType: BLOB_TYPE, digest: blob.digest, size: blob.size, transferred: blob.size });
};

export const cancelUpload: Handler = async ({ store, name, param }, _req, res) => {
  await store.uploads.cancel(name, param);
  noContent(res, 204, {});
};
