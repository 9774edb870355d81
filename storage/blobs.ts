import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FileInfo, StorageDriver } from './driver.js';
import { parseDigest, type Digest } from './digest.js';
import { StoreError } from './errors.js';
import { claimBlob } from './gc-guard.js';
import * as paths from './paths.js';

export interface BlobInfo {
  digest: string;
  size: number;
}

/** Content-addressed blobs and the per-repository links that make them visible there. */
export class BlobStore {
  constructor(private readonly driver: StorageDriver) {}

  /** The blob in the global store, whatever repository linked it. */
  async statGlobal(digest: Digest): Promise<FileInfo | null> {
    return this.driver.stat(paths.blobData(digest));
  }

  async isLinked(repo: string, digest: Digest): Promise<boolean> {
    return (await this.driver.stat(paths.layerLink(repo, digest))) !== null;
  }

  /** Size of a blob as seen from `repo`; BLOB_UNKNOWN when not linked there. */
  async stat(repo: string, digest: Digest): Promise<BlobInfo> {
    const [linked, info] = await Promise.all([this.isLinked(repo, digest), this.statGlobal(digest)]);
    if (!linked || !info) throw new StoreError('blob-unknown', `blob ${digest.value} is not in ${repo}`);
    return { digest: digest.value, size: info.size };
  }

  async open(digest: Digest, opts: { offset?: number; length?: number; signal?: AbortSignal } = {}): Promise<Readable> {
    return this.driver.reader(paths.blobData(digest), opts);
  }

  /** Writes a blob's bytes (or a range of them) into `dest`, which is left open. */
  async send(digest: Digest, dest: Writable, opts: { offset: number; length: number; signal?: AbortSignal }): Promise<void> {
    const path = paths.blobData(digest);
    if (this.driver.copyTo) return this.driver.copyTo(path, dest, opts);
    await pipeline(await this.driver.reader(path, opts), dest, { end: false, signal: opts.signal });
  }

  async redirectURL(digest: Digest, method: 'GET' | 'HEAD'): Promise<string | null> {
    return this.driver.redirectURL ? this.driver.redirectURL(paths.blobData(digest), method) : null;
  }

  async link(repo: string, digest: Digest): Promise<void> {
    await this.driver.putContent(paths.layerLink(repo, digest), digest.value);
  }

  /** Makes a blob of `from` visible in `repo`; null when `from` does not have it (or GC removed it). */
  async mount(repo: string, from: string, digest: Digest): Promise<BlobInfo | null> {
    try {
      if (!(await this.isLinked(from, digest))) return null;
      return await claimBlob(this.driver, digest, async (stored) => {
        if (!stored) return null;
        const info = await this.stat(from, digest);
        await this.link(repo, digest);
        return info;
      });
    } catch (err) {
      if (err instanceof StoreError && err.kind === 'blob-unknown') return null;
      throw err;
    }
  }

  /** Removes the repository's link; the bytes stay until garbage collection. */
  async unlink(repo: string, digest: Digest): Promise<void> {
    if (!(await this.isLinked(repo, digest))) {
      throw new StoreError('blob-unknown', `blob ${digest.value} is not in ${repo}`);
    }
    await this.driver.delete(paths.layerLink(repo, digest).replace(/\/link$/, ''));
  }

  /** Every digest in the global store. */
  async *all(): AsyncIterable<{ digest: Digest; info: FileInfo }> {
    for await (const info of this.driver.walk(paths.BLOBS)) {
      const m = /\/blobs\/([a-z0-9]+)\/[a-f0-9]{2}\/([a-f0-9]+)\/data$/.exec(info.path);
      if (!m) continue;
      yield { digest: parseDigest(`${m[1]}:${m[2]}`), info };
    }
  }
}
