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
 */
import { spawn } from 'node:child_process';
import { chmod, chown, lstat, mkdir, readFile, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { DEFAULT_CAPABILITIES, DEFAULT_PATH, lastRuncError, resolveUser, secureJoin } from '../runner/index.js';
import { envMap } from './image.js';

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
  signal?: AbortSignal;
  onLine(line: string): void;
}

export interface RunOutcome {
  exitCode: number;
  /** runc's own error when the process never started. */
  startError?: string;
  lastLines: string[];
}

const STANDARD_MOUNTS: SpecMount[] = [
  { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
  { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
  { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
  { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
];
const MASKED = ['/proc/asound', '/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware'];
const READONLY = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];
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
      rlimits: [nofile()],
      noNewPrivileges: false,
    },
    root: { path: r.rootfs, readonly: false },
    hostname: 'slipway-build',
    mounts: [...STANDARD_MOUNTS, ...r.mounts],
    linux: {
      cgroupsPath: `/slipway-build/${r.id}`,
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, ...(r.network === 'none' ? [{ type: 'network' }] : [])],
      maskedPaths: MASKED,
      readonlyPaths: READONLY,
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

function nofile(): { type: string; hard: number; soft: number } {
  const line = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const hard = line?.[2] === undefined || line[2] === 'unlimited' ? 1048576 : Math.min(Number(line[2]), 1048576);
  return { type: 'RLIMIT_NOFILE', hard, soft: hard };
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
