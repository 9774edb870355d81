import { spawn } from 'node:child_process';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform, Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';

/*
 * OCI image layout directories written by hand, so the end-to-end tests have
 * images without a network:
 *
 *   <dir>/oci-layout                 {"imageLayoutVersion":"1.0.0"}
 *   <dir>/index.json                 one descriptor, annotated with the tag
 *   <dir>/blobs/sha256/<hex>         layer (tar+gzip), config, manifest, [index]
 *
 * Media types are spelled here rather than imported from storage/, so the
 * oracle does not share a mistake with the code it checks.
 */
export const OCI = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  refName: 'org.opencontainers.image.ref.name',
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface ImageOptions {
  /** The tag recorded in index.json (org.opencontainers.image.ref.name); default "latest". */
  tag?: string;
  cmd?: string[];
  env?: string[];
  /** Written to /etc/slipway-image, making the layer (and every digest) unique to it. */
  label?: string;
}

export interface WrittenImage {
  platform: Platform;
  manifest: Descriptor;
  manifestBytes: Buffer;
  config: Descriptor;
  layer: Descriptor;
  /** sha256 of the uncompressed layer tar, as rootfs.diff_ids has it. */
  diffId: string;
}

export interface WrittenIndex {
  index: Descriptor;
  indexBytes: Buffer;
  images: WrittenImage[];
}

/** The busybox applets linked into the rootfs. */
const APPLETS = ['sh', 'echo', 'cat', 'ls'];
const DEFAULT_ENV = ['PATH=/bin'];
const AMD64: Platform = { architecture: 'amd64', os: 'linux' };
const ARM64: Platform = { architecture: 'arm64', os: 'linux', variant: 'v8' };

/** Writes a one-image layout (linux/amd64) tagged `opts.tag`. */
export async function writeImageLayout(dir: string, opts: ImageOptions = {}): Promise<WrittenImage> {
  await initLayout(dir);
  const layer = await writeBusyboxLayer(dir, opts.label);
  const image = await writeImage(dir, layer, AMD64, opts);
  await writeIndexJson(dir, image.manifest, opts.tag ?? 'latest');
  return image;
}

/**
 * Writes a layout whose tag names an image index of linux/amd64 and
 * linux/arm64/v8. Both share the busybox layer (content does not matter to a
 * registry); their configs, hence their manifests, differ.
 */
export async function writeIndexLayout(dir: string, opts: ImageOptions = {}): Promise<WrittenIndex> {
  await initLayout(dir);
  const layer = await writeBusyboxLayer(dir, opts.label);
  const images = [await writeImage(dir, layer, AMD64, opts), await writeImage(dir, layer, ARM64, opts)];
  const indexBytes = json({
    schemaVersion: 2,
    mediaType: OCI.index,
    manifests: images.map((i) => ({ ...i.manifest, platform: i.platform })),
  });
  const index = await writeSmallBlob(dir, OCI.index, indexBytes);
  await writeIndexJson(dir, index, opts.tag ?? 'latest');
  return { index, indexBytes, images };
}

async function initLayout(dir: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), json({ imageLayoutVersion: '1.0.0' }));
}

async function writeIndexJson(dir: string, desc: Descriptor, tag: string): Promise<void> {
  const entry = { ...desc, annotations: { [OCI.refName]: tag } };
  await writeFile(join(dir, 'index.json'), json({ schemaVersion: 2, mediaType: OCI.index, manifests: [entry] }));
}

async function writeImage(dir: string, layer: LayerBlob, platform: Platform, opts: ImageOptions): Promise<WrittenImage> {
  const configBytes = json({
    created: '1970-01-01T00:00:00Z',
    ...platform,
    config: { Env: opts.env ?? DEFAULT_ENV, Cmd: opts.cmd ?? ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [layer.diffId] },
    history: [{ created: '1970-01-01T00:00:00Z', created_by: 'slipway test harness: busybox rootfs' }],
  });
  const config = await writeSmallBlob(dir, OCI.config, configBytes);
  const manifestBytes = json({ schemaVersion: 2, mediaType: OCI.manifest, config, layers: [layer.descriptor] });
  const manifest = await writeSmallBlob(dir, OCI.manifest, manifestBytes);
  return { platform, manifest, manifestBytes, config, layer: layer.descriptor, diffId: layer.diffId };
}

/** Config and manifests are a few hundred bytes: hashing them whole is fine. */
async function writeSmallBlob(dir: string, mediaType: string, bytes: Buffer): Promise<Descriptor> {
  const hex = createHash('sha256').update(bytes).digest('hex');
  await writeFile(join(dir, 'blobs', 'sha256', hex), bytes);
  return { mediaType, digest: `sha256:${hex}`, size: bytes.length };
}

const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));

interface LayerBlob {
  descriptor: Descriptor;
  diffId: string;
}

/**
 * The layer: `tar` of a busybox rootfs, hashed uncompressed (diff_id), gzipped,
 * hashed again (the blob digest) and written to a temporary name that is
 * renamed to its digest once known. Nothing is held whole in memory.
 */
async function writeBusyboxLayer(dir: string, label?: string): Promise<LayerBlob> {
  const rootfs = await mkdtemp(join(tmpdir(), 'slipway-rootfs-'));
  const partial = join(dir, 'blobs', 'sha256', `.partial-${randomBytes(6).toString('hex')}`);
  try {
    await populateRootfs(rootfs, label);
    // Fixed owner, order and times: the same inputs give the same digests.
    const tar = spawn(
      'tar',
      ['--create', '--file=-', `--directory=${rootfs}`, '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--format=ustar', 'bin', 'etc', 'tmp'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = processExit(tar, 'tar');
    const diff = createHash('sha256');
    const blob = createHash('sha256');
    let size = 0;
    await pipeline(tar.stdout, hashing(diff), createGzip(), hashing(blob, (n) => (size += n)), createWriteStream(partial));
    await exited;
    const hex = blob.digest('hex');
    await rename(partial, join(dir, 'blobs', 'sha256', hex));
    return { descriptor: { mediaType: OCI.layerGzip, digest: `sha256:${hex}`, size }, diffId: `sha256:${diff.digest('hex')}` };
  } finally {
    await rm(rootfs, { recursive: true, force: true });
    await rm(partial, { force: true });
  }
}

async function populateRootfs(rootfs: string, label?: string): Promise<void> {
  await mkdir(join(rootfs, 'bin'));
  await mkdir(join(rootfs, 'etc'));
  await mkdir(join(rootfs, 'tmp'));
  await chmod(join(rootfs, 'tmp'), 0o1777);
  // busybox-static: no loader or libraries are needed beside it.
  await copyFile('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  await chmod(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const applet of APPLETS) await symlink('busybox', join(rootfs, 'bin', applet));
  await writeFile(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(rootfs, 'etc', 'group'), 'root:x:0:\n');
  if (label !== undefined) await writeFile(join(rootfs, 'etc', 'slipway-image'), `${label}\n`);
}

function processExit(child: ReturnType<typeof spawn>, what: string): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`${what} failed (${signal ?? `exit ${code}`}): ${stderr}`)),
    );
  });
}

/** A pass-through that feeds every chunk to `hash`. */
function hashing(hash: Hash, count?: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      count?.(chunk.length);
      done(null, chunk);
    },
  });
}

export interface LayoutReport {
  /** Distinct blobs checked. */
  blobs: number;
  /** Problems found; empty when the layout is sound. */
  problems: string[];
  /** index.json's descriptors by their ref.name annotation. */
  refs: Map<string, Descriptor>;
}

/**
 * The layout oracle: every blob reachable from index.json exists with the size
 * and digest its descriptor states, manifests and indexes parse and are of the
 * type their descriptor says, and each image's config lists the uncompressed
 * digests of its layers as rootfs.diff_ids.
 */
export async function validateLayout(dir: string): Promise<LayoutReport> {
  const problems: string[] = [];
  const refs = new Map<string, Descriptor>();
  const checked = new Map<string, boolean>();
  const diffIds = new Map<string, string>();
  const layout = await readJson<{ imageLayoutVersion?: string }>(join(dir, 'oci-layout'));
  if (layout.imageLayoutVersion !== '1.0.0') problems.push(`oci-layout has imageLayoutVersion ${layout.imageLayoutVersion}`);
  const top = await readJson<{ manifests?: Descriptor[] }>(join(dir, 'index.json'));

  const blob = async (desc: Descriptor, where: string): Promise<boolean> => {
    if (!checked.has(desc.digest)) checked.set(desc.digest, await checkBlob(dir, desc, where, problems));
    return checked.get(desc.digest)!;
  };
  const visit = async (desc: Descriptor, where: string): Promise<void> => {
    if (!(await blob(desc, where))) return;
    if (desc.mediaType !== OCI.manifest && desc.mediaType !== OCI.index) return;
    const doc = await readJson<{ mediaType?: string; manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] }>(blobPath(dir, desc.digest));
    if (doc.mediaType !== desc.mediaType) problems.push(`${where}: blob has mediaType ${doc.mediaType}, descriptor says ${desc.mediaType}`);
    for (const child of doc.manifests ?? []) await visit(child, `${where} → ${child.digest}`);
    if (!doc.config) return;
    const layers = doc.layers ?? [];
    for (const layer of layers) await blob(layer, `${where} layer`);
    if (!(await blob(doc.config, `${where} config`))) return;
    const config = await readJson<{ rootfs?: { diff_ids?: string[] } }>(blobPath(dir, doc.config.digest));
    const want = await Promise.all(layers.map((l) => uncompressedDigest(dir, l, diffIds)));
    const got = config.rootfs?.diff_ids ?? [];
    if (JSON.stringify(got) !== JSON.stringify(want)) problems.push(`${where}: config diff_ids ${JSON.stringify(got)}, layers hash to ${JSON.stringify(want)}`);
  };

  for (const desc of top.manifests ?? []) {
    const tag = desc.annotations?.[OCI.refName];
    if (tag !== undefined) refs.set(tag, desc);
    await visit(desc, `index.json ${tag ?? desc.digest}`);
  }
  return { blobs: checked.size, problems, refs };
}

const blobPath = (dir: string, digest: string): string => join(dir, 'blobs', ...digest.split(':'));

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

async function checkBlob(dir: string, desc: Descriptor, where: string, problems: string[]): Promise<boolean> {
  const m = /^(sha256|sha512):([a-f0-9]+)$/.exec(desc.digest);
  if (!m) {
    problems.push(`${where}: descriptor has an unusable digest ${desc.digest}`);
    return false;
  }
  const size = await stat(blobPath(dir, desc.digest)).then((s) => s.size, () => undefined);
  if (size === undefined) {
    problems.push(`${where}: blob ${desc.digest} is missing`);
    return false;
  }
  if (size !== desc.size) problems.push(`${where}: blob ${desc.digest} has ${size} bytes, descriptor says ${desc.size}`);
  const actual = await streamDigest(createReadStream(blobPath(dir, desc.digest)), m[1]!);
  if (actual !== desc.digest) problems.push(`${where}: blob ${desc.digest} holds bytes with digest ${actual}`);
  return size === desc.size && actual === desc.digest;
}

async function uncompressedDigest(dir: string, layer: Descriptor, cache: Map<string, string>): Promise<string> {
  const known = cache.get(layer.digest);
  if (known) return known;
  const source = createReadStream(blobPath(dir, layer.digest));
  const digest = await streamDigest(source, 'sha256', layer.mediaType.endsWith('+gzip') ? [createGunzip()] : []);
  cache.set(layer.digest, digest);
  return digest;
}

async function streamDigest(source: Readable, algorithm: string, through: Transform[] = []): Promise<string> {
  const hash = createHash(algorithm);
  const sink = new Writable({ write: (chunk: Buffer, _enc, done) => (hash.update(chunk), done()) });
  await pipeline([source, ...through, sink]);
  return `${algorithm}:${hash.digest('hex')}`;
}
