import type { StorageDriver } from './driver.js';
import { mapLimit } from './gc-scan.js';
import { REPOSITORIES, ROOT, revisionsDir } from './paths.js';
import { s3Error } from './s3-client.js';
import { S3Driver } from './s3-driver.js';

/*
 * The repository index behind _catalog, kept in the storage itself so every
 * registry instance over it answers the same:
 *
 *   /v2/_index/
 *   ├── repositories/<name>,     one small object per repository that holds a manifest
 *   └── built                    the index holds every repository (written after one full walk)
 *
 * The ',' sorts below every character a name may hold, so key order is name
 * order: a catalog page is one listing of the prefix in key order that starts
 * after `<last>,` — on S3 one ListObjectsV2 with start-after, however many
 * repositories there are, instead of a walk of the repositories tree.
 * A manifest PUT writes its repository's entry after the revision link (always:
 * idempotent, and no cache to go stale across instances). Only GC removes an
 * entry, for a repository with no revision left, and re-checks after removing
 * it so that a concurrent first push keeps its entry.
 */
const INDEX_DIR = `${ROOT}/_index/repositories`;
const BUILT = `${ROOT}/_index/built`;
const SUFFIX = ',';

export const indexEntry = (name: string): string => `${INDEX_DIR}/${name}${SUFFIX}`;

export async function indexRepository(driver: StorageDriver, name: string): Promise<void> {
  await driver.putContent(indexEntry(name), name);
}

/** Removes the entry of a repository that has no revision; false (entry kept) when one appeared meanwhile. */
export async function unindexRepository(driver: StorageDriver, name: string): Promise<boolean> {
  await driver.delete(indexEntry(name));
  if (!(await hasRevisions(driver, name))) return true;
  await indexRepository(driver, name);
  return false;
}

/** Whether any manifest revision is stored in the repository (a filesystem keeps empty directories). */
export async function hasRevisions(driver: StorageDriver, name: string): Promise<boolean> {
  for (const alg of await driver.list(revisionsDir(name))) {
    if ((await driver.list(`${revisionsDir(name)}/${alg}`)).length > 0) return true;
  }
  return false;
}

export interface ListPage {
  /** Only names sorting after this one. */
  last?: string;
  /** At most this many names. */
  limit?: number;
}

/** Indexed repository names in order, one page of them when `limit` is given. */
export async function listIndexed(driver: StorageDriver, page: ListPage = {}): Promise<string[]> {
  if (page.limit === 0) return [];
  if (driver instanceof S3Driver) return listS3(driver, page);
  // Other drivers walk in their own order (directories apart from files): sort here.
  const names: string[] = [];
  for await (const info of driver.walk(INDEX_DIR)) {
    const name = info.path.slice(INDEX_DIR.length + 1);
    if (!name.endsWith(SUFFIX)) continue; // e.g. a filesystem temp file being renamed into place
    const repo = name.slice(0, -SUFFIX.length);
    if (page.last === undefined || repo > page.last) names.push(repo);
  }
  names.sort();
  return page.limit === undefined ? names : names.slice(0, page.limit);
}

/*
 * S3: the driver interface has no "list from a key" (list() reads a whole
 * directory), so this reads the bucket through the driver's client, with the
 * driver's key prefix. A `listAfter` in the driver interface would make this generic.
 */
async function listS3(driver: S3Driver, page: ListPage): Promise<string[]> {
  const { client, bucket } = driver.t;
  const base = (driver.options.prefix ?? '').replace(/^\/+|\/+$/g, '');
  const prefix = `${base ? `${base}/` : ''}${INDEX_DIR.slice(1)}/`;
  const startAfter = page.last === undefined ? '' : `${prefix}${page.last}${SUFFIX}`;
  const out: string[] = [];
  let token = '';
  do {
    const want = Math.min(1000, page.limit === undefined ? 1000 : page.limit - out.length);
    const res = await client.listObjectsV2Query(bucket, prefix, token, '', want, startAfter).catch((err: unknown) => {
      throw s3Error(driver.t, 'listing the repository index', err);
    });
    for (const o of res.objects) {
      const key = o.name ?? '';
      if (key.endsWith(SUFFIX)) out.push(key.slice(prefix.length, -SUFFIX.length));
    }
    token = res.isTruncated ? res.nextContinuationToken : '';
  } while (token && (page.limit === undefined || out.length < page.limit));
  return page.limit === undefined ? out : out.slice(0, page.limit);
}

/**
 * Fills the index from the repositories tree once per storage (storage written
 * before the index existed); cheap afterwards (one stat per process).
 */
export async function ensureIndexBuilt(driver: StorageDriver): Promise<void> {
  if (await driver.stat(BUILT)) return;
  await mapLimit(await walkRepositories(driver), 16, (name) => indexRepository(driver, name));
  await driver.putContent(BUILT, new Date().toISOString());
}

/** Names of all repositories with a `_manifests` directory, found by walking the tree (slow on S3). */
export async function walkRepositories(driver: StorageDriver): Promise<string[]> {
  const out: string[] = [];
  const visit = async (prefix: string): Promise<void> => {
    const children = await driver.list(prefix ? `${REPOSITORIES}/${prefix}` : REPOSITORIES);
    if (children.includes('_manifests') && prefix) out.push(prefix);
    await mapLimit(children.filter((c) => !c.startsWith('_')), 8, (child) => visit(prefix ? `${prefix}/${child}` : child));
  };
  await visit('');
  return out.sort();
}

/** Records that the index is complete (GC just added every missing entry). */
export async function markIndexBuilt(driver: StorageDriver): Promise<void> {
  if (!(await driver.stat(BUILT))) await driver.putContent(BUILT, new Date().toISOString());
}
