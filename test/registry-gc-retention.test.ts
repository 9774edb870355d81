import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { collectGarbage, parseDigest, startGcSchedule, type GcReport } from '../storage/index.js';
import { assertPullable, blobFiles, fsTarget, pushImage, revisionPath, s3Target, slipwayGc, type GcTarget, type PushedImage } from './harness/gc.js';
import { MT, http, putManifest, sha256 } from './harness/http.js';
import { startRegistryProcess, tempDir } from './harness/registry.js';

/*
 * Retention applied by GC (keepLast, keepTags, untaggedAfter), --delete-untagged
 * with index children and referrers, the YAML `gc:` section, and scheduled GC:
 * its lease lets one instance at a time run over shared storage, and a registry
 * process started with a `gc:` section collects on its own.
 */
const hex = (n = 4): string => randomBytes(n).toString('hex');
const tagsOf = async (base: string, repo: string): Promise<string[]> =>
  ((await http(`${base}/v2/${repo}/tags/list`)).json<{ tags: string[] }>().tags ?? []).sort();
const manifestStatus = async (base: string, repo: string, ref: string): Promise<number> =>
  (await http(`${base}/v2/${repo}/manifests/${ref}`, { method: 'HEAD', headers: { Accept: `${MT.ociManifest}, ${MT.ociIndex}` } })).status;
const gcLines = (r: GcReport): string[] => [...r.tagsDeleted.map((t) => `tag ${t}`), ...r.manifestsDeleted.map((m) => `manifest ${m}`)].sort();

function retentionSuite(target: GcTarget): void {
  describe(`retention on ${target.label}`, () => {
    after(() => target.close());

    test('keepLast, keepTags and untaggedAfter: dry run first, then the same deletions for real', { timeout: 120_000 }, async () => {
      const env = await target.open();
      const work = await tempDir('slipway-gc-cfg-');
      try {
        const base = env.reg.url;
        const prefix = `ret${hex()}`;
        const repo = `${prefix}/app`;
        const other = `${prefix}-other/app`;
        const images = new Map<string, PushedImage>();
        for (const tag of ['v1', 't1', 't2', 't3', 't4', 't5']) images.set(tag, await pushImage(base, repo, tag));
        const t5 = images.get('t5')!;
        const sig = await pushImage(base, repo, undefined, { artifactType: 'application/vnd.example.sig', subject: { mediaType: MT.ociManifest, digest: t5.digest, size: t5.manifest.length } });
        const untagged = await pushImage(base, repo);
        const others = [await pushImage(base, other, 'x1'), await pushImage(base, other, 'x2'), await pushImage(base, other)];
        // t3 is untagged by the rule but pushed recently (filesystem only: S3 cannot backdate, everything ages there).
        const aged = [...images.values(), untagged, sig, ...others].filter((i) => !env.canBackdate || i !== images.get('t3'));
        await env.age(aged.flatMap((i) => [revisionPath(i.repo, i.digest), ...[i.digest, ...i.blobs.map((b) => b.digest)].flatMap(blobFiles)]));

        const untaggedAfter = env.canBackdate ? '1h' : '1s';
        const retention = [{ repositories: `${prefix}/*`, keepLast: 2, keepTags: '^v\\d+$', untaggedAfter: env.canBackdate ? 3600_000 : 1000 }];
        const config = join(work, 'registry.yaml');
        await writeFile(config, `gc:\n  gracePeriod: ${env.grace}ms\n  retention:\n    - repositories: "${prefix}/*"\n      keepLast: 2\n      keepTags: "^v\\\\d+$"\n      untaggedAfter: ${untaggedAfter}\n`);
        // GC leaves alone a tag written within its 1 s clock slack: both runs below must see every tag older than that.
        await sleep(1500);
        const dry = await slipwayGc([...env.storageArgs, '--config', config, '--dry-run', '--json'], env.env);
        assert.equal(dry.code, 0, dry.stderr);
        const planned = JSON.parse(dry.stdout) as GcReport;

        const report = await collectGarbage(env.store, { gracePeriod: env.grace, retention });
        assert.deepEqual(gcLines(report), gcLines(planned), 'the dry run announced exactly what the run did');
        const deletedManifests = ['t1', 't2', ...(env.canBackdate ? [] : ['t3'])].map((t) => images.get(t)!.digest).concat(untagged.digest);
        assert.deepEqual(report.tagsDeleted.sort(), ['t1', 't2', 't3'].map((t) => `${repo}:${t}`));
        assert.deepEqual(report.manifestsDeleted.sort(), deletedManifests.map((d) => `${repo}@${d}`).sort());
        assert.deepEqual(await tagsOf(base, repo), ['t4', 't5', 'v1']);
        for (const d of deletedManifests) assert.equal(await manifestStatus(base, repo, d), 404);
        for (const img of [images.get('v1')!, images.get('t4')!, t5, sig]) await assertPullable(base, img);
        if (env.canBackdate) await assertPullable(base, { ...images.get('t3')!, ref: images.get('t3')!.digest }); // untagged, still young
        // The deleted images' blobs went in the same run's sweep.
        for (const d of deletedManifests) assert.ok(report.sweptBlobs.some((b) => b.digest === d));
        assert.equal(await env.store.blobs.statGlobal(parseDigest(images.get('t1')!.blobs[1]!.digest)), null);
        // No rule matches the other repository: all stays, untagged too.
        assert.deepEqual(await tagsOf(base, other), ['x1', 'x2']);
        for (const img of others) await assertPullable(base, img);
      } finally {
        await rm(work, { recursive: true, force: true });
        await env.cleanup();
      }
    });

    test('slipway gc --delete-untagged keeps index children and referrers of tagged manifests', { timeout: 60_000 }, async () => {
      const env = await target.open();
      try {
        const base = env.reg.url;
        const repo = `untag${hex()}/app`;
        const [amd, arm] = [await pushImage(base, repo), await pushImage(base, repo)];
        const index = Buffer.from(JSON.stringify({
          schemaVersion: 2,
          mediaType: MT.ociIndex,
          manifests: [amd, arm].map((c, i) => ({ mediaType: MT.ociManifest, digest: c.digest, size: c.manifest.length, platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64' } })),
        }));
        assert.equal((await putManifest(base, repo, 'multi', index, MT.ociIndex)).status, 201);
        const sig = await pushImage(base, repo, undefined, { subject: { mediaType: MT.ociIndex, digest: sha256(index), size: index.length } });
        const loose = await pushImage(base, repo);
        await env.age([amd, arm, sig, loose].flatMap((i) => [revisionPath(repo, i.digest), ...[i.digest, ...i.blobs.map((b) => b.digest)].flatMap(blobFiles)]));
        const run = await slipwayGc([...env.storageArgs, '--delete-untagged', '--grace-period', `${env.grace}ms`], env.env);
        assert.equal(run.code, 0, run.stderr);
        assert.match(run.stdout, new RegExp(`deleted manifest ${repo}@${loose.digest}`));
        assert.match(run.stdout, /0 tags, 1 manifests, \d+ links/);
        assert.equal(await manifestStatus(base, repo, loose.digest), 404);
        for (const img of [amd, arm, sig]) await assertPullable(base, img);
        assert.equal(await manifestStatus(base, repo, 'multi'), 200);
      } finally {
        await env.cleanup();
      }
    });

    test('two schedules over one storage take turns through the lease', { timeout: 60_000 }, async () => {
      const env = await target.open();
      try {
        let active = 0;
        let most = 0;
        const runs: string[] = [];
        const schedule = (name: string) =>
          startGcSchedule(env.store, {
            interval: 300,
            gracePeriod: env.grace,
            deleteUntagged: false,
            retention: [],
            hooks: {
              afterMark: async () => {
                most = Math.max(most, ++active);
                runs.push(name);
                await sleep(400);
                active--;
              },
            },
          }, () => undefined);
        const both = [schedule('a'), schedule('b')];
        await sleep(8000);
        await Promise.all(both.map((s) => s.stop()));
        assert.ok(runs.length >= 2, `runs: ${runs.join(',')}`);
        assert.equal(most, 1, 'never two runs at once');
        assert.deepEqual(await env.store.driver.list('/v2/_gc/running'), [], 'each run removed its running marker');
      } finally {
        await env.cleanup();
      }
    });
  });
}

retentionSuite(fsTarget);
const s3 = s3Target();
retentionSuite(s3);

describe('scheduled GC in the registry process', () => {
  test('a registry started with a gc: section sweeps orphans by itself', { timeout: 60_000 }, async () => {
    const env = await fsTarget.open();
    const work = await tempDir('slipway-gc-sched-');
    try {
      const config = join(work, 'registry.yaml');
      await writeFile(config, 'gc:\n  interval: 1s\n  gracePeriod: 1m\n');
      const reg = await startRegistryProcess({ data: env.storageArgs[1], args: ['--config', config] });
      try {
        const img = await pushImage(reg.url, `sched${hex()}/app`, 'v1');
        const orphan = await pushImage(reg.url, `sched${hex()}/app`);
        assert.equal((await http(`${reg.url}/v2/${orphan.repo}/manifests/${orphan.digest}`, { method: 'DELETE' })).status, 202);
        await env.age([orphan.digest, ...orphan.blobs.map((b) => b.digest)].flatMap(blobFiles));
        const gone = async () => (await env.store.blobs.statGlobal(parseDigest(orphan.blobs[1]!.digest))) === null;
        for (let i = 0; i < 100 && !(await gone()); i++) await sleep(100);
        assert.ok(await gone(), `not swept; registry said:\n${reg.output()}`);
        assert.match(reg.output(), /slipway registry: gc: \d+ of \d+ blobs swept/);
        await assertPullable(reg.url, img);
      } finally {
        await reg.stop();
      }
    } finally {
      await rm(work, { recursive: true, force: true });
      await env.cleanup();
    }
  });
});
