import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { OCI, validateLayout, writeImageLayout, writeIndexLayout } from './harness/oci-layout.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';

/*
 * skopeo (containers/image) against a real `slipway registry` process. Images
 * come from OCI layouts written by the harness; everything a test pushes lives
 * in its own random repository.
 */
const SKOPEO = '/usr/bin/skopeo';
const TOOL_TIMEOUT_MS = 120_000;

let registry: RegistryProcess;
let work: string;

before(async () => {
  registry = await startRegistryProcess();
  work = await tempDir('slipway-skopeo-');
});

after(async () => {
  await registry?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
  if (registry) await assert.rejects(stat(registry.data), 'registry data directory left behind');
});

const randomRepo = (): string => `e2e/skopeo-${randomBytes(4).toString('hex')}`;

/**
 * Runs skopeo; resolves with its stdout bytes, rejects with its stderr.
 * --insecure-policy: a machine need not have /etc/containers/policy.json.
 */
function skopeo(args: string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(SKOPEO, ['--insecure-policy', ...args], { encoding: 'buffer', timeout: TOOL_TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`skopeo ${args.join(' ')} failed: ${err.message}\n${stderr.toString()}`));
      else resolve(stdout);
    });
  });
}

async function inspect(ref: string, ...flags: string[]): Promise<{ Digest: string; Architecture: string; Os: string; Layers: string[]; Env: string[] }> {
  return JSON.parse((await skopeo(['inspect', '--tls-verify=false', ...flags, ref])).toString());
}

async function getManifest(repo: string, reference: string, accept: string, method = 'GET'): Promise<{ res: Response; body: Buffer }> {
  const res = await fetch(`${registry.url}/v2/${repo}/manifests/${reference}`, { method, headers: { Accept: accept } });
  return { res, body: Buffer.from(await res.arrayBuffer()) };
}

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

test('copies an image to the registry and back with its manifest bytes unchanged', { timeout: TOOL_TIMEOUT_MS * 4 }, async () => {
  const repo = randomRepo();
  const src = join(work, `${repo.replace('/', '-')}-src`);
  const back = join(work, `${repo.replace('/', '-')}-back`);
  const image = await writeImageLayout(src, { tag: 'v1', label: repo, cmd: ['/bin/echo', 'hi'], env: ['PATH=/bin', 'GREETING=hi'] });
  const ref = `docker://${registry.host}/${repo}:v1`;

  await skopeo(['copy', '--dest-tls-verify=false', `oci:${src}:v1`, ref]);

  const info = await inspect(ref);
  assert.equal(info.Digest, image.manifest.digest);
  assert.equal(info.Architecture, 'amd64');
  assert.equal(info.Os, 'linux');
  assert.deepEqual(info.Layers, [image.layer.digest]);
  assert.deepEqual(info.Env, ['PATH=/bin', 'GREETING=hi']);
  const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', ref]);
  assert.equal(raw.toString(), image.manifestBytes.toString());
  assert.equal(sha256(raw), image.manifest.digest);
  const head = await getManifest(repo, 'v1', OCI.manifest, 'HEAD');
  assert.equal(head.res.status, 200);
  assert.equal(head.res.headers.get('docker-content-digest'), image.manifest.digest);

  await skopeo(['copy', '--src-tls-verify=false', ref, `oci:${back}:v1`]);
  const report = await validateLayout(back);
  assert.deepEqual(report.problems, []);
  assert.equal(report.blobs, 3);
  assert.equal(report.refs.get('v1')?.digest, image.manifest.digest);
});

test('copies a two-platform index with --all and back with every digest unchanged', { timeout: TOOL_TIMEOUT_MS * 6 }, async () => {
  const repo = randomRepo();
  const src = join(work, `${repo.replace('/', '-')}-src`);
  const back = join(work, `${repo.replace('/', '-')}-back`);
  const { index, indexBytes, images } = await writeIndexLayout(src, { tag: 'multi', label: repo });
  const [amd64, arm64] = images;
  assert.ok(amd64 && arm64);
  const ref = `docker://${registry.host}/${repo}:multi`;

  await skopeo(['copy', '--all', '--dest-tls-verify=false', `oci:${src}:multi`, ref]);

  const got = await getManifest(repo, 'multi', OCI.index);
  assert.equal(got.res.status, 200);
  assert.equal(got.res.headers.get('content-type'), OCI.index);
  assert.equal(got.res.headers.get('docker-content-digest'), index.digest);
  assert.equal(got.body.toString(), indexBytes.toString());
  const platforms = (JSON.parse(got.body.toString()) as { manifests: { platform: { architecture: string } }[] }).manifests.map((m) => m.platform.architecture);
  assert.deepEqual(platforms, ['amd64', 'arm64']);
  for (const child of images) {
    const c = await getManifest(repo, child.manifest.digest, OCI.manifest);
    assert.equal(c.res.status, 200, `child ${child.platform.architecture}`);
    assert.equal(c.res.headers.get('docker-content-digest'), child.manifest.digest);
    assert.equal(c.body.toString(), child.manifestBytes.toString());
  }
  // A client that accepts no index is given the linux/amd64 image, as distribution does.
  const fallback = await getManifest(repo, 'multi', OCI.manifest);
  assert.equal(fallback.res.headers.get('docker-content-digest'), amd64.manifest.digest);

  // skopeo reports the digest of what the tag names (the index) and the
  // architecture of the config of the platform it picked.
  const native = await inspect(ref, '--override-arch', 'amd64');
  assert.equal(native.Architecture, 'amd64');
  assert.equal(native.Digest, index.digest);
  const picked = await inspect(ref, '--override-arch', 'arm64');
  assert.equal(picked.Architecture, 'arm64');
  assert.equal(picked.Digest, index.digest);
  assert.equal((await inspect(`docker://${registry.host}/${repo}@${arm64.manifest.digest}`)).Architecture, 'arm64');

  await skopeo(['copy', '--all', '--src-tls-verify=false', ref, `oci:${back}:multi`]);
  const report = await validateLayout(back);
  assert.deepEqual(report.problems, []);
  assert.equal(report.blobs, 6, 'index, two manifests, two configs, one shared layer');
  assert.equal(report.refs.get('multi')?.digest, index.digest);
});

test('skopeo delete by digest makes the manifest unknown', { timeout: TOOL_TIMEOUT_MS * 4 }, async () => {
  const repo = randomRepo();
  const src = join(work, `${repo.replace('/', '-')}-src`);
  const image = await writeImageLayout(src, { tag: 'doomed', label: repo });
  await skopeo(['copy', '--dest-tls-verify=false', `oci:${src}:doomed`, `docker://${registry.host}/${repo}:doomed`]);
  const byDigest = `docker://${registry.host}/${repo}@${image.manifest.digest}`;
  assert.equal((await inspect(byDigest)).Digest, image.manifest.digest);

  await skopeo(['delete', '--tls-verify=false', byDigest]);

  await assert.rejects(inspect(byDigest), /manifest unknown/i);
  // Deleting by digest also drops the tags that pointed at it.
  await assert.rejects(inspect(`docker://${registry.host}/${repo}:doomed`), /manifest unknown/i);
  assert.equal((await getManifest(repo, image.manifest.digest, OCI.manifest, 'HEAD')).res.status, 404);
});

test('skopeo list-tags lists every tag pushed', { timeout: TOOL_TIMEOUT_MS * 5 }, async () => {
  const repo = randomRepo();
  const src = join(work, `${repo.replace('/', '-')}-src`);
  await writeImageLayout(src, { tag: 'v1', label: repo });
  const tags = ['v1', 'v1.1', 'latest'];
  for (const tag of tags) {
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${src}:v1`, `docker://${registry.host}/${repo}:${tag}`]);
  }
  const listed = JSON.parse((await skopeo(['list-tags', '--tls-verify=false', `docker://${registry.host}/${repo}`])).toString()) as { Repository: string; Tags: string[] };
  assert.equal(listed.Repository, `${registry.host}/${repo}`);
  assert.deepEqual([...listed.Tags].sort(), [...tags].sort());
});

test('the store is sound after everything skopeo did', async () => {
  await registry.assertIntegrity();
});
