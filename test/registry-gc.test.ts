import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkIntegrity, collectGarbage, parseDigest, type FileInfo, type GcReport } from '../storage/index.js';
import { assertPullable, blobFiles, fsTarget, keepMarkerWritten, pushImage, s3Target, slipwayGc, type GcEnv, type GcTarget, type PushedImage } from './harness/gc.js';
import { http, pushBlob, sha256 } from './harness/http.js';

/*
 * Online GC against a running `slipway registry` (another process) on both
 * drivers: pushes go on while GC runs, every pushed image pulls intact, blobs
 * orphaned before the grace period are gone, and the two orders of the race
 * between a sweep and a push of the same blob both end with the push winning
 * (hooks pause GC at the moment that matters), and `slipway gc` with and
 * without --dry-run. Retention and the schedule are in registry-gc-retention.test.ts.
 */
const repoName = (label: string): string => `gc${label}/r${randomBytes(4).toString('hex')}`;

async function exists(env: GcEnv, digest: string): Promise<boolean> {
  return (await env.store.blobs.statGlobal(parseDigest(digest))) !== null;
}

/** Orphans: blobs pushed without a manifest, and the blobs of an image whose manifest was deleted. */
async function makeOrphans(env: GcEnv, repo: string): Promise<string[]> {
  const base = env.reg.url;
  const loose = [await pushBlob(base, repo, randomBytes(3000)), await pushBlob(base, repo, randomBytes(5000))];
  const img = await pushImage(base, repo, 'doomed');
  const del = await http(`${base}/v2/${repo}/manifests/${img.digest}`, { method: 'DELETE' });
  assert.equal(del.status, 202);
  return [...loose, ...img.blobs.map((b) => b.digest), img.digest];
}

function gcSuite(target: GcTarget): void {
  describe(`online GC on ${target.label}`, () => {
    after(() => target.close());

    test('20 images pushed while GC runs repeatedly all pull intact; blobs orphaned before the grace period are gone', { timeout: 180_000 }, async () => {
      const env = await target.open();
      try {
        const base = env.reg.url;
        const repo = repoName('loop');
        const kept = await pushImage(base, repo, 'kept');
        const orphans = await makeOrphans(env, repo);
        await env.age([...orphans, ...kept.blobs.map((b) => b.digest), kept.digest].flatMap(blobFiles));

        const pushed: PushedImage[] = [];
        let pushing = true;
        const pushes = (async () => {
          try {
            for (let i = 0; i < 20; i++) pushed.push(await pushImage(base, `${repo}-${i % 3}`, `t${i}`));
          } finally {
            pushing = false;
          }
        })();
        const reports: GcReport[] = [];
        while (pushing || reports.length < 3) reports.push(await collectGarbage(env.store, { gracePeriod: env.grace }));
        await pushes;
        reports.push(await collectGarbage(env.store, { gracePeriod: env.grace }));

        assert.equal(pushed.length, 20);
        for (const img of [kept, ...pushed]) await assertPullable(base, img);
        for (const digest of orphans) {
          assert.equal(await exists(env, digest), false, `orphan ${digest} swept`);
          assert.equal((await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status, 404);
        }
        const swept = new Set(reports.flatMap((r) => r.sweptBlobs.map((b) => b.digest)));
        assert.deepEqual([...swept].sort(), [...orphans].sort(), 'exactly the orphans were swept');
        assert.ok(reports.reduce((n, r) => n + r.blobs.bytesFreed, 0) >= 8000);
        const last = reports.at(-1)!;
        assert.equal(last.blobs.swept, 0);
        assert.equal(last.blobs.marked, last.blobs.total, 'after the last run every stored blob is referenced');
        // The links of the swept blobs went with them.
        for (const digest of orphans) assert.equal(await env.store.blobs.isLinked(repo, parseDigest(digest)), false);
        assert.deepEqual((await checkIntegrity(env.store.driver)).problems, []);
      } finally {
        await env.cleanup();
      }
    });

    test('a blob GC found unreferenced is pushed again before the sweep: GC keeps it, the image pulls', { timeout: 60_000 }, async () => {
      const env = await target.open();
      try {
        const base = env.reg.url;
        const repo = repoName('relink');
        const layer = randomBytes(6000);
        const [reused, doomed] = [await pushBlob(base, repo, layer), await pushBlob(base, repo, randomBytes(2000))];
        await env.age([reused, doomed].flatMap(blobFiles));
        let img: PushedImage | undefined;
        const report = await collectGarbage(env.store, {
          gracePeriod: env.grace,
          hooks: {
            // Mark is done and found both unreferenced; a client pushes the same layer again and a manifest naming it.
            afterMark: async () => {
              assert.equal((await pushBlob(base, `${repo}-b`, layer)), reused);
              img = await pushImage(base, `${repo}-b`, 'v1', {
                layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: reused, size: layer.length }],
              });
            },
          },
        });
        assert.deepEqual(report.sweptBlobs.map((b) => b.digest), [doomed]);
        assert.equal(await exists(env, reused), true);
        await assertPullable(base, { ...img!, blobs: [img!.blobs[0]!, { digest: reused, bytes: layer }] });
      } finally {
        await env.cleanup();
      }
    });

    test('a push that finds GC deleting its blob waits, then stores its own bytes; the image pulls', { timeout: 60_000 }, async () => {
      const env = await target.open();
      try {
        const base = env.reg.url;
        const repo = repoName('wait');
        const layer = randomBytes(7000);
        const digest = await pushBlob(base, repo, layer);
        await env.age(blobFiles(digest));
        let upload: Promise<string> | undefined;
        let released = false;
        let settledWhileHeld = false;
        const report = await collectGarbage(env.store, {
          gracePeriod: env.grace,
          hooks: {
            // GC has written its sweeping marker and decided; the same blob is uploaded now.
            beforeDelete: async (d) => {
              if (d !== digest) return;
              upload = pushBlob(base, `${repo}-b`, layer);
              const settled = () => (settledWhileHeld ||= !released);
              void upload.then(settled, settled);
              // Until the upload is inside the handshake (its keep marker written while GC runs), and a while longer.
              for (let i = 0; i < 400 && !(await keepMarkerWritten(env.store, digest)); i++) await sleep(25);
              assert.ok(await keepMarkerWritten(env.store, digest), 'the upload reached the handshake');
              await sleep(300);
              released = true;
            },
          },
        });
        assert.equal(settledWhileHeld, false, 'the upload waited while GC held the blob');
        assert.deepEqual(report.sweptBlobs.map((b) => b.digest), [digest], 'GC did delete the old copy');
        assert.equal(await upload, digest);
        assert.equal(await exists(env, digest), true, 'the upload stored its bytes again');
        const img = await pushImage(base, `${repo}-b`, 'v1', {
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: layer.length }],
        });
        await assertPullable(base, { ...img, blobs: [img.blobs[0]!, { digest, bytes: layer }] });
        assert.equal(sha256((await http(`${base}/v2/${repo}-b/blobs/${digest}`)).body), digest);
      } finally {
        await env.cleanup();
      }
    });

    test('--dry-run reports what a run would delete and deletes nothing; then `slipway gc` does it', { timeout: 60_000 }, async () => {
      const env = await target.open();
      try {
        const base = env.reg.url;
        const repo = repoName('cli');
        const kept = await pushImage(base, repo, 'kept');
        const orphans = await makeOrphans(env, repo);
        await env.age(orphans.flatMap(blobFiles));
        const snapshot = async (): Promise<string[]> => {
          const out: string[] = [];
          for await (const f of env.store.driver.walk('/v2') as AsyncIterable<FileInfo>) if (!f.path.startsWith('/v2/_gc/')) out.push(f.path);
          return out.sort();
        };
        const before = await snapshot();
        const grace = `${env.grace}ms`;
        const dry = await slipwayGc([...env.storageArgs, '--dry-run', '--grace-period', grace], env.env);
        assert.equal(dry.code, 0, dry.stderr);
        for (const d of orphans) assert.match(dry.stdout, new RegExp(`would delete blob ${d}`));
        assert.match(dry.stdout, new RegExp(`blobs: \\d+ stored, \\d+ marked, ${orphans.length} to sweep`));
        assert.match(dry.stdout, /dry run, nothing deleted/);
        assert.deepEqual(await snapshot(), before, 'a dry run changes nothing');

        const json = await slipwayGc([...env.storageArgs, '--dry-run', '--json', '--grace-period', grace], env.env);
        assert.equal(json.code, 0, json.stderr);
        assert.equal((JSON.parse(json.stdout) as GcReport).blobs.swept, orphans.length);

        const real = await slipwayGc([...env.storageArgs, '--grace-period', grace], env.env);
        assert.equal(real.code, 0, real.stderr);
        assert.match(real.stdout, new RegExp(`${orphans.length} swept`));
        assert.match(real.stdout, /\ndone in /);
        for (const d of orphans) assert.equal(await exists(env, d), false);
        await assertPullable(base, kept);

        const bad = await slipwayGc([...env.storageArgs, '--grace-period', 'soon'], env.env);
        assert.equal(bad.code, 1);
        assert.match(bad.stderr, /slipway: --grace-period: "soon" is not a duration/);
        const unreachable = await slipwayGc(['--storage', 's3://127.0.0.1:1/nothing?tls=false'], { AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'y' });
        assert.equal(unreachable.code, 1);
        assert.match(unreachable.stderr, /cannot reach S3 at http:\/\/127\.0\.0\.1:1/);
      } finally {
        await env.cleanup();
      }
    });
  });
}

gcSuite(fsTarget);
gcSuite(s3Target());
