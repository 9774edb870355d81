/*
 * What a worker killed mid-build leaves under <workerRoot>/tmp: step directories (`<pid>-…`)
 * with an overlay still mounted, build scratch (`build-<pid>-…`). The first build of each
 * process removes those of processes that are gone, unmounting first (lazily, when a RUN
 * that outlived its worker still holds the mount).
 */
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mountPoints, processAlive, unmountRootfs } from '../runner/index.js';
const swept = new Map<string, Promise<void>>();

export function sweepOnce(workerRoot: string): Promise<void> {
  let p = swept.get(workerRoot);
  if (!p) {
    p = sweep(join(workerRoot, 'tmp')).catch(() => undefined);
    swept.set(workerRoot, p);
  }
  return p;
}

async function sweep(tmp: string): Promise<void> {
  const names = await readdir(tmp).catch(() => [] as string[]);
  const stale = names.filter((n) => !processAlive(Number(/^(?:build-)?(\d+)-/.exec(n)?.[1])));
  if (stale.length === 0) return;
  const mounted = await mountPoints();
  for (const name of stale) {
    const dir = join(tmp, name);
    const inside = mounted.filter((m) => m.startsWith(`${dir}/`)).sort((a, b) => b.length - a.length);
    for (const m of inside) await unmountRootfs(m).catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}
