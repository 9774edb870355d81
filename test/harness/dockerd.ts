import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

/** Debian's docker.io 20.10. The client in /usr/local/bin is a different build and is never used. */
export const DOCKERD_BIN = '/usr/sbin/dockerd';
export const DOCKER_BIN = '/usr/bin/docker';
/** Set by the test runner when it shares one dockerd (started with `serve`) across test files. */
export const SHARED_HOST_ENV = 'SLIPWAY_TEST_DOCKER_HOST';

const READY_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 20_000;

export interface DockerResult {
  stdout: string;
  stderr: string;
  code: number;
}

export interface DockerOptions {
  /** Piped to the client's stdin (e.g. a tar stream for `docker import -`). */
  stdin?: Readable;
  env?: NodeJS.ProcessEnv;
  /** Reject when the client exits non-zero (default false: the caller inspects `code`). */
  check?: boolean;
}

export interface Dockerd {
  /** unix:///tmp/…/docker.sock */
  host: string;
  docker(args: string[], opts?: DockerOptions): Promise<DockerResult>;
  stop(): Promise<void>;
}

/** A dockerd this process started: also says when the daemon process ends, for whatever reason. */
export interface OwnedDockerd extends Dockerd {
  exited: Promise<void>;
}

/** Runs `/usr/bin/docker -H host …args` and collects its output. */
export function runDocker(host: string, args: string[], opts: DockerOptions = {}, baseEnv: NodeJS.ProcessEnv = {}): Promise<DockerResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(DOCKER_BIN, ['-H', host, ...args], {
      stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...baseEnv, ...opts.env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    if (opts.stdin) {
      opts.stdin.on('error', reject);
      child.stdin!.on('error', () => {}); // the client's exit code reports a broken pipe better
      opts.stdin.pipe(child.stdin!);
    }
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const result = { stdout, stderr, code: code ?? 128 };
      if (opts.check && result.code !== 0) {
        reject(new Error(`docker ${args.join(' ')} failed (${code ?? signal}):\n${stderr}${stdout}`));
      } else resolveRun(result);
    });
  });
}

async function ensureInstalled(): Promise<void> {
  for (const bin of [DOCKERD_BIN, DOCKER_BIN]) {
    try {
      await access(bin);
    } catch {
      throw new Error(`${bin} is missing; the docker end-to-end tests need Debian's docker engine: apt-get install docker.io`);
    }
  }
}

async function logTail(path: string, lines = 40): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.split('\n').slice(-lines).join('\n');
}

/** Polls `docker version` until the daemon answers, the daemon dies, or the timeout passes. */
async function waitReady(host: string, child: ChildProcess, log: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`dockerd exited (${child.exitCode ?? child.signalCode}) before it answered on ${host}; log tail:\n${await logTail(log)}`);
    }
    const { code } = await runDocker(host, ['version', '--format', '{{.Server.Version}}']);
    if (code === 0) return;
    await sleep(250);
  }
  throw new Error(`dockerd did not answer on ${host} within ${READY_TIMEOUT_MS / 1000}s; log tail:\n${await logTail(log)}`);
}

/** Mount points at or below `dir`, deepest first; /proc/self/mounts escapes spaces etc. as octal. */
async function mountsUnder(dir: string): Promise<string[]> {
  const table = await readFile('/proc/self/mounts', 'utf8');
  const points = table
    .split('\n')
    .map((line) => line.split(' ')[1] ?? '')
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))))
    .filter((p) => p === dir || p.startsWith(dir + '/'));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

function run(cmd: string, args: string[]): Promise<number> {
  return new Promise((r) => {
    const child = spawn(cmd, args, { stdio: 'ignore' });
    child.once('error', () => r(127));
    child.once('close', (code) => r(code ?? 128));
  });
}

/**
 * Ends the containerd that dockerd supervised when it outlived dockerd (dockerd was SIGKILLed or
 * crashed), found by its pidfile and checked to be ours: its command line names our temp dir.
 */
async function stopOrphanContainerd(dir: string): Promise<void> {
  const pid = Number((await readFile(join(dir, 'x/containerd/containerd.pid'), 'utf8').catch(() => '')).trim());
  const ours = async () => pid > 0 && (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(dir);
  if (!(await ours())) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 40 && (await ours()); i++) await sleep(250);
  if (await ours()) process.kill(pid, 'SIGKILL');
}

/** Runs `docker ARGS` and fails the test, with docker's output, unless it exits 0; returns stdout. */
export async function dockerOk(dockerd: Dockerd, args: string[]): Promise<string> {
  const { stdout, stderr, code } = await dockerd.docker(args);
  if (code !== 0) throw new Error(`docker ${args.join(' ')} exited ${code}:\n${stderr}${stdout}`);
  return stdout;
}

/** The digest `docker push` reports on its last line: `TAG: digest: sha256:… size: N`. */
export function pushedDigest(output: string): string {
  const m = /: digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(output);
  if (!m) throw new Error(`no digest in docker push output:\n${output}`);
  return m[1]!;
}

/**
 * Starts Debian's dockerd with every path (data root, exec root, socket, pidfile) under a fresh
 * short temp dir in /tmp (unix socket paths are limited to ~108 bytes), no bridge and no iptables,
 * and loopback registries allowed over plain HTTP.
 */
export async function startDockerd(): Promise<OwnedDockerd> {
  await ensureInstalled();
  const dir = await mkdtemp('/tmp/sdk-');
  const host = `unix://${join(dir, 'docker.sock')}`;
  const log = join(dir, 'dockerd.log');
  const clientConfig = join(dir, 'client');
  await mkdir(clientConfig);
  const logFile = await open(log, 'a');
  const child = spawn(
    DOCKERD_BIN,
    [
      '--data-root', join(dir, 'root'),
      '--exec-root', join(dir, 'x'),
      '--host', host,
      '--pidfile', join(dir, 'dockerd.pid'),
      '--bridge=none', '--iptables=false', '--ip6tables=false',
      '--insecure-registry', '127.0.0.0/8',
    ],
    { stdio: ['ignore', logFile.fd, logFile.fd] },
  );
  await logFile.close();
  // 'error' stands for exit when the binary could not be started at all.
  const exited = new Promise<void>((r) => {
    child.once('exit', () => r());
    child.once('error', () => r());
  });

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        // Unref'd, so the grace timer never holds the process open after dockerd has gone.
        const grace = sleep(STOP_GRACE_MS, false, { ref: false });
        const graceful = await Promise.race([exited.then(() => true), grace]);
        if (!graceful) {
          process.stderr.write(`dockerd (pid ${child.pid}) ignored SIGTERM for ${STOP_GRACE_MS / 1000}s; killing it. Log tail:\n${await logTail(log)}\n`);
          child.kill('SIGKILL');
          await exited;
        }
      }
      await stopOrphanContainerd(dir);
      for (const point of await mountsUnder(dir)) await run('umount', ['-l', point]);
      await rm(dir, { recursive: true, force: true });
    })());

  try {
    await waitReady(host, child, log);
  } catch (err) {
    await stop();
    throw err;
  }
  const env = { DOCKER_CONFIG: clientConfig };
  return { host, docker: (args, opts) => runDocker(host, args, opts, env), stop, exited };
}

/**
 * The dockerd a test file should use: the runner's shared one when SLIPWAY_TEST_DOCKER_HOST is set
 * (release does nothing), otherwise one of its own (release stops it).
 */
export async function sharedDocker(): Promise<{ docker: Dockerd; release(): Promise<void> }> {
  const shared = process.env[SHARED_HOST_ENV];
  if (shared) {
    await ensureInstalled();
    const docker: Dockerd = {
      host: shared,
      docker: (args, opts) => runDocker(shared, args, opts),
      stop: async () => {
        throw new Error(`the shared dockerd at ${shared} belongs to the test runner; do not stop it`);
      },
    };
    await runDocker(shared, ['version'], { check: true }).catch((err: Error) => {
      throw new Error(`${SHARED_HOST_ENV}=${shared} does not answer: ${err.message}`);
    });
    return { docker, release: async () => {} };
  }
  const docker = await startDockerd();
  return { docker, release: () => docker.stop() };
}

/** `node dist/test/harness/dockerd.js serve`: one dockerd for a whole test run, stopped on SIGTERM/SIGINT. */
async function serve(): Promise<void> {
  let dockerd: OwnedDockerd | undefined;
  let signalled = false;
  const shutdown = async (code: number) => {
    signalled = true;
    if (!dockerd) return; // still starting: serve() stops it as soon as it is up
    const d = dockerd;
    dockerd = undefined;
    await d.stop();
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown(0));
  process.on('SIGINT', () => void shutdown(0));
  const started = await startDockerd();
  dockerd = started;
  if (signalled) return shutdown(0);
  process.stdout.write(`DOCKER_HOST=${started.host}\n`);
  // The dockerd child keeps the event loop alive; a daemon that dies on its own ends the session.
  await started.exited;
  if (!signalled) {
    process.stderr.write(`dockerd at ${started.host} exited unexpectedly\n`);
    await shutdown(1);
  }
}

const invokedAs = process.argv[1] ? resolve(process.argv[1]) : '';
if (invokedAs === fileURLToPath(import.meta.url) && process.argv[2] === 'serve') {
  serve().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
