import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { http, sha256 } from './harness/http.js';
import { imageProblems, newImage, newIndex, openLane, putImage, slipwayGc, uploadBlob, type GcImage } from './harness/gc.js';
import { tempDir } from './harness/registry.js';

/*
 * #10 Soak: a `slipway registry` with scheduled GC (grace 0, deleteUntagged,
 * keepLast) under pushers that use every path — monolithic and chunked
 * uploads, cross-repository mounts, layers shared between images, layers of
 * deleted images re-used after a HEAD (upload skipped), exact re-pushes of
 * deleted manifests, indexes with children, untags and deletes — and two
 * `slipway gc` loops beside the scheduled GC. A refused PUT (400
 * MANIFEST_BLOB_UNKNOWN) is pushed again whole. At the end a FRESH registry
 * process verifies every tag still listed: 0 broken images, and no `slipway gc`
 * run found damage. Bounded: a fixed load time, then the checks.
 */
interface Figures {
  pushed: number;
  refused: number;
  mounts: number;
  headSkips: number;
  repushes: number;
  indexes: number;
  deletes: number;
  gcRuns: number;
  gcDamage: string[];
  kept: number;
  broken: string[];
}

const KEEP_LAST = 6;

function soak(kind: 'filesystem' | 's3', seconds: number): void {
  test(`#10 soak on ${kind}: ${seconds} s of pushes, deletes and three GCs at grace 0 leave 0 broken images`, { timeout: (seconds + 240) * 1000 }, async () => {
    const lane = await openLane(kind);
    const work = await tempDir('slipway-soak-');
    const config = join(work, 'registry.yaml');
    await writeFile(config, `gc:\n  interval: 1s\n  gracePeriod: 0\n  deleteUntagged: true\n  retention:\n    - repositories: "soak/**"\n      keepLast: ${KEEP_LAST}\n`);
    const reg = await lane.fresh(['--config', config]);
    const base = process.env.SLIPWAY_SOAK_INPROC ? lane.base : reg.url;
    const f: Figures = { pushed: 0, refused: 0, mounts: 0, headSkips: 0, repushes: 0, indexes: 0, deletes: 0, gcRuns: 0, gcDamage: [], kept: 0, broken: [] };
    /** What each tag was last pushed as (a tag pushed again names the newer image). */
    const tagged = new Map<string, GcImage>();
    const shared = Array.from({ length: 6 }, () => randomBytes(2048));
    const deleted: GcImage[] = [];
    const deadline = Date.now() + seconds * 1000;
    try {
      const head = async (repo: string, digest: string) => (await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status === 200;
      /** The client's push: HEAD each blob, upload (or mount) what is missing, PUT; a refusal is pushed again whole. */
      const push = async (img: GcImage, opts: { mountFrom?: string; byDigest?: boolean } = {}): Promise<void> => {
        for (const c of img.children) await push(c, { byDigest: true });
        for (const [i, b] of img.blobs.entries()) {
          if (await head(img.repo, b.digest)) {
            f.headSkips++;
            continue;
          }
          if (opts.mountFrom) {
            const m = await http(`${base}/v2/${img.repo}/blobs/uploads/?mount=${b.digest}&from=${opts.mountFrom}`, { method: 'POST' });
            if (m.status === 201) {
              f.mounts++;
              continue;
            }
          }
          await uploadBlob(base, img.repo, b.bytes, i % 2 === 1);
        }
        for (let attempt = 0; ; attempt++) {
          const r = await putImage(base, img, opts.byDigest);
          if (r.status === 201) break;
          assert.equal(r.code, 'MANIFEST_BLOB_UNKNOWN', `PUT ${img.repo}:${img.tag}: ${r.status} ${r.body.toString()}\n${reg.output().split('\n').filter((l) => !/gc: (swept|deleted|skipped|scanned|\d+ of)/.test(l)).join('\n').slice(-4000)}`);
          // At grace 0 a GC run may begin between a client's uploads and its PUT: refused, the client pushes again.
          assert.ok(attempt < 20, `PUT ${img.repo}:${img.tag} refused ${attempt + 1} times`);
          f.refused++;
          for (const c of img.children) await push(c, { byDigest: true });
          for (const b of img.blobs) await uploadBlob(base, img.repo, b.bytes);
        }
        if (opts.byDigest) return;
        tagged.set(`${img.repo}:${img.tag}`, img);
        f.pushed++;
      };
      const pusher = async (p: number): Promise<void> => {
        const repo = `soak/p${p}`;
        const mine: GcImage[] = [];
        for (let n = 0; Date.now() < deadline; n++) {
          const roll = Math.random();
          const layers = [shared[Math.floor(Math.random() * shared.length)]!, randomBytes(512 + Math.floor(Math.random() * 2048))];
          if (roll < 0.1 && deleted.length > 0) {
            // An exact re-push of a deleted manifest (its blobs found by HEAD when GC has not swept them yet).
            const old = deleted.splice(Math.floor(Math.random() * deleted.length), 1)[0]!;
            await push(old);
            f.repushes++;
          } else if (roll < 0.25 && deleted.length > 0) {
            // A new image re-using a deleted image's layer after a HEAD.
            const old = deleted[Math.floor(Math.random() * deleted.length)]!;
            const img = newImage(old.repo, `p${p}-${n}`, { layers: [old.blobs.at(-1)!.bytes, ...layers] });
            await push(img);
            mine.push(img);
          } else if (roll < 0.4 && mine.length > 0) {
            // The same layers in another repository, by cross-repository mount.
            const from = mine[mine.length - 1]!;
            const img = newImage(`${repo}-m`, `p${p}-${n}`, { layers: from.blobs.slice(1).map((b) => b.bytes) });
            await push(img, { mountFrom: from.repo });
          } else if (roll < 0.5) {
            const children = [newImage(`${repo}-i`, `c${n}a`, { layers }), newImage(`${repo}-i`, `c${n}b`, { layers: [layers[0]!] })];
            await push(newIndex(`${repo}-i`, `p${p}-${n}`, children));
            f.indexes++;
          } else {
            const img = newImage(repo, `p${p}-${n}`, { layers });
            await push(img);
            mine.push(img);
          }
          if (mine.length > 4 && Math.random() < 0.4) {
            // Delete an older image by digest, or just untag it.
            const old = mine.splice(Math.floor(Math.random() * (mine.length - 2)), 1)[0]!;
            const byDigest = Math.random() < 0.6;
            const r = await http(`${base}/v2/${old.repo}/manifests/${byDigest ? old.digest : old.tag}`, { method: 'DELETE' });
            if (r.status === 202) {
              f.deletes++;
              tagged.delete(`${old.repo}:${old.tag}`);
              deleted.push(old);
            }
          }
        }
      };
      const gcLoop = async (): Promise<void> => {
        while (Date.now() < deadline) {
          const r = await slipwayGc([...lane.storageArgs, '--grace-period', '0', '--delete-untagged'], lane.env);
          f.gcRuns++;
          if (r.code === 2) f.gcDamage.push(r.stderr);
          else assert.equal(r.code, 0, `slipway gc: ${r.stderr}`);
        }
      };
      await Promise.all([pusher(0), pusher(1), pusher(2), pusher(3), gcLoop(), gcLoop()]);
      await sleep(1500); // the scheduled GC's run in progress ends
      const scheduled = (reg.output().match(/gc: \d+ of \d+ blobs swept/g) ?? []).length;
      assert.ok(scheduled > 0, 'the scheduled GC ran');
      f.gcRuns += scheduled;
      assert.match(reg.output(), /gc: swept blob sha256:[a-f0-9]{64} \(\d+ bytes\)/, 'the scheduled GC logs each swept blob');
      const metrics = (await http(`${reg.url}/metrics`)).body.toString();
      assert.match(metrics, /slipway_registry_gc_blobs_swept_total [1-9]/, 'and counts them in /metrics');
    } finally {
      await reg.stop();
      const errors = reg.output().split('\n').filter((l) => /Error|ENOENT|^\s+at /.test(l));
      if (errors.length) console.log(`# registry errors:\n${errors.slice(0, 40).join('\n')}`);
      if (lane.errors.length) console.log("# in-process registry errors:", lane.errors.slice(0, 3));
    }
    // Every tag still listed, as a fresh process serves it, against what was pushed under it.
    const fresh = await lane.fresh();
    try {
      const repos = ((await http(`${fresh.url}/v2/_catalog`)).json<{ repositories: string[] }>().repositories ?? []).filter((r) => r.startsWith('soak/'));
      for (const repo of repos) {
        for (const tag of (await http(`${fresh.url}/v2/${repo}/tags/list`)).json<{ tags: string[] | null }>().tags ?? []) {
          f.kept++;
          const img = tagged.get(`${repo}:${tag}`);
          if (!img) {
            // Listed but never acknowledged under this name (or deleted by us): still must pull.
            const m = await http(`${fresh.url}/v2/${repo}/manifests/${tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json' } });
            if (m.status !== 200) f.broken.push(`${repo}:${tag}: ${m.status} ${m.code ?? ''}`);
            continue;
          }
          const problems = await imageProblems(fresh.url, img);
          if (problems.length) f.broken.push(`${repo}:${tag}: ${problems.join('; ')}`);
        }
      }
    } finally {
      await fresh.stop();
      await rm(work, { recursive: true, force: true });
      await lane.close();
    }
    console.log(
      `# soak ${kind} ${seconds}s: images pushed ${f.pushed}, tags kept ${f.kept}, PUTs refused ${f.refused}, GC runs ${f.gcRuns}, broken ${f.broken.length}` +
        ` (mounts ${f.mounts}, HEAD skips ${f.headSkips}, re-pushes ${f.repushes}, indexes ${f.indexes}, deletes ${f.deletes}, gc damage reports ${f.gcDamage.length})`,
    );
    assert.deepEqual(f.broken, [], 'no tag lost its manifest or blobs');
    assert.deepEqual(f.gcDamage, [], 'no slipway gc run found damage');
    assert.ok(f.pushed > 0 && f.kept > 0, "the load pushed images and some tags stay");
    void sha256;
  });
}

describe('#10 GC soak', { concurrency: 1 }, () => {
  soak('filesystem', Number(process.env.SLIPWAY_SOAK_FS_SECONDS ?? 75));
  soak('s3', Number(process.env.SLIPWAY_SOAK_S3_SECONDS ?? 45));
});
