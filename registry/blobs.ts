import { RegistryError } from './errors.js';
import type { Handler } from './context.js';
import { parseRange } from './http.js';
import { requestDigest } from './names.js';

/** Blobs have no media type of their own in the API; distribution's events say this. */
const BLOB_TYPE = 'application/octet-stream';

/** GET and HEAD of a blob, with Range support and optional redirects to storage. */
export const getBlob: Handler = async ({ store, options, name, param, events }, req, res) => {
  const digest = requestDigest(param);
  const info = await store.blobs.stat(name, digest);
  res.setHeader('Docker-Content-Digest', digest.value);
  res.setHeader('ETag', `"${digest.value}"`);
  res.setHeader('Accept-Ranges', 'bytes');
  res.setHeader('Cache-Control', 'max-age=31536000');
  if (options.redirect) {
    const url = await store.blobs.redirectURL(digest, req.method === 'HEAD' ? 'HEAD' : 'GET');
    if (url) {
      res.setHeader('Location', url);
      res.setHeader('Content-Length', '0');
      res.statusCode = 307;
      res.end();
      if (req.method === 'GET') events.emit('pull', { mediaType: BLOB_TYPE, digest: digest.value, size: info.size });
      return;
    }
  }
  res.setHeader('Content-Type', 'application/octet-stream');
  const range = parseRange(req.headers.range, info.size);
  if (range) {
    res.statusCode = 206;
    res.setHeader('Content-Range', `bytes ${range.start}-${range.end}/${info.size}`);
  }
  const length = range ? range.end - range.start + 1 : info.size;
  res.setHeader('Content-Length', String(length));
  if (req.method === 'GET') events.emit('pull', { mediaType: BLOB_TYPE, digest: digest.value, size: info.size, transferred: length });
  if (req.method === 'HEAD' || length === 0) {
    res.end();
    return;
  }
  const abort = new AbortController();
  res.once('close', () => abort.abort());
  try {
    await store.blobs.send(digest, res, { offset: range?.start ?? 0, length, signal: abort.signal });
    res.end();
  } catch (err) {
    // Headers are out: the client sees a cut-off body, never a wrong one.
    res.destroy();
    if (!abort.signal.aborted && (err as Error).name !== 'AbortError') throw err;
  }
};

export const deleteBlob: Handler = async ({ store, options, name, param, events }, _req, res) => {
  if (!options.deleteEnabled) throw new RegistryError('UNSUPPORTED', undefined, 'deletion is disabled on this registry');
  const digest = requestDigest(param);
  await store.blobs.unlink(name, digest);
  res.setHeader('Docker-Content-Digest', digest.value);
  res.setHeader('Content-Length', '0');
  res.statusCode = 202;
  res.end();
  events.emit('delete', { mediaType: BLOB_TYPE, digest: digest.value, size: 0 });
};
