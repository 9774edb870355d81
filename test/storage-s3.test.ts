import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import { S3Driver, checkIntegrity, createDriver, createStore, isStoreError, parseDigest, purgeUploads, type S3Options } from '../storage/index.js';
import { planParts } from '../storage/s3-compose.js';
import { randomBucket, sharedRadosgw, type S3Server } from './harness/radosgw.js';
import { driverSuite } from './storage/driver-suite.js';

/*
 * The S3 driver on a real radosgw (the runner's shared one, or one started
 * here): the shared driver suite on a random bucket and prefix, then what only
 * S3 has — multipart writes, composed moves, aborted uploads, start-up checks.
 */
const MiB = 1024 * 1024;
let server: Promise<{ s3: S3Server; release(): Promise<void> }> | undefined;
const radosgw = async (): Promise<S3Server> => (await (server ??= sharedRadosgw())).s3;
const buckets: string[] = [];

async function newBucket(label: string): Promise<string> {
  const bucket = randomBucket(label);
  await (await radosgw()).createBucket(bucket);
  buckets.push(bucket);
  return bucket;
}

async function driverOn(bucket: string, extra: Partial<S3Options> = {}): Promise<S3Driver> {
  const s3 = await radosgw();
  return new S3Driver({ endpoint: s3.endpoint, bucket, accessKey: s3.accessKey, secretKey: s3.secretKey, prefix: `run-${process.pid}`, ...extra });
}

async function incompleteUploads(bucket: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const u of (await radosgw()).client().listIncompleteUploads(bucket, '', true)) keys.push((u as { key: string }).key);
  return keys;
}

after(async () => {
  if (!server) return;
  const { s3, release } = await server;
  for (const b of buckets) await s3.deleteBucket(b);
  for (const b of buckets) assert.equal(await s3.client().bucketExists(b), false, `bucket ${b} left behind`);
  await release();
});

driverSuite('s3', async () => {
  const bucket = await newBucket('suite');
  return { driver: await driverOn(bucket), cleanup: async () => {} };
});

describe('S3 driver specifics', () => {
  let bucket: string;
  before(async () => {
    bucket = await newBucket('s3');
  });

  test('planParts: copies long runs by range, merges short pieces into 5 MiB parts, never leaves a part too small', () => {
    const plan = planParts([{ key: 'a', size: 1000 }, { key: 'b', size: 23 * MiB }, { key: 'c', size: 3 }], 10 * MiB);
    const sizes = plan.map((p) => ('copy' in p ? p.copy.end - p.copy.start : p.upload.reduce((n, r) => n + r.end - r.start, 0)));
    assert.equal(sizes.reduce((a, b) => a + b, 0), 1000 + 23 * MiB + 3);
    assert.deepEqual(sizes.slice(0, -1).filter((n) => n < 5 * MiB), [], 'only the last part may be under 5 MiB');
    assert.ok(sizes.every((n) => n <= 10 * MiB));
    assert.ok('upload' in plan[0]! && 'copy' in plan[1]!);
  });

  test('a file larger than copyPartSize moves by ranged multipart copy; nothing is left incomplete', async () => {
    const d = await driverOn(bucket, { copyPartSize: 10 * MiB, partSize: 5 * MiB });
    const bytes = randomBytes(23 * MiB + 7);
    const w = await d.writer('/big/src');
    await pipeline(Readable.from([bytes.subarray(0, 9 * MiB), bytes.subarray(9 * MiB)]), w);
    await w.commit();
    await d.move('/big/src', '/big/dst');
    const got: Buffer[] = [];
    for await (const c of await d.reader('/big/dst')) got.push(c as Buffer);
    assert.ok(Buffer.concat(got).equals(bytes));
    assert.equal(await d.stat('/big/src'), null);
    assert.deepEqual(await incompleteUploads(bucket), []);
  });

  test('copyTo: ranges of a plain file, a chunked file (the reader path), and a destination that closes early', async () => {
    const d = await driverOn(bucket);
    const bytes = randomBytes(3 * MiB + 5);
    await d.putContent('/copy/plain', bytes);
    const w = await d.writer('/copy/chunked', { append: true });
    await pipeline(Readable.from([bytes.subarray(0, MiB)]), w);
    const w2 = await d.writer('/copy/chunked', { append: true });
    await pipeline(Readable.from([bytes.subarray(MiB)]), w2);
    const collect = async (path: string, offset: number, length: number): Promise<Buffer> => {
      const chunks: Buffer[] = [];
      const sink = new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(Buffer.from(c)), cb()) });
      await d.copyTo(path, sink, { offset, length });
      return Buffer.concat(chunks);
    };
    for (const path of ['/copy/plain', '/copy/chunked']) {
      assert.ok((await collect(path, 0, bytes.length)).equals(bytes), path);
      assert.ok((await collect(path, 1000, 2 * MiB)).equals(bytes.subarray(1000, 1000 + 2 * MiB)), `${path}, a range`);
    }
    const slow = new Writable({ highWaterMark: 1, write: (_c, _e, cb) => setTimeout(cb, 5) });
    const copying = d.copyTo('/copy/plain', slow, { offset: 0, length: bytes.length });
    setTimeout(() => slow.destroy(), 50);
    await assert.rejects(copying, (e: Error) => e.name === 'AbortError');
  });

  test('a writer destroyed mid-way aborts its multipart upload and leaves no object', async () => {
    const d = await driverOn(bucket, { partSize: 5 * MiB });
    const w = await d.writer('/aborted/file', { append: true });
    await new Promise<void>((resolve) => w.write(randomBytes(12 * MiB), () => resolve()));
    w.destroy();
    await new Promise((r) => w.once('close', r));
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await incompleteUploads(bucket), []);
    assert.equal((await d.stat('/aborted/file'))?.size, 0, 'the append never happened');
  });

  test('a digest mismatch after a multipart-sized chunk leaves no blob, no session and no incomplete upload', async () => {
    const d = await driverOn(bucket, { partSize: 5 * MiB });
    const store = createStore(d);
    const repo = `s3/r${randomBytes(4).toString('hex')}`;
    const bytes = randomBytes(13 * MiB);
    const wrong = parseDigest(`sha256:${createHash('sha256').update('other').digest('hex')}`);
    await assert.rejects(store.uploads.putWhole(repo, wrong, Readable.from([bytes])), (e: unknown) => isStoreError(e, 'digest-mismatch'));
    assert.deepEqual(await d.list(`/v2/repositories/${repo}/_uploads`), []);
    const keys: string[] = [];
    for await (const f of d.walk('/v2')) keys.push(f.path);
    assert.deepEqual(keys.filter((k) => k.includes(repo) || k.startsWith('/v2/blobs/')), []);
    assert.deepEqual(await incompleteUploads(bucket), []);
    assert.deepEqual((await checkIntegrity(d)).problems, []);
  });

  test('purgeUploads also aborts old incomplete multipart uploads under the prefix, and only there', async () => {
    const d = await driverOn(bucket);
    const client = (await radosgw()).client();
    const mine = await client.initiateNewMultipartUpload(bucket, `run-${process.pid}/v2/repositories/x/_uploads/lost`, {});
    const other = await client.initiateNewMultipartUpload(bucket, 'elsewhere/key', {});
    assert.equal((await incompleteUploads(bucket)).length, 2);
    await new Promise((r) => setTimeout(r, 1100));
    await purgeUploads(createStore(d), 0);
    assert.deepEqual(await incompleteUploads(bucket), ['elsewhere/key']);
    await client.abortMultipartUpload(bucket, 'elsewhere/key', other);
    assert.ok(mine);
  });

  test('two prefixes in one bucket do not see each other', async () => {
    const a = await driverOn(bucket, { prefix: 'pa' });
    const b = await driverOn(bucket, { prefix: 'pb' });
    await a.putContent('/v2/x', 'a');
    assert.equal(await b.stat('/v2/x'), null);
    assert.deepEqual(await b.list('/v2'), []);
    await a.delete('/v2');
    assert.deepEqual(await a.list('/'), []);
  });

  test('createDriver fails fast, naming the endpoint, on a missing bucket, refused credentials, or no server', async () => {
    const s3 = await radosgw();
    const host = new URL(s3.endpoint).host;
    const env = { SLIPWAY_S3_ACCESS_KEY: s3.accessKey, SLIPWAY_S3_SECRET_KEY: s3.secretKey };
    await assert.rejects(createDriver(`s3://${host}/no-such-bucket-here?tls=false`, { env }), /S3 at http:\/\/127\.0\.0\.1:\d+ \(bucket no-such-bucket-here\).*does not exist/);
    await assert.rejects(
      createDriver(`s3://${host}/${bucket}?tls=false`, { env: { ...env, SLIPWAY_S3_SECRET_KEY: 'wrong' } }),
      /credentials refused \((AccessDenied|SignatureDoesNotMatch)\)/,
    );
    await assert.rejects(createDriver(`s3://127.0.0.1:1/${bucket}?tls=false`, { env }), /cannot reach S3 at http:\/\/127\.0\.0\.1:1\b/);
    await assert.rejects(createDriver(`s3://${host}/${bucket}?tls=false&colour=red`, { env }), /unknown parameter colour/);
    const ok = await createDriver(`s3://${host}/${bucket}?tls=false&prefix=p1&redirect=true`, { env });
    assert.equal(ok.redirect, true);
    assert.match(ok.description, new RegExp(`s3 http://${host}/${bucket}/p1/`));
  });
});
