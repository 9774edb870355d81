/** Image references in FROM and COPY --from → manifest and config, once per build each. */
import { InvalidReferenceError, defaultRegistry, formatReference, parseReference } from '../runner/index.js';
import type { ImageConfigFile } from './image.js';
import { RegistryUnavailableError, type BuildRegistry, type ImageManifest, type RepoRef } from './registry.js';

export interface ImageBase {
  kind: 'image';
  /** Normalised: `host:port/repo:tag`. */
  reference: string;
  repo: RepoRef;
  manifestDigest: string;
  manifest: ImageManifest;
  config: ImageConfigFile;
}

export class Resolver {
  private readonly memo = new Map<string, Promise<ImageBase>>();

  constructor(
    readonly registry: BuildRegistry,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  resolve(reference: string, signal?: AbortSignal): Promise<ImageBase> {
    let p = this.memo.get(reference);
    if (!p) {
      p = this.fetch(reference, signal);
      this.memo.set(reference, p);
    }
    return p;
  }

  private async fetch(reference: string, signal?: AbortSignal): Promise<ImageBase> {
    let ref;
    try {
      ref = parseReference(reference, { defaultRegistry: defaultRegistry(this.env) });
    } catch (err) {
      if (err instanceof InvalidReferenceError) throw new Error(err.message);
      throw err;
    }
    const name = formatReference(ref);
    const repo = { registry: ref.registry, repository: ref.repository };
    const found = await this.registry.resolve(ref, signal);
    if (!found) throw new Error(`image ${name} not found in the registry ${ref.registry}; push it first, or check the name and tag`);
    const bytes = await this.registry.config(repo, found.manifest.config, signal);
    const config = JSON.parse(bytes.toString()) as ImageConfigFile;
    if (config.os !== 'linux' || config.architecture !== 'amd64') throw new Error(`image ${name} is ${config.os}/${config.architecture}; this builder makes linux/amd64 images`);
    if ((config.rootfs?.diff_ids ?? []).length !== found.manifest.layers.length) throw new Error(`image ${name}: its config lists ${config.rootfs?.diff_ids?.length ?? 0} diff_ids for ${found.manifest.layers.length} layers`);
    return { kind: 'image', reference: name, repo, manifestDigest: found.manifestDigest, manifest: found.manifest, config };
  }
}

export const isInfrastructure = (err: unknown): boolean => err instanceof RegistryUnavailableError;
