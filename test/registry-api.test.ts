import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, before, describe, test } from 'node:test';
import { startRegistryProcess, type RegistryProcess } from './harness/registry.js';
import { MT, http, makeImage, pushBlob, putManifest, sha256 } from './harness/http.js';

let reg: RegistryProcess;
let base: string;
const repoName = (prefix = 'api') => `${prefix}/r${randomBytes(5).toString('hex')}`;

before(async () => {
  reg = await startRegistryProcess();
  base = reg.url;
});
afterEach(async () => reg.assertIntegrity());
after(async () => reg.cleanup());

describe('base and blobs', () => {
  test('GET /v2/ answers with the API version header', async () => {
    const r = await http(`${base}/v2/`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('docker-distribution-api-version'), 'registry/2.0');
  });

  test('monolithic push, HEAD, GET, ranges, DELETE', async () => {
    const repo = repoName();
    const bytes = randomBytes(70_000);
    const digest = sha256(bytes);
    const post = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: bytes });
    assert.equal(post.status, 201);
    assert.equal(post.headers.get('location'), `/v2/${repo}/blobs/${digest}`);
    assert.equal(post.headers.get('docker-content-digest'), digest);

    const head = await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(bytes.length));
    assert.equal(head.headers.get('docker-content-digest'), digest);

    const get = await http(`${base}/v2/${repo}/blobs/${digest}`);
    assert.ok(get.body.equals(bytes));

    const part = await http(`${base}/v2/${repo}/blobs/${digest}`, { headers: { Range: 'bytes=100-199' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 100-199/${bytes.length}`);
    assert.ok(part.body.equals(bytes.subarray(100, 200)));
    const tail = await http(`${base}/v2/${repo}/blobs/${digest}`, { headers: { Range: 'bytes=-10' } });
    assert.ok(tail.body.equals(bytes.subarray(bytes.length - 10)));

    const beyond = await http(`${base}/v2/${repo}/blobs/${digest}`, { headers: { Range: `bytes=${bytes.length}-` } });
    assert.equal(beyond.status, 416);
    assert.equal(beyond.headers.get('content-range'), `bytes */${bytes.length}`);

    const other = await http(`${base}/v2/${repoName()}/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(other.status, 404, 'a blob is visible only in repositories that link it');

    assert.equal((await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'DELETE' })).status, 202);
    const gone = await http(`${base}/v2/${repo}/blobs/${digest}`);
    assert.equal(gone.status, 404);
    assert.equal(gone.code, 'BLOB_UNKNOWN');
  });

  test('chunked session: PATCH with Content-Range, status, streamed PATCH, PUT with a last chunk', async () => {
    const repo = repoName();
    const bytes = randomBytes(300_000);
    const digest = sha256(bytes);
    const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    const uuid = post.headers.get('docker-upload-uuid');
    assert.ok(uuid);
    const loc = `${base}${post.headers.get('location')}`;

    const p1 = await http(loc, { method: 'PATCH', body: bytes.subarray(0, 100_000), headers: { 'Content-Range': '0-99999' } });
    assert.equal(p1.status, 202);
    assert.equal(p1.headers.get('range'), '0-99999');

    const status = await http(loc);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), '0-99999');
    assert.equal(status.headers.get('docker-upload-uuid'), uuid);

    const stream = new ReadableStream({
      start(c) {
        c.enqueue(bytes.subarray(100_000, 150_000));
        c.enqueue(bytes.subarray(150_000, 200_000));
        c.close();
      },
    });
    const p2 = await http(loc, { method: 'PATCH', body: stream, duplex: 'half' });
    assert.equal(p2.status, 202, 'a streamed chunk without Content-Length is appended');
    assert.equal(p2.headers.get('range'), '0-199999');

    const put = await http(`${loc}?digest=${digest}`, {
      method: 'PUT',
      body: bytes.subarray(200_000),
      headers: { 'Content-Range': `200000-${bytes.length - 1}` },
    });
    assert.equal(put.status, 201);
    assert.equal(put.headers.get('docker-content-digest'), digest);
    assert.ok((await http(`${base}/v2/${repo}/blobs/${digest}`)).body.equals(bytes));
  });

  test('docker-style flow: one PATCH with the whole body, then an empty PUT', async () => {
    const repo = repoName();
    const bytes = randomBytes(1024 * 1024);
    const digest = sha256(bytes);
    const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const loc = `${base}${post.headers.get('location')}`;
    assert.equal((await http(loc, { method: 'PATCH', body: bytes })).status, 202);
    const put = await http(`${loc}?digest=${digest}`, { method: 'PUT' });
    assert.equal(put.status, 201);
  });

  test('sha512 blobs are accepted', async () => {
    const repo = repoName();
    const bytes = randomBytes(1000);
    const { createHash } = await import('node:crypto');
    const digest = `sha512:${createHash('sha512').update(bytes).digest('hex')}`;
    assert.equal((await http(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: bytes })).status, 201);
    assert.ok((await http(`${base}/v2/${repo}/blobs/${digest}`)).body.equals(bytes));
  });

  test('cross-repository mount: 201 when from has it, a new session (202) otherwise', async () => {
    const from = repoName();
    const to = repoName();
    const digest = await pushBlob(base, from, randomBytes(2000));
    const mounted = await http(`${base}/v2/${to}/blobs/uploads/?mount=${digest}&from=${from}`, { method: 'POST' });
    assert.equal(mounted.status, 201);
    assert.equal(mounted.headers.get('location'), `/v2/${to}/blobs/${digest}`);
    assert.equal((await http(`${base}/v2/${to}/blobs/${digest}`, { method: 'HEAD' })).status, 200);
    const fallback = await http(`${base}/v2/${to}/blobs/uploads/?mount=${digest}&from=${repoName()}`, { method: 'POST' });
    assert.equal(fallback.status, 202);
    assert.match(fallback.headers.get('location') ?? '', new RegExp(`^/v2/${to}/blobs/uploads/`));
  });

  test('DELETE cancels a session', async () => {
    const repo = repoName();
    const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const loc = `${base}${post.headers.get('location')}`;
    assert.equal((await http(loc, { method: 'DELETE' })).status, 204);
    const after = await http(loc);
    assert.equal(after.status, 404);
    assert.equal(after.code, 'BLOB_UPLOAD_UNKNOWN');
  });
});

describe('manifests', () => {
  for (const docker of [false, true]) {
    test(`${docker ? 'docker schema2' : 'OCI'} manifest: PUT by tag, GET/HEAD by tag and digest, byte-exact`, async () => {
      const repo = repoName();
      const manifest = await makeImage(base, repo, { docker });
      const bytes = Buffer.from(JSON.stringify(manifest, null, 3)); // unusual formatting must survive
      const digest = sha256(bytes);
      const put = await putManifest(base, repo, 'v1', bytes, manifest.mediaType as string);
      assert.equal(put.status, 201);
      assert.equal(put.headers.get('docker-content-digest'), digest);
      assert.equal(put.headers.get('location'), `/v2/${repo}/manifests/${digest}`);
      for (const ref of ['v1', digest]) {
        const get = await http(`${base}/v2/${repo}/manifests/${ref}`, { headers: { Accept: manifest.mediaType as string } });
        assert.equal(get.status, 200);
        assert.ok(get.body.equals(bytes));
        assert.equal(get.headers.get('content-type'), manifest.mediaType);
        assert.equal(get.headers.get('docker-content-digest'), digest);
        const head = await http(`${base}/v2/${repo}/manifests/${ref}`, { method: 'HEAD' });
        assert.equal(head.status, 200);
        assert.equal(head.headers.get('content-length'), String(bytes.length));
      }
    });
  }

  test('image index and manifest list: children must exist; Accept negotiation', async () => {
    const repo = repoName();
    const amd = await makeImage(base, repo, { arch: 'amd64' });
    const arm = await makeImage(base, repo, { arch: 'arm64' });
    const amdPut = await putManifest(base, repo, 'amd64', amd);
    const armPut = await putManifest(base, repo, 'arm64', arm);
    const child = (r: typeof amdPut, arch: string, mt: string) => ({
      mediaType: mt,
      digest: r.headers.get('docker-content-digest'),
      size: Buffer.byteLength(JSON.stringify(arch === 'amd64' ? amd : arm)),
      platform: { os: 'linux', architecture: arch },
    });
    const index = { schemaVersion: 2, mediaType: MT.ociIndex, manifests: [child(amdPut, 'amd64', MT.ociManifest), child(armPut, 'arm64', MT.ociManifest)] };
    const put = await putManifest(base, repo, 'multi', index);
    assert.equal(put.status, 201);
    const get = await http(`${base}/v2/${repo}/manifests/multi`, { headers: { Accept: `${MT.ociIndex}, ${MT.ociManifest}` } });
    assert.equal(get.headers.get('content-type'), MT.ociIndex);
    assert.equal(get.json<{ manifests: unknown[] }>().manifests.length, 2);
    const onlyImage = await http(`${base}/v2/${repo}/manifests/multi`, { headers: { Accept: MT.ociManifest } });
    assert.equal(onlyImage.status, 200);
    assert.equal(onlyImage.headers.get('docker-content-digest'), amdPut.headers.get('docker-content-digest'), 'a client without index support gets linux/amd64');
    const notAccepted = await http(`${base}/v2/${repo}/manifests/amd64`, { headers: { Accept: MT.dockerManifest } });
    assert.equal(notAccepted.status, 404);
    assert.equal(notAccepted.code, 'MANIFEST_UNKNOWN');

    const missing = { ...index, manifests: [{ ...index.manifests[0], digest: sha256('no such manifest') }] };
    const refused = await putManifest(base, repo, 'broken', missing);
    assert.equal(refused.status, 400);
    assert.equal(refused.code, 'MANIFEST_BLOB_UNKNOWN');

    const dockerAmd = await makeImage(base, repo, { docker: true });
    const dPut = await putManifest(base, repo, 'd-amd64', dockerAmd);
    const list = {
      schemaVersion: 2,
      mediaType: MT.dockerList,
      manifests: [{ mediaType: MT.dockerManifest, digest: dPut.headers.get('docker-content-digest'), size: Buffer.byteLength(JSON.stringify(dockerAmd)), platform: { os: 'linux', architecture: 'amd64' } }],
    };
    const lPut = await putManifest(base, repo, 'dlist', list);
    assert.equal(lPut.status, 201);
    const lGet = await http(`${base}/v2/${repo}/manifests/dlist`, { headers: { Accept: MT.dockerList } });
    assert.equal(lGet.headers.get('content-type'), MT.dockerList);
  });

  test('deleting a tag keeps the manifest; deleting the digest removes it and its tags', async () => {
    const repo = repoName();
    const m = await makeImage(base, repo);
    const put = await putManifest(base, repo, 'keep', m);
    const digest = put.headers.get('docker-content-digest')!;
    await putManifest(base, repo, 'other', m);
    assert.equal((await http(`${base}/v2/${repo}/manifests/keep`, { method: 'DELETE' })).status, 202);
    assert.equal((await http(`${base}/v2/${repo}/manifests/keep`)).status, 404);
    assert.equal((await http(`${base}/v2/${repo}/manifests/${digest}`)).status, 200);
    assert.deepEqual((await http(`${base}/v2/${repo}/tags/list`)).json(), { name: repo, tags: ['other'] });
    assert.equal((await http(`${base}/v2/${repo}/manifests/${digest}`, { method: 'DELETE' })).status, 202);
    const gone = await http(`${base}/v2/${repo}/manifests/${digest}`);
    assert.equal(gone.code, 'MANIFEST_UNKNOWN');
    assert.equal((await http(`${base}/v2/${repo}/manifests/other`)).status, 404);
  });

  test('tags list and catalog paginate with n/last and Link', async () => {
    const prefix = `pg${randomBytes(3).toString('hex')}`;
    const repo = `${prefix}/one`;
    const m = await makeImage(base, repo);
    for (const t of ['d', 'a', 'c', 'b']) assert.equal((await putManifest(base, repo, t, m)).status, 201);
    const p1 = await http(`${base}/v2/${repo}/tags/list?n=2`);
    assert.deepEqual(p1.json(), { name: repo, tags: ['a', 'b'] });
    assert.equal(p1.headers.get('link'), `</v2/${repo}/tags/list?n=2&last=b>; rel="next"`);
    const p2 = await http(`${base}/v2/${repo}/tags/list?n=2&last=b`);
    assert.deepEqual(p2.json(), { name: repo, tags: ['c', 'd'] });
    assert.equal(p2.headers.get('link'), null);
    const unknown = await http(`${base}/v2/${prefix}/none/tags/list`);
    assert.equal(unknown.code, 'NAME_UNKNOWN');
    const bad = await http(`${base}/v2/${repo}/tags/list?n=x`);
    assert.equal(bad.code, 'PAGINATION_NUMBER_INVALID');

    await putManifest(base, `${prefix}/two`, 't', await makeImage(base, `${prefix}/two`));
    const all = (await http(`${base}/v2/_catalog?n=1000`)).json<{ repositories: string[] }>().repositories;
    assert.ok(all.includes(`${prefix}/one`) && all.includes(`${prefix}/two`));
    const first = await http(`${base}/v2/_catalog?n=1&last=${encodeURIComponent(`${prefix}/one`)}`);
    assert.deepEqual(first.json(), { repositories: [`${prefix}/two`] });
    assert.match(first.headers.get('link') ?? 'none', /rel="next"|none/);
  });

  test('referrers: subject recorded, OCI-Subject returned, artifactType filter', async () => {
    const repo = repoName();
    const subject = await putManifest(base, repo, 'app', await makeImage(base, repo));
    const subjectDigest = subject.headers.get('docker-content-digest')!;
    const subjectDesc = { mediaType: MT.ociManifest, digest: subjectDigest, size: 1 };
    const sig = await makeImage(base, repo, { extra: { artifactType: 'application/vnd.example.sig', subject: subjectDesc } });
    const sbom = await makeImage(base, repo, { extra: { artifactType: 'application/vnd.example.sbom', subject: subjectDesc, annotations: { 'org.example': 'x' } } });
    const sigPut = await putManifest(base, repo, sha256(JSON.stringify(sig)), sig);
    assert.equal(sigPut.status, 201);
    assert.equal(sigPut.headers.get('oci-subject'), subjectDigest);
    assert.equal((await putManifest(base, repo, sha256(JSON.stringify(sbom)), sbom)).status, 201);

    const all = await http(`${base}/v2/${repo}/referrers/${subjectDigest}`);
    assert.equal(all.status, 200);
    assert.equal(all.headers.get('content-type'), MT.ociIndex);
    const idx = all.json<{ manifests: { artifactType: string; annotations?: Record<string, string> }[] }>();
    assert.deepEqual(idx.manifests.map((m) => m.artifactType).sort(), ['application/vnd.example.sbom', 'application/vnd.example.sig']);
    const filtered = await http(`${base}/v2/${repo}/referrers/${subjectDigest}?artifactType=application/vnd.example.sbom`);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    const fm = filtered.json<{ manifests: { annotations?: Record<string, string> }[] }>().manifests;
    assert.equal(fm.length, 1);
    assert.deepEqual(fm[0]!.annotations, { 'org.example': 'x' });
    const none = await http(`${base}/v2/${repo}/referrers/${sha256('nothing refers to this')}`);
    assert.equal(none.status, 200);
    assert.deepEqual(none.json<{ manifests: unknown[] }>().manifests, []);
  });
});
