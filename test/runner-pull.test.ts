import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, mkdir, readFile, readdir, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ImageStore } from '../runner/image-store.js';
import type { PullProgress } from '../runner/progress.js';
import { progressPrinter } from '../runner/progress.js';
import { InvalidReferenceError, normalizeReference, parseReference } from '../runner/reference.js';
import { UnsafeLayerError } from '../runner/unpack.js';
import { hostileCases, layerOf } from './harness/hostile-layers.js';
import { MT, pushBlob, putManifest } from './harness/http.js';
import { OCI, writeImageLayout, writeIndexLayout } from './harness/oci-layout.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';
import { freePort } from '../builder/redis.js';

/*
 * Pulling into the node's image store from a real `slipway registry` process and from
 * Debian's docker-registry (distribution 2.8), images pushed by skopeo from OCI layouts.
 * Every test has its own repository and its own store root.
 */
const SKOPEO_TIMEOUT_MS = 120_000;
let registry: RegistryProcess;
let distribution: { host: string; child: ChildProcess; dir: string } | undefined;
let work: string;
const stores: ImageStore[] = [];

before(async () => {
  registry = await startRegistryProcess();
  work = await tempDir('slipway-pull-');
});

after(async () => {
  for (const s of stores) s.close();
  await registry?.cleanup();
  if (distribution) await stopDistribution(distribution);
  if (work) await rm(work, { recursive: true, force: true });
  await assert.rejects(stat(work), 'work directory left behind');
  if (distribution) await assert.rejects(stat(distribution.dir), 'distribution directory left behind');
});

const rand = (): string => randomBytes(4).toString('hex');
const randomRepo = (): string => `runner/pull-${rand()}`;

function newStore(): ImageStore {
  const store = new ImageStore(join(work, `store-${rand()}`), { env: {} });
  stores.push(store);
  return store;
}

function skopeo(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('skopeo', ['--insecure-policy', ...args], { timeout: SKOPEO_TIMEOUT_MS }, (err, _out, stderr) =>
      err ? reject(new Error(`skopeo ${args.join(' ')} failed: ${err.message}\n${stderr}`)) : resolve(),
    );
  });
}

/** Writes an OCI layout and copies it to `host`/`repo`:`tag` with skopeo. */
async function pushLayout(host: string, repo: string, tag: string, opts: { label?: string; cmd?: string[] } = {}) {
  const dir = join(work, `layout-${rand()}`);
  const image = await writeImageLayout(dir, { tag, label: opts.label ?? repo, cmd: opts.cmd ?? ['/bin/echo', 'hi'], env: ['PATH=/bin', 'GREETING=hi'] });
  await skopeo(['copy', '--dest-tls-verify=false', `oci:${dir}:${tag}`, `docker://${host}/${repo}:${tag}`]);
  return image;
}

/** What the store holds on disk, per kind; every list empty for an empty store. */
async function contents(store: ImageStore): Promise<Record<string, string[]>> {
  const kinds = ['refs', 'manifests/sha256', 'blobs/sha256', 'layers/sha256', 'tmp'];
  const lists = await Promise.all(kinds.map((k) => readdir(join(store.dir, k)).catch(() => [] as string[])));
  return Object.fromEntries(kinds.map((k, i) => [k, lists[i]!]));
}
const EMPTY = { refs: [], 'manifests/sha256': [], 'blobs/sha256': [], 'layers/sha256': [], tmp: [] };

function recorder(): { events: PullProgress[]; onProgress: (e: PullProgress) => void; phases(digest: string): Set<string> } {
  const events: PullProgress[] = [];
  return { events, onProgress: (e) => events.push(e), phases: (d) => new Set(events.filter((e) => e.digest === d).map((e) => e.phase)) };
}

async function assertBusybox(layerDir: string): Promise<void> {
  const busybox = await stat(join(layerDir, 'bin', 'busybox'));
  assert.ok(busybox.isFile() && (busybox.mode & 0o111) !== 0, 'bin/busybox is an executable file');
  assert.equal(await readlink(join(layerDir, 'bin', 'sh')), 'busybox');
  assert.equal((await stat(join(layerDir, 'tmp'))).mode & 0o7777, 0o1777);
}

test('pulls by tag and by digest; get, list and remove', { timeout: SKOPEO_TIMEOUT_MS * 2 }, async () => {
  const repo = randomRepo();
  const written = await pushLayout(registry.host, repo, 'v1');
  const store = newStore();
  const progress = recorder();

  const image = await store.pull(`${registry.host}/${repo}:v1`, { onProgress: progress.onProgress });
  assert.equal(image.reference, `${registry.host}/${repo}:v1`);
  assert.equal(image.manifestDigest, written.manifest.digest);
  assert.equal(image.id, written.config.digest);
  assert.deepEqual([image.os, image.architecture], ['linux', 'amd64']);
  assert.deepEqual(image.config.Cmd, ['/bin/echo', 'hi']);
  assert.deepEqual(image.config.Env, ['PATH=/bin', 'GREETING=hi']);
  assert.equal(image.created, '1970-01-01T00:00:00Z');
  assert.equal(image.size, written.layer.size);
  assert.equal(image.layerDirs.length, 1);
  await assertBusybox(image.layerDirs[0]!);
  assert.ok(progress.phases(written.layer.digest).has('downloading'));
  assert.ok(progress.phases(written.layer.digest).has('done'));

  const byDigest = `${registry.host}/${repo}@${written.manifest.digest}`;
  const again = recorder();
  const pinned = await store.pull(byDigest, { onProgress: again.onProgress });
  assert.equal(pinned.reference, byDigest);
  assert.deepEqual(pinned.layerDirs, image.layerDirs);
  assert.deepEqual([...again.phases(written.layer.digest)], ['waiting', 'exists'], 'the layer is not fetched again');

  assert.equal((await store.get(`${registry.host}/${repo}:v1`))?.id, image.id);
  assert.equal((await store.get(image.id))?.manifestDigest, image.manifestDigest);
  assert.equal((await store.get(image.id.slice(7, 19)))?.manifestDigest, image.manifestDigest, 'short id');
  assert.equal(await store.get(`${registry.host}/${repo}:other`), null);
  assert.deepEqual((await store.list()).map((i) => i.reference), [byDigest, `${registry.host}/${repo}:v1`].sort());

  await assert.rejects(store.remove(image.id), /referenced as .*remove one reference by name, or force/);
  assert.deepEqual(await store.remove(`${registry.host}/${repo}:v1`), { untagged: [`${registry.host}/${repo}:v1`], deleted: [] });
  const gone = await store.remove(byDigest);
  assert.deepEqual(gone.deleted.sort(), [written.manifest.digest, written.config.digest, written.layer.digest].sort());
  assert.deepEqual(await contents(store), EMPTY);
  await assert.rejects(store.remove(byDigest), /no such image/);
});

test('references parse by the distribution grammar, on the default registry when they name none', () => {
  const digest = `sha256:${'ab'.repeat(32)}`;
  assert.deepEqual(parseReference('app', { defaultRegistry: 'reg:5000' }), { registry: 'reg:5000', repository: 'app', tag: 'latest' });
  assert.deepEqual(parseReference('team/app:v1.2', { defaultRegistry: 'reg:5000' }), { registry: 'reg:5000', repository: 'team/app', tag: 'v1.2' });
  assert.deepEqual(parseReference('localhost/app'), { registry: 'localhost', repository: 'app', tag: 'latest' });
  assert.deepEqual(parseReference(`10.0.0.1:5000/a/b-c/d_e:t@${digest}`), { registry: '10.0.0.1:5000', repository: 'a/b-c/d_e', tag: 't', digest });
  assert.equal(normalizeReference(`host.example:443/x@${digest}`), `host.example:443/x@${digest}`);
  assert.equal(normalizeReference('app', { defaultRegistry: '127.0.0.1:5000' }), '127.0.0.1:5000/app:latest');
  for (const bad of ['', ' app', 'App', 'a//b', 'a/-b', 'app:', `app:${'t'.repeat(129)}`, 'app@sha256:short', 'host:99999/app', 'app@md5:abc', '-app']) {
    assert.throws(() => parseReference(bad), InvalidReferenceError, bad);
  }
});

test('an image a container uses is kept until the container is gone; progress prints a line per layer', { timeout: SKOPEO_TIMEOUT_MS }, async () => {
  const repo = randomRepo();
  const written = await pushLayout(registry.host, repo, 'v1');
  const used = new Set<string>();
  const store = new ImageStore(join(work, `store-${rand()}`), { env: {}, inUse: async () => used });
  stores.push(store);
  const lines: string[] = [];
  const printer = progressPrinter({ write: (text: string) => lines.push(text) });
  const image = await store.pull(`${registry.host}/${repo}:v1`, { onProgress: printer });
  printer.finish();
  const short = written.layer.digest.slice(7, 19);
  const total = `${(written.layer.size / 1048576).toFixed(1)} MiB`;
  assert.equal(lines[0], `${short}: waiting\n`);
  assert.match(lines[1]!, new RegExp(`^${short}: downloading [0-9.]+ MiB/${total}\n$`));
  assert.equal(lines.at(-1), `${short}: pull complete (${total})\n`);
  assert.equal(lines.length, 3, 'one line per state change, not per chunk');

  used.add(image.id);
  await assert.rejects(store.remove(image.reference), /used by a container; remove the container first/);
  const forced = await store.remove(image.reference, { force: true });
  assert.deepEqual(forced, { untagged: [image.reference], deleted: [] }, 'untagged, files kept');
  assert.equal((await store.get(image.id))?.layerDirs[0], image.layerDirs[0], 'still found by id');
  await assertBusybox(image.layerDirs[0]!);
  used.clear();
  assert.equal((await store.gc()).length, 3, 'manifest, config and layer collected once unused');
  assert.deepEqual(await contents(store), EMPTY);
});

test('an index resolves to its linux/amd64 image', { timeout: SKOPEO_TIMEOUT_MS * 2 }, async () => {
  const repo = randomRepo();
  const dir = join(work, `layout-${rand()}`);
  const written = await writeIndexLayout(dir, { tag: 'multi', label: repo });
  await skopeo(['copy', '--all', '--dest-tls-verify=false', `oci:${dir}:multi`, `docker://${registry.host}/${repo}:multi`]);
  const amd64 = written.images.find((i) => i.platform.architecture === 'amd64')!;

  const image = await newStore().pull(`${registry.host}/${repo}:multi`);
  assert.equal(image.manifestDigest, amd64.manifest.digest);
  assert.equal(image.id, amd64.config.digest);
  assert.equal(image.architecture, 'amd64');
  await assertBusybox(image.layerDirs[0]!);
});

test('a layer shared by images is fetched and unpacked once, also under concurrent pulls', { timeout: SKOPEO_TIMEOUT_MS * 4 }, async () => {
  const label = `shared-${rand()}`;
  const [repoA, repoB] = [randomRepo(), randomRepo()];
  const a = await pushLayout(registry.host, repoA, 'v1', { label, cmd: ['/bin/echo', 'a'] });
  const b = await pushLayout(registry.host, repoB, 'v1', { label, cmd: ['/bin/echo', 'b'] });
  assert.equal(a.layer.digest, b.layer.digest, 'the two images share their layer');
  assert.notEqual(a.config.digest, b.config.digest);

  const store = newStore();
  await store.pull(`${registry.host}/${repoA}:v1`);
  const second = recorder();
  const imageB = await store.pull(`${registry.host}/${repoB}:v1`, { onProgress: second.onProgress });
  assert.ok(!second.phases(a.layer.digest).has('downloading'), 'second image did not download the layer');
  assert.ok(second.phases(a.layer.digest).has('exists'));
  assert.deepEqual((await contents(store))['layers/sha256'], [a.layer.digest.slice(7)]);
  await assertBusybox(imageB.layerDirs[0]!);

  // Both at once in one store: one download, the other waits for it.
  const together = newStore();
  const [p1, p2] = [recorder(), recorder()];
  await Promise.all([together.pull(`${registry.host}/${repoA}:v1`, { onProgress: p1.onProgress }), together.pull(`${registry.host}/${repoB}:v1`, { onProgress: p2.onProgress })]);
  const downloads = [p1, p2].filter((p) => p.phases(a.layer.digest).has('downloading')).length;
  assert.equal(downloads, 1, 'one of the two concurrent pulls downloaded the layer');

  // Two stores (as two processes would) over one root: both unpack, one rename wins, nothing left over.
  const root = join(work, `store-${rand()}`);
  const [s1, s2] = [new ImageStore(root, { env: {} }), new ImageStore(root, { env: {} })];
  stores.push(s1, s2);
  const [i1, i2] = await Promise.all([s1.pull(`${registry.host}/${repoA}:v1`), s2.pull(`${registry.host}/${repoB}:v1`)]);
  assert.deepEqual(i1.layerDirs, i2.layerDirs);
  const onDisk = await contents(s1);
  assert.deepEqual(onDisk['layers/sha256'], [a.layer.digest.slice(7)]);
  assert.deepEqual(onDisk.tmp, []);
  await assertBusybox(i1.layerDirs[0]!);
});

test("pulls from Debian's docker-registry (distribution 2.8)", { timeout: SKOPEO_TIMEOUT_MS * 2 }, async () => {
  distribution = await startDistribution();
  const repo = randomRepo();
  const written = await pushLayout(distribution.host, repo, 'v1');
  const image = await newStore().pull(`${distribution.host}/${repo}:v1`);
  assert.equal(image.manifestDigest, written.manifest.digest);
  assert.equal(image.id, written.config.digest);
  await assertBusybox(image.layerDirs[0]!);
});

test('bad input gets a clear error and leaves the store empty', { timeout: SKOPEO_TIMEOUT_MS * 3 }, async (t) => {
  const store = newStore();
  const repo = randomRepo();

  await t.test('a reference that does not parse', async () => {
    for (const bad of ['UPPER/Repo:tag', 'repo:bad tag', 'host:5000/repo@sha256:abc', 'repo::x', '']) {
      await assert.rejects(store.pull(bad), (err: Error) => err instanceof InvalidReferenceError && /invalid image reference/.test(err.message));
    }
  });

  await t.test('an unknown tag', async () => {
    await pushLayout(registry.host, repo, 'v1');
    await assert.rejects(store.pull(`${registry.host}/${repo}:nope`), /manifest unknown.*MANIFEST_UNKNOWN/i);
  });

  await t.test('a layer whose bytes do not match its digest', async () => {
    const tamperRepo = randomRepo();
    const written = await pushLayout(registry.host, tamperRepo, 'v1');
    const hex = written.layer.digest.slice(7);
    const data = join(registry.data, 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
    // Byte 9 of a gzip member is its OS field: not covered by any checksum, so the blob
    // still unpacks, and only the digest tells the copy was changed.
    const fh = await open(data, 'r+');
    await fh.write(Buffer.from([0x42]), 0, 1, 9);
    await fh.close();
    await assert.rejects(store.pull(`${registry.host}/${tamperRepo}:v1`), new RegExp(`expected ${written.layer.digest}.*corrupt or was changed`));
  });

  await t.test('an index with no linux/amd64 image, and a lone arm64 image', async () => {
    const dir = join(work, `layout-${rand()}`);
    const written = await writeIndexLayout(dir, { tag: 'multi', label: repo });
    await skopeo(['copy', '--all', '--dest-tls-verify=false', `oci:${dir}:multi`, `docker://${registry.host}/${repo}:multi`]);
    const arm = written.images.find((i) => i.platform.architecture === 'arm64')!;
    const index = { schemaVersion: 2, mediaType: OCI.index, manifests: [{ ...arm.manifest, platform: arm.platform }] };
    assert.equal((await putManifest(registry.url, repo, 'arm-only', index, OCI.index)).status, 201);
    await assert.rejects(store.pull(`${registry.host}/${repo}:arm-only`), /has no linux\/amd64 image; its index lists: linux\/arm64\/v8/);
    assert.equal((await putManifest(registry.url, repo, 'arm-single', arm.manifestBytes, OCI.manifest)).status, 201);
    await assert.rejects(store.pull(`${registry.host}/${repo}:arm-single`), /is a linux\/arm64 image; this node runs linux\/amd64/);
  });

  await t.test('a hostile layer (write through a symlink) in a pushed image', async () => {
    const canary = join(work, `canary-${rand()}`);
    await mkdir(canary);
    await writeFile(join(canary, 'secret'), 'secret\n');
    const hostile = hostileCases(canary, '/nonexistent').find((c) => c.offending === 'a/pwned')!;
    const layer = await layerOf(hostile.entries);
    const hostileRepo = randomRepo();
    await pushBlob(registry.url, hostileRepo, layer.bytes);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [layer.diffId] } }));
    const configDigest = await pushBlob(registry.url, hostileRepo, config);
    const manifest = {
      schemaVersion: 2,
      mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: configDigest, size: config.length },
      layers: [{ mediaType: MT.ociLayer, digest: layer.digest, size: layer.bytes.length }],
    };
    assert.equal((await putManifest(registry.url, hostileRepo, 'v1', manifest)).status, 201);
    await assert.rejects(
      store.pull(`${registry.host}/${hostileRepo}:v1`),
      (err: Error) => err instanceof UnsafeLayerError && err.message.includes(`layer ${layer.digest}: entry "a/pwned" would be written through symlink "a"`),
    );
    assert.deepEqual(await readdir(canary), ['secret']);
    assert.equal(await readFile(join(canary, 'secret'), 'utf8'), 'secret\n');
  });

  assert.deepEqual(await contents(store), EMPTY, 'a failed pull left something in the store');
});

/** Debian's docker-registry on a free loopback port over a temporary directory. */
async function startDistribution(): Promise<{ host: string; child: ChildProcess; dir: string }> {
  const dir = await tempDir('slipway-distribution-');
  const port = await freePort();
  const config = join(dir, 'config.yml');
  const yaml = ['version: 0.1', 'log:', '  level: warn', '  accesslog:', '    disabled: true', 'storage:', '  filesystem:', `    rootdirectory: ${join(dir, 'data')}`, 'http:', `  addr: 127.0.0.1:${port}`, ''];
  await writeFile(config, yaml.join('\n'));
  const child = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const running = { host: `127.0.0.1:${port}`, child, dir };
  for (const deadline = Date.now() + 20_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
    if (child.exitCode !== null) break;
    const ok = await fetch(`http://${running.host}/v2/`).then((r) => r.status === 200, () => false);
    if (ok) return running;
  }
  await stopDistribution(running);
  throw new Error(`docker-registry did not start on ${running.host}:\n${stderr}`);
}

async function stopDistribution(d: { child: ChildProcess; dir: string }): Promise<void> {
  if (d.child.exitCode === null && d.child.signalCode === null) {
    const exited = new Promise((resolve) => d.child.once('exit', resolve));
    d.child.kill('SIGTERM');
    await exited;
  }
  await rm(d.dir, { recursive: true, force: true });
}
