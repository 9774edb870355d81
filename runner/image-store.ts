/*
 * The node's image store: pulled images, content-addressed, each layer fetched and
 * unpacked once however many images share it.
 *
 *   <root>/images/
 *     refs/<sha256 of reference>.json   {"reference","manifestDigest"}; one file per reference, replaced by rename
 *     manifests/sha256/<hex>            image manifests (the linux/amd64 one), bytes as pulled and verified
 *     blobs/sha256/<hex>                image configs, bytes as pulled and verified
 *     layers/sha256/<hex>/fs/           an unpacked layer (<hex>: digest of the compressed blob)
 *     layers/sha256/<hex>/layer.json    {digest, diffId, size}
 *     tmp/<pid>-<random>/               a layer being unpacked
 *
 * A layer is unpacked in tmp/ and its directory renamed into layers/ only after its digest,
 * size and diff_id were verified, so a layer directory that exists is complete; when two
 * pulls race for one layer, the second rename fails and its copy is dropped. A manifest,
 * config and reference are written only once every layer is in place: a failed pull leaves
 * nothing referenced, and its leftovers are collected at once.
 *
 * The store is meant to be owned by one process (the node agent); a second process pulling
 * into the same root is safe, but `remove`/`gc` only know the pulls of their own process.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalImage } from './types.js';
import type { ProgressListener } from './progress.js';
import { defaultRegistry, formatReference, parseReference, type ImageReference } from './reference.js';
import { RegistryClient, WANTED_PLATFORM, digestVerifier, type Descriptor, type ImageManifest } from './registry-client.js';
import { unpackLayer } from './unpack.js';
import { processAlive } from './pid.js';
import { PRIVATE_FILE_MODE, privateDir, privateRoot } from './private.js';

export interface ImageStoreOptions {
  /**
   * Image ids (config digests) and/or manifest digests that containers on this node use.
   * Their manifests, configs and layers survive `remove` and `gc` even when untagged, and
   * `remove` refuses to untag one's last reference without `force`. The container part
   * supplies it; call `gc()` after removing a container to free what it kept.
   */
  inUse?: () => Promise<Set<string>>;
  /** Layers downloaded at once per pull (default 3). */
  concurrency?: number;
  client?: RegistryClient;
  env?: NodeJS.ProcessEnv;
}

export interface PullOptions {
  onProgress?: ProgressListener;
  signal?: AbortSignal;
}

export interface RemoveResult {
  untagged: string[];
  /** Digests of the manifests, configs and layers deleted from disk. */
  deleted: string[];
}

interface RefRecord {
  reference: string;
  manifestDigest: string;
}

const hexOf = (digest: string): string => digest.slice(digest.indexOf(':') + 1);

export class ImageStore {
  readonly dir: string;
  private readonly root: string;
  private readonly client: RegistryClient;
  private readonly pins = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<void>>();
  private ready?: Promise<void>;

  constructor(
    root: string,
    private readonly opts: ImageStoreOptions = {},
  ) {
    this.root = root;
    this.dir = join(root, 'images');
    this.client = opts.client ?? new RegistryClient(opts.env);
  }

  /** Pulls `reference` (tag or digest) and returns it as stored. */
  async pull(reference: string, opts: PullOptions = {}): Promise<LocalImage> {
    await this.init();
    const ref = parseReference(reference, { defaultRegistry: defaultRegistry(this.opts.env) });
    const name = formatReference(ref);
    const resolved = await this.client.resolve(ref, opts.signal);
    const { manifest } = resolved;
    const configBytes = await this.client.fetchConfig(ref, manifest.config, opts.signal);
    const diffIds = checkConfig(name, manifest, configBytes);
    const pinned = [resolved.manifestDigest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
    for (const d of pinned) this.pins.set(d, (this.pins.get(d) ?? 0) + 1);
    try {
      for (const layer of manifest.layers) opts.onProgress?.({ digest: layer.digest, phase: 'waiting', current: 0, total: layer.size });
      await eachLimit(manifest.layers, this.opts.concurrency ?? 3, (layer, i) => this.ensureLayer(ref, layer, diffIds[i], opts));
      await writeOnce(this.path('blobs', manifest.config.digest), configBytes, this.tmp());
      await writeOnce(this.path('manifests', resolved.manifestDigest), resolved.manifestBytes, this.tmp());
      await writeAtomic(this.refPath(name), JSON.stringify({ reference: name, manifestDigest: resolved.manifestDigest }), this.tmp());
    } catch (err) {
      this.unpin(pinned);
      await this.gc().catch(() => undefined);
      throw err;
    }
    this.unpin(pinned);
    return this.load(name, resolved.manifestDigest);
  }

  /** By reference (`repo:tag`, `host/repo@sha256:…`), image id (`sha256:…`) or unique id prefix. */
  async get(refOrId: string): Promise<LocalImage | null> {
    const byRef = await this.readRef(refOrId);
    if (byRef) return this.load(byRef.reference, byRef.manifestDigest);
    const match = await this.findById(refOrId);
    if (!match) return null;
    const refs = (await this.refs()).filter((r) => r.manifestDigest === match);
    return this.load(refs[0]?.reference ?? '<none>:<none>', match);
  }

  /** Every tagged (or digest-pinned) reference, sorted. */
  async list(): Promise<LocalImage[]> {
    const refs = await this.refs();
    const images = await Promise.all(refs.map((r) => this.load(r.reference, r.manifestDigest).catch(() => null)));
    return images.filter((i): i is LocalImage => i !== null);
  }

  /**
   * `rmi`: untags a reference, or every reference of an image id (refused when there are
   * several, unless `force`), then deletes what no reference or container still uses.
   */
  async remove(refOrId: string, opts: { force?: boolean } = {}): Promise<RemoveResult> {
    await this.init();
    const all = await this.refs();
    const byRef = await this.readRef(refOrId);
    const manifestDigest = byRef?.manifestDigest ?? (await this.findById(refOrId));
    if (!manifestDigest) throw new Error(`no such image: ${refOrId} (see \`slipway images\`)`);
    const sharing = all.filter((r) => r.manifestDigest === manifestDigest);
    const untag = byRef ? [byRef] : sharing;
    if (!byRef && untag.length > 1 && !opts.force) {
      throw new Error(`image ${refOrId} is referenced as ${untag.map((r) => r.reference).join(', ')}; remove one reference by name, or force`);
    }
    if (untag.length === sharing.length && !opts.force) {
      const used = await this.inUseSet();
      const id = await this.configOf(manifestDigest).catch(() => '');
      if (used.has(manifestDigest) || used.has(id)) throw new Error(`image ${refOrId} is used by a container; remove the container first, or force (the image's files then stay until the container is gone)`);
    }
    for (const r of untag) await rm(this.refPath(r.reference), { force: true });
    return { untagged: untag.map((r) => r.reference), deleted: await this.gc() };
  }

  /** Deletes manifests, configs and layers no reference, container or running pull uses. */
  async gc(): Promise<string[]> {
    await this.init();
    const used = await this.inUseSet();
    const referenced = new Set((await this.refs()).map((r) => r.manifestDigest));
    const keep = new Set(this.pins.keys());
    for (const digest of await this.digestsIn('manifests')) {
      const manifest = await this.readManifest(digest).catch(() => null);
      const live = referenced.has(digest) || used.has(digest) || this.pins.has(digest) || (manifest !== null && used.has(manifest.config.digest));
      if (live && manifest) for (const d of [digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) keep.add(d);
    }
    const deleted: string[] = [];
    for (const kind of ['manifests', 'blobs', 'layers'] as const) {
      for (const digest of await this.digestsIn(kind)) {
        if (keep.has(digest) || this.inflight.has(digest)) continue;
        await rm(this.path(kind, digest), { recursive: true, force: true });
        deleted.push(digest);
      }
    }
    return deleted;
  }

  close(): void {
    this.client.close();
  }

  private async ensureLayer(ref: ImageReference, layer: Descriptor, diffId: string | undefined, opts: PullOptions): Promise<void> {
    const event = (phase: 'exists' | 'shared' | 'done' | 'failed', current = layer.size) => opts.onProgress?.({ digest: layer.digest, phase, current, total: layer.size });
    if (await exists(join(this.path('layers', layer.digest), 'layer.json'))) return event('exists');
    const running = this.inflight.get(layer.digest);
    if (running) {
      event('shared', 0);
      await running;
      return event('done');
    }
    const fetching = this.fetchLayer(ref, layer, diffId, opts);
    this.inflight.set(layer.digest, fetching);
    try {
      await fetching;
      event('done');
    } catch (err) {
      event('failed', 0);
      throw err;
    } finally {
      this.inflight.delete(layer.digest);
    }
  }

  private async fetchLayer(ref: ImageReference, layer: Descriptor, diffId: string | undefined, opts: PullOptions): Promise<void> {
    const name = `${formatReference(ref)}: layer`;
    if (/zstd/.test(layer.mediaType)) throw new Error(`${name} ${layer.digest} is zstd-compressed (${layer.mediaType}); only gzip and uncompressed layers are supported`);
    const res = await this.client.openBlob(ref, layer, opts.signal);
    const work = this.tmp();
    try {
      await mkdir(work, { mode: 0o700 });
      const onBytes = (n: number) => opts.onProgress?.({ digest: layer.digest, phase: 'downloading', current: n, total: layer.size });
      const verified = digestVerifier(layer, name, onBytes);
      res.on('error', (err) => verified.destroy(err));
      const unpacked = await unpackLayer(res.pipe(verified), join(work, 'fs'), layer.digest);
      if (diffId && diffId !== unpacked.diffId) throw new Error(`${name} ${layer.digest} unpacks to ${unpacked.diffId}, but the image config lists diff_id ${diffId}; the image is inconsistent`);
      await writeFile(join(work, 'layer.json'), JSON.stringify({ digest: layer.digest, diffId: unpacked.diffId, size: layer.size }), { mode: PRIVATE_FILE_MODE });
      await rename(work, this.path('layers', layer.digest)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err; // another pull won the race: keep its copy
      });
    } finally {
      if (!res.complete) res.destroy(); // a refused layer: do not keep its connection busy
      await rm(work, { recursive: true, force: true });
    }
  }

  private async load(reference: string, manifestDigest: string): Promise<LocalImage> {
    const manifest = await this.readManifest(manifestDigest);
    const config = JSON.parse(await readFile(this.path('blobs', manifest.config.digest), 'utf8')) as RawConfig;
    return {
      reference,
      manifestDigest,
      id: manifest.config.digest,
      architecture: config.architecture ?? '',
      os: config.os ?? '',
      config: config.config ?? {},
      layerDirs: manifest.layers.map((l) => join(this.path('layers', l.digest), 'fs')),
      size: manifest.layers.reduce((sum, l) => sum + l.size, 0),
      ...(config.created ? { created: config.created } : {}),
    };
  }

  private async readRef(input: string): Promise<RefRecord | null> {
    let name: string;
    try {
      name = formatReference(parseReference(input, { defaultRegistry: defaultRegistry(this.opts.env) }));
    } catch {
      return null;
    }
    return readFile(this.refPath(name), 'utf8').then((t) => JSON.parse(t) as RefRecord, () => null);
  }

  /** The manifest digest of the image whose id (config digest) is or starts with `input`. */
  private async findById(input: string): Promise<string | null> {
    const prefix = input.replace(/^sha256:/, '');
    if (!/^[a-f0-9]{1,64}$/.test(prefix)) return null;
    const hits = new Map<string, string>();
    for (const digest of await this.digestsIn('manifests')) {
      const config = await this.configOf(digest).catch(() => '');
      if (hexOf(config).startsWith(prefix)) hits.set(config, digest);
    }
    if (hits.size > 1) throw new Error(`image id prefix ${input} is ambiguous: ${[...hits.keys()].join(', ')}; give more digits`);
    return [...hits.values()][0] ?? null;
  }

  private async configOf(manifestDigest: string): Promise<string> {
    return (await this.readManifest(manifestDigest)).config.digest;
  }

  private async readManifest(digest: string): Promise<ImageManifest> {
    return JSON.parse(await readFile(this.path('manifests', digest), 'utf8')) as ImageManifest;
  }

  private async refs(): Promise<RefRecord[]> {
    const names = await readdir(join(this.dir, 'refs')).catch(() => []);
    const records = await Promise.all(names.filter((n) => n.endsWith('.json')).map((n) => readFile(join(this.dir, 'refs', n), 'utf8').then((t) => JSON.parse(t) as RefRecord, () => null)));
    return records.filter((r): r is RefRecord => r !== null).sort((a, b) => (a.reference < b.reference ? -1 : a.reference > b.reference ? 1 : 0));
  }

  private async digestsIn(kind: 'manifests' | 'blobs' | 'layers'): Promise<string[]> {
    const names = await readdir(join(this.dir, kind, 'sha256')).catch(() => []);
    return names.filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => `sha256:${n}`);
  }

  private async inUseSet(): Promise<Set<string>> {
    return (await this.opts.inUse?.()) ?? new Set();
  }

  private unpin(digests: string[]): void {
    for (const d of digests) {
      const n = (this.pins.get(d) ?? 1) - 1;
      if (n > 0) this.pins.set(d, n);
      else this.pins.delete(d);
    }
  }

  private path(kind: 'manifests' | 'blobs' | 'layers', digest: string): string {
    return join(this.dir, kind, 'sha256', hexOf(digest));
  }

  private refPath(reference: string): string {
    return join(this.dir, 'refs', `${createHash('sha256').update(reference).digest('hex')}.json`);
  }

  private tmp(): string {
    return join(this.dir, 'tmp', `${process.pid}-${randomBytes(8).toString('hex')}`);
  }

  /** Creates the layout (the root private: layers hold device nodes); drops tmp/ leftovers of processes that are gone. */
  private init(): Promise<void> {
    this.ready ??= (async () => {
      await privateRoot(this.root, 'the runner root');
      for (const d of ['', 'refs', 'manifests', 'manifests/sha256', 'blobs', 'blobs/sha256', 'layers', 'layers/sha256', 'tmp']) await privateDir(join(this.dir, d));
      for (const name of await readdir(join(this.dir, 'tmp'))) {
        const pid = Number(name.split('-')[0]);
        if (!processAlive(pid)) await rm(join(this.dir, 'tmp', name), { recursive: true, force: true });
      }
    })();
    return this.ready;
  }
}

interface RawConfig {
  architecture?: string;
  os?: string;
  created?: string;
  config?: LocalImage['config'];
  rootfs?: { diff_ids?: string[] };
}

/** The config must be linux/amd64 with one diff_id per layer; returns the diff_ids. */
function checkConfig(name: string, manifest: ImageManifest, bytes: Buffer): (string | undefined)[] {
  let config: RawConfig;
  try {
    config = JSON.parse(bytes.toString('utf8')) as RawConfig;
  } catch {
    throw new Error(`${name}: image config ${manifest.config.digest} is not JSON`);
  }
  if (config.os !== WANTED_PLATFORM.os || config.architecture !== WANTED_PLATFORM.architecture) {
    throw new Error(`${name} is a ${config.os ?? '?'}/${config.architecture ?? '?'} image; this node runs ${WANTED_PLATFORM.os}/${WANTED_PLATFORM.architecture}. Push an amd64 image or pull another reference`);
  }
  const diffIds = config.rootfs?.diff_ids;
  if (diffIds && diffIds.length !== manifest.layers.length) throw new Error(`${name}: config lists ${diffIds.length} diff_ids for ${manifest.layers.length} layers; the image is inconsistent`);
  return diffIds ?? manifest.layers.map(() => undefined);
}

/** Runs `fn` over `items`, at most `limit` at a time; the first failure rejects (after the rest settle). */
async function eachLimit<T>(items: T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length && failure === undefined) {
      const i = next++;
      await fn(items[i]!, i).catch((err: unknown) => (failure ??= err));
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

async function writeOnce(path: string, bytes: Buffer, tmp: string): Promise<void> {
  if (!(await exists(path))) await writeAtomic(path, bytes, tmp);
}

async function writeAtomic(path: string, data: string | Buffer, tmp: string): Promise<void> {
  await writeFile(tmp, data, { mode: PRIVATE_FILE_MODE });
  await rename(tmp, path);
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);
