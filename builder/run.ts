/*
 * RUN: one process under `runc run`, in the foreground, over a rootfs the caller mounted (an
 * overlay of the parent layers; its upper dir becomes the layer). The build's env, user,
 * workdir and shell apply; there is no network unless asked (`host` shares the worker's
 * namespace, so its loopback is reachable). Output goes line by line to the build log.
 *
 * runc creates the mount points it needs (/proc, /dev, /sys, cache and secret targets) in the
 * rootfs, hence in the upper dir. Those it had to create are listed and removed again
 * before the layer is made (mountPointsToRemove), so no secret mount point and no /proc
 * appears in an image.
 *
 * The step's cgroup (/slipway-build/<id>) carries the worker's limits (memory, pids, a CPU
 * quota) and docker's device allowlist: a step may mknod (images ship device nodes), but
 * cannot open what it made. Seccomp is not applied yet: it comes with the sandbox parity
 * work, shared by RUN steps and containers.
 */
import { spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS, STANDARD_MOUNTS, lastRuncError, nofileLimit, resolveUser, sandboxResources, secureJoin } from '../runner/index.js';
import { envMap } from './image.js';
import type { BuildLimits } from './types.js';

export interface SpecMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface RunRequest {
  id: string;
  runc: string;
  runcRoot: string;
  /** Holds config.json and runc's log; not inside the rootfs. */
  bundle: string;
  rootfs: string;
  argv: string[];
  /** KEY=VALUE, later entries winning. */
  env: string[];
  user: string;
  workdir: string;
  network: 'none' | 'host';
  mounts: SpecMount[];
  limits: BuildLimits;
  signal?: AbortSignal;
  onLine(line: string): void;
}

export interface RunOutcome {
  exitCode: number;
  /** runc's own error when the process never started. */
  startError?: string;
  lastLines: string[];
}

/** Limits when the worker sets none: generous for a build, bounded for the machine. */
export const DEFAULT_BUILD_LIMITS: BuildLimits = { memory: 2 * 1024 ** 3, pids: 4096, cpus: availableParallelism() };

const KEEP_LINES = 20;

/** Paths (and their parents) the mounts need that do not exist yet in `rootfs`. */
export async function missingMountPoints(rootfs: string, mounts: SpecMount[]): Promise<string[]> {
  const wanted = new Set<string>();
  for (const m of [...STANDARD_MOUNTS, ...mounts]) {
    const parts = m.destination.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) wanted.add(`/${parts.slice(0, i).join('/')}`);
  }
  const missing: string[] = [];
  for (const p of wanted) if (!(await lstat(await secureJoin(rootfs, p)).catch(() => null))) missing.push(p);
  return missing;
}

export async function runInRootfs(r: RunRequest): Promise<RunOutcome> {
  const user = await resolveUser(r.rootfs, r.user);
  const cwd = r.workdir || '/';
  await mkdir(await secureJoin(r.rootfs, cwd), { recursive: true });
  const env = withDefaults(r.env, user.home);
  const caps = user.uid === 0 ? DEFAULT_CAPABILITIES : [];
  const spec = {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: user.uid, gid: user.gid, ...(user.additionalGids.length ? { additionalGids: user.additionalGids } : {}) },
      args: r.argv,
      env,
      cwd,
      capabilities: { bounding: DEFAULT_CAPABILITIES, effective: caps, permitted: caps },
      rlimits: [nofileLimit()],
      noNewPrivileges: false,
    },
    root: { path: r.rootfs, readonly: false },
    hostname: 'slipway-build',
    mounts: [...STANDARD_MOUNTS, ...r.mounts],
    linux: {
      cgroupsPath: `/slipway-build/${r.id}`,
      resources: sandboxResources(r.limits),
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, ...(r.network === 'none' ? [{ type: 'network' }] : [])],
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
    },
  };
  await writeFile(join(r.bundle, 'config.json'), JSON.stringify(spec));
  return spawnRunc(r);
}

function spawnRunc(r: RunRequest): Promise<RunOutcome> {
  const log = join(r.bundle, 'runc.log');
  const child = spawn(r.runc, ['--root', r.runcRoot, '--log', log, '--log-format', 'json', 'run', '--bundle', r.bundle, r.id], { stdio: ['ignore', 'pipe', 'pipe'] });
  const last: string[] = [];
  const take = (line: string) => {
    last.push(line);
    if (last.length > KEEP_LINES) last.shift();
    r.onLine(line);
  };
  const streams = [child.stdout!, child.stderr!].map((s) => {
    const rl = createInterface({ input: s, crlfDelay: Infinity });
    rl.on('line', take);
    return new Promise<void>((resolve) => rl.once('close', () => resolve()));
  });
  // A cancel can land before runc has created the container, when `runc kill`
  // finds nothing to signal: keep trying until `runc run` has exited.
  let exited = false;
  let retry: NodeJS.Timeout | undefined;
  const kill = (): void => {
    if (exited) return;
    spawn(r.runc, ['--root', r.runcRoot, 'kill', r.id, 'KILL'], { stdio: 'ignore' }).on('error', () => undefined);
    retry = setTimeout(kill, 250);
  };
  r.signal?.addEventListener('abort', kill, { once: true });
  if (r.signal?.aborted) kill();
  return new Promise<RunOutcome>((resolve) => {
    child.once('error', (err) => resolve({ exitCode: 127, startError: `cannot start runc: ${err.message}`, lastLines: last }));
    child.once('exit', (code, sig) => {
      exited = true;
      clearTimeout(retry);
      r.signal?.removeEventListener('abort', kill);
      void Promise.all(streams).then(async () => {
        const exitCode = code ?? 128 + (sig === 'SIGKILL' ? 9 : 15);
        const startError = lastRuncError(await readFile(log, 'utf8').catch(() => ''));
        resolve({ exitCode: startError ? startCode(startError) : exitCode, ...(startError ? { startError } : {}), lastLines: last });
      });
    });
  });
}

const startCode = (msg: string): number => (/no such file|not found/i.test(msg) ? 127 : /permission denied/i.test(msg) ? 126 : 125);

function withDefaults(env: string[], home: string): string[] {
  const m = envMap({ Env: env });
  const out = [...m.entries()].map(([k, v]) => `${k}=${v}`);
  if (!m.has('PATH')) out.unshift(DEFAULT_PATH);
  if (!m.has('HOME')) out.push(`HOME=${home}`);
  return out;
}

/** Writes `content` as a file for a bind mount (a secret, a heredoc script), owned and moded as asked. */
export async function mountableFile(path: string, content: Buffer | string, mode: number, uid = 0, gid = 0): Promise<void> {
  await writeFile(path, content, { mode });
  await chmod(path, mode);
  await chown(path, uid, gid);
}

export const bindMount = (source: string, destination: string, readonly: boolean): SpecMount => ({
  destination: posix.normalize(destination),
  type: 'bind',
  source,
  options: ['rbind', 'rprivate', readonly ? 'ro' : 'rw'],
});
