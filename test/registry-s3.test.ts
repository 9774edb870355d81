import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { S3Driver, checkIntegrity } from '../storage/index.js';
import { http, makeImage, pushBlob, putManifest, sendAndHangUp, sha256 } from './harness/http.js';
import { validateLayout, writeImageLayout } from './harness/oci-layout.js';
import { randomBucket, sharedRadosgw, type S3Server } from './harness/radosgw.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';

/*
 * `slipway registry --storage s3://…` on a real radosgw, driven over HTTP and by
 * skopeo: pushes (monolithic, chunked), pulls, a wrong digest that must leave
 * nothing behind, redirects to presigned URLs, and the start-up checks.
 */
const SKOPEO = '/usr/bin/skopeo';
const TOOL_TIMEOUT_MS = 120_000;
const PREFIX = 'e2e';

let s3: S3Server;
let release: () => Promise<void>;
let bucket: string;
let work: string;
let proxied: RegistryProcess;
let redirecting: RegistryProcess;
let driver: S3Driver;

const repoName = (): string => `s3e2e/r${randomBytes(4).toString('hex')}`;
const storageUrl = (query = ''): string => `s3://${new URL(s3.endpoint).host}/${bucket}?tls=false&region=us-east-1&prefix=${PREFIX}${query}`;
const credentials = (): NodeJS.ProcessEnv => ({ SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey });

before(async () => {
  ({ s3, release } = await sharedRadosgw());
  bucket = randomBucket('e2e');
  await s3.createBucket(bucket);
  work = await tempDir('slipway-s3-e2e-');
  proxied = await startRegistryProcess({ args: ['--storage', storageUrl()], env: credentials() });
  redirecting = await startRegistryProcess({ args: ['--storage', storageUrl('&redirect=true')], env: credentials() });
  driver = new S3Driver({ endpoint: s3.endpoint, bucket, prefix: PREFIX, accessKey: s3.accessKey, secretKey: s3.secretKey });
});

after(async () => {
  await proxied?.cleanup();
  await redirecting?.cleanup();
  if (work) await rm(work, { recursive: true, force: true });
  if (bucket) {
    await s3.deleteBucket(bucket);
    assert.equal(await s3.client().bucketExists(bucket), false);
  }
  await release?.();
});

async function incompleteUploads(): Promise<string[]> {
  const keys: string[] = [];
  for await (const u of s3.client().listIncompleteUploads(bucket, '', true)) keys.push((u as { key: string }).key);
  return keys;
}

function skopeo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(SKOPEO, ['--insecure-policy', ...args], { timeout: TOOL_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err) reject(new Error(`skopeo ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

describe('registry on S3', () => {
  test('the registry says where it stores', () => {
    assert.match(proxied.output(), new RegExp(`storage s3 ${s3.endpoint}/${bucket}/${PREFIX}/`));
  });

  test('monolithic and chunked pushes, a manifest, and pulls', async () => {
    const repo = repoName();
    const mono = randomBytes(3 * 1024 * 1024);
    const monoDigest = await pushBlob(proxied.url, repo, mono);
    const chunked = randomBytes(20 * 1024 * 1024 + 11);
    const chunkedDigest = sha256(chunked);
    const post = await http(`${proxied.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    let loc = `${proxied.url}${post.headers.get('location')}`;
    const cuts = [0, 1000, 6 * 1024 * 1024, 6 * 1024 * 1024 + 7, chunked.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const [from, to] = [cuts[i]!, cuts[i + 1]!];
      const r = await http(loc, { method: 'PATCH', body: chunked.subarray(from, to), headers: { 'Content-Range': `${from}-${to - 1}` } });
      assert.equal(r.status, 202, r.body.toString());
      assert.equal(r.headers.get('range'), `0-${to - 1}`);
      loc = `${proxied.url}${r.headers.get('location')}`;
    }
    const put = await http(`${loc}${loc.includes('?') ? '&' : '?'}digest=${chunkedDigest}`, { method: 'PUT' });
    assert.equal(put.status, 201, put.body.toString());

    const manifest = await makeImage(proxied.url, repo, { extra: { layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: chunkedDigest, size: chunked.length }] } });
    const mput = await putManifest(proxied.url, repo, 'v1', manifest);
    assert.equal(mput.status, 201, mput.body.toString());

    const got = await http(`${proxied.url}/v2/${repo}/manifests/v1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(got.status, 200);
    assert.equal(got.headers.get('docker-content-digest'), mput.headers.get('docker-content-digest'));
    assert.ok((await http(`${proxied.url}/v2/${repo}/blobs/${monoDigest}`)).body.equals(mono));
    assert.ok((await http(`${proxied.url}/v2/${repo}/blobs/${chunkedDigest}`)).body.equals(chunked));
    const part = await http(`${proxied.url}/v2/${repo}/blobs/${chunkedDigest}`, { headers: { Range: 'bytes=999-6291460' } });
    assert.equal(part.status, 206);
    assert.ok(part.body.equals(chunked.subarray(999, 6291461)));
    assert.deepEqual(await driver.list(`/v2/repositories/${repo}/_uploads`), []);
  });

  test('one upload across two instances on the bucket: POST on A, PATCH on B, PATCH on A, PUT on B', async () => {
    const [a, b] = [proxied, redirecting];
    const repo = repoName();
    const bytes = randomBytes(7 * 1024 * 1024 + 3);
    const cut = 6 * 1024 * 1024;
    const post = await http(`${a.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const path = post.headers.get('location')!;
    const p1 = await http(`${b.url}${path}`, { method: 'PATCH', body: bytes.subarray(0, cut), headers: { 'Content-Range': `0-${cut - 1}` } });
    assert.equal(p1.status, 202, p1.body.toString());
    const p2 = await http(`${a.url}${path}`, { method: 'PATCH', body: bytes.subarray(cut), headers: { 'Content-Range': `${cut}-${bytes.length - 1}` } });
    assert.equal(p2.status, 202, p2.body.toString());
    const put = await http(`${b.url}${path}?digest=${sha256(bytes)}`, { method: 'PUT' });
    assert.equal(put.status, 201, put.body.toString());
    assert.ok((await http(`${a.url}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));
  });

  test('a PUT with the wrong digest leaves no blob, no session and no incomplete multipart upload', async () => {
    const repo = repoName();
    const bytes = randomBytes(40 * 1024 * 1024);
    const wrong = sha256('something else');
    const post = await http(`${proxied.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const loc = `${proxied.url}${post.headers.get('location')}`;
    const patch = await http(loc, { method: 'PATCH', body: bytes });
    assert.equal(patch.status, 202);
    const put = await http(`${loc}?digest=${wrong}`, { method: 'PUT' });
    assert.equal(put.status, 400);
    assert.equal(put.code, 'DIGEST_INVALID');
    for (const d of [wrong, sha256(bytes)]) assert.equal((await http(`${proxied.url}/v2/${repo}/blobs/${d}`, { method: 'HEAD' })).status, 404);
    const left: string[] = [];
    for await (const f of driver.walk('/v2')) if (f.path.includes(repo) || f.path.includes(sha256(bytes).slice(7))) left.push(f.path);
    assert.deepEqual(left, []);
    assert.deepEqual(await incompleteUploads(), []);
  });

  test('a client hanging up mid-PATCH leaves no incomplete multipart upload; the session resumes where it was', async () => {
    const repo = repoName();
    const bytes = randomBytes(40 * 1024 * 1024);
    const post = await http(`${proxied.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const path = post.headers.get('location')!;
    const head = `PATCH ${path} HTTP/1.1\nHost: ${proxied.host}\nContent-Type: application/octet-stream\nContent-Length: ${bytes.length}\n`;
    await sendAndHangUp(proxied.url, head, bytes.subarray(0, 36 * 1024 * 1024));
    let pending = await incompleteUploads();
    for (let i = 0; i < 50 && pending.length; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pending = await incompleteUploads();
    }
    assert.deepEqual(pending, []);
    const status = await http(`${proxied.url}${path}`);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), '0-0', 'nothing of the cut-off PATCH counts');
    const put = await http(`${proxied.url}${path}?digest=${sha256(bytes)}`, { method: 'PUT', body: bytes });
    assert.equal(put.status, 201, put.body.toString());
  });

  test('skopeo copies an image to the S3-backed registry and back', { timeout: TOOL_TIMEOUT_MS * 3 }, async () => {
    const repo = repoName();
    const src = join(work, 'src');
    const back = join(work, 'back');
    const image = await writeImageLayout(src, { tag: 'v1', label: repo });
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${src}:v1`, `docker://${proxied.host}/${repo}:v1`]);
    await skopeo(['copy', '--src-tls-verify=false', `docker://${proxied.host}/${repo}:v1`, `oci:${back}:v1`]);
    const report = await validateLayout(back);
    assert.deepEqual(report.problems, []);
    assert.equal(report.refs.get('v1')?.digest, image.manifest.digest);
  });

  test('redirect=true answers blob GETs with 307 to a presigned URL, which skopeo follows', { timeout: TOOL_TIMEOUT_MS * 3 }, async () => {
    const repo = repoName();
    const bytes = randomBytes(100_000);
    const digest = await pushBlob(redirecting.url, repo, bytes);
    const r = await http(`${redirecting.url}/v2/${repo}/blobs/${digest}`);
    assert.equal(r.status, 307);
    const location = r.headers.get('location') ?? '';
    assert.ok(location.startsWith(`${s3.endpoint}/${bucket}/${PREFIX}/v2/blobs/sha256/`), location);
    assert.match(location, /X-Amz-Signature=/);
    assert.ok(Buffer.from(await (await fetch(location)).arrayBuffer()).equals(bytes));

    const src = join(work, 'rsrc');
    const back = join(work, 'rback');
    const image = await writeImageLayout(src, { tag: 'r1', label: repo });
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${src}:r1`, `docker://${redirecting.host}/${repo}:r1`]);
    await skopeo(['copy', '--src-tls-verify=false', `docker://${redirecting.host}/${repo}:r1`, `oci:${back}:r1`]);
    const report = await validateLayout(back);
    assert.deepEqual(report.problems, []);
    assert.equal(report.refs.get('r1')?.digest, image.manifest.digest);
  });

  test('storage given in the YAML file wins over --data', async () => {
    const file = join(work, 'registry.yaml');
    const yaml = `storage:\n  s3:\n    endpoint: ${s3.endpoint}\n    bucket: ${bucket}\n    prefix: ${PREFIX}\n    accessKey: ${s3.accessKey}\n    secretKey: ${s3.secretKey}\n`;
    await writeFile(file, yaml);
    const reg = await startRegistryProcess({ args: ['--config', file] });
    try {
      const repo = repoName();
      const digest = await pushBlob(reg.url, repo, Buffer.from('via yaml'));
      assert.ok(await driver.stat(`/v2/repositories/${repo}/_layers/${digest.replace(':', '/')}/link`));
      assert.ok((await http(`${proxied.url}/v2/${repo}/blobs/${digest}`)).body.equals(Buffer.from('via yaml')), 'another instance on the bucket sees it');
    } finally {
      await reg.cleanup();
    }
  });

  test('every blob in the bucket matches its digest', async () => {
    assert.deepEqual((await checkIntegrity(driver)).problems, []);
  });
});

describe('start-up checks', () => {
  test('S3 unreachable: the registry exits non-zero at once, naming the endpoint', async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const started = Date.now();
    await assert.rejects(
      startRegistryProcess({ data: join(work, 'unused'), args: ['--storage', `s3://127.0.0.1:${port}/slipway-unreachable?tls=false`], env: credentials() }),
      new RegExp(`exited with 1[\\s\\S]*cannot reach S3 at http://127\\.0\\.0\\.1:${port}`),
    );
    assert.ok(Date.now() - started < 10_000);
  });

  test('a missing bucket and refused credentials are named as such', async () => {
    const host = new URL(s3.endpoint).host;
    await assert.rejects(
      startRegistryProcess({ data: join(work, 'unused'), args: ['--storage', `s3://${host}/no-such-bucket-${randomBytes(3).toString('hex')}?tls=false`], env: credentials() }),
      /bucket does not exist; create it/,
    );
    await assert.rejects(
      startRegistryProcess({ data: join(work, 'unused'), args: ['--storage', `s3://${host}/${bucket}?tls=false`], env: { AWS_ACCESS_KEY_ID: s3.accessKey, AWS_SECRET_ACCESS_KEY: 'wrong' } }),
      /credentials refused/,
    );
  });
});
