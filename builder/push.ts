/*
 * Getting blobs where a manifest needs them, moving as few bytes as possible: HEAD first (the
 * repository may have it), then a cross-repository mount from a repository known to hold it on
 * the same registry, then an upload from the worker's copy, then (another registry) a stream
 * from where it lives. Each blob is ensured once per repository per build.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { Descriptor } from './image.js';
import type { LayerRef } from './layers.js';
import type { BuildRegistry, RepoRef } from './registry.js';

export class Pusher {
  private readonly done = new Map<string, Promise<void>>();
  /** Blobs this build made: digest → file (layers) or bytes (configs). */
  readonly files = new Map<string, string>();
  readonly bytes = new Map<string, Buffer>();

  constructor(private readonly registry: BuildRegistry) {}

  ensure(repo: RepoRef, desc: Descriptor, source?: RepoRef): Promise<void> {
    const key = `${repo.registry}/${repo.repository}@${desc.digest}`;
    let p = this.done.get(key);
    if (!p) {
      p = this.push(repo, desc, source);
      p.catch(() => this.done.delete(key));
      this.done.set(key, p);
    }
    return p;
  }

  /** Pushes an image's blobs and then its manifest under `tag`, unless the tag already has it. */
  async image(repo: RepoRef, tag: string, layers: LayerRef[], config: Descriptor, manifest: Buffer, manifestDigest: string): Promise<boolean> {
    if ((await this.registry.manifestDigest(repo, tag)) === manifestDigest) return false;
    await Promise.all([...layers.map((l) => this.ensure(repo, l, l.source)), this.ensure(repo, config)]);
    await this.registry.putManifest(repo, tag, manifest);
    return true;
  }

  private async push(repo: RepoRef, desc: Descriptor, source?: RepoRef): Promise<void> {
    if (await this.registry.hasBlob(repo, desc.digest)) return;
    const bytes = this.bytes.get(desc.digest);
    if (bytes) return this.registry.upload(repo, desc, () => Readable.from([bytes]));
    const sameRegistry = source && source.registry === repo.registry && source.repository !== repo.repository;
    if (sameRegistry && (await this.registry.mount(repo, desc.digest, source.repository))) return;
    const file = this.files.get(desc.digest);
    if (file) return this.registry.upload(repo, desc, () => createReadStream(file));
    if (!source) throw new Error(`blob ${desc.digest} is neither in ${repo.registry}/${repo.repository} nor on this worker`);
    await this.registry.upload(repo, desc, () => this.registry.openBlob(source, desc));
  }
}
