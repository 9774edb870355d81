/*
 * The worker's unpacked layers, the lower directories of every RUN/COPY overlay:
 *
 *   <workerRoot>/layers/sha256/<hex>/fs/         the layer's files, in overlayfs' own format
 *   <workerRoot>/layers/sha256/<hex>/layer.json  {digest, diffId, size}
 *   <workerRoot>/tmp/                            layers being unpacked or built
 *
 * A layer is fetched from the registry and unpacked (the runner's safe unpacker) the first time
 * a step needs it; a layer built here is adopted by renaming the step's upper directory. A
 * directory that exists with its layer.json is complete: both are renamed into place whole.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { PRIVATE_FILE_MODE, unpackLayer } from '../runner/index.js';
import type { BuildRegistry, RepoRef } from './registry.js';

export interface LayerRef {
  mediaType: string;
  digest: string;
  size: number;
  diffId: string;
  /** A repository that holds the blob (to fetch it, or mount it into another repository). */
  source: RepoRef;
}

export class LayerStore {
  private readonly inflight = new Map<string, Promise<string>>();

  constructor(
    readonly root: string,
    private readonly registry: BuildRegistry,
  ) {}

  tmpDir(): string {
    return join(this.root, 'tmp', `${process.pid}-${randomBytes(8).toString('hex')}`);
  }

  private dir(digest: string): string {
    return join(this.root, 'layers', 'sha256', digest.replace(/^sha256:/, ''));
  }

  /** The unpacked directory of `layer`, fetching it first when this worker lacks it. */
  ensure(layer: LayerRef, signal?: AbortSignal): Promise<string> {
    const running = this.inflight.get(layer.digest);
    if (running) return running;
    const p = this.fetch(layer, signal).finally(() => this.inflight.delete(layer.digest));
    this.inflight.set(layer.digest, p);
    return p;
  }

  /** Moves a built layer's directory into the store (or drops it when the store has that layer). */
  async adopt(dir: string, layer: Omit<LayerRef, 'source'>): Promise<string> {
    const final = this.dir(layer.digest);
    if (await exists(join(final, 'layer.json'))) {
      await rm(dir, { recursive: true, force: true });
      return join(final, 'fs');
    }
    const work = this.tmpDir();
    await mkdir(work, { recursive: true, mode: 0o700 });
    await rename(dir, join(work, 'fs'));
    await writeFile(join(work, 'layer.json'), JSON.stringify({ digest: layer.digest, diffId: layer.diffId, size: layer.size }), { mode: PRIVATE_FILE_MODE });
    await this.place(work, final);
    return join(final, 'fs');
  }

  private async fetch(layer: LayerRef, signal?: AbortSignal): Promise<string> {
    const final = this.dir(layer.digest);
    if (await exists(join(final, 'layer.json'))) return join(final, 'fs');
    const work = this.tmpDir();
    await mkdir(work, { recursive: true, mode: 0o700 });
    try {
      const res = await this.registry.openBlob(layer.source, layer, signal);
      const verified = verifier(layer.digest, layer.size);
      res.on('error', (err) => verified.destroy(err));
      const unpacked = await unpackLayer(res.pipe(verified), join(work, 'fs'), layer.digest);
      if (unpacked.diffId !== layer.diffId) throw new Error(`layer ${layer.digest} unpacks to ${unpacked.diffId}, but its image lists diff_id ${layer.diffId}`);
      await writeFile(join(work, 'layer.json'), JSON.stringify({ digest: layer.digest, diffId: layer.diffId, size: layer.size }), { mode: PRIVATE_FILE_MODE });
      await this.place(work, final);
      return join(final, 'fs');
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  private async place(work: string, final: string): Promise<void> {
    await mkdir(join(final, '..'), { recursive: true, mode: 0o700 });
    await rename(work, final).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      await rm(work, { recursive: true, force: true }); // another build placed it first
    });
  }
}

function verifier(digest: string, size: number): Transform {
  const hash = createHash('sha256');
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      hash.update(chunk);
      cb(seen > size ? new Error(`layer ${digest}: more than its ${size} bytes`) : null, chunk);
    },
    flush(cb) {
      const got = `sha256:${hash.digest('hex')}`;
      cb(got === digest && seen === size ? null : new Error(`layer ${digest}: received ${got} (${seen} bytes); the registry's copy is corrupt`));
    },
  });
}

const exists = (p: string): Promise<boolean> => stat(p).then(() => true, () => false);
