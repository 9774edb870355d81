import { link, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { NetworkError } from './errors.js';
import { processAlive } from '../pid.js';

/** A lock is held for one read-modify-write of the network state: well under a second. */
const WAIT_MS = 30_000;
/** Older than this, a lock is taken to be left by a process that hung or whose pid was reused. */
const STALE_MS = 60_000;

/** Callers in this process queue here first, so they do not poll the lock file against each other. */
const inProcess = new Map<string, Promise<unknown>>();

/**
 * Runs `fn` holding an exclusive lock on `path`, across every `slipway` process on the node:
 * the lock file is created with O_EXCL and holds the owner's pid; a lock whose owner is dead
 * is taken over.
 */
export function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const previous = inProcess.get(path) ?? Promise.resolve();
  const mine = previous.catch(() => {}).then(() => holding(path, fn));
  const tail = mine.catch(() => {});
  inProcess.set(path, tail);
  void tail.then(() => {
    if (inProcess.get(path) === tail) inProcess.delete(path);
  });
  return mine;
}

async function holding<T>(path: string, fn: () => Promise<T>): Promise<T> {
  await acquire(path);
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}

async function acquire(path: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (await takeOverIfStale(path)) continue;
    if (Date.now() > deadline) {
      const owner = (await readFile(path, 'utf8').catch(() => '')).trim();
      throw new NetworkError('LOCK_TIMEOUT', `timed out after ${WAIT_MS / 1000}s waiting for ${path} (held by pid ${owner || 'unknown'}); if no slipway process is running, delete it`);
    }
    await sleep(Math.min(5 * 2 ** attempt, 50) + Math.random() * 10);
  }
}

/**
 * Removes a lock whose owner is gone. It is renamed aside first and checked again there, so two
 * processes that both saw it stale cannot delete each other's fresh lock; a live lock taken by
 * mistake is linked back (link refuses to overwrite).
 */
async function takeOverIfStale(path: string): Promise<boolean> {
  const info = await stat(path).catch(() => undefined);
  if (!info) return true;
  const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  const old = Date.now() - info.mtimeMs > STALE_MS;
  const ownerGone = Number.isInteger(pid) && pid > 0 ? !processAlive(pid) : Date.now() - info.mtimeMs > 1000;
  if (!old && !ownerGone) return false;
  const aside = `${path}.stale-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await rename(path, aside);
  } catch {
    return true; // someone else moved it first: try to create ours again
  }
  const pidAside = Number((await readFile(aside, 'utf8').catch(() => '')).trim());
  if (pidAside !== pid && !old) await link(aside, path).catch(() => {});
  await rm(aside, { force: true });
  return true;
}
