import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PathNotFoundError, type FileInfo, type StorageDriver } from './driver.js';
import type { Digest } from './digest.js';
import { blobData, ROOT } from './paths.js';

/*
 * How online GC and pushes stay out of each other's way with no lock server:
 * marker files beside the layout of paths.ts.
 *
 *   /v2/_gc/
 *   ├── clock                   written at each GC start: its modTime is the storage's "now"
 *   ├── lease                   JSON {owner, expires}: which instance runs the scheduled GC
 *   ├── running/<run id>        a GC is running (renewed by it; gone when it ends)
 *   ├── records/<sha256>        JSON {repo?, tag?, digests}: a push relies on these digests
 *   │                           (written by every manifest PUT, and by an upload or mount
 *   │                           that reuses a blob already stored; named by the hash of
 *   │                           the JSON, so a push repeated rewrites its record: one small
 *   │                           object per distinct push, removed by GC once older than
 *   │                           its grace period)
 *   ├── touched/<alg>/<hex>     a push relies on this blob while a GC runs
 *   ├── sweeping/<alg>/<hex>    GC is about to delete this blob
 *   └── pruning/<name>,         GC is deleting tags or revisions of repository <name>
 *
 * Each side writes its own marker, then reads the other's (Dekker's handshake;
 * S3 and a filesystem are read-after-write consistent), so at least one of them
 * sees the other:
 * - A push writes its record, then lists running/. GC writes running/<id>, then
 *   lists records/. If the push saw no GC running, GC's listing includes the
 *   record: GC marks its digests and leaves its tag and revisions alone. That
 *   is the usual case and costs a push one small PUT and one LIST.
 * - If the push saw a GC running, it does per blob what GC does in reverse:
 *   writes touched/ then reads sweeping/ (GC: writes sweeping/, then reads
 *   touched/). Either GC sees the touch and keeps the blob, or the push sees
 *   GC's intent, waits for GC to finish, and finds the blob gone: an upload then
 *   stores its own bytes, a mount declines (the client uploads), a manifest
 *   PUT fails cleanly before writing any link. And after writing its links it
 *   reads pruning/<repo>: if GC was pruning the repository, the push writes
 *   its links again once GC is done (GC wrote the marker before re-reading them).
 * A stored manifest never names a blob GC removed. The ',' suffix keeps
 * repositories `a` and `a/b` apart on a filesystem.
 */
export const GC_DIR = `${ROOT}/_gc`;
export const GC_CLOCK = `${GC_DIR}/clock`;
export const GC_LEASE = `${GC_DIR}/lease`;
export const RUNNING_DIR = `${GC_DIR}/running`;
export const RECORDS_DIR = `${GC_DIR}/records`;
export const SWEEPING_DIR = `${GC_DIR}/sweeping`;
export const PRUNING_DIR = `${GC_DIR}/pruning`;
export const touchedPath = (d: Digest): string => `${GC_DIR}/touched/${d.algorithm}/${d.hex}`;
export const sweepingPath = (d: Digest): string => `${SWEEPING_DIR}/${d.algorithm}/${d.hex}`;
export const pruningPath = (repo: string): string => `${PRUNING_DIR}/${repo},`;

/** A sweeping or pruning marker older than this is left over from a GC that died; pushes ignore it. */
export const INTENT_STALE_MS = 60_000;
/** A running/ marker older than this belongs to a GC that died; the next GC removes it. */
export const RUNNING_STALE_MS = 10 * 60_000;
/** GC rewrites the markers it holds this often. */
export const INTENT_RENEW_MS = 20_000;
const POLL_MS = 25;

/** What a push relies on, as records/ keeps it. */
export interface PushRecord {
  repo?: string;
  tag?: string;
  digests: string[];
}

/**
 * Milliseconds to add to this host's clock to get the storage's clock (modTimes
 * come from the storage server); found by writing `probe` and reading its modTime.
 * S3's HEAD has whole seconds, so this errs up to 1 s early.
 */
export async function storageSkew(driver: StorageDriver, probe: string): Promise<number> {
  const before = Date.now();
  await driver.putContent(probe, new Date(before).toISOString());
  const info = await driver.stat(probe);
  const after = Date.now();
  return info ? info.modTime.getTime() - (before + after) / 2 : 0;
}

/** Writes the push's record, then tells whether a GC is running (see above). */
async function announce(driver: StorageDriver, record: PushRecord): Promise<boolean> {
  const json = JSON.stringify(record);
  await driver.putContent(`${RECORDS_DIR}/${createHash('sha256').update(json).digest('hex')}`, json);
  return (await driver.list(RUNNING_DIR)).length > 0;
}

/** Waits while a fresh marker is at `path`; true when there was one (whatever GC did meanwhile). */
async function waitWhileFresh(driver: StorageDriver, path: string, clockProbe: string): Promise<boolean> {
  // A GET, not a stat: for a missing path S3 answers a GET in one request, a stat in two.
  const found = await driver.getContent(path).then(
    () => true,
    (err: unknown) => {
      if (err instanceof PathNotFoundError) return false;
      throw err;
    },
  );
  if (!found) return false;
  let marker = await driver.stat(path);
  const skew = await storageSkew(driver, clockProbe);
  const fresh = (m: FileInfo | null): m is FileInfo => m !== null && Date.now() + skew - m.modTime.getTime() < INTENT_STALE_MS;
  while (fresh(marker)) {
    await sleep(POLL_MS);
    marker = await driver.stat(path);
  }
  return true;
}

/** The per-blob handshake of a push while a GC runs: true when the blob is stored and stays. */
async function protectBlob(driver: StorageDriver, digest: Digest): Promise<boolean> {
  const touched = touchedPath(digest);
  await driver.putContent(touched, new Date().toISOString());
  await waitWhileFresh(driver, sweepingPath(digest), touched);
  return (await driver.stat(blobData(digest))) !== null;
}

/**
 * Makes sure GC will not delete a stored blob that an upload or a mount is
 * about to reuse: true when the blob is stored (and stays), false when it is
 * not (the upload stores its own bytes; the mount declines). One stat for a
 * blob that does not exist; a small PUT and a LIST more for one that does.
 */
export async function claimBlob(driver: StorageDriver, digest: Digest): Promise<boolean> {
  if (!(await driver.stat(blobData(digest)))) return false;
  if (!(await announce(driver, { digests: [digest.value] }))) return true;
  return protectBlob(driver, digest);
}

export interface ManifestClaim {
  /** A GC was running: after writing its links the push must call awaitPruning. */
  gcRunning: boolean;
  /** The manifest's own bytes are stored (and stay). */
  stored: boolean;
  /** A named blob that GC removed meanwhile: the PUT must fail. */
  gone?: Digest;
}

/** The handshake of a manifest PUT, before it writes anything else; `named` are its blobs and children, checked to exist. */
export async function claimManifest(driver: StorageDriver, repo: string, tag: string | undefined, digest: Digest, named: Digest[]): Promise<ManifestClaim> {
  const record = { repo, tag, digests: [digest, ...named].map((d) => d.value) };
  const [gcRunning, bytes] = await Promise.all([announce(driver, record), driver.stat(blobData(digest))]);
  if (!gcRunning) return { gcRunning, stored: bytes !== null };
  const kept = await Promise.all(named.map((d) => protectBlob(driver, d)));
  const gone = named.find((_, i) => !kept[i]);
  return { gcRunning, stored: bytes !== null && (await protectBlob(driver, digest)), gone };
}

/**
 * Called by a push that saw a GC running, after it wrote a repository's links:
 * true when GC was pruning the repository meanwhile (and is done now), so the
 * links must be written again.
 */
export async function awaitPruning(driver: StorageDriver, repo: string): Promise<boolean> {
  return waitWhileFresh(driver, pruningPath(repo), `${GC_DIR}/probe`);
}

/** Removes markers left by GCs that died: intents older than INTENT_STALE_MS, running/ ones older than RUNNING_STALE_MS. */
export async function clearStaleMarkers(driver: StorageDriver, storageNow: number): Promise<number> {
  let removed = 0;
  for (const [dir, age] of [[SWEEPING_DIR, INTENT_STALE_MS], [PRUNING_DIR, INTENT_STALE_MS], [RUNNING_DIR, RUNNING_STALE_MS]] as const) {
    for await (const info of driver.walk(dir)) {
      if (storageNow - info.modTime.getTime() > age) {
        await driver.delete(info.path);
        removed++;
      }
    }
  }
  return removed;
}

/** The records written at or after `since` (storage time); older ones are deleted when `pruneOlder`. */
export async function readRecords(driver: StorageDriver, since: number, pruneOlder: boolean): Promise<PushRecord[]> {
  const out: PushRecord[] = [];
  for await (const info of driver.walk(RECORDS_DIR)) {
    if (info.path.includes('.tmp-')) continue; // a filesystem write not yet renamed into place
    if (info.modTime.getTime() < since) {
      if (pruneOlder) await driver.delete(info.path);
      continue;
    }
    const raw = await driver.getContent(info.path).catch(() => null);
    if (!raw) continue;
    try {
      out.push(JSON.parse(raw.toString('utf8')) as PushRecord);
    } catch {
      // a record cut short by a crash protects nothing
    }
  }
  return out;
}
