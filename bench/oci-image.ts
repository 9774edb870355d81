/*
 * The runner benchmark's images, made offline as OCI image layouts and pushed with skopeo:
 *
 *   <layout>/oci-layout, index.json            one manifest, tagged
 *   <layout>/blobs/sha256/<hex>                gzip layers, config, manifest
 *
 * `busybox`: one layer, a static busybox with its applets (`true` among them) — the image every
 * contender starts. `big`: that layer plus N layers of one random file each, for the pull times.
 */
import { spawn } from 'node:child_process';
import { createHash, randomFillSync, type Hash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { run } from './processes.js';

export const BUSYBOX_BIN = '/bin/busybox';
export const SKOPEO_BIN = '/usr/bin/skopeo';
const APPLETS = ['sh', 'true', 'false', 'echo', 'cat', 'ls', 'sleep', 'env', 'id'];
const MiB = 1 << 20;

export interface LayerBlob {
  digest: string;
  diffId: string;
  size: number;
}

export interface BenchImageLayout {
  dir: string;
  tag: string;
  layers: LayerBlob[];
  /** Compressed bytes of all layers: what a pull downloads. */
  bytes: number;
}

/** A busybox rootfs: bin/busybox and its applets, /etc/passwd and /etc/group, the usual mount points. */
export async function busyboxRootfs(dir: string): Promise<void> {
  if (!existsSync(BUSYBOX_BIN)) throw new Error(`${BUSYBOX_BIN} is missing: apt-get install busybox-static`);
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root']) await mkdir(join(dir, d), { recursive: true });
  await chmod(join(dir, 'tmp'), 0o1777);
  await copyFile(BUSYBOX_BIN, join(dir, 'bin', 'busybox'));
  await chmod(join(dir, 'bin', 'busybox'), 0o755);
  for (const applet of APPLETS) await symlink('busybox', join(dir, 'bin', applet));
  await writeFile(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(dir, 'etc', 'group'), 'root:x:0:\n');
}

function hashing(hash: Hash, count: (n: number) => void = () => {}): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      count(chunk.length);
      done(null, chunk);
    },
  });
}

/** `tar` of `rootfs` (fixed owner, order and times), hashed (diff id), gzipped, hashed (digest) into the layout. */
async function writeLayer(layout: string, rootfs: string): Promise<LayerBlob> {
  const partial = join(layout, 'blobs', 'sha256', `.partial-${process.pid}-${Date.now()}`);
  const tar = spawn('tar', ['--create', '--file=-', `--directory=${rootfs}`, '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '.'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  tar.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => tar.once('close', resolve));
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let size = 0;
  // Level 1: the random layers do not compress anyway; this only keeps the setup short.
  await pipeline(tar.stdout, hashing(diff), createGzip({ level: 1 }), hashing(blob, (n) => (size += n)), createWriteStream(partial));
  const code = await exited;
  if (code !== 0) throw new Error(`tar of ${rootfs} failed (exit ${code}): ${stderr}`);
  const hex = blob.digest('hex');
  await rename(partial, join(layout, 'blobs', 'sha256', hex));
  return { digest: `sha256:${hex}`, diffId: `sha256:${diff.digest('hex')}`, size };
}

async function writeBlob(layout: string, bytes: Buffer): Promise<{ digest: string; size: number }> {
  const hex = createHash('sha256').update(bytes).digest('hex');
  await writeFile(join(layout, 'blobs', 'sha256', hex), bytes);
  return { digest: `sha256:${hex}`, size: bytes.length };
}

async function randomFile(path: string, bytes: number): Promise<void> {
  const chunks = function* () {
    for (let left = bytes; left > 0; left -= MiB) yield randomFillSync(Buffer.allocUnsafe(Math.min(MiB, left)));
  };
  await pipeline(Readable.from(chunks()), createWriteStream(path));
}

/**
 * Writes an image layout in `dir`: the busybox layer, then `dataLayers` layers holding one
 * random file of `layerBytes` each (`/data/layerN.bin`), with CMD ["sh"].
 */
export async function writeBenchLayout(dir: string, tag: string, opts: { dataLayers?: number; layerBytes?: number } = {}): Promise<BenchImageLayout> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const scratch = await mkdtemp(join(dir, '.rootfs-'));
  const layers: LayerBlob[] = [];
  try {
    await busyboxRootfs(join(scratch, 'base'));
    layers.push(await writeLayer(dir, join(scratch, 'base')));
    for (let i = 1; i <= (opts.dataLayers ?? 0); i++) {
      const root = join(scratch, `data${i}`);
      await mkdir(join(root, 'data'), { recursive: true });
      await randomFile(join(root, 'data', `layer${i}.bin`), opts.layerBytes ?? 50 * MiB);
      layers.push(await writeLayer(dir, root));
      await rm(root, { recursive: true, force: true });
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  const config = await writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        created: '1970-01-01T00:00:00Z',
        architecture: 'amd64',
        os: 'linux',
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'] },
        rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
      }),
    ),
  );
  const manifest = await writeBlob(
    dir,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
      }),
    ),
  );
  const entry = { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': tag } };
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [entry] }));
  return { dir, tag, layers, bytes: layers.reduce((n, l) => n + l.size, 0) };
}

/** Copies the layout's image to `docker://ref` over plain HTTP (the registry is on loopback). */
export async function pushLayout(layout: BenchImageLayout, ref: string): Promise<void> {
  await run(SKOPEO_BIN, ['--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false', `oci:${layout.dir}:${layout.tag}`, `docker://${ref}`], { timeoutMs: 600_000 });
}

/** Unpacks the layout's first layer (the busybox one) into `rootfs`: the raw runc bundle's root. */
export async function unpackBaseLayer(layout: BenchImageLayout, rootfs: string): Promise<void> {
  const first = layout.layers[0];
  if (!first) throw new Error(`layout ${layout.dir} has no layers`);
  await mkdir(rootfs, { recursive: true });
  await run('tar', ['-xzf', join(layout.dir, 'blobs', 'sha256', first.digest.slice('sha256:'.length)), '-C', rootfs, '--numeric-owner'], { timeoutMs: 60_000 });
}
