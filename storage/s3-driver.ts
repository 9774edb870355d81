import { Readable, addAbortSignal } from 'node:stream';
import { PathNotFoundError, type FileInfo, type FileWriter, type ReadOptions, type StorageDriver } from './driver.js';
import { compose, type Segment } from './s3-compose.js';
import { contentLength, isInvalidRange, isNotFound, readAll, s3Error, s3Target, type S3Options, type S3Target } from './s3-client.js';
import { S3ObjectWriter } from './s3-writer.js';
import { abortUploads, deleteKeys, listChildren, listKeys, listObjects } from './s3-bucket.js';

/*
 * Storage on an S3-compatible bucket (MinIO, Ceph RGW, AWS) through the minio client.
 * Path `/a/b` is the key `<prefix>/a/b`; directories exist only as key prefixes.
 *
 * Appends. S3 has no append, and upload sessions must keep all their state in
 * storage, since POST, PATCH and PUT may reach different registry instances. So a
 * file that is appended to is stored as chunks, one object per append:
 *
 *   <key>                         empty: "this file is its chunks"
 *   <key>.chunks/<offset, 16 digits>   the bytes of one append (one PATCH), at that offset
 *
 * stat, reader and move present the contiguous chunks as one file. Rules: a
 * non-empty object at <key> is the whole file (chunks beside it are stale and
 * are deleted when the file is next made chunked, or deleted); an empty one
 * means the file is its chunks. A path component may not end in `.chunks`.
 *
 * Why chunk objects rather than keeping one S3 multipart upload open across
 * PATCH requests (distribution's way): a chunk is an ordinary object written
 * by an ordinary streamed writer, so no upload id or part list has to be kept
 * consistent across instances and crashes, a PATCH cut off half way leaves
 * nothing (the session's offset stays where it was, and the client resumes
 * there), and chunks may have any size — S3 parts must be ≥ 5 MiB except the
 * last, which forces the multipart approach into complete/re-copy rounds for
 * every small PATCH. The cost comes at `move`, and only for sessions of several
 * chunks: docker, skopeo and containerd send a layer in one PATCH (or one POST),
 * whose chunk becomes the blob by one server-side CopyObject — the same copy
 * distribution does. Several chunks are joined by a multipart upload whose parts
 * are UploadPartCopy of chunk ranges; only pieces smaller than 5 MiB are read
 * back and re-uploaded (see s3-compose.ts).
 *
 * Streamed writes are multipart uploads with bounded memory (s3-writer.ts);
 * moves are server-side copies (multipart copy above copyPartSize, 5 GiB by
 * default), then deletes; deletes of trees are bulk DeleteObjects and also abort
 * multipart uploads left under the path; `walk` lists keys (in key order).
 */
const CHUNKS = '.chunks';
const OFFSET_DIGITS = 16;

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
    const key = this.key(path);
    try {
      const head = await this.t.client.statObject(this.t.bucket, key);
      if (head.size > 0) return { path, size: head.size, modTime: head.lastModified, isDir: false };
      const chunks = await this.chunks(path);
      const size = chunks.reduce((n, c) => n + c.size, 0);
      const modTime = chunks.reduce((t, c) => (c.modTime > t ? c.modTime : t), head.lastModified);
      return { path, size, modTime, isDir: false };
    } catch (err) {
      if (!isNotFound(err)) throw this.fail(`stat of ${path}`, err);
    }
    // A directory is any key below the path.
    const below = await this.t.client.listObjectsV2Query(this.t.bucket, `${key}/`, '', '', 1, '').catch((err: unknown) => {
      throw this.fail(`listing ${path}`, err);
    });
    const first = below.objects[0];
    return first ? { path, size: 0, modTime: first.lastModified ?? new Date(0), isDir: true } : null;
  }

  async reader(path: string, opts: ReadOptions = {}): Promise<Readable> {
    const key = this.key(path);
    const offset = opts.offset ?? 0;
    if (opts.length === 0) {
      if (!(await this.stat(path))) throw new PathNotFoundError(path);
      return Readable.from([]);
    }
    try {
      const res = await this.t.client.getPartialObject(this.t.bucket, key, offset, opts.length ?? 0);
      if (offset > 0 || contentLength(res) !== 0) return opts.signal ? addAbortSignal(opts.signal, res) : res;
      res.resume(); // an empty object: the file may be its chunks
    } catch (err) {
      if (isNotFound(err)) throw new PathNotFoundError(path);
      if (!isInvalidRange(err)) throw this.fail(`reading ${path}`, err);
    }
    const segments = await this.segments(path);
    if (!segments) throw new PathNotFoundError(path);
    const stream = Readable.from(this.concat(segments, offset, opts.length));
    return opts.signal ? addAbortSignal(opts.signal, stream) : stream;
  }

  async writer(path: string, opts: { append?: boolean } = {}): Promise<FileWriter> {
    const key = this.key(path);
    const remove = () => this.delete(path);
    if (!opts.append) {
      await deleteKeys(this.t, await listKeys(this.t, this.chunkPrefix(path)));
      return new S3ObjectWriter(this.t, key, { remove });
    }
    const initial = await this.makeChunked(path);
    return new S3ObjectWriter(this.t, this.chunkKey(path, initial), { initial, skipEmpty: true, remove });
  }

  async getContent(path: string): Promise<Buffer> {
    try {
      const body = await readAll(await this.t.client.getObject(this.t.bucket, this.key(path)));
      return body.length > 0 ? body : readAll(await this.reader(path));
    } catch (err) {
      if (isNotFound(err)) throw new PathNotFoundError(path);
      throw this.fail(`reading ${path}`, err);
    }
  }

  async putContent(path: string, content: Buffer | string): Promise<void> {
    const body = Buffer.from(content);
    const key = this.key(path);
    if (body.length === 0) await deleteKeys(this.t, await listKeys(this.t, this.chunkPrefix(path)));
    await this.t.client.putObject(this.t.bucket, key, body, body.length).catch((err: unknown) => {
      throw this.fail(`writing ${path}`, err);
    });
  }

  async list(path: string): Promise<string[]> {
    const names = await listChildren(this.t, this.dirPrefix(path));
    return [...names].filter((n) => !n.endsWith(CHUNKS)).sort();
  }

  async move(src: string, dest: string): Promise<void> {
    const segments = await this.segments(src);
    if (!segments) throw new PathNotFoundError(src);
    const destKey = this.key(dest);
    if (segments.every((s) => s.size === 0)) {
      await this.putContent(dest, '');
    } else {
      await compose(this.t, segments, destKey);
    }
    await this.delete(src);
  }

  async delete(path: string): Promise<void> {
    const key = path === '/' ? this.base : this.key(path);
    const mine = (k: string) => path === '/' || k === key || k.startsWith(`${key}/`) || k.startsWith(`${key}${CHUNKS}/`);
    await abortUploads(this.t, key, mine);
    const keys = (await listKeys(this.t, key)).filter(mine);
    // Chunks before the (empty) object that says "this file is its chunks".
    await deleteKeys(this.t, keys.filter((k) => k !== key));
    await deleteKeys(this.t, keys.filter((k) => k === key));
  }

  async *walk(path: string): AsyncIterable<FileInfo> {
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

  private chunkPrefix(path: string): string {
    return `${this.key(path)}${CHUNKS}/`;
  }

  private chunkKey(path: string, offset: number): string {
    return this.chunkPrefix(path) + String(offset).padStart(OFFSET_DIGITS, '0');
  }

  /** The contiguous chunks of a file from offset 0 (a gap ends the file: what follows it is a leftover). */
  private async chunks(path: string): Promise<(Segment & { modTime: Date })[]> {
    const prefix = this.chunkPrefix(path);
    const found: (Segment & { offset: number; modTime: Date })[] = [];
    for await (const o of listObjects(this.t, prefix)) {
      const offset = Number(o.name.slice(prefix.length));
      if (Number.isSafeInteger(offset)) found.push({ key: o.name, size: o.size, offset, modTime: o.lastModified });
    }
    found.sort((a, b) => a.offset - b.offset);
    const contiguous: (Segment & { modTime: Date })[] = [];
    let next = 0;
    for (const c of found) {
      if (c.offset !== next) break;
      contiguous.push(c);
      next += c.size;
    }
    return contiguous;
  }

  /** The objects whose bytes make up the file, or null when there is none. */
  private async segments(path: string): Promise<Segment[] | null> {
    const key = this.key(path);
    const head = await this.t.client.statObject(this.t.bucket, key).catch((err: unknown) => {
      if (isNotFound(err)) return null;
      throw this.fail(`stat of ${path}`, err);
    });
    if (!head) return null;
    return head.size > 0 ? [{ key, size: head.size }] : this.chunks(path);
  }

  /** Puts a file in chunked form; returns its size (where the next chunk starts). */
  private async makeChunked(path: string): Promise<number> {
    const key = this.key(path);
    const segments = await this.segments(path);
    if (!segments) {
      await this.putContent(path, '');
      return 0;
    }
    const size = segments.reduce((n, s) => n + s.size, 0);
    if (segments[0]?.key !== key) return size;
    // A plain file: its bytes become chunk 0, after stale chunks are gone.
    await deleteKeys(this.t, await listKeys(this.t, this.chunkPrefix(path)));
    await compose(this.t, segments, this.chunkKey(path, 0));
    await this.t.client.putObject(this.t.bucket, key, Buffer.alloc(0), 0).catch((err: unknown) => {
      throw this.fail(`writing ${path}`, err);
    });
    return size;
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
