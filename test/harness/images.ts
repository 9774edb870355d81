import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, copyFile, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Dockerd } from './dockerd.js';
import { tempDir } from './registry.js';

/** Static busybox from Debian's busybox-static: one file is a whole userland. */
export const BUSYBOX_BIN = '/bin/busybox';
const APPLETS = ['sh', 'echo', 'cat', 'ls', 'true', 'false', 'env', 'mkdir', 'rm', 'cp', 'mv', 'ln', 'wc', 'head', 'grep', 'sleep', 'test', 'id', 'uname', 'sha256sum'];
const MiB = 1024 * 1024;

/**
 * Writes a minimal rootfs into `dir`: bin/busybox, a symlink per applet, and the usual empty
 * mount points. `marker` (when given) goes into etc/slipway-marker, which makes the layer's
 * digest unique to the caller.
 */
export async function busyboxRootfs(dir: string, opts: { marker?: string } = {}): Promise<void> {
  try {
    await access(BUSYBOX_BIN);
  } catch {
    throw new Error(`${BUSYBOX_BIN} is missing; the offline base images need it: apt-get install busybox-static`);
  }
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root']) await mkdir(join(dir, d), { recursive: true });
  await copyFile(BUSYBOX_BIN, join(dir, 'bin/busybox'));
  for (const applet of APPLETS) await symlink('busybox', join(dir, 'bin', applet));
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  if (opts.marker !== undefined) await writeFile(join(dir, 'etc/slipway-marker'), `${opts.marker}\n`);
}

/**
 * `tar -C rootfs -c . | docker import - ref` over a fresh busybox rootfs, with `CMD ["sh"]` unless
 * `cmd` says otherwise. Returns the image ID docker prints.
 */
export async function importBusybox(docker: Dockerd, ref: string, opts: { cmd?: string[]; marker?: string } = {}): Promise<string> {
  const dir = await tempDir('slipway-rootfs-');
  try {
    await busyboxRootfs(dir, opts);
    const tar = spawn('tar', ['--numeric-owner', '-C', dir, '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const tarDone = new Promise<number>((r) => tar.once('close', (code) => r(code ?? 128)));
    const change = `CMD ${JSON.stringify(opts.cmd ?? ['sh'])}`;
    const { stdout } = await docker.docker(['import', '--change', change, '-', ref], { stdin: tar.stdout!, check: true });
    const tarCode = await tarDone;
    if (tarCode !== 0) throw new Error(`tar of ${dir} exited with ${tarCode}`);
    return stdout.trim();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Writes `bytes` of incompressible random data to `path`, 1 MiB at a time. */
export async function writeRandomFile(path: string, bytes: number): Promise<void> {
  async function* chunks() {
    for (let left = bytes; left > 0; left -= MiB) yield randomBytes(Math.min(MiB, left));
  }
  await pipeline(Readable.from(chunks()), createWriteStream(path));
}

export interface LayeredImage {
  ref: string;
  /** The imported busybox the Dockerfile starts FROM (untagged once the build is done). */
  baseRef: string;
  /** 1 (busybox) + one per data layer. */
  layers: number;
  /** Bytes of random data across the data layers. */
  dataBytes: number;
}

/**
 * Builds `ref`: a busybox base unique to this call, then `dataLayers` COPY layers of
 * `layerBytes` random bytes each (defaults: 4 × 64 MiB), with the classic builder (offline; no
 * BuildKit frontend image to pull).
 */
export async function buildLayeredImage(
  docker: Dockerd,
  ref: string,
  opts: { dataLayers?: number; layerBytes?: number } = {},
): Promise<LayeredImage> {
  const dataLayers = opts.dataLayers ?? 4;
  const layerBytes = opts.layerBytes ?? 64 * MiB;
  const baseRef = `slipway-test-base:${randomBytes(6).toString('hex')}`;
  await importBusybox(docker, baseRef, { marker: randomBytes(16).toString('hex') });
  const context = await tempDir('slipway-build-');
  try {
    const lines = [`FROM ${baseRef}`];
    for (let i = 1; i <= dataLayers; i++) {
      await writeRandomFile(join(context, `layer${i}.bin`), layerBytes);
      lines.push(`COPY layer${i}.bin /data/layer${i}.bin`);
    }
    await writeFile(join(context, 'Dockerfile'), lines.join('\n') + '\n');
    await docker.docker(['build', '--quiet', '--tag', ref, context], { env: { DOCKER_BUILDKIT: '0' }, check: true });
    // The built image keeps the base's layer; only the name goes.
    await docker.docker(['rmi', baseRef], { check: true });
    return { ref, baseRef, layers: 1 + dataLayers, dataBytes: dataLayers * layerBytes };
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}
