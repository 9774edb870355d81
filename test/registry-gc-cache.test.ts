import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { collectGarbage } from '../storage/index.js';
import { http } from './harness/http.js';
import { blobPath, newImage, openLane, pushWhole, slipwayGc } from './harness/gc.js';

/*
 * #10 The registry's manifest cache never masks a storage loss; `slipway gc`
 * tells damage (exit 2, named) from harmless races (exit 0, listed as skipped).
 */
const ACCEPT = { Accept: 'application/vnd.oci.image.manifest.v1+json' };

test('#10 manifest bytes lost behind the registry\'s back: GET by tag and by digest answer 404 soon, not stale bytes forever', { timeout: 60_000 }, async () => {
  const lane = await openLane('filesystem');
  try {
    const img = newImage('cache/app', 'v1');
    await pushWhole(lane.base, img);
    for (const ref of [img.tag, img.digest]) assert.equal((await http(`${lane.base}/v2/${img.repo}/manifests/${ref}`, { headers: ACCEPT })).status, 200);
    // The bytes go (a disk loss, an operator, a GC of another deployment): the tag and revision stay.
    await rm(join((lane.driver as unknown as { root: string }).root, blobPath(img.digest)));
    const statusOf = async (ref: string) => (await http(`${lane.base}/v2/${img.repo}/manifests/${ref}`, { headers: ACCEPT })).status;
    for (const ref of [img.tag, img.digest]) {
      let status = await statusOf(ref);
      // The cache answers for at most its revalidation bound (1 s); bounded wait well past it.
      for (let i = 0; i < 100 && status === 200; i++) {
        await sleep(50);
        status = await statusOf(ref);
      }
      assert.equal(status, 404, `GET ${img.repo}:${ref} after the bytes were lost`);
    }
  } finally {
    await lane.close();
  }
});

test('#10 slipway gc exits 2 and names the damage when a tagged manifest\'s layer is missing', { timeout: 60_000 }, async () => {
  const lane = await openLane('filesystem');
  try {
    const img = newImage('damage/app', 'v1');
    await pushWhole(lane.base, img);
    const layer = img.blobs[1]!.digest;
    await rm(join((lane.driver as unknown as { root: string }).root, blobPath(layer)));
    const r = await slipwayGc([...lane.storageArgs, '--grace-period', '1h'], lane.env);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /found damage/);
    assert.match(r.stderr, new RegExp(`damage/app@${img.digest}: names blob ${layer}, which is missing`));
    assert.match(r.stdout, /found damage: 1/);
  } finally {
    await lane.close();
  }
});

test('#10 a manifest deleted (and its bytes swept by another GC) while a run marks is a skipped race, not damage', { timeout: 60_000 }, async () => {
  const lane = await openLane('filesystem');
  try {
    const img = newImage('race/app', 'v1');
    await pushWhole(lane.base, img, true);
    const report = await collectGarbage(lane.other, {
      gracePeriod: 3600_000,
      hooks: {
        at: async (point) => {
          if (point !== 'gc:scanned') return;
          assert.equal((await http(`${lane.base}/v2/${img.repo}/manifests/${img.digest}`, { method: 'DELETE' })).status, 202);
          await lane.driver.delete(blobPath(img.digest).replace(/\/data$/, ''));
        },
      },
    });
    assert.deepEqual(report.problems, []);
    assert.equal(report.skipped.length, 1);
    assert.match(report.skipped[0]!, /race\/app@sha256:[a-f0-9]{64}: deleted while GC ran/);
    const r = await slipwayGc([...lane.storageArgs, '--grace-period', '1h'], lane.env);
    assert.equal(r.code, 0, r.stderr);
  } finally {
    await lane.close();
  }
});
