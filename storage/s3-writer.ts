import { Writable } from 'node:stream';
import type { FileWriter } from './driver.js';
import { s3Error, type S3Target } from './s3-client.js';
import { putBuffers } from './s3-requests.js';

export interface ObjectWriterOptions {
  /** Bytes the file had before this writer (an append): counted in `size`. */
  initial?: number;
  /** Write nothing at all when no byte came (an empty append). */
  skipEmpty?: boolean;
  /** Runs after the object is complete, before `commit()` resolves, with the bytes this writer wrote (an append's marker update). */
  afterCommit?: (written: number) => Promise<void>;
  /** What `cancel()` removes after the upload was aborted. */
  remove: () => Promise<void>;
}

/**
 * Parts uploading at once. When all are busy the source waits (backpressure),
 * so a writer holds at most this many parts (plus one stream buffer) in memory.
 */
const PARTS_IN_FLIGHT = 2;
const MAX_PARTS = 10_000;

/**
 * Streams one S3 object with bounded memory. Bytes collect until a part is
 * full; the first full part starts a multipart upload, and parts upload
 * while the next fills, PARTS_IN_FLIGHT at most. An object smaller than one part is a single PUT.
 * Part sizes grow every 1000 parts so that an object of unknown size still fits
 * S3's 10,000 parts. Nothing is visible at the key before `commit()` resolves;
 * a failed or destroyed writer aborts its multipart upload.
 */
export class S3ObjectWriter extends Writable implements FileWriter {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private written = 0;
  private uploadId: string | undefined;
  private partNumber = 0;
  private readonly etags: { part: number; etag: string }[] = [];
  private readonly inFlight: Promise<void>[] = [];
  private failure: Error | undefined;
  private committed = false;
  private aborted: Promise<void> | undefined;

  constructor(
    private readonly t: S3Target,
    private readonly key: string,
    private readonly opts: ObjectWriterOptions,
  ) {
    super({ highWaterMark: 1024 * 1024 });
  }

  get size(): number {
    return (this.opts.initial ?? 0) + this.written;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    this.written += chunk.length;
    if (this.bufferedBytes < this.currentPartSize()) return done();
    this.sendPart().then(() => done(), done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.finish().then(() => done(), done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.abort().then(
      () => done(err),
      () => done(err),
    );
  }

  async commit(): Promise<void> {
    if (this.writableFinished) return;
    if (this.destroyed) throw this.failure ?? new Error(`S3 write of ${this.key} was destroyed before commit`);
    await new Promise<void>((resolve, reject) => {
      this.once('finish', resolve);
      this.once('error', reject);
      if (!this.writableEnded) this.end();
    });
  }

  async cancel(): Promise<void> {
    this.destroy();
    await this.abort();
    await this.opts.remove();
  }

  private currentPartSize(): number {
    return this.t.partSize * (1 + Math.floor(this.partNumber / 1000));
  }

  private async sendPart(): Promise<void> {
    if (this.failure) throw this.failure;
    // The chunks as they came: sent in order, never copied into one part-sized buffer.
    const body = this.buffered;
    this.buffered = [];
    this.bufferedBytes = 0;
    if (!this.uploadId) {
      this.uploadId = await this.t.client.initiateNewMultipartUpload(this.t.bucket, this.key, {}).catch((err: unknown) => {
        throw s3Error(this.t, `starting a multipart upload of ${this.key}`, err);
      });
    }
    if (++this.partNumber > MAX_PARTS) throw new Error(`S3 write of ${this.key}: more than ${MAX_PARTS} parts; raise partSize`);
    const part = this.partNumber;
    const upload = putBuffers(this.t, this.key, body, { part: { uploadId: this.uploadId, number: part }, what: `uploading part ${part} of ${this.key}` }).then(
      (etag) => void this.etags.push({ part, etag }),
      (err: unknown) => void (this.failure ??= s3Error(this.t, `uploading part ${part} of ${this.key}`, err)),
    );
    this.inFlight.push(upload);
    while (this.inFlight.length >= PARTS_IN_FLIGHT) await this.inFlight.shift();
    if (this.failure) throw this.failure;
  }

  private async finish(): Promise<void> {
    if (!this.uploadId) {
      if (this.written > 0 || !this.opts.skipEmpty) await putBuffers(this.t, this.key, this.buffered);
      this.buffered = [];
    } else {
      if (this.bufferedBytes > 0) await this.sendPart();
      await Promise.all(this.inFlight.splice(0));
      if (this.failure) throw this.failure;
      this.etags.sort((a, b) => a.part - b.part);
      await this.t.client.completeMultipartUpload(this.t.bucket, this.key, this.uploadId, this.etags).catch((err: unknown) => {
        throw s3Error(this.t, `completing the multipart upload of ${this.key}`, err);
      });
    }
    this.committed = true;
    await this.opts.afterCommit?.(this.written);
  }

  /** Aborts an unfinished multipart upload (once); errors are left for the janitor. */
  private abort(): Promise<void> {
    if (this.committed || !this.uploadId) return Promise.resolve();
    const uploadId = this.uploadId;
    this.aborted ??= Promise.all(this.inFlight.splice(0))
      .then(() => this.t.client.abortMultipartUpload(this.t.bucket, this.key, uploadId))
      .catch(() => undefined);
    return this.aborted;
  }
}
