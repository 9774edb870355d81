/**
 * `-v` and `--tmpfs`: bind mounts of host paths, named volumes (`<root>/volumes/<name>/_data`,
 * kept when containers go), anonymous volumes (for `-v /path` and the image's VOLUMEs, removed
 * by `rm -v`), all resolved once at create time into MountPoints.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { dirname, isAbsolute, normalize, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { MountPoint } from './model.js';
import type { RunnerPaths } from './paths.js';
import { BadOptionError } from './units.js';
import { secureJoin } from './users.js';

const run = promisify(execFile);

const VOLUME_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

/** Splits `SRC:DST[:OPTS]` / `DST`; a source starting with `/` or `.` is a host path. */
function parseBind(spec: string): { source?: string; destination: string; readOnly: boolean } {
  const parts = spec.split(':');
  if (parts.length > 3 || parts.some((p) => p === '')) throw new BadOptionError(`invalid volume "${spec}": expected HOST-PATH:CONTAINER-PATH[:ro], NAME:CONTAINER-PATH[:ro] or CONTAINER-PATH`);
  const [first, second, opts] = parts.length === 1 ? [undefined, parts[0]!, undefined] : parts.length === 2 && /^(ro|rw)$/.test(parts[1]!) ? [undefined, parts[0]!, parts[1]] : [parts[0], parts[1]!, parts[2]];
  const flags = (opts ?? '').split(',').filter(Boolean);
  for (const f of flags) if (!['ro', 'rw', 'z', 'Z'].includes(f)) throw new BadOptionError(`invalid volume "${spec}": unknown option "${f}" (known: ro, rw)`);
  if (!isAbsolute(second)) throw new BadOptionError(`invalid volume "${spec}": the container path "${second}" must be absolute`);
  if (normalize(second) === '/') throw new BadOptionError(`invalid volume "${spec}": the container path cannot be /`);
  return { source: first, destination: normalize(second), readOnly: flags.includes('ro') };
}

export async function resolveMounts(paths: RunnerPaths, binds: string[], tmpfs: Record<string, string>, imageVolumes: string[]): Promise<MountPoint[]> {
  const mounts: MountPoint[] = [];
  for (const spec of binds) mounts.push(await resolveBind(paths, spec));
  for (const [destination, opts] of Object.entries(tmpfs)) {
    mounts.push({ Type: 'tmpfs', Source: '', Destination: normalize(destination), RW: !opts.split(',').includes('ro'), Options: opts.split(',').filter(Boolean) });
  }
  const taken = new Set(mounts.map((m) => m.Destination));
  for (const dst of imageVolumes.map((v) => normalize(v))) {
    if (!taken.has(dst) && isAbsolute(dst) && dst !== '/') mounts.push(await anonymousVolume(paths, dst, false));
  }
  const seen = new Set<string>();
  for (const m of mounts) {
    if (seen.has(m.Destination)) throw new BadOptionError(`duplicate mount point: ${m.Destination}`);
    seen.add(m.Destination);
  }
  return mounts;
}

async function resolveBind(paths: RunnerPaths, spec: string): Promise<MountPoint> {
  const { source, destination, readOnly } = parseBind(spec);
  if (source === undefined) return anonymousVolume(paths, destination, readOnly);
  if (source.startsWith('/') || source.startsWith('.')) {
    const host = resolve(source);
    await stat(host).catch(() => {
      throw new BadOptionError(`invalid volume "${spec}": bind source path does not exist: ${host}; create it first or use a named volume`);
    });
    return { Type: 'bind', Source: host, Destination: destination, RW: !readOnly };
  }
  if (!VOLUME_NAME.test(source)) throw new BadOptionError(`invalid volume name "${source}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed; a host directory must be an absolute path`);
  await mkdir(paths.volume(source), { recursive: true });
  return { Type: 'volume', Name: source, Source: paths.volume(source), Destination: destination, RW: !readOnly };
}

async function anonymousVolume(paths: RunnerPaths, destination: string, readOnly: boolean): Promise<MountPoint> {
  const name = randomBytes(32).toString('hex');
  await mkdir(paths.volume(name), { recursive: true });
  return { Type: 'volume', Name: name, Source: paths.volume(name), Destination: destination, RW: !readOnly, Anonymous: true };
}

/** Removes the anonymous volumes of a removed container (`rm -v`); named ones stay. */
export async function removeAnonymousVolumes(mounts: MountPoint[]): Promise<void> {
  for (const m of mounts) if (m.Type === 'volume' && m.Anonymous) await rm(dirname(m.Source), { recursive: true, force: true });
}

/**
 * docker's copy-up: a volume that is still empty gets what the image has at its mount point,
 * the first time it is mounted there (`secureJoin` keeps the lookup inside the rootfs).
 */
export async function copyUpVolumes(rootfs: string, mounts: MountPoint[]): Promise<void> {
  for (const m of mounts) {
    if (m.Type !== 'volume' || (await readdir(m.Source)).length > 0) continue;
    const from = await secureJoin(rootfs, m.Destination);
    const entries = await readdir(from).catch(() => []);
    if (entries.length === 0) continue;
    await run('cp', ['-a', '--', `${from}/.`, `${m.Source}/`]).catch((err: { stderr?: string }) => {
      throw new Error(`copying the image's ${m.Destination} into volume ${m.Name}: ${err.stderr ?? String(err)}`);
    });
  }
}

/** OCI mount entries for the container's mounts. */
export function specMounts(mounts: MountPoint[]): Record<string, unknown>[] {
  return mounts.map((m) =>
    m.Type === 'tmpfs'
      ? { destination: m.Destination, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'noexec', ...(m.Options ?? [])] }
      : { destination: m.Destination, type: 'bind', source: m.Source, options: ['rbind', 'rprivate', ...(m.RW ? [] : ['ro'])] },
  );
}
