/** Reading and writing the container documents (see paths.ts for where they live). */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContainerRecord, RuntimeState } from './model.js';
import { ZERO_TIME } from './model.js';
import type { RunnerPaths } from './paths.js';

export class NotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
  }
}

/**
 * Write to a temporary name, fsync, rename: a reader sees the old document or the new one. The
 * directory must exist: a supervisor finishing late must not bring back a removed container.
 */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify(value, null, 1));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

export async function readRecord(paths: RunnerPaths, id: string): Promise<ContainerRecord> {
  return JSON.parse(await readFile(paths.container(id).record, 'utf8')) as ContainerRecord;
}

export function initialState(): RuntimeState {
  return { Status: 'created', Pid: 0, ShimPid: 0, ShimStart: '', StartedAt: ZERO_TIME, FinishedAt: ZERO_TIME, ExitCode: 0, OOMKilled: false, Error: '', RestartCount: 0 };
}

export async function readState(paths: RunnerPaths, id: string): Promise<RuntimeState> {
  try {
    return { ...initialState(), ...(JSON.parse(await readFile(paths.container(id).state, 'utf8')) as Partial<RuntimeState>) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return initialState();
    throw err;
  }
}

export async function writeState(paths: RunnerPaths, id: string, state: RuntimeState): Promise<void> {
  await writeJsonAtomic(paths.container(id).state, state);
}

/** Ids of every container with a record, oldest first. */
export async function listIds(paths: RunnerPaths): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(paths.containers);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const ids = names.filter((n) => /^[0-9a-f]{64}$/.test(n));
  const created = new Map<string, string>();
  for (const id of ids) {
    const rec = await readRecord(paths, id).catch(() => undefined);
    if (rec) created.set(id, rec.Created);
  }
  return [...created.keys()].sort((a, b) => created.get(a)!.localeCompare(created.get(b)!));
}

/** A full id, a unique id prefix, or a name (docker's lookup order: id, name, prefix). */
export async function resolveId(paths: RunnerPaths, ref: string): Promise<string> {
  const ids = await listIds(paths);
  if (ids.includes(ref)) return ref;
  const byName = await readFile(join(paths.names, ref.replace(/^\//, '')), 'utf8').then((s) => s.trim(), () => undefined);
  if (byName && ids.includes(byName)) return byName;
  const matches = /^[0-9a-f]+$/.test(ref) ? ids.filter((id) => id.startsWith(ref)) : [];
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) throw new NotFoundError(`container id prefix "${ref}" is ambiguous: it matches ${matches.length} containers`);
  throw new NotFoundError(`no such container: ${ref}`);
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

/** Claims `name` for `id`; refuses a name in use, as docker does. */
export async function reserveName(paths: RunnerPaths, name: string, id: string): Promise<void> {
  if (!NAME.test(name)) throw new Error(`invalid container name "${name}": only [a-zA-Z0-9][a-zA-Z0-9_.-]+ is allowed`);
  await mkdir(paths.names, { recursive: true });
  try {
    await writeFile(join(paths.names, name), id, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const owner = await readFile(join(paths.names, name), 'utf8').then((s) => s.trim(), () => '');
    // A name left by a container whose directory is gone (removed by hand) is free again.
    if (owner && (await readFile(paths.container(owner).record).then(() => true, () => false))) {
      throw new Error(`the container name "${name}" is already in use by container ${owner}; remove or rename that container to reuse it`);
    }
    await writeFile(join(paths.names, name), id);
  }
}

export async function releaseName(paths: RunnerPaths, name: string, id: string): Promise<void> {
  const path = join(paths.names, name);
  const owner = await readFile(path, 'utf8').then((s) => s.trim(), () => undefined);
  if (owner === id) await rm(path, { force: true });
}

const ADJECTIVES = ['brave', 'calm', 'eager', 'fond', 'gentle', 'happy', 'jolly', 'keen', 'lucid', 'merry', 'nifty', 'proud', 'quiet', 'sharp', 'swift', 'witty'];
const NOUNS = ['albatross', 'barge', 'cutter', 'dinghy', 'ferry', 'galleon', 'hull', 'keel', 'ketch', 'lugger', 'punt', 'schooner', 'sloop', 'tender', 'wherry', 'yawl'];

export function generateName(): string {
  const [a, n, d] = randomBytes(3);
  return `${ADJECTIVES[a! % ADJECTIVES.length]}_${NOUNS[n! % NOUNS.length]}_${d! % 100}`;
}

/** Start time of a process (field 22 of /proc/PID/stat), or '' when it is gone: tells a reused pid apart. */
export function processStart(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

export function processAlive(pid: number, start: string): boolean {
  return pid > 0 && start !== '' && processStart(pid) === start;
}
