import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { PathNotFoundError, type StorageDriver } from './driver.js';
import type { Digest } from './digest.js';
import { blobData, ROOT } from './paths.js';

/*
 * How online GC and pushes stay out of each other's way with no lock server:
 * marker objects beside the layout of paths.ts. docs/gc.md has the protocol,
 * the invariant and why each interleaving is safe; in short:
 *
 *   /v2/_gc/
 *   ├── clock/<run>              written at a run's start: its modTime is the run's mark start
 *   ├── lease                    JSON {owner, expires}: which instance runs the scheduled GC
 *   ├── running/<run>            a GC run is in progress (renewed by it; removed first at its end)
 *   ├── records/<uuid>           JSON {repo?, tag?, manifests, blobs}: a push in progress relies on
 *   │                            these; written before the push looks for running GCs, removed
 *   │                            when the push is done (a crashed push's record goes after RECORD_STALE_MS)
 *   └── runs/<run>/              removed at the run's end, after running/<run>
 *       ├── keep/<alg>/<hex>     a push that saw this run relies on the blob
 *       ├── sweeping/<alg>/<hex> this run is about to delete the blob
 *       └── pruning/<repo>,      this run prunes tags or revisions of <repo>: "active", then "done"
 *
 * Each side writes its own marker, then reads the other's (Dekker's handshake;
 * S3 and a filesystem are read-after-write consistent), so at least one sees the other:
 * - A push writes its record, then lists running/. A run writes running/<run>,
 *   then reads records/. A run the push did not see reads its record and marks
 *   what it names; the record lives until the push's links are written, so
 *   later runs see the links instead.
 * - For every run it saw, the push writes runs/<run>/keep/<blob>, then reads
 *   runs/<run>/sweeping/<blob> (the run: sweeping, then keep). Either the run
 *   sees the keep and spares the blob, or the push sees the intent, waits for
 *   the delete to be over, and finds the blob gone: an upload stores its own
 *   bytes, a mount declines, a manifest PUT is refused before writing a link.
 *   Only then does a push check that what it names exists.
 * - After writing its links the push reads runs/<run>/pruning/<repo>: present
 *   (the run pruned or prunes the repository) or the run gone (it may have):
 *   the push writes its links again once that pruning is done.
 * Nothing here waits on a clock, except for deciding that a marker's writer
 * died: a run whose running/ marker has not been renewed for RUNNING_STALE_MS
 * (a run stops deleting long before that), a push older than RECORD_STALE_MS.
 * The ',' suffix keeps repositories `a` and `a/b` apart on a filesystem.
 */
export const GC_DIR = `${ROOT}/_gc`;
export const CLOCK_DIR = `${GC_DIR}/clock`;
export const GC_LEASE = `${GC_DIR}/lease`;
export const RUNNING_DIR = `${GC_DIR}/running`;
export const RECORDS_DIR = `${GC_DIR}/records`;
export const RUNS_DIR = `${GC_DIR}/runs`;
export const runningPath = (run: string): string => `${RUNNING_DIR}/${run}`;
export const runDir = (run: string): string => `${RUNS_DIR}/${run}`;
export const keepPath = (run: string, d: Digest): string => `${runDir(run)}/keep/${d.algorithm}/${d.hex}`;
export const sweepingPath = (run: string, d: Digest): string => `${runDir(run)}/sweeping/${d.algorithm}/${d.hex}`;
export const pruningPath = (run: string, repo: string): string => `${runDir(run)}/pruning/${repo},`;

/** A running/ marker not renewed for this long belongs to a run that died. */
export const RUNNING_STALE_MS = 10 * 60_000;
/** A run renews its running/ marker this often, and stops deleting when it could not for RUNNING_STALE_MS / 2. */
export const RUNNING_RENEW_MS = 20_000;
/** A record older than this is a crashed push's; a push that has not written its links by RECORD_STALE_MS / 2 gives up. */
export const RECORD_STALE_MS = 3600_000;
const POLL_MS = 20;

/** What a push relies on, as records/ keeps it. `digests` is the older form of `blobs`. */
export interface PushRecord {
  repo?: string;
  tag?: string;
  /** Manifests: GC marks them and what they name (an index's children and their blobs). */
  manifests?: string[];
  blobs?: string[];
  digests?: string[];
}

/**
 * Test-only pause points, per driver object: each step of the push path calls
 * `at(point, detail)` and waits for it (test/registry-gc-interleave.test.ts).
 */
export interface GuardHooks {
  at(point: string, detail?: string): Promise<void>;
}
const hooks = new WeakMap<StorageDriver, GuardHooks>();
export const setGuardHooks = (driver: StorageDriver, h: GuardHooks | undefined): void => void (h ? hooks.set(driver, h) : hooks.delete(driver));
export const pausePoint = (driver: StorageDriver, point: string, detail?: string): Promise<void> =>
  hooks.get(driver)?.at(point, detail) ?? Promise.resolve();

/** Whether a small object is there; a GET (for a missing path S3 answers a GET in one request, a stat in two). */
export async function present(driver: StorageDriver, path: string): Promise<Buffer | null> {
  return driver.getContent(path).catch((err: unknown) => {
    if (err instanceof PathNotFoundError) return null;
    throw err;
  });
}

/** Deletes a marker, trying again when the storage refuses (radosgw's DeleteObjects answers UnknownError when a write to the key races). */
export async function removeMarker(driver: StorageDriver, path: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await driver.delete(path);
    } catch (err) {
      if (attempt >= 4) throw err;
      await sleep(50 * 2 ** attempt);
    }
  }
}

/** Milliseconds to add to this host's clock to get the storage's (modTimes come from the storage); S3's HEAD has whole seconds. */
export async function storageSkew(driver: StorageDriver, probe: string): Promise<number> {
  const before = Date.now();
  await driver.putContent(probe, new Date(before).toISOString());
  const info = await driver.stat(probe);
  const after = Date.now();
  return info ? info.modTime.getTime() - (before + after) / 2 : 0;
}

/** Whether run `run` is still going: its running/ marker is there and was renewed recently. */
async function runAlive(driver: StorageDriver, run: string, skew: () => Promise<number>): Promise<boolean> {
  const info = await driver.stat(runningPath(run));
  return info !== null && Date.now() + (await skew()) - info.modTime.getTime() < RUNNING_STALE_MS;
}

/** A push in progress: what it saw when it announced itself, and the steps it owes the runs it saw. */
export interface PushGuard {
  /** The GC runs that were in progress when the push announced itself. */
  readonly runs: readonly string[];
  /**
   * Keeps every run the push saw from deleting `digests`; true per digest when
   * its bytes are stored (and stay), false when they are not (or a run removed them).
   */
  protect(digests: Digest[]): Promise<boolean[]>;
  /** After the push wrote `repo`'s links: true when they must be written again (a run pruned the repository meanwhile, now done). */
  prunedMeanwhile(repo: string): Promise<boolean>;
  /** Throws when the push took so long that GC may take its record for a crashed push's. */
  assertFresh(): void;
  /** Removes the record. */
  end(): Promise<void>;
}

/** Writes the push's record, then lists the runs in progress (see above). */
export async function beginPush(driver: StorageDriver, record: PushRecord): Promise<PushGuard> {
  const path = `${RECORDS_DIR}/${randomUUID()}`;
  const started = Date.now();
  await driver.putContent(path, JSON.stringify(record));
  const runs = await driver.list(RUNNING_DIR);
  await pausePoint(driver, 'push:announced', runs.join(','));
  let skewP: Promise<number> | undefined;
  const skew = () => (skewP ??= storageSkew(driver, `${GC_DIR}/probe`));

  /** Waits while `run` holds a sweeping marker for the blob (and is alive). */
  const waitForSweep = async (run: string, d: Digest): Promise<void> => {
    if (!(await present(driver, sweepingPath(run, d)))) return;
    await pausePoint(driver, 'push:waiting', d.value);
    while ((await driver.stat(sweepingPath(run, d))) && (await runAlive(driver, run, skew))) await sleep(POLL_MS);
  };

  /** A keep marker; a run that ended meanwhile removes its tree (a write into it may fail) and needs none. */
  const writeKeep = (run: string, d: Digest): Promise<void> =>
    driver.putContent(keepPath(run, d), path).catch(async (err: unknown) => {
      if (await driver.stat(runningPath(run))) throw err;
    });

  return {
    runs,
    async protect(digests) {
      if (runs.length > 0) {
        await Promise.all(runs.flatMap((run) => digests.map((d) => writeKeep(run, d))));
        await Promise.all(runs.flatMap((run) => digests.map((d) => waitForSweep(run, d))));
      }
      return Promise.all(digests.map(async (d) => (await driver.stat(blobData(d))) !== null));
    },
    async prunedMeanwhile(repo) {
      let again = false;
      for (const run of runs) {
        const marker = await present(driver, pruningPath(run, repo));
        if (marker === null) {
          // No marker while the run is still there: it has not come to this repository, and will see these links.
          if (!(await runAlive(driver, run, skew))) again = true;
          continue;
        }
        again = true;
        await pausePoint(driver, 'push:waiting', `pruning ${repo}`);
        for (let m: Buffer | null = marker; m !== null && m.toString() !== 'done' && (await runAlive(driver, run, skew)); ) {
          await sleep(POLL_MS);
          m = await present(driver, pruningPath(run, repo));
        }
      }
      return again;
    },
    assertFresh() {
      if (Date.now() - started > RECORD_STALE_MS / 2) throw new Error(`push took over ${RECORD_STALE_MS / 2000} s; garbage collection may no longer protect it: push again`);
    },
    async end() {
      await pausePoint(driver, 'push:ending');
      await removeMarker(driver, path);
    },
  };
}

/**
 * Runs `fn` while the blob is claimed against GC: `stored` tells whether its
 * bytes are stored (and stay while `fn` runs and after, for every run that
 * could delete them); when not, an upload stores its own bytes in `fn`.
 */
export async function claimBlob<T>(driver: StorageDriver, digest: Digest, fn: (stored: boolean) => Promise<T>): Promise<T> {
  const guard = await beginPush(driver, { blobs: [digest.value] });
  try {
    const [stored] = await guard.protect([digest]);
    await pausePoint(driver, 'push:protected', digest.value);
    return await fn(stored!);
  } finally {
    await guard.end();
  }
}

/** The records of pushes in progress; those older than RECORD_STALE_MS (storage time) are deleted when `pruneStale`. */
export async function readRecords(driver: StorageDriver, storageNow: number, pruneStale: boolean): Promise<PushRecord[]> {
  const out: PushRecord[] = [];
  for await (const info of driver.walk(RECORDS_DIR)) {
    if (info.path.includes('.tmp-')) continue; // a filesystem write not yet renamed into place
    if (storageNow - info.modTime.getTime() > RECORD_STALE_MS) {
      if (pruneStale) await removeMarker(driver, info.path).catch(() => undefined);
      continue;
    }
    const raw = await present(driver, info.path).catch(() => null);
    if (!raw) continue;
    try {
      out.push(JSON.parse(raw.toString('utf8')) as PushRecord);
    } catch {
      // a record cut short by a crash protects nothing
    }
  }
  return out;
}

/** Blobs and manifests a record names. */
export const recordBlobs = (r: PushRecord): string[] => [...(r.blobs ?? []), ...(r.digests ?? [])];
export const recordManifests = (r: PushRecord): string[] => r.manifests ?? [];
