import { parseDigest } from './digest.js';
import { indexRepository, listIndexed, markIndexBuilt, unindexRepository } from './catalog-index.js';
import { mapLimit, type RepoState } from './gc-scan.js';
import * as paths from './paths.js';
import type { Store } from './store.js';

/** GC's last steps, after the sweep: links, upload sessions, the catalog index. */

/**
 * Removes `_layers` links whose blob is gone; returns how many (would be, in a
 * dry run). The blob is looked for again before a link goes, and the link is
 * written back if the blob reappeared meanwhile (a push that stored it again
 * between that look and the delete).
 */
export async function purgeLinks(store: Store, repos: Map<string, RepoState>, existing: Set<string>, dryRun: boolean): Promise<number> {
  const { driver } = store;
  const dangling = [...repos.values()].flatMap((s) => [...s.layers.keys()].filter((d) => !existing.has(d)).map((d) => ({ repo: s.name, d: parseDigest(d) })));
  if (dryRun) return dangling.length;
  let purged = 0;
  await mapLimit(dangling, 8, async ({ repo, d }) => {
    if (await store.blobs.statGlobal(d)) return;
    await driver.delete(paths.layerLink(repo, d).replace(/\/link$/, ''));
    if (await store.blobs.statGlobal(d)) await store.blobs.link(repo, d);
    else purged++;
  });
  return purged;
}

/** Removes upload sessions started before `olderThan` (and S3's incomplete multipart uploads); returns how many. */
export async function purgeSessions(store: Store, repos: Map<string, RepoState>, olderThan: Date, dryRun: boolean): Promise<number> {
  const names = [...repos.values()].filter((s) => s.hasUploads).map((s) => s.name);
  if (!dryRun) {
    const removed = await store.uploads.purge(names, olderThan);
    await store.driver.cleanIncomplete?.(olderThan);
    return removed;
  }
  let old = 0;
  for (const repo of names) {
    for (const uuid of await store.driver.list(paths.uploadsDir(repo))) {
      const status = await store.uploads.status(repo, uuid).catch(() => null);
      if (!status || new Date(status.startedAt) < olderThan) old++;
    }
  }
  return old;
}

/**
 * Index entries for repositories with revisions that lack one, none for those
 * without a revision (catalog-index.ts); then the index counts as built.
 */
export async function repairIndex(store: Store, repos: Map<string, RepoState>, dryRun: boolean): Promise<{ added: number; removed: number }> {
  const { driver } = store;
  const counts = { added: 0, removed: 0 };
  const indexed = new Set(await listIndexed(driver));
  for (const s of repos.values()) {
    if (s.revisions.size === 0 || indexed.has(s.name)) continue;
    if (!dryRun) await indexRepository(driver, s.name);
    counts.added++;
  }
  for (const name of indexed) {
    if ((repos.get(name)?.revisions.size ?? 0) > 0) continue;
    if (dryRun || (await unindexRepository(driver, name))) counts.removed++;
  }
  if (!dryRun) await markIndexBuilt(driver);
  return counts;
}
