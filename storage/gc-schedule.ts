import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StorageDriver } from './driver.js';
import type { GcSettings } from './gc-config.js';
import { GC_LEASE } from './gc-guard.js';
import { collectGarbage, type GcOptions, type GcReport } from './gc.js';
import type { Store } from './store.js';

/*
 * Scheduled GC inside the registry process. Several instances over one storage
 * take turns through a lease object, /v2/_gc/lease = {owner, expires}: an
 * instance whose timer fires reads it, and runs only when it is expired or its
 * own; it writes itself as owner, waits LEASE_SETTLE_MS and reads it back, and
 * goes ahead only if its write is the one that stayed (two instances that both
 * wrote see the same last writer). While GC runs the owner renews the lease;
 * when done it sets `expires` one interval ahead, so no instance runs again
 * before the next run is due. This is a lease, not a lock (a stalled instance
 * could outlive it) — and it need not be one: GC is safe against any concurrent
 * writer, another GC included; the lease only saves duplicate work.
 */
export interface GcScheduleConfig extends GcSettings, Pick<GcOptions, 'uploadMaxAge' | 'hooks'> {
  /** ms a lease lasts without renewal; default 5 minutes. */
  leaseTtl?: number;
  /** Called with each report of a run this instance made (tests, metrics). */
  onReport?(report: GcReport): void;
}

export interface GcSchedule {
  /** Aborts a run in progress and stops the timer. */
  stop(): Promise<void>;
}

interface Lease {
  owner: string;
  expires: string;
}

const LEASE_SETTLE_MS = 1000;

async function readLease(driver: StorageDriver): Promise<Lease | null> {
  const raw = await driver.getContent(GC_LEASE).catch(() => null);
  if (!raw) return null;
  try {
    return JSON.parse(raw.toString('utf8')) as Lease;
  } catch {
    return null;
  }
}

const writeLease = (driver: StorageDriver, owner: string, until: number): Promise<void> =>
  driver.putContent(GC_LEASE, JSON.stringify({ owner, expires: new Date(until).toISOString() }));

/** True when `owner` now holds the lease until `ttl` ms from now. */
export async function acquireLease(driver: StorageDriver, owner: string, ttl: number): Promise<boolean> {
  const current = await readLease(driver);
  if (current && current.owner !== owner && Date.parse(current.expires) > Date.now()) return false;
  await writeLease(driver, owner, Date.now() + ttl);
  await sleep(LEASE_SETTLE_MS);
  return (await readLease(driver))?.owner === owner;
}

export function startGcSchedule(store: Store, cfg: GcScheduleConfig, log: (message: string) => void): GcSchedule {
  const owner = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const ttl = cfg.leaseTtl ?? 5 * 60_000;
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();

  const runOnce = async (): Promise<void> => {
    if (!(await acquireLease(store.driver, owner, ttl))) return;
    const renew = setInterval(() => {
      void readLease(store.driver)
        .then((l) => (l?.owner === owner ? writeLease(store.driver, owner, Date.now() + ttl) : undefined))
        .catch((err: unknown) => log(`gc: renewing the lease failed: ${(err as Error).message}`));
    }, ttl / 3);
    renew.unref();
    try {
      const { interval: _i, leaseTtl: _l, onReport: _o, ...settings } = cfg;
      const report = await collectGarbage(store, { ...settings, signal: abort.signal });
      for (const t of report.tagsDeleted) log(`gc: deleted tag ${t}`);
      for (const m of report.manifestsDeleted) log(`gc: deleted manifest ${m}`);
      for (const s of report.sweptBlobs) log(`gc: swept blob ${s.digest} (${s.size} bytes)`);
      for (const p of report.skipped) log(`gc: skipped (changed while GC ran): ${p}`);
      for (const p of report.problems) log(`gc: damage: ${p}`);
      const b = report.blobs;
      log(
        `gc: ${b.swept} of ${b.total} blobs swept (${b.bytesFreed} bytes), ${report.tagsDeleted.length} tags and ` +
          `${report.manifestsDeleted.length} manifests deleted, ${report.linksPurged} links and ${report.uploadsPurged} uploads purged in ${report.durationMs} ms`,
      );
      cfg.onReport?.(report);
    } finally {
      clearInterval(renew);
      if ((await readLease(store.driver).catch(() => null))?.owner === owner) {
        await writeLease(store.driver, owner, Date.now() + cfg.interval).catch(() => undefined);
      }
    }
  };

  const schedule = (): void => {
    if (abort.signal.aborted) return;
    // ±10 % so instances started together do not all ask for the lease at once.
    timer = setTimeout(() => {
      running = runOnce()
        .catch((err: unknown) => {
          if (!abort.signal.aborted) log(`gc: run failed: ${err instanceof Error ? err.message : String(err)}`);
        })
        .finally(schedule);
    }, cfg.interval * (0.9 + Math.random() * 0.2));
    timer.unref();
  };
  if (cfg.interval > 0) schedule();

  return {
    stop: async () => {
      abort.abort();
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
