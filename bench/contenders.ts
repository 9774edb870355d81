/*
 * The programs the runner benchmark starts containers with, each set up in isolation under the
 * benchmark's work directory: Slipway (its CLI on a private runner root, runc root and bridge),
 * raw runc on a prepared bundle, a private dockerd, podman on private storage.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, cp, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { createNetwork } from '../runner/index.js';
import { run, type RunResult } from './processes.js';
import { SLIPWAY_CLI } from './registries.js';

export const RUNC_BIN = '/usr/sbin/runc';
export const PODMAN_BIN = '/usr/bin/podman';

/** One way of running a command, timed from spawn to exit. */
export interface Invocation {
  cmd: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

/** Slipway's CLI over a runner root of its own, with its own bridge and /24 (removed at the end). */
export interface SlipwayCli {
  root: string;
  runcRoot: string;
  env: NodeJS.ProcessEnv;
  invoke(args: string[]): Invocation;
  cli(args: string[], timeoutMs: number): Promise<RunResult>;
  /** Removes every container left, the bridge, and the roots. */
  close(): Promise<void>;
}

function freeSubnet(): string {
  const routes = execFileSync('ip', ['-4', 'route', 'show', 'table', 'all'], { encoding: 'utf8' });
  for (let i = 0; i < 256; i++) {
    const third = randomInt(0, 256);
    if (!routes.includes(`10.216.${third}.`)) return `10.216.${third}.0/24`;
  }
  throw new Error('no free 10.216.x.0/24 for the benchmark bridge');
}

/**
 * A copy of the compiled tree (dist/, with package.json and a link to node_modules) under `dir`:
 * the benchmark times one build throughout, even when the working tree is rebuilt meanwhile.
 */
export async function snapshotBuild(dir: string): Promise<string> {
  const repo = resolve(dirname(SLIPWAY_CLI), '../..');
  await mkdir(dir, { recursive: true });
  await cp(join(repo, 'dist'), join(dir, 'dist'), { recursive: true });
  await copyFile(join(repo, 'package.json'), join(dir, 'package.json'));
  await symlink(join(repo, 'node_modules'), join(dir, 'node_modules'));
  return join(dir, 'dist', 'cli', 'main.js');
}

export async function slipwayCli(dir: string, cliPath = SLIPWAY_CLI): Promise<SlipwayCli> {
  const root = join(dir, 'root');
  const runcRoot = join(dir, 'runc');
  const network = { bridge: `swb${randomBytes(3).toString('hex')}`, subnet: freeSubnet() };
  const env: NodeJS.ProcessEnv = { ...process.env, SLIPWAY_RUNNER_ROOT: root, SLIPWAY_RUNC_ROOT: runcRoot, SLIPWAY_BRIDGE: network.bridge, SLIPWAY_SUBNET: network.subnet };
  const invoke = (args: string[]): Invocation => ({ cmd: process.execPath, args: [cliPath, ...args], env });
  const cli = (args: string[], timeoutMs: number) => run(process.execPath, [cliPath, ...args], { timeoutMs, env });
  const close = async () => {
    const ids = (await cli(['ps', '-aq', '--no-trunc'], 60_000).catch(() => undefined))?.stdout.split(/\s+/).filter(Boolean) ?? [];
    if (ids.length) await cli(['rm', '-f', '-v', ...ids], 120_000).catch(() => undefined);
    await createNetwork(root, network).remove().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  return { root, runcRoot, env, invoke, cli, close };
}

/**
 * An OCI bundle for `runc run` over `rootfs`: the config of `runc spec` made non-interactive,
 * running `true`, with a writable root (the overlay Slipway gives a container is writable too).
 * Its namespaces are runc's defaults, a new network namespace among them (loopback only).
 */
export async function runcSpecBundle(bundle: string, rootfs: string): Promise<void> {
  await mkdir(bundle, { recursive: true });
  await run(RUNC_BIN, ['spec', '--bundle', bundle], { timeoutMs: 30_000 });
  const spec = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as {
    process: { terminal: boolean; args: string[]; env: string[] };
    root: { path: string; readonly: boolean };
  };
  spec.process.terminal = false;
  spec.process.args = ['true'];
  spec.process.env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  spec.root = { path: rootfs, readonly: false };
  await writeFile(join(bundle, 'config.json'), JSON.stringify(spec, null, 1));
}

interface SlipwaySpec {
  process: { args: string[] };
  root: { path: string; readonly: boolean };
  mounts: { destination: string; source: string; type: string; options?: string[] }[];
  linux: { cgroupsPath: string; namespaces: { type: string; path?: string }[] };
}

/**
 * A bundle whose config.json is the one Slipway wrote for a `--network none` container (its
 * mounts, cgroup resources, devices, capabilities), pointed at `rootfs`, with a network
 * namespace of runc's making and copies of the /etc files Slipway bind-mounts.
 */
export async function slipwaySpecBundle(bundle: string, rootfs: string, specText: string): Promise<void> {
  const spec = JSON.parse(specText) as SlipwaySpec;
  await mkdir(join(bundle, 'etc'), { recursive: true });
  const etc: Record<string, string> = { '/etc/hosts': '127.0.0.1\tlocalhost\n', '/etc/resolv.conf': 'nameserver 127.0.0.1\n', '/etc/hostname': 'bench\n' };
  for (const m of spec.mounts) {
    const content = etc[m.destination];
    if (content === undefined || m.type !== 'bind') continue;
    m.source = join(bundle, m.destination);
    await writeFile(m.source, content);
  }
  spec.process.args = ['true'];
  spec.root = { path: rootfs, readonly: false };
  spec.linux.cgroupsPath = `/slipway-bench-${randomBytes(6).toString('hex')}`;
  spec.linux.namespaces = spec.linux.namespaces.map((n) => (n.type === 'network' ? { type: 'network' } : n));
  await writeFile(join(bundle, 'config.json'), JSON.stringify(spec, null, 1));
}

/** `runc run` of a bundle under a runc root of the benchmark's; each run gets a fresh container id. */
export function runcInvocation(runcRoot: string, bundle: string): () => Invocation {
  let n = 0;
  const prefix = `bench-${randomBytes(3).toString('hex')}`;
  return () => ({ cmd: RUNC_BIN, args: ['--root', runcRoot, 'run', '--bundle', bundle, `${prefix}-${n++}`] });
}

/** Deletes whatever runc still knows under `runcRoot` (a run cut short by a timeout). */
export async function cleanRuncRoot(runcRoot: string): Promise<void> {
  if (!existsSync(runcRoot)) return;
  const list = await run(RUNC_BIN, ['--root', runcRoot, 'list', '-q'], { timeoutMs: 30_000, check: false });
  for (const id of list.stdout.split(/\s+/).filter(Boolean)) await run(RUNC_BIN, ['--root', runcRoot, 'delete', '--force', id], { timeoutMs: 30_000, check: false });
  await rm(runcRoot, { recursive: true, force: true });
}

/** podman with all of its state under `dir`, configured as DESIGN.md §8 says it has to be here. */
export interface Podman {
  dir: string;
  invoke(args: string[]): Invocation;
  podman(args: string[], timeoutMs: number): Promise<RunResult>;
  /** `--ulimit`s podman needs to run a container on this machine. */
  runLimits: string[];
  close(): Promise<void>;
}

export async function podman(dir: string): Promise<Podman> {
  for (const d of ['root', 'run', 'tmp']) await mkdir(join(dir, d), { recursive: true });
  await writeFile(join(dir, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await writeFile(join(dir, 'registries.conf'), '');
  const globals = [
    '--root', join(dir, 'root'),
    '--runroot', join(dir, 'run'),
    '--tmpdir', join(dir, 'tmp'),
    '--storage-driver', 'overlay',
    '--cgroup-manager', 'cgroupfs',
    '--events-backend', 'file',
  ];
  const env: NodeJS.ProcessEnv = { ...process.env, CONTAINERS_REGISTRIES_CONF: join(dir, 'registries.conf') };
  const invoke = (args: string[]): Invocation => ({ cmd: PODMAN_BIN, args: [...globals, ...args], env });
  const call = (args: string[], timeoutMs: number) => run(PODMAN_BIN, [...globals, ...args], { timeoutMs, env });
  const close = async () => {
    await call(['rm', '-af'], 120_000).catch(() => undefined);
    await call(['rmi', '-af'], 120_000).catch(() => undefined);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
  };
  return { dir, invoke, podman: call, runLimits: ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'], close };
}

/** Lazily unmounts every mount point under `dir`, deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const points = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run('umount', ['-l', p], { timeoutMs: 30_000, check: false });
}
