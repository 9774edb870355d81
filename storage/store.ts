import type { StorageDriver } from './driver.js';
import { BlobStore } from './blobs.js';
import { ManifestStore } from './manifests.js';
import { UploadStore } from './uploads.js';

/** Everything the registry keeps, over one driver. */
export interface Store {
  driver: StorageDriver;
  blobs: BlobStore;
  uploads: UploadStore;
  manifests: ManifestStore;
}

export function createStore(driver: StorageDriver): Store {
  const blobs = new BlobStore(driver);
  return { driver, blobs, uploads: new UploadStore(driver, blobs), manifests: new ManifestStore(driver) };
}

/**
 * Removes upload sessions older than `maxAge` ms in every repository (crash
 * leftovers, abandoned pushes), and what the driver's unfinished writes left
 * (S3's incomplete multipart uploads) as old. Returns how many sessions.
 */
export async function purgeUploads(store: Store, maxAge: number): Promise<number> {
  const olderThan = new Date(Date.now() - maxAge);
  const repos = await store.manifests.repositories();
  const all = new Set(repos);
  for await (const info of store.driver.walk('/v2/repositories')) {
    const m = /^\/v2\/repositories\/(.+?)\/_uploads\//.exec(info.path);
    if (m?.[1]) all.add(m[1]);
  }
  const removed = await store.uploads.purge([...all], olderThan);
  await store.driver.cleanIncomplete?.(olderThan);
  return removed;
}
