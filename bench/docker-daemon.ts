import { randomFillSync } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { run, spawnChild, waitFor, type Child, type RunResult } from './processes.js';

export const DOCKERD_BIN = '/usr/sbin/dockerd';
/** Debian's CLI (20.10): the legacy builder (DOCKER_BUILDKIT=0) works with it offline. */
export const DOCKER_BIN = '/usr/bin/docker';

/** A dockerd of our own: own data/exec roots and socket, no bridge, no iptables. Never the machine's daemon. */
export interface PrivateDockerd {
  dir: string;
  docker(args: string[], timeoutMs: number): Promise<RunResult>;
  stop(): Promise<void>;
}

/** `dir` must be short: the socket path has to fit in sockaddr_un (108 bytes). */
export async function startDockerd(dir: string): Promise<PrivateDockerd> {
  const root = join(dir, 'root');
  const exec = join(dir, 'x');
  const sock = join(dir, 'd.sock');
  const clientConfig = join(dir, 'cfg');
  await Promise.all([mkdir(root, { recursive: true }), mkdir(exec, { recursive: true }), mkdir(clientConfig, { recursive: true })]);
  // An empty daemon.json keeps /etc/docker/daemon.json (if any) out; an empty client config keeps credential helpers out.
  await writeFile(join(dir, 'daemon.json'), '{}\n');
  await writeFile(join(clientConfig, 'config.json'), '{}\n');
  const daemon = spawnChild(DOCKERD_BIN, [
    '--config-file', join(dir, 'daemon.json'),
    '--data-root', root,
    '--exec-root', exec,
    '--host', `unix://${sock}`,
    '--pidfile', join(dir, 'd.pid'),
    '--bridge=none',
    '--iptables=false',
    '--ip6tables=false',
    '--insecure-registry', '127.0.0.0/8',
    '--log-level', 'warn',
  ]);
  const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_CONFIG: clientConfig, DOCKER_BUILDKIT: '0' };
  delete env.DOCKER_HOST;
  delete env.DOCKER_CONTEXT;
  const docker = (args: string[], timeoutMs: number) => run(DOCKER_BIN, ['-H', `unix://${sock}`, ...args], { timeoutMs, env });
  const stop = () => stopDockerd(dir, daemon);
  try {
    await waitFor(
      'private dockerd',
      async () => {
        if (daemon.exited()) throw new Error(`dockerd exited:\n${daemon.output()}`);
        return (await docker(['version', '--format', '{{.Server.Version}}'], 10_000)).code === 0;
      },
      60_000,
      300,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, docker, stop };
}

/** Stops dockerd by its PID (and its managed containerd if it outlived it), unmounts what it left, removes `dir`. */
async function stopDockerd(dir: string, daemon: Child): Promise<void> {
  await daemon.stop(30_000);
  const containerdPid = Number((await readFile(join(dir, 'x', 'containerd', 'containerd.pid'), 'utf8').catch(() => '')).trim());
  if (containerdPid > 0 && existsSync(`/proc/${containerdPid}`)) {
    const cmdline = await readFile(`/proc/${containerdPid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(dir)) process.kill(containerdPid, 'SIGKILL');
  }
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((point) => point.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const point of mounts) await run('umount', ['-l', point], { timeoutMs: 30_000, check: false });
  await rm(dir, { recursive: true, force: true });
}

async function randomFile(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path);
  const chunk = Buffer.allocUnsafe(1 << 20);
  for (let left = bytes; left > 0; left -= chunk.length) {
    randomFillSync(chunk);
    if (!out.write(left >= chunk.length ? chunk : chunk.subarray(0, left))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}

export interface BenchImage {
  ref: string;
  /** `docker save` of the image, to restore it after every image was removed from the daemon. */
  archive: string;
  layers: number;
  bytes: number;
}

/**
 * Builds a `1 + extraLayers`-layer image offline: a busybox rootfs (from /bin/busybox) imported
 * as the base, then one COPY of a random file per extra layer (legacy builder, no RUN, no network).
 */
export async function buildImage(d: PrivateDockerd, work: string, extraLayers: number, layerBytes: number): Promise<BenchImage> {
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'tmp'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  await symlink('busybox', join(rootfs, 'bin', 'sh'));
  await run('tar', ['-C', rootfs, '-cf', join(work, 'base.tar'), '.'], { timeoutMs: 60_000 });
  const base = 'slipway-bench/busybox:base';
  await d.docker(['import', '--change', 'CMD ["/bin/sh"]', join(work, 'base.tar'), base], 120_000);

  const context = join(work, 'context');
  await mkdir(context, { recursive: true });
  const lines = [`FROM ${base}`];
  for (let i = 1; i <= extraLayers; i++) {
    await randomFile(join(context, `layer${i}.bin`), layerBytes);
    lines.push(`COPY layer${i}.bin /data/layer${i}.bin`);
  }
  await writeFile(join(context, 'Dockerfile'), `${lines.join('\n')}\n`);
  const ref = 'slipway-bench/big:latest';
  await d.docker(['build', '-q', '-t', ref, context], 600_000);
  const archive = join(work, 'image.tar');
  await d.docker(['save', '-o', archive, ref], 300_000);
  const size = (await d.docker(['image', 'inspect', '--format', '{{.Size}}', ref], 30_000)).stdout.trim();
  const layers = (await d.docker(['image', 'inspect', '--format', '{{len .RootFS.Layers}}', ref], 30_000)).stdout.trim();
  await rm(context, { recursive: true, force: true });
  await rm(rootfs, { recursive: true, force: true });
  return { ref, archive, layers: Number(layers), bytes: Number(size) };
}

/** Removes every image from the daemon, so a following pull has to fetch every layer. */
export async function removeAllImages(d: PrivateDockerd): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const ids = [...new Set((await d.docker(['images', '-aq'], 30_000)).stdout.split(/\s+/).filter(Boolean))];
    if (ids.length === 0) return;
    await d.docker(['rmi', '-f', ...ids], 120_000).catch(() => undefined);
    await d.docker(['image', 'prune', '-af'], 120_000);
  }
  throw new Error('images are still present in the private dockerd after 3 removal attempts');
}

/** Counts per-layer status lines ("<id>: Pushed", "<id>: Pull complete", …) in docker's output. */
export function layerStatuses(output: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const m of output.matchAll(/^[0-9a-f]{12}: (.+)$/gm)) {
    const status = (m[1] ?? '').trim();
    counts[status] = (counts[status] ?? 0) + 1;
  }
  return counts;
}
