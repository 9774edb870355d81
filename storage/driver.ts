import type { Readable, Writable } from 'node:stream';

/** What a driver knows about one path. */
export interface FileInfo {
  path: string;
  size: number;
  modTime: Date;
  isDir: boolean;
}

export interface ReadOptions {
  offset?: number;
  /** Number of bytes to read from `offset`; all that remains when absent. */
  length?: number;
  signal?: AbortSignal;
}

/**
 * A stream that writes one file. Nothing written is guaranteed visible at `path`
 * before `commit()` resolves; `cancel()` removes whatever was written (of an
 * append, only this writer's bytes: the file stays as it was).
 */
export interface FileWriter extends Writable {
  /** Bytes in the file so far, including what was there before an append. */
  readonly size: number;
  commit(): Promise<void>;
  cancel(): Promise<void>;
}

/**
 * The storage driver: a handful of async, streaming primitives over a tree of
 * paths ("/a/b/c", always absolute, '/'-separated). Everything that gives the
 * paths meaning (content addressing, links, uploads, GC) lives above it, in
 * this folder, written once for every driver.
 */
export interface StorageDriver {
  readonly name: string;
  /** null when nothing is at `path`. */
  stat(path: string): Promise<FileInfo | null>;
  reader(path: string, opts?: ReadOptions): Promise<Readable>;
  writer(path: string, opts?: { append?: boolean }): Promise<FileWriter>;
  /** Small files in one call; `putContent` replaces the file atomically. */
  getContent(path: string): Promise<Buffer>;
  putContent(path: string, content: Buffer | string): Promise<void>;
  /** Names of the direct children of a directory ([] when it does not exist). */
  list(path: string): Promise<string[]>;
  /** Atomic as seen by readers; replaces `dest` if it exists. */
  move(src: string, dest: string): Promise<void>;
  /** Removes a file or a whole tree; no error when nothing is there. */
  delete(path: string): Promise<void>;
  /** Every file below `path`, depth first; directories are not yielded. */
  walk(path: string): AsyncIterable<FileInfo>;
  /** A URL the client may fetch the file from directly, or null to proxy. */
  redirectURL?(path: string, method: 'GET' | 'HEAD'): Promise<string | null>;
  /**
   * Writes `length` bytes of the file from `offset` into `dest` (without
   * ending it), honouring backpressure. Optional: a driver that can move bytes
   * more cheaply than through reader()'s stream implements it.
   */
  copyTo?(path: string, dest: Writable, opts: { offset: number; length: number; signal?: AbortSignal }): Promise<void>;
  /**
   * Removes what writes that never committed left behind outside any path
   * (S3: incomplete multipart uploads) if started before `olderThan`; returns how many.
   */
  cleanIncomplete?(olderThan: Date): Promise<number>;
}

/** Raised by drivers for a path that does not exist. */
export class PathNotFoundError extends Error {
  readonly code = 'PATH_NOT_FOUND';
  constructor(readonly path: string) {
    super(`storage: no such path ${path}`);
  }
}

/**
 * Raised by drivers when the storage cannot serve now: unreachable, not
 * answering in time, refusing the credentials, or its bucket gone. The failed
 * call may have left its work half done, but never a partial file visible;
 * the registry answers 503 with Retry-After and recovers by itself once the
 * storage is back.
 */
export class StorageUnavailableError extends Error {
  readonly code = 'STORAGE_UNAVAILABLE';
  constructor(
    message: string,
    /** Where the storage is (no credentials), e.g. http://127.0.0.1:7480 */
    readonly endpoint: string,
    /** Seconds a client should wait before trying again. */
    readonly retryAfter: number,
    /** The underlying cause's code (ECONNREFUSED, ETIMEDOUT, AccessDenied, NoSuchBucket, …). */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
