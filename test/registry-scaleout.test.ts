import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { dockerOk, pushedDigest, sharedDocker, type Dockerd } from './harness/dockerd.js';
import { assertPullable, pushImage } from './harness/gc.js';
import { MT, http, sha256 } from './harness/http.js';
import { importBusybox } from './harness/images.js';
import { randomBucket, sharedRadosgw, type S3Server } from './harness/radosgw.js';
import { startRegistryProcess, type RegistryProcess } from './harness/registry.js';

/*
 * Two `slipway registry` processes on different ports over one bucket: the
 * registry keeps no state of its own, so anything done through A is seen
 * through B at once — images, upload sessions, tags, the catalog.
 */
const MANIFEST_TYPES = [MT.dockerManifest, MT.dockerList, MT.ociManifest, MT.ociIndex].join(', ');
let s3: S3Server;
let releaseS3: () => Promise<void> = async () => {};
let dockerd: Dockerd;
let releaseDocker: () => Promise<void> = async () => {};
let bucket = '';
let a: RegistryProcess;
let b: RegistryProcess;
const madeRefs = new Set<string>();
const repoName = (leaf: string): string => `scale${randomBytes(4).toString('hex')}/${leaf}`;

const docker = (args: string[]): Promise<string> => dockerOk(dockerd, args);

/** The manifest a registry serves for a reference, and every blob it names, verified by digest. */
async function assertServed(reg: RegistryProcess, repo: string, ref: string, digest: string): Promise<void> {
  const m = await http(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { Accept: MANIFEST_TYPES } });
  assert.equal(m.status, 200);
  assert.equal(sha256(m.body), digest);
  const doc = m.json<{ config: { digest: string }; layers: { digest: string }[] }>();
  for (const d of [doc.config.digest, ...doc.layers.map((l) => l.digest)]) {
    assert.equal(sha256((await http(`${reg.url}/v2/${repo}/blobs/${d}`)).body), d);
  }
}

before(async () => {
  ({ s3, release: releaseS3 } = await sharedRadosgw());
  ({ docker: dockerd, release: releaseDocker } = await sharedDocker());
  bucket = randomBucket('scale');
  await s3.createBucket(bucket);
  const args = ['--storage', `s3://${new URL(s3.endpoint).host}/${bucket}?tls=false&region=us-east-1`];
  const env = { SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey };
  [a, b] = await Promise.all([startRegistryProcess({ args, env }), startRegistryProcess({ args, env })]);
});

after(async () => {
  if (madeRefs.size) await dockerd.docker(['rmi', '--force', ...madeRefs]);
  for (const ref of madeRefs) assert.notEqual((await dockerd.docker(['image', 'inspect', ref])).code, 0, `${ref} removed`);
  await a?.cleanup();
  await b?.cleanup();
  if (bucket) await s3.deleteBucket(bucket);
  await releaseDocker();
  await releaseS3();
});

describe('two registry processes over one bucket', () => {
  test('docker push to A, docker pull from B', { timeout: 180_000 }, async () => {
    const repo = repoName('busybox');
    const [toA, fromB] = [`${a.host}/${repo}:v1`, `${b.host}/${repo}:v1`];
    const id = await importBusybox(dockerd, toA, { marker: randomBytes(8).toString('hex') });
    madeRefs.add(toA);
    const digest = pushedDigest(await docker(['push', toA]));
    madeRefs.add(fromB);
    await docker(['pull', fromB]);
    assert.equal((await docker(['image', 'inspect', '--format', '{{.Id}}', fromB])).trim(), id);
    await assertServed(b, repo, 'v1', digest);
  });

  test('one upload: POST on A, PATCH on B, PUT on A', async () => {
    const repo = repoName('upload');
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const post = await http(`${a.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    const path = post.headers.get('location')!;
    const patch = await http(`${b.url}${path}`, { method: 'PATCH', body: bytes, headers: { 'Content-Type': 'application/octet-stream' } });
    assert.equal(patch.status, 202, patch.body.toString());
    assert.equal(patch.headers.get('range'), `0-${bytes.length - 1}`);
    const put = await http(`${a.url}${patch.headers.get('location')}${patch.headers.get('location')!.includes('?') ? '&' : '?'}digest=${sha256(bytes)}`, { method: 'PUT' });
    assert.equal(put.status, 201, put.body.toString());
    for (const reg of [a, b]) assert.ok((await http(`${reg.url}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));
  });

  test('the same image pushed to A and B at the same time: both succeed, both pull intact', { timeout: 180_000 }, async () => {
    const repo = repoName('twice');
    const [toA, toB] = [`${a.host}/${repo}:same`, `${b.host}/${repo}:same`];
    await importBusybox(dockerd, toA, { marker: randomBytes(8).toString('hex') });
    madeRefs.add(toA);
    await docker(['tag', toA, toB]);
    madeRefs.add(toB);
    const [outA, outB] = await Promise.all([docker(['push', toA]), docker(['push', toB])]);
    const digest = pushedDigest(outA);
    assert.equal(pushedDigest(outB), digest);
    await assertServed(a, repo, 'same', digest);
    await assertServed(b, repo, 'same', digest);
    await docker(['rmi', toA, toB]);
    await docker(['pull', toA]);
  });

  test('a tag moved on A is served by B at once', async () => {
    const repo = repoName('moving');
    for (let i = 0; i < 10; i++) {
      const img = await pushImage(a.url, repo, 'latest');
      const got = await http(`${b.url}/v2/${repo}/manifests/latest`, { headers: { Accept: MT.ociManifest } });
      assert.equal(got.headers.get('docker-content-digest'), img.digest, `move ${i}: B serves the new digest`);
      if (i === 9) await assertPullable(b.url, img);
    }
  });

  test('_catalog on B lists a repository pushed via A, and pages through the index', async () => {
    const prefix = `scale${randomBytes(4).toString('hex')}`;
    const names = [`${prefix}/a`, `${prefix}/a-b`, `${prefix}/a/b`, `${prefix}/a.c`];
    for (const name of names) await pushImage(a.url, name, 'v1');
    const all = (await http(`${b.url}/v2/_catalog?n=1000`)).json<{ repositories: string[] }>().repositories;
    for (const name of names) assert.ok(all.includes(name), `${name} in B's catalog`);
    assert.deepEqual(all, [...all].sort(), 'in lexical order');
    const pages: string[] = [];
    let next: string | null = `/v2/_catalog?n=1&last=${encodeURIComponent(prefix)}`;
    while (next && pages.length < names.length) {
      const r = await http(`${b.url}${next}`);
      pages.push(...r.json<{ repositories: string[] }>().repositories);
      next = /<([^>]+)>; rel="next"/.exec(r.headers.get('link') ?? '')?.[1] ?? null;
    }
    assert.deepEqual(pages, [...names].sort());
  });
});
