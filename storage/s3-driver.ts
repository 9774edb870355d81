import type { IncomingMessage } from 'node:http';
import { Readable, addAbortSignal, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PathNotFoundError, type FileInfo, type FileWriter, type ReadOptions, type StorageDriver } from './driver.js';
import { abortUploads, deleteKeys, listChildren, listKeys, listObjects } from './s3-bucket.js';
import { CHUNKS, chunkKey, chunkObjects, chunkedState, markerHeaders, newGeneration, type ChunkedState } from './s3-chunks.js';
import { isInvalidRange, isNotFound, readAll, s3Error, s3Target, type S3Options, type S3Target } from './s3-client.js';
import { compose, type Segment } from './s3-compose.js';
import { FAST_COPY_MIN, fastCopy } from './s3-copy.js';
import { headObject, headOf, putBuffers, type ObjectHead } from './s3-requests.js';
import { S3ObjectWriter } from './s3-writer.js';

/*
 * Storage on an S3-compatible bucket (MinIO, Ceph RGW, AWS) through the minio client.
 * Path `/a/b` is the key `<prefix>/a/b`; directories exist only as key prefixes.
 *
 * Plain files are single objects. Files that are appended to (upload sessions'
 * data) are a marker object plus one object per append: s3-chunks.ts draws that
 * layout. Why chunk objects rather than keeping one S3 multipart upload open
 * across PATCH requests (distribution's way): a chunk is an ordinary object
 * written by an ordinary streamed writer, so no upload id or part list has to
 * be kept consistent across instances and crashes, a PATCH cut off half way
 * leaves nothing visible (the session's offset stays where it was, and the
 * client resumes there), and chunks may have any size — S3 parts must be
 * ≥ 5 MiB except the last, which forces the multipart approach into
 * complete/re-copy rounds for every small PATCH. The cost comes at `move`, and
 * only for sessions of several chunks: docker, skopeo and containerd send a
 * layer in one PATCH (or one POST), whose chunk becomes the blob by one
 * server-side CopyObject — the same copy distribution does. Several chunks are
 * joined by a multipart upload whose parts are UploadPartCopy of chunk ranges;
 * only pieces smaller than 5 MiB are read back and re-uploaded (s3-compose.ts).
 *
 * Requests per call, as the registry's hot paths see them: stat of a file,
 * getContent, putContent: 1; stat of a missing path: 2 (HEAD, then a listing
 * for a directory); an append: a HEAD, the chunk's writes, the marker's PUT;
 * move of a one-chunk file: HEAD, listing, copy, one bulk delete.
 *
 * Streamed writes are multipart uploads with bounded memory (s3-writer.ts);
 * deletes of trees are bulk DeleteObjects and also abort multipart uploads left
 * under the path; `walk` lists keys (in key order).
 */
export class S3Driver implements StorageDriver {
  readonly name = 's3';
  readonly t: S3Target;
  private readonly base: string;

  constructor(readonly options: S3Options, env: NodeJS.ProcessEnv = process.env) {
    this.t = s3Target(options, env);
    const prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
    this.base = prefix ? `${prefix}/` : '';
  }

  /** Where this driver stores, for messages: s3://host:port/bucket/prefix */
  get location(): string {
    return `${this.t.endpoint}/${this.t.bucket}/${this.base}`;
  }

  private key(path: string): string {
    const parts = path.split('/');
    if (!path.startsWith('/') || path === '/' || parts.slice(1).some((p) => p === '' || p === '.' || p === '..' || p.endsWith(CHUNKS))) {
      throw new Error(`storage: invalid path ${JSON.stringify(path)}`);
    }
    return this.base + path.slice(1);
  }

  private dirPrefix(path: string): string {
    return path === '/' ? this.base : `${this.key(path)}/`;
  }

  private fail(what: string, err: unknown): Error {
    return err instanceof PathNotFoundError ? err : s3Error(this.t, what, err);
  }

  async stat(path: string): Promise<FileInfo | null> {
    await this.ready(`stat of ${path}`);
    const key = this.key(path);
    const head = await headObject(this.t, key, `stat of ${path}`);
    if (head) return { path, size: chunkedState(head)?.size ?? head.size, modTime: head.modTime, isDir: false };
    // A directory is any key below the path.
    const below = await this.t.client.listObjectsV2Query(this.t.bucket, `${key}/`, '', '', 1, '').catch((err: unknown) => {
      throw this.fail(`listing ${path}`, err);
    });
    const first = below.objects[0];
    return first ? { path, size: 0, modTime: first.lastModified ?? new Date(0), isDir: true } : null;
  }

  async reader(path: string, opts: ReadOptions = {}): Promise<Readable> {
    await this.ready(`reading ${path}`);
    const key = this.key(path);
    const offset = opts.offset ?? 0;
    let head: ObjectHead | null = null;
    if (opts.length !== 0) {
      try {
        const res = (await this.t.client.getPartialObject(this.t.bucket, key, offset, opts.length ?? 0)) as IncomingMessage;
        head = headOf(res.headers);
        if (!chunkedState(head)) return opts.signal ? addAbortSignal(opts.signal, res) : res;
        res.resume(); // a marker: the bytes are in its chunks
      } catch (err) {
        if (isNotFound(err)) throw new PathNotFoundError(path);
        if (!isInvalidRange(err)) throw this.fail(`reading ${path}`, err);
      }
    }
    head ??= await headObject(this.t, key, `reading ${path}`);
    if (!head) throw new PathNotFoundError(path);
    const state = chunkedState(head);
    // A plain file read at or past its end, or for no bytes: nothing.
    if (!state) return Readable.from([]);
    const { segments } = await chunkObjects(this.t, key, state);
    if (!segments) throw this.fail(`reading ${path}`, new Error(`chunks of ${key} are missing`));
    const stream = Readable.from(this.concat(segments, offset, opts.length));
    return opts.signal ? addAbortSignal(opts.signal, stream) : stream;
  }

  async writer(path: string, opts: { append?: boolean } = {}): Promise<FileWriter> {
    await this.ready(`writing ${path}`);
    const key = this.key(path);
    const remove = () => this.delete(path);
    if (!opts.append) return new S3ObjectWriter(this.t, key, { remove });
    const head = await headObject(this.t, key, `appending to ${path}`);
    const existing = head ? chunkedState(head) : null;
    const state: ChunkedState = existing ?? { gen: newGeneration(), size: head?.size ?? 0 };
    // Appending creates the file, as on a filesystem (an empty plain file until a chunk is committed).
    if (!head) await putBuffers(this.t, key, [], { what: `writing ${path}` });
    if (head && !existing && head.size > 0) {
      // A plain file's bytes become chunk 0 of a new generation, visible only once the marker says so.
      await compose(this.t, [{ key, size: head.size }], chunkKey(key, state.gen, 0));
    }
    const afterCommit = async (written: number) => {
      if (written > 0) await putBuffers(this.t, key, [], { headers: markerHeaders({ gen: state.gen, size: state.size + written }), what: `appending to ${path}` });
    };
    // A cancelled append never reached the marker: its chunk, if any, is invisible and overwritten by the next append.
    return new S3ObjectWriter(this.t, chunkKey(key, state.gen, state.size), { initial: state.size, skipEmpty: true, afterCommit, remove: async () => undefined });
  }

  /** A blob's bytes into a response: the pooled-buffer socket path for large ranges (s3-copy.ts), else the reader. */
  async copyTo(path: string, dest: Writable, opts: { offset: number; length: number; signal?: AbortSignal }): Promise<void> {
    await this.ready(`reading ${path}`);
    if (opts.length >= FAST_COPY_MIN) {
      const done = await fastCopy(this.t, this.key(path), dest, opts).catch((err: unknown) => {
        throw (err as Error)?.name === 'AbortError' ? err : this.fail(`reading ${path}`, err);
      });
      if (done) return;
    }
    await pipeline(await this.reader(path, opts), dest, { end: false, signal: opts.signal });
  }

  async getContent(path: string): Promise<Buffer> {
    await this.ready(`reading ${path}`);
    try {
      const res = (await this.t.client.getObject(this.t.bucket, this.key(path))) as IncomingMessage;
      const body = await readAll(res);
      return chunkedState(headOf(res.headers)) ? await readAll(await this.reader(path)) : body;
    } catch (err) {
      if (isNotFound(err)) throw new PathNotFoundError(path);
      throw this.fail(`reading ${path}`, err);
    }
  }

  async putContent(path: string, content: Buffer | string): Promise<void> {
    await this.ready(`writing ${path}`);
    await putBuffers(this.t, this.key(path), [typeof content === 'string' ? Buffer.from(content) : content], { what: `writing ${path}` });
  }

  async list(path: string): Promise<string[]> {
    await this.ready(`listing ${path}`);
    const names = await listChildren(this.t, this.dirPrefix(path));
    return [...names].filter((n) => !n.endsWith(CHUNKS)).sort();
  }

  async move(src: string, dest: string): Promise<void> {
    await this.ready(`moving ${src}`);
    const key = this.key(src);
    // The listing does not depend on the HEAD: both at once, one round trip.
    const [head, listed] = await Promise.all([headObject(this.t, key, `moving ${src}`), chunkObjects(this.t, key, null)]);
    if (!head) throw new PathNotFoundError(src);
    const state = chunkedState(head);
    const chunks = state ? await chunkObjects(this.t, key, state, listed.all) : listed;
    const segments: Segment[] | null = state ? chunks.segments : [{ key, size: head.size }];
    if (!segments) throw this.fail(`moving ${src}`, new Error(`chunks of ${key} are missing`));
    const destKey = this.key(dest);
    if (segments.every((s) => s.size === 0)) await putBuffers(this.t, destKey, [], { what: `writing ${dest}` });
    else await compose(this.t, segments, destKey);
    await deleteKeys(this.t, [...chunks.all.map((o) => o.name), key]);
  }

  async delete(path: string): Promise<void> {
    await this.ready(`deleting ${path}`);
    const key = path === '/' ? this.base : this.key(path);
    const mine = (k: string) => path === '/' || k === key || k.startsWith(`${key}/`) || k.startsWith(`${key}${CHUNKS}/`);
    const [, listed] = await Promise.all([abortUploads(this.t, key, mine), listKeys(this.t, key)]);
    const keys = listed.filter(mine);
    // The object at the path first: without its marker a chunked file's chunks are invisible leftovers, never a file with holes.
    await deleteKeys(this.t, keys.filter((k) => k === key));
    await deleteKeys(this.t, keys.filter((k) => k !== key));
  }

  async *walk(path: string): AsyncIterable<FileInfo> {
    await this.ready(`walking ${path}`);
    const prefix = this.dirPrefix(path);
    for await (const o of listObjects(this.t, prefix)) {
      const rel = o.name.slice(this.base.length);
      if (rel.endsWith('/') || rel.split('/').some((p) => p.endsWith(CHUNKS))) continue;
      const file = `/${rel}`;
      if (o.size > 0) {
        yield { path: file, size: o.size, modTime: o.lastModified, isDir: false };
      } else {
        const st = await this.stat(file);
        if (st) yield st;
      }
    }
  }

  async redirectURL(path: string, method: 'GET' | 'HEAD'): Promise<string | null> {
    return this.t.client.presignedUrl(method, this.t.bucket, this.key(path), this.options.redirectExpiry ?? 1200);
  }

  /** Aborts multipart uploads under this driver's prefix started before `olderThan`; returns how many. */
  async cleanIncomplete(olderThan: Date): Promise<number> {
    await this.ready('cleaning incomplete uploads');
    return abortUploads(this.t, this.base, (_key, initiated) => initiated < olderThan);
  }

  /** Fails fast, naming the endpoint, when S3 cannot be reached, the bucket is missing or the credentials are refused. */
  async verify(timeoutMs = 5000): Promise<void> {
    const what = 'checking the bucket';
    const timeout = new Promise<never>((_, reject) => {
      const timer = setTimeout(() => reject(this.fail(what, Object.assign(new Error('no answer'), { code: 'ETIMEDOUT' }))), timeoutMs);
      timer.unref();
    });
    const exists = await Promise.race([this.t.client.bucketExists(this.t.bucket), timeout]).catch((err: unknown) => {
      throw this.fail(what, err);
    });
    if (!exists) throw this.fail(what, Object.assign(new Error('no such bucket'), { code: 'NoSuchBucket' }));
  }

  /** Fails at once, naming the endpoint, while S3 is known to be down; waits for the breaker's probe after. */
  private async ready(what: string): Promise<void> {
    await this.t.ready().catch((err: unknown) => {
      throw s3Error(this.t, what, err);
    });
  }

  private async *concat(segments: Segment[], offset: number, length: number | undefined): AsyncIterable<Buffer> {
    const end = length === undefined ? Infinity : offset + length;
    let at = 0;
    for (const seg of segments) {
      const from = Math.max(offset, at);
      const to = Math.min(end, at + seg.size);
      if (to > from) {
        const part = await this.t.client.getPartialObject(this.t.bucket, seg.key, from - at, to - from).catch((err: unknown) => {
          throw this.fail(`reading ${seg.key}`, err);
        });
        for await (const c of part) yield c as Buffer;
      }
      at += seg.size;
    }
  }
}
