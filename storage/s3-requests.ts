import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { isNotFound, s3Error, type S3Target } from './s3-client.js';

/*
 * The few S3 requests the driver makes itself through the minio client's signed
 * request primitive, rather than its object calls: so that a body can be a list
 * of buffers (a part is sent as the chunks it arrived in, never concatenated into
 * one 16 MiB copy), so that no extra hash of the body is computed (putObject adds
 * an MD5 whenever the payload is not signed), and so that a HEAD hands back its
 * raw headers (the driver keeps its own metadata there).
 */

/** What a HEAD or GET says about an object. */
export interface ObjectHead {
  size: number;
  modTime: Date;
  /** The driver's metadata header `x-amz-meta-<name>`, lower case, or undefined. */
  meta(name: string): string | undefined;
}

export const headOf = (headers: IncomingHttpHeaders): ObjectHead => ({
  size: Number(headers['content-length'] ?? 0),
  modTime: new Date(headers['last-modified'] ?? 0),
  meta: (name) => {
    const v = headers[`x-amz-meta-${name}`];
    return Array.isArray(v) ? v[0] : v;
  },
});

/** HEAD of `key`; null when there is no such object. */
export async function headObject(t: S3Target, key: string, what: string): Promise<ObjectHead | null> {
  try {
    const res = await t.client.makeRequestAsyncOmit({ method: 'HEAD', bucketName: t.bucket, objectName: key }, '', [200]);
    return headOf(res.headers);
  } catch (err) {
    if (isNotFound(err)) return null;
    throw s3Error(t, what, err);
  }
}

/**
 * PUTs `body` (buffers, in order) as the object `key` — or, with `part`, as
 * part `part.number` of multipart upload `part.uploadId` — with extra headers
 * (e.g. `x-amz-meta-…`). Returns the ETag.
 */
export async function putBuffers(
  t: S3Target,
  key: string,
  body: readonly Buffer[],
  opts: { headers?: Record<string, string>; part?: { uploadId: string; number: number }; what?: string } = {},
): Promise<string> {
  const length = body.reduce((n, b) => n + b.length, 0);
  const query = opts.part ? `partNumber=${opts.part.number}&uploadId=${encodeURIComponent(opts.part.uploadId)}` : undefined;
  // The client signs the payload's SHA-256 when it was built to (see s3Target); else it sends UNSIGNED-PAYLOAD.
  let sha256 = '';
  if (t.client.enableSHA256) {
    const h = createHash('sha256');
    for (const b of body) h.update(b);
    sha256 = h.digest('hex');
  }
  const stream = body.length === 1 ? (body[0] as Buffer) : Readable.from(body, { objectMode: false });
  try {
    const res: IncomingMessage = await t.client.makeRequestStreamAsync(
      { method: 'PUT', bucketName: t.bucket, objectName: key, query, headers: { ...opts.headers, 'Content-Length': String(length) } },
      length === 0 ? '' : stream,
      sha256,
      [200],
      '',
    );
    res.resume();
    const etag = res.headers.etag ?? '';
    return etag.replace(/^"|"$/g, '');
  } catch (err) {
    throw s3Error(t, opts.what ?? `writing ${key}`, err);
  }
}
