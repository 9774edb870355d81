/*
 * The builder's tests: a real registry process with a busybox base image pushed to it
 * (busybox-static, every applet, users root and app), contexts written to temporary
 * directories, build() called with a logger that keeps everything, and the images it makes
 * read back: config, the merged filesystem (pulled, unpacked and mounted as the runner does),
 * and a run under the runner.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { after, before } from 'node:test';
import { build } from '../../builder/executor.js';
import type { BuildLogger, BuildOptions, BuildRequest, BuildResult, BuildStep } from '../../builder/types.js';
import { ImageStore, Runner, mountRootfs, unmountRootfs } from '../../runner/index.js';
import { MT, putManifest, pushBlob } from './http.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './registry.js';
import { busyboxLayer, cleanupRunner } from './runner.js';

export interface BuildEnv {
  registry: RegistryProcess;
  /** Scratch space of the test file; removed by cleanup. */
  dir: string;
  workerRoot: string;
  /** `HOST:PORT/<random>/busybox:latest`. */
  busybox: string;
  /** A fresh reference `HOST:PORT/<random repo>:tag`. */
  ref(name?: string): string;
  cleanup(): Promise<void>;
}

export const rand = (): string => randomBytes(4).toString('hex');

/** A BuildEnv shared by the tests of one file: started before the first, cleaned up after the last. */
export function buildEnvPerFile(): () => BuildEnv {
  let env: BuildEnv | undefined;
  before(async () => {
    env = await startBuildEnv();
  });
  after(async () => {
    await env?.cleanup();
  });
  return () => env ?? assert.fail('the build environment did not start');
}

export async function startBuildEnv(): Promise<BuildEnv> {
  const registry = await startRegistryProcess();
  const dir = await tempDir('slipway-build-');
  const prefix = `t${rand()}`;
  const busybox = await pushBusybox(registry, `${prefix}/busybox`, join(dir, 'busybox-rootfs'));
  return {
    registry,
    dir,
    workerRoot: join(dir, 'worker'),
    busybox,
    ref: (name = 'app') => `${registry.host}/${prefix}/${name}-${rand()}:latest`,
    cleanup: async () => {
      await registry.cleanup();
      const mounts = execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(dir));
      await rm(dir, { recursive: true, force: true });
      if (mounts.length) throw new Error(`mounts left under ${dir}:\n${mounts.join('\n')}`);
    },
  };
}

/** Pushes a one-layer busybox image (config Env PATH, Cmd sh) and returns its reference. */
export async function pushBusybox(registry: RegistryProcess, repo: string, rootfs: string, config: Record<string, unknown> = {}): Promise<string> {
  await busyboxLayer(rootfs, 'base');
  const tarBytes = execFileSync('tar', ['--create', '--file=-', `--directory=${rootfs}`, '--sort=name', '--numeric-owner', '--mtime=@0', '.'], { maxBuffer: 64 << 20 });
  const layer = gzipSync(tarBytes);
  const layerDigest = await pushBlob(registry.url, repo, layer);
  const cfg = Buffer.from(
    JSON.stringify({
      created: '2024-01-01T00:00:00Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['sh'], ...config },
      rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(tarBytes).digest('hex')}`] },
      history: [{ created: '2024-01-01T00:00:00Z', created_by: 'test harness: busybox rootfs' }],
    }),
  );
  const cfgDigest = await pushBlob(registry.url, repo, cfg);
  const manifest = { schemaVersion: 2, mediaType: MT.ociManifest, config: { mediaType: MT.ociConfig, digest: cfgDigest, size: cfg.length }, layers: [{ mediaType: MT.ociLayer, digest: layerDigest, size: layer.length }] };
  const r = await putManifest(registry.url, repo, 'latest', manifest);
  if (r.status !== 201) throw new Error(`base image push failed: ${r.status} ${r.body.toString()}`);
  return `${registry.host}/${repo}:latest`;
}

export type ContextFile = string | { content?: string; mode?: number; symlink?: string; dir?: boolean; copyOf?: string };

/** Writes a build context: path → contents (or a symlink / mode / empty directory). */
export async function writeContext(dir: string, files: Record<string, ContextFile>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [path, f] of Object.entries(files)) {
    const full = join(dir, path);
    await mkdir(dirname(full), { recursive: true });
    if (typeof f === 'string') await writeFile(full, f);
    else if (f.symlink !== undefined) await symlink(f.symlink, full);
    else if (f.dir) await mkdir(full, { recursive: true });
    else if (f.copyOf) await copyFile(f.copyOf, full);
    else await writeFile(full, f.content ?? '');
    if (typeof f !== 'string' && f.mode !== undefined) await chmod(full, f.mode);
  }
  return dir;
}

export interface Logged {
  logger: BuildLogger;
  lines: string[];
  steps: BuildStep[];
}

export function collectingLogger(echo = !!process.env.SLIPWAY_TEST_VERBOSE): Logged {
  const lines: string[] = [];
  const steps: BuildStep[] = [];
  return {
    lines,
    steps,
    logger: {
      line: (t) => {
        lines.push(t);
        if (echo) process.stderr.write(`${t}\n`);
      },
      step: (s) => steps.push({ ...s }),
    },
  };
}

export interface BuildRun extends Logged {
  result: BuildResult;
  context: string;
}

/** Builds `dockerfile` over `files` in a fresh context (or `context` when given). */
export async function buildImage(
  env: BuildEnv,
  dockerfile: string,
  files: Record<string, ContextFile> = {},
  opts: Partial<BuildRequest> & { context?: string; workerRoot?: string; options?: Omit<BuildOptions, 'workerRoot'> } = {},
): Promise<BuildRun> {
  const { context: given, workerRoot, options, ...req } = opts;
  const context = given ?? (await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: dockerfile, ...files }));
  const logged = collectingLogger();
  const full: BuildRequest = { id: rand(), contextDir: context, dockerfile: 'Dockerfile', tags: [env.ref()], buildArgs: {}, noCache: false, network: 'none', secrets: [], labels: {}, ...req };
  const result = await build(full, logged.logger, { ...options, workerRoot: workerRoot ?? env.workerRoot });
  return { ...logged, result, context };
}

export interface FileFacts {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  size: number;
  uid: number;
  gid: number;
  link?: string;
}

export interface PulledImage {
  config: Record<string, unknown> & { config: Record<string, unknown>; history?: { created_by?: string; empty_layer?: boolean }[]; rootfs: { diff_ids: string[] } };
  layerDirs: string[];
  /** The merged filesystem: path (no leading /) → facts. */
  files: Map<string, FileFacts>;
  read(path: string): Promise<string | undefined>;
}

/** Pulls `ref` into a fresh image store, mounts its layers and lists every file. */
export async function pullImage(env: BuildEnv, ref: string): Promise<PulledImage> {
  const root = join(env.dir, `pull-${rand()}`);
  const store = new ImageStore(root, { env: {} });
  try {
    const image = await store.pull(ref);
    const manifest = JSON.parse(await readFile(join(root, 'images', 'manifests', 'sha256', image.manifestDigest.slice(7)), 'utf8')) as { config: { digest: string } };
    const config = JSON.parse(await readFile(join(root, 'images', 'blobs', 'sha256', manifest.config.digest.slice(7)), 'utf8')) as PulledImage['config'];
    const m = await mountRootfs(image.layerDirs, join(root, 'mnt'));
    try {
      const files = await listTree(m.rootfs);
      const contents = new Map<string, string>();
      for (const [p, f] of files) if (f.type === 'file' && f.size < 65536) contents.set(p, await readFile(join(m.rootfs, p), 'utf8'));
      return { config, layerDirs: image.layerDirs, files, read: async (p) => contents.get(p.replace(/^\//, '')) };
    } finally {
      await unmountRootfs(m.rootfs);
    }
  } finally {
    store.close();
  }
}

export async function listTree(root: string, rel = '', out = new Map<string, FileFacts>()): Promise<Map<string, FileFacts>> {
  for (const name of (await readdir(join(root, rel))).sort()) {
    const p = rel ? `${rel}/${name}` : name;
    const st = await lstat(join(root, p));
    const type = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    out.set(p, { type, mode: st.mode & 0o7777, size: type === 'file' ? st.size : 0, uid: st.uid, gid: st.gid, ...(type === 'symlink' ? { link: await readlink(join(root, p)) } : {}) });
    if (type === 'dir') await listTree(root, p, out);
  }
  return out;
}

/** Runs `ref` (with `cmd` when given) under the runner; returns its output and exit code. */
export async function runImage(env: BuildEnv, ref: string, cmd: string[] = []): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const base = join(env.dir, `run-${rand()}`);
  const images = new ImageStore(join(base, 'root'), { env: {} });
  const runner = new Runner({ root: join(base, 'root'), runcRoot: join(base, 'runc'), images });
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = '';
  let stderr = '';
  out.on('data', (d: Buffer) => (stdout += d.toString()));
  err.on('data', (d: Buffer) => (stderr += d.toString()));
  try {
    const r = await runner.run({ image: ref, cmd, flags: { network: 'none' } }, { stdout: out, stderr: err });
    return { exitCode: r.exitCode ?? -1, stdout, stderr };
  } finally {
    images.close();
    await cleanupRunner(runner, base);
  }
}

/** The uncompressed tar of every layer of `ref` (tag in its own repository), read from the registry. */
export async function layerTars(env: BuildEnv, ref: string): Promise<Buffer[]> {
  const m = /^[^/]+\/(.+):([^:]+)$/.exec(ref)!;
  const [repo, tag] = [m[1]!, m[2]!];
  const manifest = (await (await fetch(`${env.registry.url}/v2/${repo}/manifests/${tag}`, { headers: { Accept: MT.ociManifest } })).json()) as { layers: { digest: string }[] };
  const out: Buffer[] = [];
  for (const l of manifest.layers) out.push(gunzipSync(Buffer.from(await (await fetch(`${env.registry.url}/v2/${repo}/blobs/${l.digest}`)).arrayBuffer())));
  return out;
}

/** Names of the entries of a tar (ustar/pax headers read just enough for short names). */
export function tarNames(tar: Buffer): string[] {
  const names: string[] = [];
  for (let off = 0; off + 512 <= tar.length; ) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '');
    const prefix = header.toString('utf8', 345, 500).replace(/\0.*$/s, '');
    const size = parseInt(header.toString('utf8', 124, 136).replace(/\0.*$/s, '').trim() || '0', 8);
    const type = String.fromCharCode(header[156]!);
    if (type !== 'x' && type !== 'g') names.push(prefix ? `${prefix}/${name}` : name);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return names;
}
