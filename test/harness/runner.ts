/*
 * The runner's tests run real containers with runc, as root, on a busybox image made offline:
 * one layer directory holding /bin/busybox (busybox-static) and a symlink per applet. Each test
 * file gets its own runner root and runc root under /tmp; `cleanup()` removes every container
 * it made and then checks that no runc container, mount, cgroup, network namespace or
 * supervisor process is left.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Runner, cgroupExists, createNetwork, mountPoints, type LocalImage, type RunnerOptions } from '../../runner/index.js';
import { CLI, tempDir } from './registry.js';

export const BUSYBOX = '/bin/busybox';

/**
 * Fails (never skips) when the machine cannot run these tests, saying what to do;
 * returns undefined so it can stand as a test's `skip` option.
 */
export function requireRoot(): undefined {
  if (process.getuid?.() !== 0) throw new Error('these tests need root (runc, mounts, cgroups): run them as root');
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} is missing: apt-get install busybox-static`);
  return undefined;
}

/** A busybox rootfs in `dir`, with users root (0), app (1000, group app and staff), group staff (50), and /srv/seed.txt. */
export async function busyboxLayer(dir: string, marker = randomBytes(8).toString('hex')): Promise<void> {
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root', 'home/app', 'data']) await mkdir(join(dir, d), { recursive: true });
  await chmod(join(dir, 'tmp'), 0o1777);
  await copyFile(BUSYBOX, join(dir, 'bin/busybox'));
  await chmod(join(dir, 'bin/busybox'), 0o755);
  const applets = execFileSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
  for (const applet of applets) await symlink('busybox', join(dir, 'bin', applet));
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n');
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\nstaff:x:50:app\napp:x:1000:\n');
  await writeFile(join(dir, 'etc/slipway-marker'), `${marker}\n`);
  await mkdir(join(dir, 'srv'));
  await writeFile(join(dir, 'srv/seed.txt'), 'seeded\n');
}

/** A LocalImage over one busybox layer directory, as the image store would return it. */
export async function busyboxImage(dir: string, config: LocalImage['config'] = {}): Promise<LocalImage> {
  await busyboxLayer(join(dir, 'layer'));
  const id = `sha256:${createHash('sha256').update(dir).digest('hex')}`;
  return {
    reference: 'test.invalid/busybox:latest',
    manifestDigest: id,
    id,
    architecture: 'amd64',
    os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['sh'], ...config },
    layerDirs: [join(dir, 'layer')],
    size: 0,
  };
}

export interface RunnerHarness {
  runner: Runner;
  root: string;
  image: LocalImage;
  /** Removes every container and the roots; fails when anything of theirs is left. */
  cleanup(): Promise<void>;
}

/**
 * A runner on fresh roots. With `bridge`, containers get a bridge and a /24 of their own
 * (10.215.x.0/24, chosen among the unrouted ones), removed again by cleanup.
 */
export async function startRunner(opts: RunnerOptions & { bridge?: boolean } = {}): Promise<RunnerHarness> {
  const base = await tempDir('slipway-runner-');
  const network = opts.bridge ? await freshBridge() : undefined;
  const runner = new Runner({ root: join(base, 'root'), runcRoot: join(base, 'runc'), ...(network ? { network } : {}), ...opts });
  const image = await busyboxImage(join(base, 'image'));
  return { runner, root: base, image, cleanup: () => cleanupRunner(runner, base) };
}

async function freshBridge(): Promise<{ bridge: string; subnet: string }> {
  const routes = execFileSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  for (let i = 0; i < 256; i++) {
    const third = randomInt(0, 256);
    if (!routes.includes(`10.215.${third}.`)) return { bridge: `swl${randomBytes(3).toString('hex')}`, subnet: `10.215.${third}.0/24` };
  }
  throw new Error('no free 10.215.x.0/24 for a test bridge');
}

/** Removes every container of `runner`, checks nothing of theirs is left, then removes `base`. */
export async function cleanupRunner(runner: Runner, base: string): Promise<void> {
  const all = await runner.ps({ all: true });
  for (const c of all) await runner.rm(c.Id, { force: true, volumes: true }).catch(() => {});
  const ids = all.map((c) => c.Id);
  const problems: string[] = [];
  const left = await runner.runc().list().catch(() => []);
  if (left.length) problems.push(`runc still knows ${left.map((c) => c.id).join(', ')}`);
  const mounts = (await mountPoints()).filter((m) => m.startsWith(base));
  if (mounts.length) problems.push(`still mounted: ${mounts.join(', ')}`);
  for (const id of ids) {
    if (await cgroupExists(id)) problems.push(`cgroup of ${id} is left`);
    if (existsSync(`/var/run/netns/slipway-${id.slice(0, 12)}`)) problems.push(`network namespace of ${id} is left`);
  }
  const shims = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('shim.js') && l.includes(base));
  if (shims.length) problems.push(`supervisors still running: ${shims.join('; ')}`);
  if (runner.paths.network.bridge) {
    // Refused while any container is still attached: a leak check of its own.
    await createNetwork(runner.paths.root, runner.paths.network).remove().catch((err: Error) => problems.push(err.message));
  }
  if (problems.length === 0) await rm(base, { recursive: true, force: true });
  assert.deepEqual(problems, [], 'nothing of the runner is left after cleanup');
}

/** Polls `fn` until it returns a value other than undefined/false, at most `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(intervalMs);
  }
}

/** The State part of `inspect`. */
export async function stateOf(runner: Runner, ref: string): Promise<Record<string, unknown> & { Status: string; ExitCode: number; OOMKilled: boolean; Pid: number; Health?: { Status: string; FailingStreak: number; Log: unknown[] } }> {
  return (await runner.inspect(ref)).State as never;
}

/** Reads a file of a container's rootfs from the host side (works while it is paused). */
export async function readInContainer(runner: Runner, ref: string, path: string): Promise<string | undefined> {
  const doc = (await runner.inspect(ref)) as { GraphDriver: { Data: { MergedDir: string } } };
  return readFile(join(doc.GraphDriver.Data.MergedDir, path), 'utf8').catch(() => undefined);
}

/** The `slipway` CLI the end-to-end tests run. */
export const RUNNER_CLI = CLI;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `slipway ARGS…` (the runner's verbs) as its own process, bounded by `timeoutMs`. */
export function runnerCli(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [RUNNER_CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr }));
  });
}
