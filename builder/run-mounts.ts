/*
 * What a RUN step mounts besides the standard filesystems:
 *   type=cache   <workerRoot>/cache-mounts/<sha256 of id>/, kept across builds on this worker
 *                (sharing=locked: one step at a time in this process)
 *   type=secret  a file written for this step only (mode 0400 unless told), bind-mounted
 *                read-only, or the value in an environment variable; never in a layer or
 *                in the history, and not part of any cache key
 *   type=tmpfs   a fresh tmpfs
 *   type=bind    a read-only view of a context path or of another stage's filesystem
 *   heredoc      a `#!` script body, mounted under /dev (a tmpfs: no trace in the layer)
 */
import { createHash } from 'node:crypto';
import { chown, lstat, mkdir, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { secureJoin } from '../runner/index.js';
import type { BuildSecret } from './types.js';
import type { MountSpec } from './dockerfile/mounts.js';
import { bindMount, mountableFile, type SpecMount } from './run.js';

export interface MountContext {
  cacheRoot: string;
  /** Per-step scratch directory (secret files, scripts). */
  scratch: string;
  secrets: BuildSecret[];
  /** A bind mount's source directory: the context root or a mounted stage root. */
  bindRoot?: string;
  script?: { name: string; content: string };
}

export interface PreparedMounts {
  mounts: SpecMount[];
  env: string[];
  argvPrefix: string[];
  release(): void;
}

export class SecretMissingError extends Error {}

const locks = new Map<string, Promise<void>>();

export async function prepareMounts(specs: MountSpec[], ctx: MountContext): Promise<PreparedMounts> {
  const out: PreparedMounts = { mounts: [], env: [], argvPrefix: [], release: () => undefined };
  const releases: (() => void)[] = [];
  out.release = () => releases.splice(0).forEach((r) => r());
  try {
    for (const [i, m] of specs.entries()) {
      if (m.type === 'cache') out.mounts.push(await cacheMount(m, ctx, releases));
      else if (m.type === 'secret') await secretMount(m, i, ctx, out);
      else if (m.type === 'tmpfs') out.mounts.push({ destination: m.target, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', ...(m.size ? [`size=${m.size}`] : [])] });
      else {
        if (!ctx.bindRoot) throw new Error(`RUN --mount=type=bind: no source for ${m.target}`);
        out.mounts.push(bindMount(await secureJoin(ctx.bindRoot, m.source), m.target, !m.readwrite));
      }
    }
    if (ctx.script) {
      const file = join(ctx.scratch, 'script');
      await mountableFile(file, ctx.script.content, 0o755);
      out.mounts.push(bindMount(file, '/dev/.slipway-run-script', true));
      out.argvPrefix.push('/dev/.slipway-run-script');
    }
    return out;
  } catch (err) {
    out.release();
    throw err;
  }
}

async function cacheMount(m: Extract<MountSpec, { type: 'cache' }>, ctx: MountContext, releases: (() => void)[]): Promise<SpecMount> {
  const dir = join(ctx.cacheRoot, createHash('sha256').update(m.id).digest('hex').slice(0, 32));
  if (!(await lstat(dir).catch(() => null))) {
    await mkdir(dir, { recursive: true, mode: m.mode });
    await chown(dir, m.uid, m.gid);
  }
  if (m.sharing === 'locked') releases.push(await lock(dir));
  return bindMount(dir, m.target, m.readonly);
}

async function secretMount(m: Extract<MountSpec, { type: 'secret' }>, i: number, ctx: MountContext, out: PreparedMounts): Promise<void> {
  // The value the client sent: no path or variable of this worker is ever read for it.
  const value = ctx.secrets.find((s) => s.id === m.id)?.value;
  if (value === undefined) {
    if (m.required) throw new SecretMissingError(`secret "${m.id}" is required but was not provided to the build`);
    return;
  }
  if (m.env) out.env.push(`${m.env}=${value.toString()}`);
  if (m.env && !m.target) return;
  const file = join(ctx.scratch, `secret-${i}`);
  await mountableFile(file, value, m.mode, m.uid, m.gid);
  out.mounts.push(bindMount(file, m.target ?? `/run/secrets/${m.id}`, true));
}

async function lock(key: string): Promise<() => void> {
  const previous = locks.get(key) ?? Promise.resolve();
  let release!: () => void;
  const mine = new Promise<void>((r) => (release = r));
  const chained = previous.then(() => mine);
  locks.set(key, chained);
  await previous;
  return () => {
    release();
    if (locks.get(key) === chained) locks.delete(key);
  };
}

/**
 * Removes from `upper` the mount points runc created for this step (deepest first), when they
 * are still what runc made: an empty directory or an empty file.
 */
export async function removeMountPoints(upper: string, created: string[]): Promise<void> {
  for (const p of [...created].sort((a, b) => b.length - a.length)) {
    const path = join(upper, p);
    const st = await lstat(path).catch(() => null);
    if (!st) continue;
    if (st.isDirectory() && (await readdir(path)).length === 0) await rmdir(path);
    else if (st.isFile() && st.size === 0) await unlink(path);
  }
}
