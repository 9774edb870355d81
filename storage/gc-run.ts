import { randomUUID } from 'node:crypto';
import type { StorageDriver } from './driver.js';
import {
  CLOCK_DIR,
  RUNNING_DIR,
  RUNNING_RENEW_MS,
  RUNNING_STALE_MS,
  RUNS_DIR,
  removeMarker,
  runDir,
  runningPath,
  storageSkew,
} from './gc-guard.js';

/** One GC run's markers (gc-guard.ts): its clock, its running/ marker kept fresh, its runs/ tree. */
export interface GcRun {
  id: string;
  /** The storage's time when the run began (its clock object's modTime, from a listing: milliseconds on S3 too). */
  markStart: number;
  /** The storage's clock now, ms. */
  now(): number;
  /** Throws unless the running/ marker was renewed recently enough that no push takes the run for dead. */
  assertAlive(): void;
  /** Removes running/<id> first (pushes then stop waiting for the run), then the run's tree. */
  end(log: (message: string) => void): Promise<void>;
}

/**
 * Starts a run: writes its clock and reads back the clock's modTime (mark
 * start), then writes running/<id>. A dry run writes only the clock.
 */
export async function beginRun(driver: StorageDriver, dryRun: boolean): Promise<GcRun> {
  const id = `${new Date().toISOString().replace(/[:.]/g, '')}-${randomUUID().slice(0, 8)}`;
  const clock = `${CLOCK_DIR}/${id}`;
  const skew = await storageSkew(driver, clock);
  let markStart = Date.now() + skew;
  for await (const info of driver.walk(CLOCK_DIR)) if (info.path === clock) markStart = info.modTime.getTime();
  let renewed = Date.now();
  let inFlight: Promise<void> = Promise.resolve();
  const write = () => {
    const at = Date.now();
    inFlight = driver.putContent(runningPath(id), new Date(at).toISOString()).then(
      () => void (renewed = at),
      () => undefined,
    );
    return inFlight;
  };
  if (!dryRun) {
    await driver.putContent(runningPath(id), new Date().toISOString());
    renewed = Date.now();
  }
  const timer = dryRun ? undefined : setInterval(() => void write(), RUNNING_RENEW_MS);
  timer?.unref();
  return {
    id,
    markStart,
    now: () => Date.now() + skew,
    assertAlive() {
      if (Date.now() - renewed > RUNNING_STALE_MS / 2) throw new Error(`gc: could not renew ${runningPath(id)} for ${Math.round((Date.now() - renewed) / 1000)} s; stopping before deleting anything more`);
    },
    async end(log) {
      clearInterval(timer);
      await inFlight;
      try {
        if (!dryRun) {
          await removeMarker(driver, runningPath(id));
          await removeMarker(driver, runDir(id));
        }
        await removeMarker(driver, clock);
      } catch (err) {
        // What is left is removed by the next run (clearStaleRuns).
        log(`gc: removing the markers of run ${id}: ${(err as Error).message}`);
      }
    },
  };
}

/**
 * Removes what runs that died left: running/ markers not renewed for
 * RUNNING_STALE_MS, runs/ trees with no running/ marker (a run writes its
 * marker before anything in its tree), old clocks. Returns how many runs.
 */
export async function clearStaleRuns(driver: StorageDriver, storageNow: number): Promise<number> {
  let removed = 0;
  const alive = new Set<string>();
  for await (const info of driver.walk(RUNNING_DIR)) {
    const id = info.path.slice(RUNNING_DIR.length + 1);
    if (storageNow - info.modTime.getTime() <= RUNNING_STALE_MS) alive.add(id);
    else {
      await removeMarker(driver, info.path);
      removed++;
    }
  }
  for (const id of await driver.list(RUNS_DIR)) {
    // Listed after running/: a run that began meanwhile has its marker by now.
    if (!alive.has(id) && !(await driver.stat(runningPath(id)))) await removeMarker(driver, runDir(id));
  }
  for await (const info of driver.walk(CLOCK_DIR)) {
    if (storageNow - info.modTime.getTime() > RUNNING_STALE_MS && !info.path.includes('.tmp-')) await removeMarker(driver, info.path);
  }
  return removed;
}
