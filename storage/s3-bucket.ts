import { isNotFound, s3Error, type S3Target } from './s3-client.js';

/** Bulk operations on the keys of the bucket, paginated (1000 keys a request). */

export interface ListedObject {
  name: string;
  size: number;
  lastModified: Date;
}

/** Every object whose key starts with `prefix`, in key order. */
export async function* listObjects(t: S3Target, prefix: string): AsyncIterable<ListedObject> {
  let token = '';
  do {
    const page = await t.client.listObjectsV2Query(t.bucket, prefix, token, '', 1000, '').catch((err: unknown) => {
      throw s3Error(t, `listing ${prefix}`, err);
    });
    for (const o of page.objects) {
      if (o.name !== undefined) yield { name: o.name, size: o.size ?? 0, lastModified: o.lastModified ?? new Date(0) };
    }
    token = page.isTruncated ? page.nextContinuationToken : '';
  } while (token);
}

/** The names of the direct children of `prefix` (a key prefix ending in '/'), objects and "directories" alike. */
export async function listChildren(t: S3Target, prefix: string): Promise<Set<string>> {
  const names = new Set<string>();
  let token = '';
  do {
    const page = await t.client.listObjectsV2Query(t.bucket, prefix, token, '/', 1000, '').catch((err: unknown) => {
      throw s3Error(t, `listing ${prefix}`, err);
    });
    for (const o of page.objects) {
      const name = (o.name ?? o.prefix ?? '').slice(prefix.length).replace(/\/$/, '');
      if (name) names.add(name);
    }
    token = page.isTruncated ? page.nextContinuationToken : '';
  } while (token);
  return names;
}

export async function listKeys(t: S3Target, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of listObjects(t, prefix)) keys.push(o.name);
  return keys;
}

/** DeleteObjects in batches; fails naming the keys S3 could not delete. */
export async function deleteKeys(t: S3Target, keys: string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 1000) {
    const results = await t.client.removeObjects(t.bucket, keys.slice(i, i + 1000)).catch((err: unknown) => {
      throw s3Error(t, `deleting ${keys.length} objects`, err);
    });
    // DeleteObjects in quiet mode reports only the keys it failed on.
    const failed = results.filter((r) => r);
    if (failed.length) throw s3Error(t, `deleting ${failed.length} objects`, new Error(JSON.stringify(failed.slice(0, 3))));
  }
}

/** Aborts the incomplete multipart uploads under `prefix` that `which` selects; returns how many. */
export async function abortUploads(t: S3Target, prefix: string, which: (key: string, initiated: Date) => boolean): Promise<number> {
  let aborted = 0;
  let keyMarker = '';
  let uploadIdMarker = '';
  for (;;) {
    const page = await t.client.listIncompleteUploadsQuery(t.bucket, prefix, keyMarker, uploadIdMarker, '').catch((err: unknown) => {
      throw s3Error(t, `listing incomplete uploads under ${prefix}`, err);
    });
    for (const u of page.uploads) {
      if (!which(u.key, u.initiated)) continue;
      await t.client.abortMultipartUpload(t.bucket, u.key, u.uploadId).catch((err: unknown) => {
        // Finished or aborted meanwhile by whoever owned it: fine.
        if (!isNotFound(err) && (err as { code?: string }).code !== 'NoSuchUpload') throw s3Error(t, `aborting the upload of ${u.key}`, err);
      });
      aborted++;
    }
    if (!page.isTruncated) return aborted;
    keyMarker = page.nextKeyMarker;
    uploadIdMarker = page.nextUploadIdMarker;
  }
}
