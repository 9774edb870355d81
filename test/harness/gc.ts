import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm, utimes } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startRegistry } from '../../registry/index.js';
import { FilesystemDriver, S3Driver, createStore, type StorageDriver, type Store } from '../../storage/index.js';
import { MT, http, pushBlob, putManifest, sha256 } from './http.js';
import { randomBucket, sharedRadosgw, type S3Server } from './radosgw.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './registry.js';

/*
 * What the GC tests share: a registry process and an in-process store over the
 * same storage (a temp directory, or a fresh prefix in one bucket), images
 * pushed over HTTP and verified byte for byte, and a way to make things old —
 * utimes on a filesystem; on S3 (no backdating) a wait past a short grace period.
 */
const DIST = resolve(fileURLToPath(import.meta.url), '../../..');

export interface GcEnv {
  reg: RegistryProcess;
  store: Store;
  /** Arguments that select this storage for `slipway registry` / `slipway gc`. */
  storageArgs: string[];
  env: NodeJS.ProcessEnv;
  /** Grace period to give GC, ms. */
  grace: number;
  canBackdate: boolean;
  /** Makes `paths` older than the grace period (filesystem), or waits until everything written so far is (S3). */
  age(paths: string[]): Promise<void>;
  cleanup(): Promise<void>;
}

export interface GcTarget {
  label: string;
  open(): Promise<GcEnv>;
  close(): Promise<void>;
}

export const fsTarget: GcTarget = {
  label: 'filesystem',
  open: async () => {
    const data = await tempDir('slipway-gc-');
    const reg = await startRegistryProcess({ data });
    const backdate = new Date(Date.now() - 2 * 3600_000);
    return {
      reg,
      store: createStore(new FilesystemDriver(data)),
      storageArgs: ['--data', data],
      env: {},
      grace: 60_000,
      canBackdate: true,
      age: async (paths) => {
        for (const p of paths) {
          await utimes(join(data, p), backdate, backdate).catch((err: NodeJS.ErrnoException) => {
            if (err.code !== 'ENOENT') throw err;
          });
        }
      },
      cleanup: () => reg.cleanup(),
    };
  },
  close: async () => {},
};

export function s3Target(): GcTarget {
  let server: { s3: S3Server; release(): Promise<void> } | undefined;
  let bucket = '';
  return {
    label: 's3',
    open: async () => {
      if (!server) {
        server = await sharedRadosgw();
        bucket = randomBucket('gc');
        await server.s3.createBucket(bucket);
      }
      const { s3 } = server;
      const prefix = `p${randomBytes(4).toString('hex')}`;
      const storageArgs = ['--storage', `s3://${new URL(s3.endpoint).host}/${bucket}?tls=false&region=us-east-1&prefix=${prefix}`];
      const env = { SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey };
      const reg = await startRegistryProcess({ args: storageArgs, env });
      const driver = new S3Driver({ endpoint: s3.endpoint, bucket, prefix, accessKey: s3.accessKey, secretKey: s3.secretKey });
      const grace = 2500;
      return {
        reg,
        store: createStore(driver),
        storageArgs,
        env,
        grace,
        canBackdate: false,
        // GC keeps blobs younger than grace + 1 s of clock slack; S3 modTimes have whole seconds.
        age: () => sleep(grace + 2200),
        cleanup: async () => {
          await reg.cleanup();
          await driver.delete('/v2');
        },
      };
    },
    close: async () => {
      if (!server) return;
      await server.s3.deleteBucket(bucket);
      assert.equal(await server.s3.client().bucketExists(bucket), false);
      await server.release();
    },
  };
}

export interface PushedImage {
  repo: string;
  /** The reference it was pushed by: a tag, or its digest. */
  ref: string;
  digest: string;
  manifest: Buffer;
  blobs: { digest: string; bytes: Buffer }[];
}

export const blobPath = (digest: string): string => `/v2/blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}/data`;
/** A blob's files that make it look old or young to GC: its data. */
export const blobFiles = (digest: string): string[] => [blobPath(digest)];

/** Whether a push left a keep marker for `digest` in some GC run's tree (gc-guard.ts): it is inside the handshake. */
export async function keepMarkerWritten(store: Store, digest: string): Promise<boolean> {
  for await (const f of store.driver.walk('/v2/_gc/runs')) if (f.path.endsWith(`/keep/sha256/${digest.slice(7)}`)) return true;
  return false;
}
export const revisionPath = (repo: string, digest: string): string => `/v2/repositories/${repo}/_manifests/revisions/sha256/${digest.slice(7)}/link`;
export const tagPath = (repo: string, tag: string): string => `/v2/repositories/${repo}/_manifests/tags/${tag}/current/link`;

/** Pushes a config and a layer and an OCI manifest naming them, by tag (or by digest when `tag` is absent). */
export async function pushImage(base: string, repo: string, tag?: string, extra: Record<string, unknown> = {}): Promise<PushedImage> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: randomBytes(8).toString('hex') }));
  const layer = randomBytes(4096 + Math.floor(Math.random() * 4096));
  const blobs = [];
  for (const bytes of [config, layer]) blobs.push({ digest: await pushBlob(base, repo, bytes), bytes });
  const doc = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: blobs[0]!.digest, size: config.length },
    layers: [{ mediaType: MT.ociLayer, digest: blobs[1]!.digest, size: layer.length }],
    ...extra,
  };
  const manifest = Buffer.from(JSON.stringify(doc));
  const digest = sha256(manifest);
  const r = await putManifest(base, repo, tag ?? digest, manifest, MT.ociManifest);
  assert.equal(r.status, 201, `manifest PUT ${repo}:${tag ?? digest}: ${r.status} ${r.body.toString()}`);
  return { repo, ref: tag ?? digest, digest, manifest, blobs };
}

/** The image pulls intact: manifest by its reference and by digest, every blob digest-verified. */
export async function assertPullable(base: string, img: PushedImage): Promise<void> {
  for (const ref of new Set([img.ref, img.digest])) {
    const m = await http(`${base}/v2/${img.repo}/manifests/${ref}`, { headers: { Accept: MT.ociManifest } });
    assert.equal(m.status, 200, `GET ${img.repo}:${ref}: ${m.status} ${m.body.toString()}`);
    assert.equal(sha256(m.body), img.digest);
  }
  for (const b of img.blobs) {
    const r = await http(`${base}/v2/${img.repo}/blobs/${b.digest}`);
    assert.equal(r.status, 200, `blob ${b.digest} of ${img.repo}: ${r.status}`);
    assert.equal(sha256(r.body), b.digest);
  }
}

/** Runs `slipway gc ARGS` (the command as cli/gc.ts registers it, under the same error handling as cli/main.ts). */
export function slipwayGc(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = `import { Command } from 'commander';
import { registerGcCommand } from ${JSON.stringify(pathToFileURL(join(DIST, 'cli/gc.js')).href)};
const program = new Command('slipway');
registerGcCommand(program);
program.parseAsync(process.argv.slice(1), { from: 'user' }).catch((err) => {
  console.error('slipway: ' + (err instanceof Error ? err.message : String(err)));
  process.exit(1);
});`;
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, 'gc', ...args], {
      cwd: resolve(DIST, '..'),
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', fail);
    child.once('close', (code) => ok({ code: code ?? 128, stdout, stderr }));
  });
}

/**
 * An in-process registry over a storage the test also holds (so the test can
 * set pause hooks on the registry's driver, gc-guard.ts), plus a way to start a
 * FRESH registry process over the same storage (nothing cached) to verify.
 */
export interface GcLane {
  label: string;
  driver: StorageDriver;
  store: Store;
  /** Another store over the same storage, on its own driver object (no hooks, no cache shared with the registry). */
  other: Store;
  /** The in-process registry's URL. */
  base: string;
  /** Arguments and environment that give `slipway registry` / `slipway gc` this storage. */
  storageArgs: string[];
  env: NodeJS.ProcessEnv;
  fresh(extra?: string[]): Promise<RegistryProcess>;
  /** What the in-process registry logged (unexpected errors). */
  errors: unknown[];
  close(): Promise<void>;
}

export async function openLane(kind: 'filesystem' | 's3'): Promise<GcLane> {
  let makeDriver: () => StorageDriver;
  let storageArgs: string[];
  let env: NodeJS.ProcessEnv = {};
  let dispose: () => Promise<void>;
  if (kind === 'filesystem') {
    const data = await tempDir('slipway-gcl-');
    makeDriver = () => new FilesystemDriver(data);
    storageArgs = ['--data', data];
    dispose = () => rm(data, { recursive: true, force: true });
  } else {
    const server = await sharedRadosgw();
    const bucket = randomBucket('gcl');
    await server.s3.createBucket(bucket);
    const { s3 } = server;
    makeDriver = () => new S3Driver({ endpoint: s3.endpoint, bucket, accessKey: s3.accessKey, secretKey: s3.secretKey });
    storageArgs = ['--storage', `s3://${new URL(s3.endpoint).host}/${bucket}?tls=false&region=us-east-1`];
    env = { SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey };
    dispose = async () => {
      await makeDriver().delete('/');
      await s3.deleteBucket(bucket);
      await server.release();
    };
  }
  const driver = makeDriver();
  const store = createStore(driver);
  const errors: unknown[] = [];
  const reg = await startRegistry({ store, host: '127.0.0.1', port: 0, deleteEnabled: true, log: (err) => void errors.push(err) });
  return {
    label: kind,
    driver,
    store,
    other: createStore(makeDriver()),
    base: reg.url,
    storageArgs,
    env,
    fresh: (extra = []) => startRegistryProcess({ args: [...storageArgs, ...extra], env }),
    errors,
    close: async () => {
      await reg.close();
      await dispose();
    },
  };
}

/** An image as a test pushed it: a manifest (or an index) and everything it names. */
export interface GcImage {
  repo: string;
  tag: string;
  digest: string;
  manifest: Buffer;
  mediaType: string;
  blobs: { digest: string; bytes: Buffer }[];
  children: GcImage[];
}

/** A new image (random config and layer unless given), not pushed. */
export function newImage(repo: string, tag: string, opts: { layers?: Buffer[]; config?: Buffer; extra?: Record<string, unknown> } = {}): GcImage {
  const config = opts.config ?? Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: randomBytes(8).toString('hex') }));
  const blobs = [config, ...(opts.layers ?? [randomBytes(1024 + Math.floor(Math.random() * 2048))])].map((bytes) => ({ digest: sha256(bytes), bytes }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: blobs[0]!.digest, size: config.length },
      layers: blobs.slice(1).map((b) => ({ mediaType: MT.ociLayer, digest: b.digest, size: b.bytes.length })),
      annotations: { nonce: randomBytes(6).toString('hex') },
      ...opts.extra,
    }),
  );
  return { repo, tag, digest: sha256(manifest), manifest, mediaType: MT.ociManifest, blobs, children: [] };
}

/** An index naming `children` (linux/amd64 each), not pushed. */
export function newIndex(repo: string, tag: string, children: GcImage[]): GcImage {
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: children.map((c) => ({ mediaType: c.mediaType, digest: c.digest, size: c.manifest.length, platform: { architecture: 'amd64', os: 'linux' } })),
    }),
  );
  return { repo, tag, digest: sha256(manifest), manifest, mediaType: MT.ociIndex, blobs: [], children };
}

/** Uploads a blob monolithically, or as POST + PATCH + PUT. */
export async function uploadBlob(base: string, repo: string, bytes: Buffer, chunked = false): Promise<void> {
  const digest = sha256(bytes);
  if (!chunked) {
    await pushBlob(base, repo, bytes);
    return;
  }
  const start = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(start.status, 202, `POST upload: ${start.status} ${start.body.toString()}`);
  const loc = new URL(start.headers.get('location')!, base);
  const patch = await http(loc.href, { method: 'PATCH', body: bytes, headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `0-${bytes.length - 1}` } });
  assert.equal(patch.status, 202, `PATCH: ${patch.status} ${patch.body.toString()}`);
  const next = new URL(patch.headers.get('location')!, base);
  next.searchParams.set('digest', digest);
  const put = await http(next.href, { method: 'PUT' });
  assert.equal(put.status, 201, `PUT upload: ${put.status} ${put.body.toString()}`);
}

/** PUTs the image's manifest by its tag (or by digest when `byDigest`). */
export const putImage = (base: string, img: GcImage, byDigest = false) =>
  putManifest(base, img.repo, byDigest ? img.digest : img.tag, img.manifest, img.mediaType);

/** Pushes an image whole: children first, every blob uploaded. */
export async function pushWhole(base: string, img: GcImage, byDigest = false): Promise<void> {
  for (const c of img.children) await pushWhole(base, c, true);
  for (const b of img.blobs) await uploadBlob(base, img.repo, b.bytes);
  const r = await putImage(base, img, byDigest);
  assert.equal(r.status, 201, `PUT ${img.repo}:${byDigest ? img.digest : img.tag}: ${r.status} ${r.body.toString()}`);
}

/** Problems with the image as the registry at `base` serves it (by tag, by digest, children and every blob digest-checked); [] when whole. */
export async function imageProblems(base: string, img: GcImage, byTag = true): Promise<string[]> {
  const problems: string[] = [];
  const accept = { Accept: `${MT.ociManifest}, ${MT.ociIndex}` };
  for (const ref of byTag ? [img.tag, img.digest] : [img.digest]) {
    const m = await http(`${base}/v2/${img.repo}/manifests/${ref}`, { headers: accept });
    if (m.status !== 200) problems.push(`GET ${img.repo}:${ref}: ${m.status} ${m.code ?? ''}`);
    else if (sha256(m.body) !== img.digest) problems.push(`GET ${img.repo}:${ref}: digest ${sha256(m.body)}, pushed ${img.digest}`);
  }
  for (const b of img.blobs) {
    const r = await http(`${base}/v2/${img.repo}/blobs/${b.digest}`);
    if (r.status !== 200) problems.push(`blob ${b.digest} of ${img.repo}:${img.tag}: ${r.status}`);
    else if (sha256(r.body) !== b.digest) problems.push(`blob ${b.digest} of ${img.repo}:${img.tag}: wrong bytes`);
  }
  for (const c of img.children) problems.push(...(await imageProblems(base, c, false)).map((p) => `child of ${img.repo}:${img.tag}: ${p}`));
  return problems;
}

/** Problems with the image as storage holds it, read with no cache (tag, revision, bytes, blobs, children); [] when whole. */
export async function storeProblems(store: Store, img: GcImage, byTag = true): Promise<string[]> {
  const { driver } = store;
  const problems: string[] = [];
  const read = (path: string) => driver.getContent(path).catch(() => null);
  if (byTag) {
    const tag = (await read(tagPath(img.repo, img.tag)))?.toString().trim();
    if (tag !== img.digest) problems.push(`${img.repo}:${img.tag} names ${tag ?? 'nothing'}, pushed ${img.digest}`);
  }
  if (!(await driver.stat(revisionPath(img.repo, img.digest)))) problems.push(`${img.repo}@${img.digest}: no revision link`);
  for (const d of [img.digest, ...img.blobs.map((b) => b.digest)]) {
    const bytes = await read(blobPath(d));
    if (!bytes) problems.push(`${img.repo}:${img.tag}: ${d} is gone`);
    else if (sha256(bytes) !== d) problems.push(`${img.repo}:${img.tag}: ${d} holds other bytes`);
  }
  for (const c of img.children) problems.push(...(await storeProblems(store, c, false)).map((p) => `child: ${p}`));
  return problems;
}
