import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import {
  PathNotFoundError,
  checkIntegrity,
  createStore,
  isStoreError,
  parseDigest,
  purgeUploads,
  type StorageDriver,
} from '../../storage/index.js';

export interface DriverFixture {
  driver: StorageDriver;
  cleanup(): Promise<void>;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * The conformance suite every storage driver runs: first the primitives, then
 * the store written once above them (uploads, blobs, manifests).
 */
export function driverSuite(name: string, make: () => Promise<DriverFixture>): void {
  describe(`storage driver: ${name}`, () => {
    let fx: DriverFixture;
    let d: StorageDriver;
    let n = 0;
    const p = (leaf: string) => `/suite/${process.pid}-${++n}/${leaf}`;
    before(async () => {
      fx = await make();
      d = fx.driver;
    });
    after(async () => fx.cleanup());

    test('putContent/getContent round trip and stat', async () => {
      const path = p('a/b/c');
      await d.putContent(path, 'hello');
      assert.equal((await d.getContent(path)).toString(), 'hello');
      const st = await d.stat(path);
      assert.equal(st?.size, 5);
      assert.equal(st?.isDir, false);
      await d.putContent(path, 'replaced');
      assert.equal((await d.getContent(path)).toString(), 'replaced');
    });

    test('missing paths: stat null, getContent and reader throw PathNotFoundError, list empty', async () => {
      assert.equal(await d.stat(p('none')), null);
      await assert.rejects(d.getContent(p('none')), PathNotFoundError);
      await assert.rejects(d.reader(p('none')), PathNotFoundError);
      assert.deepEqual(await d.list(p('nodir')), []);
    });

    test('streamed writer: commit, append, size', async () => {
      const path = p('stream');
      const first = randomBytes(3 * 1024 * 1024 + 17);
      let w = await d.writer(path);
      await pipeline(Readable.from([first.subarray(0, 1000), first.subarray(1000)]), w);
      await w.commit();
      assert.equal(w.size, first.length);
      const second = randomBytes(4096);
      w = await d.writer(path, { append: true });
      await pipeline(Readable.from([second]), w);
      await w.commit();
      assert.equal(w.size, first.length + second.length);
      const all = await readAll(await d.reader(path));
      assert.ok(all.equals(Buffer.concat([first, second])));
    });

    test('appends of many sizes read back whole, by range, and after a move', async () => {
      const dir = p('appends');
      const path = `${dir}/appended`;
      const sizes = [1000, 6 * 1024 * 1024, 3, 7 * 1024 * 1024 + 5, 0, 100];
      const pieces = sizes.map((n) => randomBytes(n));
      for (const piece of pieces) {
        const w = await d.writer(path, { append: true });
        await pipeline(Readable.from(piece.length ? [piece] : []), w);
        await w.commit();
      }
      const all = Buffer.concat(pieces);
      assert.equal((await d.stat(path))?.size, all.length);
      assert.ok((await readAll(await d.reader(path))).equals(all));
      for (const [offset, length] of [[999, 2], [500, 6 * 1024 * 1024 + 10], [all.length - 50, 50], [6 * 1024 * 1024 + 1001, undefined]] as const) {
        const got = await readAll(await d.reader(path, { offset, length }));
        assert.ok(got.equals(all.subarray(offset, length === undefined ? undefined : offset + length)), `range ${offset}+${length}`);
      }
      const moved = `${dir}/appended-moved`;
      await d.move(path, moved);
      assert.equal(await d.stat(path), null);
      assert.equal((await d.stat(moved))?.size, all.length);
      assert.ok((await readAll(await d.reader(moved))).equals(all));
      assert.deepEqual(await d.list(dir), ['appended-moved']);
    });

    test('cancel removes what was written', async () => {
      const path = p('cancelled');
      const w = await d.writer(path);
      w.write(randomBytes(1000));
      await w.cancel();
      assert.equal(await d.stat(path), null);
    });

    test('reader with offset and length', async () => {
      const path = p('ranged');
      const bytes = randomBytes(100_000);
      await d.putContent(path, bytes);
      assert.ok((await readAll(await d.reader(path, { offset: 500 }))).equals(bytes.subarray(500)));
      assert.ok((await readAll(await d.reader(path, { offset: 10, length: 20 }))).equals(bytes.subarray(10, 30)));
      assert.equal((await readAll(await d.reader(path, { offset: 10, length: 0 }))).length, 0);
    });

    test('list is sorted and shows direct children only', async () => {
      const dir = p('listdir');
      for (const leaf of ['b', 'a', 'c/deep']) await d.putContent(`${dir}/${leaf}`, 'x');
      assert.deepEqual(await d.list(dir), ['a', 'b', 'c']);
    });

    test('move replaces the destination; delete removes a tree; walk yields files', async () => {
      const dir = p('mv');
      await d.putContent(`${dir}/src`, 'new');
      await d.putContent(`${dir}/dst`, 'old');
      await d.move(`${dir}/src`, `${dir}/dst`);
      assert.equal((await d.getContent(`${dir}/dst`)).toString(), 'new');
      assert.equal(await d.stat(`${dir}/src`), null);
      await assert.rejects(d.move(`${dir}/src`, `${dir}/x`), PathNotFoundError);
      await d.putContent(`${dir}/t/1`, '1');
      await d.putContent(`${dir}/t/2/3`, '3');
      const walked: string[] = [];
      for await (const f of d.walk(dir)) walked.push(f.path);
      assert.deepEqual(walked, [`${dir}/dst`, `${dir}/t/1`, `${dir}/t/2/3`]);
      await d.delete(`${dir}/t`);
      assert.equal(await d.stat(`${dir}/t/1`), null);
      await d.delete(`${dir}/t`);
    });

    test('paths that climb out are refused', async () => {
      await assert.rejects(() => d.putContent('/a/../../etc/x', 'x'));
      await assert.rejects(() => d.getContent('relative/path'));
    });

    describe('store above the driver', () => {
      test('chunked upload with resume, then a verified blob', async () => {
        const store = createStore(d);
        const repo = `suite/r${randomBytes(4).toString('hex')}`;
        const bytes = randomBytes(2 * 1024 * 1024 + 3);
        const digest = parseDigest(sha(bytes));
        const s = await store.uploads.start(repo);
        let st = await store.uploads.append(repo, s.uuid, Readable.from([bytes.subarray(0, 1000)]), { start: 0 });
        assert.equal(st.offset, 1000);
        await assert.rejects(
          store.uploads.append(repo, s.uuid, Readable.from([bytes.subarray(5)]), { start: 5 }),
          (e: unknown) => isStoreError(e, 'range-mismatch'),
        );
        st = await store.uploads.append(repo, s.uuid, Readable.from([bytes.subarray(1000)]), { start: 1000 });
        assert.equal(st.offset, bytes.length);
        const blob = await store.uploads.complete(repo, s.uuid, digest);
        assert.equal(blob.size, bytes.length);
        assert.ok((await readAll(await store.blobs.open(digest))).equals(bytes));
        assert.deepEqual(await store.blobs.stat(repo, digest), { digest: digest.value, size: bytes.length });
        await assert.rejects(store.uploads.status(repo, s.uuid), (e: unknown) => isStoreError(e, 'upload-unknown'));
      });

      test('a digest mismatch leaves nothing visible', async () => {
        const store = createStore(d);
        const repo = `suite/r${randomBytes(4).toString('hex')}`;
        const bytes = randomBytes(5000);
        const wrong = parseDigest(sha(Buffer.from('other')));
        await assert.rejects(
          store.uploads.putWhole(repo, wrong, Readable.from([bytes])),
          (e: unknown) => isStoreError(e, 'digest-mismatch'),
        );
        assert.equal(await store.blobs.statGlobal(wrong), null);
        assert.equal(await store.blobs.statGlobal(parseDigest(sha(bytes))), null);
        assert.deepEqual(await d.list(`/v2/repositories/${repo}/_uploads`), []);
      });

      test('abandoned upload sessions are purged after the configured age, young ones kept', async () => {
        const store = createStore(d);
        const repo = `suite/r${randomBytes(4).toString('hex')}`;
        const s = await store.uploads.start(repo);
        await store.uploads.append(repo, s.uuid, Readable.from([randomBytes(1000)]));
        assert.equal(await purgeUploads(store, 3600_000), 0);
        assert.equal((await store.uploads.status(repo, s.uuid)).offset, 1000);
        await new Promise((r) => setTimeout(r, 10));
        assert.ok((await purgeUploads(store, 0)) >= 1);
        await assert.rejects(store.uploads.status(repo, s.uuid), (e: unknown) => isStoreError(e, 'upload-unknown'));
        assert.deepEqual(await d.list(`/v2/repositories/${repo}/_uploads`), []);
      });

      test('the same blob pushed twice at once: both succeed, one blob stored', async () => {
        const store = createStore(d);
        const bytes = randomBytes(1024 * 1024);
        const digest = parseDigest(sha(bytes));
        const repos = [`suite/a${randomBytes(4).toString('hex')}`, `suite/b${randomBytes(4).toString('hex')}`];
        const results = await Promise.all(repos.map((r) => store.uploads.putWhole(r, digest, Readable.from([bytes]))));
        assert.deepEqual(results.map((r) => r.size), [bytes.length, bytes.length]);
        for (const r of repos) assert.ok(await store.blobs.isLinked(r, digest));
        const report = await checkIntegrity(d);
        assert.deepEqual(report.problems, []);
      });
    });
  });
}
