import { createHash, randomUUID, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PathNotFoundError, type FileWriter, type StorageDriver } from './driver.js';
import { HashingStream, type Digest, type ExpectedLength } from './digest.js';
import { StoreError, isStoreError } from './errors.js';
import { claimBlob } from './gc-guard.js';
import type { BlobInfo, BlobStore } from './blobs.js';
import * as paths from './paths.js';
import { writeFromBody } from './receive.js';

/**
 * What is kept in `_uploads/<uuid>/state`. The session's offset is the size of
 * its data file (bytes that reached storage count, even from a request that was
 * cut off), so a client can always resume from what GET status reports.
 * `prefixDigest` is the sha256 of the first `prefixOffset` bytes, saved after
 * each chunk: a PUT that lands on another registry instance can then verify
 * the usual docker flow (one PATCH, then an empty PUT) without re-reading.
 */
export interface UploadState {
  uuid: string;
  repo: string;
  startedAt: string;
  prefixOffset: number;
  prefixDigest: string;
}

export interface UploadStatus extends UploadState {
  offset: number;
}

export interface ChunkOptions {
  /** First byte of the chunk as the client declared it (Content-Range). */
  start?: number;
  /** Last byte of the chunk as the client declared it (Content-Range); needs `start`. */
  end?: number;
  /** Declared length (Content-Length); a body of another size is refused. */
  length?: number;
  signal?: AbortSignal;
}

const UUID = /^[a-f0-9-]{36}$/;
const EMPTY_SHA256 = createHash('sha256').digest('hex');

export class UploadStore {
  /** In-process hash state per session, valid while `offset` matches the data size. */
  private readonly live = new Map<string, { hash: Hash; offset: number }>();
  private readonly busy = new Set<string>();

  constructor(
    private readonly driver: StorageDriver,
    private readonly blobs: BlobStore,
  ) {}

  async start(repo: string): Promise<UploadStatus> {
    const uuid = randomUUID();
    const state: UploadState = {
      uuid,
      repo,
      startedAt: new Date().toISOString(),
      prefixOffset: 0,
      prefixDigest: EMPTY_SHA256,
    };
    await this.driver.putContent(paths.uploadData(repo, uuid), '');
    await this.driver.putContent(paths.uploadState(repo, uuid), JSON.stringify(state));
    this.live.set(key(repo, uuid), { hash: createHash('sha256'), offset: 0 });
    return { ...state, offset: 0 };
  }

  async status(repo: string, uuid: string): Promise<UploadStatus> {
    if (!UUID.test(uuid)) throw unknownUpload(uuid);
    let raw: Buffer;
    try {
      raw = await this.driver.getContent(paths.uploadState(repo, uuid));
    } catch (err) {
      if (!(err instanceof PathNotFoundError)) throw err;
      throw unknownUpload(uuid);
    }
    const data = await this.driver.stat(paths.uploadData(repo, uuid));
    if (!data) throw unknownUpload(uuid);
    return { ...(JSON.parse(raw.toString('utf8')) as UploadState), offset: data.size };
  }

  /** Appends one chunk; returns the new status. */
  async append(repo: string, uuid: string, body: Readable, opts: ChunkOptions = {}): Promise<UploadStatus> {
    return this.exclusive(repo, uuid, () => this.appendLocked(repo, uuid, body, opts));
  }

  /**
   * Ends a session: appends the last chunk if any, verifies the digest and
   * moves the bytes into the blob store. A mismatch cancels the session, so
   * nothing of it stays.
   */
  async complete(repo: string, uuid: string, digest: Digest, body?: Readable, opts: ChunkOptions = {}): Promise<BlobInfo> {
    return this.exclusive(repo, uuid, async () => {
      let status = await this.status(repo, uuid);
      if (body) status = await this.appendLocked(repo, uuid, body, opts);
      const actual = await this.digestOf(status, digest.algorithm);
      if (actual !== digest.hex) {
        await this.remove(repo, uuid);
        throw new StoreError('digest-mismatch', `upload's content has digest ${digest.algorithm}:${actual}, not ${digest.value}`);
      }
      // Claimed against concurrent GC runs (gc-guard.ts): a blob already stored stays; if none is (or GC removed it), these bytes go in.
      await claimBlob(this.driver, digest, async (stored) => {
        if (!stored) await this.driver.move(paths.uploadData(repo, uuid), paths.blobData(digest));
        await this.remove(repo, uuid);
        await this.blobs.link(repo, digest);
      });
      return { digest: digest.value, size: status.offset };
    });
  }

  async cancel(repo: string, uuid: string): Promise<void> {
    await this.status(repo, uuid);
    await this.remove(repo, uuid);
  }

  /** Monolithic upload: one request carries the whole blob. */
  async putWhole(repo: string, digest: Digest, body: Readable, opts: ChunkOptions = {}): Promise<BlobInfo> {
    const { uuid } = await this.start(repo);
    try {
      return await this.complete(repo, uuid, digest, body, opts);
    } catch (err) {
      await this.remove(repo, uuid).catch(() => undefined);
      throw err;
    }
  }

  /** Removes sessions of `repo` started before `olderThan`; returns how many. */
  async purge(repos: string[], olderThan: Date): Promise<number> {
    let removed = 0;
    for (const repo of repos) {
      for (const uuid of await this.driver.list(paths.uploadsDir(repo))) {
        const status = await this.status(repo, uuid).catch(() => null);
        const started = status ? new Date(status.startedAt) : (await this.driver.stat(paths.uploadDir(repo, uuid)))?.modTime;
        if (!started || started < olderThan) {
          await this.remove(repo, uuid);
          removed++;
        }
      }
    }
    return removed;
  }

  private async appendLocked(repo: string, uuid: string, body: Readable, opts: ChunkOptions): Promise<UploadStatus> {
    const status = await this.status(repo, uuid);
    if (opts.start !== undefined && opts.start !== status.offset) {
      throw new StoreError('range-mismatch', `chunk starts at ${opts.start}, but the upload has ${status.offset} bytes`, {
        offset: status.offset,
      });
    }
    const k = key(repo, uuid);
    const known = this.live.get(k);
    // A session that has no byte yet can be hashed by whichever instance gets its first chunk.
    const hash = known && known.offset === status.offset ? known.hash : status.offset === 0 ? createHash('sha256') : undefined;
    this.live.delete(k);
    const writer = await this.driver.writer(paths.uploadData(repo, uuid), { append: true });
    const counter = new HashingStream(hash ?? nullHash(), expectedLength(opts));
    await receive(body, counter, writer, opts.signal);
    const offset = status.offset + counter.bytes;
    if (hash) {
      this.live.set(k, { hash, offset });
      const state: UploadState = { ...stripOffset(status), prefixOffset: offset, prefixDigest: hash.copy().digest('hex') };
      await this.driver.putContent(paths.uploadState(repo, uuid), JSON.stringify(state));
    }
    return { ...status, offset };
  }

  /** Hex digest of the session's bytes, from saved or live state when it is current, else by reading them. */
  private async digestOf(status: UploadStatus, algorithm: Digest['algorithm']): Promise<string> {
    if (algorithm === 'sha256') {
      const known = this.live.get(key(status.repo, status.uuid));
      if (known && known.offset === status.offset) return known.hash.copy().digest('hex');
      if (status.prefixOffset === status.offset) return status.prefixDigest;
    }
    const hash = createHash(algorithm);
    const counter = new HashingStream(hash);
    await pipeline(await this.driver.reader(paths.uploadData(status.repo, status.uuid)), counter, async (source) => {
      for await (const _ of source) void _;
    });
    return hash.digest('hex');
  }

  private async remove(repo: string, uuid: string): Promise<void> {
    this.live.delete(key(repo, uuid));
    await this.driver.delete(paths.uploadDir(repo, uuid));
  }

  private async exclusive<T>(repo: string, uuid: string, fn: () => Promise<T>): Promise<T> {
    const k = key(repo, uuid);
    if (this.busy.has(k)) throw new StoreError('upload-busy', `upload ${uuid} is receiving another request`);
    this.busy.add(k);
    try {
      return await fn();
    } finally {
      this.busy.delete(k);
    }
  }
}

/**
 * Streams a chunk into the session's data. The session keeps what reached
 * storage when the body is cut off (client gone, too slow), so a client can
 * resume from the offset it is told; the writer is closed before this
 * returns, so that offset is final once the session is unlocked. A body that
 * is not the length the client declared is refused whole: nothing of it is
 * kept, and the body is left unread for the caller to answer on.
 */
async function receive(body: Readable, counter: HashingStream, writer: FileWriter, signal?: AbortSignal): Promise<void> {
  try {
    await writeFromBody(body, counter, writer, signal);
  } catch (err) {
    if (isStoreError(err, 'size-mismatch') || isStoreError(err, 'range-mismatch')) await writer.cancel();
    throw err;
  }
}

/** The length a chunk must have: its Content-Length, else what its Content-Range spans. */
function expectedLength({ start, end, length }: ChunkOptions): ExpectedLength | undefined {
  if (length !== undefined) {
    return { bytes: length, mismatch: (n) => new StoreError('size-mismatch', `chunk has ${n} bytes, Content-Length said ${length}`) };
  }
  if (start === undefined || end === undefined) return undefined;
  const bytes = end - start + 1;
  return {
    bytes,
    mismatch: (n) => new StoreError('range-mismatch', `chunk has ${n > bytes ? 'more than ' : ''}${n} bytes, Content-Range ${start}-${end} says ${bytes}`),
  };
}

const key = (repo: string, uuid: string): string => `${repo}\0${uuid}`;
const unknownUpload = (uuid: string): StoreError => new StoreError('upload-unknown', `no upload session ${uuid}`);
const stripOffset = ({ offset: _offset, ...state }: UploadStatus): UploadState => state;

/** A stand-in when the session's hash state is not current: bytes are only counted. */
function nullHash(): Hash {
  return { update: () => undefined } as unknown as Hash;
}

