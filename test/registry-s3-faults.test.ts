import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { S3Driver, checkIntegrity, createStore, purgeUploads } from '../storage/index.js';
import { http, makeImage, pushBlob, putManifest, sha256, type Reply } from './harness/http.js';
import { randomBucket, startRadosgw, type LocalS3Server } from './harness/radosgw.js';
import { startRegistryProcess, type RegistryProcess } from './harness/registry.js';
import { eventually, slowPatch } from './harness/slow-patch.js';

/*
 * Faults of S3 while `slipway registry` runs, on a radosgw of this file's own
 * (the shared one must not be stopped): the gateway hanging (SIGSTOP), gone
 * (SIGKILL, then started again on the same port and data), refusing the
 * credentials, its bucket deleted; and a registry instance SIGKILLed mid-upload.
 * Requests that need storage must answer 503 with Retry-After within a bounded
 * time, recover by themselves, and leave no partial blob visible.
 */
const MiB = 1024 * 1024;
const PREFIX = 'faults';
/** The registries give up on an S3 request after this many seconds without progress… */
const IDLE_S = 2;
/** …so every answer during an outage must come within this. */
const BOUND_MS = IDLE_S * 1000 + 3000;
const FIRST = 6 * MiB;

let s3: LocalS3Server;
let bucket: string;
let a: RegistryProcess;
let b: RegistryProcess;
let driver: S3Driver;

const repoName = (): string => `faults/r${randomBytes(4).toString('hex')}`;
const storageUrl = (bkt = bucket): string => `s3://${new URL(s3.endpoint).host}/${bkt}?tls=false&prefix=${PREFIX}&timeout=${IDLE_S}&connecttimeout=1`;
const credentials = (): NodeJS.ProcessEnv => ({ SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey });
const startOn = (bkt = bucket) => startRegistryProcess({ args: ['--storage', storageUrl(bkt)], env: credentials() });

before(async () => {
  s3 = await startRadosgw();
  bucket = randomBucket('faults');
  await s3.createBucket(bucket);
  [a, b] = [await startOn(), await startOn()];
  driver = new S3Driver({ endpoint: s3.endpoint, bucket, prefix: PREFIX, accessKey: s3.accessKey, secretKey: s3.secretKey, idleTimeout: 5000 });
});

after(async () => {
  await a?.cleanup();
  await b?.cleanup();
  await s3?.stop();
});

async function timed(url: string, init: Parameters<typeof http>[1] = {}): Promise<Reply & { ms: number }> {
  const t0 = Date.now();
  const r = await http(url, init);
  return Object.assign(r, { ms: Date.now() - t0 });
}

function assertUnavailable(r: Reply & { ms: number }, what: string, message?: RegExp): void {
  assert.equal(r.status, 503, `${what}: ${r.status} ${r.body.toString()}`);
  assert.ok(r.ms < BOUND_MS, `${what} took ${r.ms} ms`);
  assert.match(r.headers.get('retry-after') ?? '', /^\d+$/, `${what}: Retry-After`);
  if (r.body.length === 0) return; // HEAD
  assert.equal(r.code, 'UNAVAILABLE', what);
  const text = r.json<{ errors: { message: string }[] }>().errors[0]?.message ?? '';
  assert.ok(text.includes(s3.endpoint), `${what}: the message names the endpoint: ${text}`);
  if (message) assert.match(text, message, what);
}

async function incompleteUploads(): Promise<string[]> {
  const keys: string[] = [];
  for await (const u of s3.client().listIncompleteUploads(bucket, `${PREFIX}/`, true)) keys.push((u as { key: string }).key);
  return keys;
}

/** Pushes a small image under repo:tag; returns the manifest's digest. */
async function pushImage(base: string, repo: string, tag: string): Promise<string> {
  const put = await putManifest(base, repo, tag, await makeImage(base, repo));
  assert.equal(put.status, 201, put.body.toString());
  return put.headers.get('docker-content-digest')!;
}

async function assertPushAndPull(repo: string): Promise<void> {
  const digest = await pushImage(a.url, repo, 'after');
  const got = await http(`${b.url}/v2/${repo}/manifests/after`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
  assert.equal(got.status, 200);
  assert.equal(got.headers.get('docker-content-digest'), digest);
  assert.deepEqual((await checkIntegrity(driver)).problems, []);
}

/** POST on `reg` and a first PATCH of FIRST bytes; returns the session path. */
async function startSession(reg: RegistryProcess, repo: string, bytes: Buffer): Promise<string> {
  const post = await http(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 202);
  const patch = await http(`${reg.url}${post.headers.get('location')}`, { method: 'PATCH', body: bytes.subarray(0, FIRST), headers: { 'Content-Range': `0-${FIRST - 1}` } });
  assert.equal(patch.status, 202, patch.body.toString());
  return patch.headers.get('location')!;
}

/** Streams the rest of `bytes` to `reg`; once S3 holds part of it (an incomplete multipart upload), runs `fault` and lets the stream go on. */
async function patchUntilFault(reg: RegistryProcess, path: string, bytes: Buffer, fault: () => Promise<void>) {
  let struck = false;
  const outcome = await slowPatch(reg.url, path, bytes.subarray(FIRST), {
    start: FIRST,
    hold: (sent) => {
      if (struck || sent < 20 * MiB) return undefined;
      struck = true;
      return eventually('a part of the PATCH in S3', async () => ((await incompleteUploads()).length > 0 ? true : undefined), 10_000).then(fault);
    },
  });
  assert.ok(struck, 'the fault happened mid-PATCH');
  return outcome;
}

describe('registry on S3: faults while running', { timeout: 300_000 }, () => {
  test('S3 hanging (radosgw stopped): 503 + Retry-After within a bounded time, then recovers by itself', async () => {
    const repo = repoName();
    const layer = await pushBlob(a.url, repo, randomBytes(1000));
    await pushImage(a.url, repo, 'v1');
    s3.pause();
    try {
      const [manifest, blob, head, upload, base] = await Promise.all([
        timed(`${a.url}/v2/${repo}/manifests/v1`),
        timed(`${a.url}/v2/${repo}/blobs/${layer}`),
        timed(`${b.url}/v2/${repo}/blobs/${layer}`, { method: 'HEAD' }),
        timed(`${b.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' }),
        timed(`${a.url}/v2/`),
      ]);
      assertUnavailable(manifest, 'manifest GET');
      assertUnavailable(blob, 'blob GET');
      assertUnavailable(head, 'blob HEAD');
      assertUnavailable(upload, 'upload POST');
      assert.equal(base.status, 200, '/v2/ needs no storage');
      assertUnavailable(await timed(`${a.url}/v2/${repo}/manifests/v1`), 'manifest GET, again');
    } finally {
      s3.resume();
    }
    await eventually('manifest GET answering 200 again', async () => ((await http(`${a.url}/v2/${repo}/manifests/v1`)).status === 200 ? true : undefined), 15_000);
    await assertPushAndPull(repo);
  });

  test('a client that stops reading a blob for longer than the S3 timeout still gets every byte', async () => {
    const repo = repoName();
    const bytes = randomBytes(24 * MiB);
    const digest = await pushBlob(a.url, repo, bytes);
    const res = await fetch(`${a.url}/v2/${repo}/blobs/${digest}`);
    const reader = res.body!.getReader();
    const first = await reader.read();
    await new Promise((r) => setTimeout(r, IDLE_S * 1000 + 1500));
    const chunks = [Buffer.from(first.value!)];
    for (let r = await reader.read(); !r.done; r = await reader.read()) chunks.push(Buffer.from(r.value));
    assert.equal(sha256(Buffer.concat(chunks)), digest);
  });

  // Before any test kills radosgw: radosgw-admin's changes wait ~30 s for a killed gateway's watch to time out.
  test('credentials refused while running: 503 saying so; recovers when the key works again', async () => {
    const repo = repoName();
    await pushImage(a.url, repo, 'v1');
    await s3.admin(['user', 'suspend', '--uid', 'slipway']);
    try {
      const r = await eventually('a refused request', async () => {
        const got = await timed(`${a.url}/v2/${repo}/manifests/v1`);
        return got.status === 503 ? got : undefined;
      }, 15_000);
      assertUnavailable(r, 'manifest GET', /credentials refused/);
      assertUnavailable(await timed(`${b.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' }), 'upload POST', /credentials refused/);
    } finally {
      await s3.admin(['user', 'enable', '--uid', 'slipway']);
    }
    await eventually('manifest GET answering 200 again', async () => ((await http(`${a.url}/v2/${repo}/manifests/v1`)).status === 200 ? true : undefined), 15_000);
    await assertPushAndPull(repo);
  });

  test('the bucket deleted while running: 503 saying so; recovers when it is back', async () => {
    const other = randomBucket('gone');
    await s3.createBucket(other);
    const c = await startOn(other);
    try {
      const repo = repoName();
      await pushImage(c.url, repo, 'v1');
      await s3.deleteBucket(other);
      assertUnavailable(await timed(`${c.url}/v2/${repo}/manifests/v1`), 'manifest GET', /bucket does not exist/);
      assertUnavailable(await timed(`${c.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' }), 'upload POST', /bucket does not exist/);
      await s3.createBucket(other);
      assert.equal((await http(`${c.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' })).status, 202);
    } finally {
      await c.cleanup();
      await s3.deleteBucket(other);
    }
  });
  test('S3 down (radosgw killed) mid-PATCH: 503s, then the upload resumes where storage has it; nothing partial visible', async () => {
    const repo = repoName();
    const bytes = randomBytes(FIRST + 24 * MiB);
    const path = await startSession(a, repo, bytes);
    let killedAt = 0;
    const cut = await patchUntilFault(a, path, bytes, async () => {
      await s3.stopGateway();
      killedAt = Date.now();
    });
    try {
      assert.ok(cut.error || cut.status === 503, `the PATCH fails: ${cut.status} ${cut.body ?? ''}`);
      assert.ok(Date.now() - killedAt < BOUND_MS, `the PATCH ended ${Date.now() - killedAt} ms after S3 went down`);
      assertUnavailable(await timed(`${a.url}/v2/${repo}/blobs/${sha256(bytes)}`), 'blob GET', /cannot reach S3/);
      assertUnavailable(await timed(`${b.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' }), 'upload POST', /cannot reach S3/);
    } finally {
      await s3.startGateway();
    }
    const status = await eventually('upload status answering again', async () => {
      const r = await http(`${b.url}${path}`);
      return r.status === 204 ? r : undefined;
    }, 15_000);
    assert.equal(status.headers.get('range'), `0-${FIRST - 1}`, 'only the PATCH that completed counts');
    assert.equal((await http(`${a.url}/v2/${repo}/blobs/${sha256(bytes)}`, { method: 'HEAD' })).status, 404, 'no partial blob');
    const rest = await http(`${b.url}${path}`, { method: 'PATCH', body: bytes.subarray(FIRST), headers: { 'Content-Range': `${FIRST}-${bytes.length - 1}` } });
    assert.equal(rest.status, 202, rest.body.toString());
    const put = await http(`${a.url}${path}?digest=${sha256(bytes)}`, { method: 'PUT' });
    assert.equal(put.status, 201, put.body.toString());
    assert.ok((await http(`${b.url}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));
    assert.deepEqual(await incompleteUploads(), [], 'the cut-off part upload was aborted with the session');
    await assertPushAndPull(repo);
  });

  test('a registry SIGKILLed mid-PATCH: the upload resumes on another instance; an abandoned one is cleaned by purgeUploads', async () => {
    const repo = repoName();
    const bytes = randomBytes(FIRST + 24 * MiB);
    const path = await startSession(a, repo, bytes);
    const cut = await patchUntilFault(a, path, bytes, () => a.kill());
    assert.ok(cut.error, 'the connection to the killed instance is cut');
    a = await startOn();
    const status = await http(`${b.url}${path}`);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), `0-${FIRST - 1}`);
    const rest = await http(`${b.url}${path}`, { method: 'PATCH', body: bytes.subarray(FIRST), headers: { 'Content-Range': `${FIRST}-${bytes.length - 1}` } });
    assert.equal(rest.status, 202, rest.body.toString());
    assert.equal((await http(`${b.url}${path}?digest=${sha256(bytes)}`, { method: 'PUT' })).status, 201);
    assert.ok((await http(`${a.url}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));

    const abandoned = await startSession(a, repo, bytes);
    await patchUntilFault(a, abandoned, bytes, () => a.kill());
    a = await startOn();
    assert.ok((await incompleteUploads()).length > 0, 'the killed instance left an incomplete multipart upload');
    assert.ok((await purgeUploads(createStore(driver), 0)) >= 1);
    assert.equal((await http(`${b.url}${abandoned}`)).status, 404, 'the abandoned session is gone');
    assert.deepEqual(await incompleteUploads(), []);
    assert.deepEqual((await checkIntegrity(driver)).problems, []);
  });

  test(
    'upload status and PATCH during an outage answer 503, not "upload unknown"',
    async () => {
      const repo = repoName();
      const post = await http(`${a.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
      const path = post.headers.get('location')!;
      await s3.stopGateway();
      try {
        assertUnavailable(await timed(`${b.url}${path}`), 'upload status', /cannot reach S3/);
        assertUnavailable(await timed(`${b.url}${path}`, { method: 'PATCH', body: Buffer.from('x') }), 'upload PATCH', /cannot reach S3/);
      } finally {
        await s3.startGateway();
      }
      await eventually('upload status answering again', async () => ((await http(`${b.url}${path}`)).status === 204 ? true : undefined), 15_000);
    },
  );

});
