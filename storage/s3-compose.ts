import { MIN_PART, copySource, readAll, s3Error, type S3Target } from './s3-client.js';
import { putBuffers } from './s3-requests.js';

/** A run of bytes in one object: [start, end). */
export interface Range {
  key: string;
  start: number;
  end: number;
}

/** One part of the destination: copied server side, or read back and uploaded (small pieces). */
export type PlannedPart = { copy: Range } | { upload: Range[] };

/** Objects whose bytes, in order, make up one file. */
export interface Segment {
  key: string;
  size: number;
}

/**
 * Plans the parts of a multipart upload that concatenates `segments`. S3 only
 * accepts parts ≥ 5 MiB (except the last) and ≤ 5 GiB, so a long enough run
 * of one segment becomes UploadPartCopy of a byte range (server side, no
 * bytes through us), while short segments are gathered into parts of exactly
 * MIN_PART that are read back and uploaded (memory: one such part). A
 * segment that follows short ones first tops the gathered part up, then its
 * rest is copied by range.
 */
export function planParts(segments: Segment[], copyPartSize: number, minPart = MIN_PART): PlannedPart[] {
  const parts: PlannedPart[] = [];
  let pending: Range[] = [];
  let pendingBytes = 0;
  for (const seg of segments) {
    let off = 0;
    while (off < seg.size) {
      const avail = seg.size - off;
      if (pendingBytes === 0 && avail >= minPart) {
        let take = Math.min(avail, copyPartSize);
        // Never leave a remainder too small to be a part of its own.
        if (avail - take > 0 && avail - take < minPart) take = avail - minPart;
        parts.push({ copy: { key: seg.key, start: off, end: off + take } });
        off += take;
        continue;
      }
      const take = Math.min(avail, minPart - pendingBytes);
      pending.push({ key: seg.key, start: off, end: off + take });
      pendingBytes += take;
      off += take;
      if (pendingBytes >= minPart) {
        parts.push({ upload: pending });
        pending = [];
        pendingBytes = 0;
      }
    }
  }
  if (pendingBytes > 0) parts.push({ upload: pending });
  return parts;
}

/**
 * Makes `dest` a single object holding the bytes of `segments` in order, with
 * as little data through this process as S3 allows: one CopyObject when a
 * single segment of at most copyPartSize is the whole file, a PUT when the
 * whole file is smaller than one part, else a multipart upload of planned
 * parts (aborted on any failure, so `dest` is either complete or untouched).
 */
export async function compose(t: S3Target, segments: Segment[], dest: string): Promise<void> {
  const nonEmpty = segments.filter((s) => s.size > 0);
  const total = nonEmpty.reduce((n, s) => n + s.size, 0);
  const only = nonEmpty[0];
  if (nonEmpty.length === 1 && only && only.size <= t.copyPartSize) {
    await t.client.copyObject(t.bucket, dest, copySource(t.bucket, only.key)).catch((err: unknown) => {
      throw s3Error(t, `copying ${only.key} to ${dest}`, err);
    });
    return;
  }
  if (total < MIN_PART) {
    const body = await Promise.all(nonEmpty.map((s) => readRange(t, { key: s.key, start: 0, end: s.size })));
    await putBuffers(t, dest, body, { what: `writing ${dest}` });
    return;
  }
  await multipart(t, planParts(nonEmpty, t.copyPartSize), dest);
}

async function multipart(t: S3Target, plan: PlannedPart[], dest: string): Promise<void> {
  if (plan.length > 10_000) throw new Error(`S3: ${dest} would need ${plan.length} parts (at most 10,000)`);
  const uploadId = await t.client.initiateNewMultipartUpload(t.bucket, dest, {}).catch((err: unknown) => {
    throw s3Error(t, `starting a multipart upload of ${dest}`, err);
  });
  try {
    const etags: { part: number; etag: string }[] = [];
    for (const [i, part] of plan.entries()) {
      etags.push({ part: i + 1, etag: await sendPart(t, dest, uploadId, i + 1, part) });
    }
    await t.client.completeMultipartUpload(t.bucket, dest, uploadId, etags);
  } catch (err) {
    await t.client.abortMultipartUpload(t.bucket, dest, uploadId).catch(() => undefined);
    throw s3Error(t, `composing ${dest}`, err);
  }
}

async function sendPart(t: S3Target, dest: string, uploadId: string, partNumber: number, part: PlannedPart): Promise<string> {
  const base = { bucketName: t.bucket, objectName: dest, uploadID: uploadId, partNumber };
  if ('copy' in part) {
    const { key, start, end } = part.copy;
    const headers = { 'x-amz-copy-source': copySource(t.bucket, key), 'x-amz-copy-source-range': `bytes=${start}-${end - 1}` };
    return (await t.client.uploadPart({ ...base, headers }, '')).etag;
  }
  const body = await Promise.all(part.upload.map((r) => readRange(t, r)));
  return putBuffers(t, dest, body, { part: { uploadId, number: partNumber }, what: `uploading part ${partNumber} of ${dest}` });
}

/** The bytes [start, end) of an object (end > start; small ranges only). */
export async function readRange(t: S3Target, r: Range): Promise<Buffer> {
  const stream = await t.client.getPartialObject(t.bucket, r.key, r.start, r.end - r.start);
  return readAll(stream);
}
