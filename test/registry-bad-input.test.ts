import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { startRegistryProcess, type RegistryProcess } from './harness/registry.js';
import { MT, http, makeImage, putManifest, rawPath, sendAndHangUp, sha256 } from './harness/http.js';

let reg: RegistryProcess;
let base: string;
const repoName = () => `bad/r${randomBytes(5).toString('hex')}`;

before(async () => {
  reg = await startRegistryProcess();
  base = reg.url;
});
// After each bad input: no partial blob, every blob's bytes match its digest.
afterEach(async () => reg.assertIntegrity());
after(async () => reg.cleanup());

async function session(repo: string): Promise<string> {
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 202);
  return `${base}${post.headers.get('location')}`;
}

async function uploadsLeft(repo: string): Promise<string[]> {
  return readdir(join(reg.data, 'v2/repositories', repo, '_uploads')).catch(() => []);
}

test('wrong digest on PUT: DIGEST_INVALID, nothing visible, session gone', async () => {
  const repo = repoName();
  const bytes = randomBytes(10_000);
  const wrong = sha256('something else');
  const loc = await session(repo);
  await http(loc, { method: 'PATCH', body: bytes });
  const put = await http(`${loc}?digest=${wrong}`, { method: 'PUT' });
  assert.equal(put.status, 400);
  assert.equal(put.code, 'DIGEST_INVALID');
  assert.equal((await http(`${base}/v2/${repo}/blobs/${wrong}`, { method: 'HEAD' })).status, 404);
  assert.equal((await http(`${base}/v2/${repo}/blobs/${sha256(bytes)}`, { method: 'HEAD' })).status, 404);
  assert.deepEqual(await uploadsLeft(repo), []);
  const mono = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${wrong}`, { method: 'POST', body: bytes });
  assert.equal(mono.code, 'DIGEST_INVALID');
});

test('digest of an unknown algorithm or malformed: DIGEST_INVALID', async () => {
  const repo = repoName();
  for (const d of ['md5:d41d8cd98f00b204e9800998ecf8427e', 'sha256:xyz', 'sha256:' + 'A'.repeat(64), 'nodigest']) {
    const r = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${d}`, { method: 'POST', body: 'x' });
    assert.equal(r.status, 400, d);
    assert.equal(r.code, 'DIGEST_INVALID', d);
  }
  const head = await http(`${base}/v2/${repo}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e`);
  assert.equal(head.code, 'DIGEST_INVALID');
});

test('a truncated body (client gone before Content-Length bytes) leaves nothing visible', async () => {
  const repo = repoName();
  const bytes = randomBytes(100_000);
  const digest = sha256(bytes);
  const u = new URL(base);
  await sendAndHangUp(
    base,
    `POST /v2/${repo}/blobs/uploads/?digest=${digest} HTTP/1.1\nHost: ${u.host}\nContent-Type: application/octet-stream\nContent-Length: ${bytes.length}\n`,
    bytes.subarray(0, 40_000),
  );
  assert.equal((await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status, 404);
  assert.deepEqual(await uploadsLeft(repo), []);
});

test('a Content-Range that does not continue the session: 416 with the real Range', async () => {
  const repo = repoName();
  const loc = await session(repo);
  await http(loc, { method: 'PATCH', body: randomBytes(100), headers: { 'Content-Range': '0-99' } });
  const r = await http(loc, { method: 'PATCH', body: randomBytes(100), headers: { 'Content-Range': '200-299' } });
  assert.equal(r.status, 416);
  assert.equal(r.code, 'RANGE_INVALID');
  assert.equal(r.headers.get('range'), '0-99');
  const overlap = await http(loc, { method: 'PATCH', body: randomBytes(100), headers: { 'Content-Range': '50-149' } });
  assert.equal(overlap.status, 416);
  const status = await http(loc);
  assert.equal(status.headers.get('range'), '0-99', 'a refused chunk changes nothing');
});

test('PATCH to an unknown or cancelled session: BLOB_UPLOAD_UNKNOWN', async () => {
  const repo = repoName();
  const unknown = await http(`${base}/v2/${repo}/blobs/uploads/00000000-0000-0000-0000-000000000000`, { method: 'PATCH', body: 'x' });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.code, 'BLOB_UPLOAD_UNKNOWN');
  const junk = await http(`${base}/v2/${repo}/blobs/uploads/not-a-uuid`, { method: 'PATCH', body: 'x' });
  assert.equal(junk.code, 'BLOB_UPLOAD_UNKNOWN');
  const loc = await session(repo);
  assert.equal((await http(loc, { method: 'DELETE' })).status, 204);
  const cancelled = await http(loc, { method: 'PATCH', body: 'x' });
  assert.equal(cancelled.code, 'BLOB_UPLOAD_UNKNOWN');
});

test('a chunk after the upload was completed: BLOB_UPLOAD_UNKNOWN, blob unchanged', async () => {
  const repo = repoName();
  const bytes = randomBytes(500);
  const loc = await session(repo);
  await http(loc, { method: 'PATCH', body: bytes });
  assert.equal((await http(`${loc}?digest=${sha256(bytes)}`, { method: 'PUT' })).status, 201);
  const late = await http(loc, { method: 'PATCH', body: 'more' });
  assert.equal(late.code, 'BLOB_UPLOAD_UNKNOWN');
  const again = await http(`${loc}?digest=${sha256(bytes)}`, { method: 'PUT', body: 'more' });
  assert.equal(again.code, 'BLOB_UPLOAD_UNKNOWN');
  assert.ok((await http(`${base}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));
});

test('manifests: invalid JSON, wrong mediaType, missing blob, over 4 MiB, wrong digest', async () => {
  const repo = repoName();
  const good = await makeImage(base, repo);
  const invalid = await putManifest(base, repo, 'x', Buffer.from('{"schemaVersion": 2, '), MT.ociManifest);
  assert.equal(invalid.code, 'MANIFEST_INVALID');
  const mismatch = await putManifest(base, repo, 'x', { ...good, mediaType: MT.dockerManifest }, MT.ociManifest);
  assert.equal(mismatch.code, 'MANIFEST_INVALID');
  const indexAsImage = await putManifest(base, repo, 'x', { ...good, mediaType: MT.ociIndex }, MT.ociIndex);
  assert.equal(indexAsImage.code, 'MANIFEST_INVALID');
  const noSchema = await putManifest(base, repo, 'x', { ...good, schemaVersion: 1 });
  assert.equal(noSchema.code, 'MANIFEST_INVALID');
  const layers = good.layers as { digest: string }[];
  const missing = await putManifest(base, repo, 'x', { ...good, layers: [{ ...layers[0], digest: sha256('absent layer') }] });
  assert.equal(missing.status, 400);
  assert.equal(missing.code, 'MANIFEST_BLOB_UNKNOWN');
  const huge = { ...good, annotations: { pad: 'x'.repeat(4 * 1024 * 1024) } };
  const tooBig = await putManifest(base, repo, 'x', huge);
  assert.equal(tooBig.status, 413);
  assert.equal(tooBig.code, 'MANIFEST_TOO_LARGE');
  const wrongDigest = await putManifest(base, repo, sha256('other bytes'), good);
  assert.equal(wrongDigest.code, 'DIGEST_INVALID');
  assert.equal((await http(`${base}/v2/${repo}/manifests/x`)).status, 404, 'nothing was tagged');
  assert.equal((await putManifest(base, repo, 'x', good)).status, 201, 'the good one still goes in');
});

test('invalid repository names: NAME_INVALID', async () => {
  for (const path of ['/v2/../x/tags/list', '/v2/Upper/tags/list', `/v2/${'a'.repeat(256)}/tags/list`, '/v2/a//b/tags/list', '/v2/-a/manifests/latest']) {
    const r = await rawPath(base, 'GET', path);
    assert.equal(r.status, 400, path);
    assert.match(r.body, /NAME_INVALID/, path);
  }
});

test('invalid tags: TAG_INVALID', async () => {
  const repo = repoName();
  const m = await makeImage(base, repo);
  for (const tag of ['-bad', '.bad', 't'.repeat(129), 'a%20b']) {
    const r = await putManifest(base, repo, tag, m);
    assert.equal(r.status, 400, tag);
    assert.equal(r.code, 'TAG_INVALID', tag);
  }
});

test('a Range beyond the blob end: 416', async () => {
  const repo = repoName();
  const bytes = randomBytes(1000);
  await http(`${base}/v2/${repo}/blobs/uploads/?digest=${sha256(bytes)}`, { method: 'POST', body: bytes });
  const r = await http(`${base}/v2/${repo}/blobs/${sha256(bytes)}`, { headers: { Range: 'bytes=5000-6000' } });
  assert.equal(r.status, 416);
  assert.equal(r.headers.get('content-range'), 'bytes */1000');
});

test('two clients pushing the same blob at the same time: both succeed, one blob stored', async () => {
  const bytes = randomBytes(4 * 1024 * 1024);
  const digest = sha256(bytes);
  const repo = repoName();
  const results = await Promise.all(
    [0, 1, 2].map(async () => {
      const loc = await session(repo);
      const patch = await http(loc, { method: 'PATCH', body: bytes });
      assert.equal(patch.status, 202);
      return http(`${loc}?digest=${digest}`, { method: 'PUT' });
    }),
  );
  assert.deepEqual(results.map((r) => r.status), [201, 201, 201]);
  const hex = digest.slice(7);
  const stored = await readdir(join(reg.data, 'v2/blobs/sha256', hex.slice(0, 2)));
  assert.deepEqual(stored.filter((h) => h === hex), [hex]);
  assert.deepEqual(await readdir(join(reg.data, 'v2/blobs/sha256', hex.slice(0, 2), hex)), ['data']);
});

test('a client that disconnects mid-PATCH can resume from the stored offset; nothing partial is visible', async () => {
  const repo = repoName();
  const bytes = randomBytes(3 * 1024 * 1024);
  const digest = sha256(bytes);
  const loc = await session(repo);
  const u = new URL(loc);
  await sendAndHangUp(
    base,
    `PATCH ${u.pathname} HTTP/1.1\nHost: ${u.host}\nContent-Type: application/octet-stream\nContent-Length: ${bytes.length}\n`,
    bytes.subarray(0, 1024 * 1024),
  );
  assert.equal((await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status, 404);
  const status = await http(loc);
  assert.equal(status.status, 204);
  const m = /^0-(\d+)$/.exec(status.headers.get('range') ?? '');
  assert.ok(m, `Range header: ${status.headers.get('range')}`);
  const offset = Number(m[1]) + 1;
  assert.ok(offset > 0 && offset <= 1024 * 1024, `stored offset ${offset}`);
  const rest = await http(loc, {
    method: 'PATCH',
    body: bytes.subarray(offset),
    headers: { 'Content-Range': `${offset}-${bytes.length - 1}` },
  });
  assert.equal(rest.status, 202);
  const put = await http(`${loc}?digest=${digest}`, { method: 'PUT' });
  assert.equal(put.status, 201);
  assert.ok((await http(`${base}/v2/${repo}/blobs/${digest}`)).body.equals(bytes));
});

test('unsupported method and unknown endpoint', async () => {
  const r = await http(`${base}/v2/${repoName()}/tags/list`, { method: 'DELETE' });
  assert.equal(r.status, 405);
  assert.equal(r.code, 'UNSUPPORTED');
  const nf = await http(`${base}/v2/x/nonsense`);
  assert.equal(nf.status, 404);
});
