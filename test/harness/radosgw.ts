import type { ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from 'minio';
import { cephConf, daemon, freePort, run, waitHttp } from './ceph-cluster.js';

/*
 * A throw-away single-node Ceph cluster with radosgw on loopback, for the S3
 * tests (there is no MinIO server among Debian's packages). One monitor (msgr2
 * only), one bluestore OSD on a sparse file, no mgr, auth off, radosgw with the
 * beast frontend; every file (config, data, logs, sockets, pids) under one temp
 * dir. The settings and their reasons are in shared/S3-TEST-SERVER.md; the ones
 * that matter most: crc messenger modes (radosgw hangs otherwise), fast paxos
 * (start in seconds, not ~19 s), tcp_nodelay (2 ms per request, not ~45), GC
 * timers of 5 s (deleted data otherwise kept two hours).
 */
export const SHARED_S3_ENV = {
  endpoint: 'SLIPWAY_TEST_S3_ENDPOINT',
  accessKey: 'SLIPWAY_TEST_S3_ACCESS_KEY',
  secretKey: 'SLIPWAY_TEST_S3_SECRET_KEY',
} as const;
export const CEPH_PACKAGES = 'ceph-mon ceph-osd radosgw ceph-common';
const BINARIES = ['/usr/bin/ceph-mon', '/usr/bin/ceph-osd', '/usr/bin/radosgw', '/usr/bin/radosgw-admin', '/usr/bin/ceph', '/usr/bin/monmaptool'];

export interface S3Server {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  port: number;
  accessKey: string;
  secretKey: string;
  /** A path-style client for this server (region us-east-1). */
  client(): Client;
  createBucket(name: string): Promise<void>;
  /** Removes every object and incomplete multipart upload, then the bucket. */
  deleteBucket(name: string): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A radosgw this process started, with the faults a test can cause: `pause()`
 * stops the gateway process (SIGSTOP: connections are accepted by the kernel
 * but nothing answers, a real hang), `resume()` continues it; `stopGateway()`
 * kills it (connections refused), `startGateway()` starts it again on the same
 * port and data (the monitor and OSD keep running). Only radosgw's own PID is
 * signalled.
 */
export interface LocalS3Server extends S3Server {
  dir: string;
  pause(): void;
  resume(): void;
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
  /** Runs radosgw-admin against this cluster (e.g. `user suspend --uid slipway`). */
  admin(args: string[]): Promise<string>;
  /** PIDs of the cluster's daemons (monitor, gateway, OSD), e.g. for CPU accounting. */
  pids(): number[];
}

/** A bucket name no other test uses. */
export const randomBucket = (label = 't'): string => `slipway-${label}-${randomBytes(5).toString('hex')}`;

export async function ensureCephInstalled(): Promise<void> {
  for (const bin of BINARIES) {
    await access(bin).catch(() => {
      throw new Error(`${bin} is missing: install it with apt-get install -y ${CEPH_PACKAGES} (test/run.sh does)`);
    });
  }
}

/** Starts mon, radosgw and OSD (in that order: radosgw creates its pools while the OSD comes up). */
export async function startRadosgw(): Promise<LocalS3Server> {
  await ensureCephInstalled();
  const dir = await mkdtemp(join(tmpdir(), 'slipway-rgw-'));
  const children: ChildProcess[] = [];
  const killAll = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  const stop = async () => {
    process.off('exit', killAll);
    const exits = children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : null));
    killAll();
    await Promise.all(exits);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (const sub of ['mon', 'osd', 'run', 'log', 'rgw']) await mkdir(join(dir, sub));
    const monPort = await freePort();
    let rgwPort = await freePort();
    while (rgwPort === monPort) rgwPort = await freePort();
    const conf = join(dir, 'ceph.conf');
    const fsid = randomUUID();
    await writeFile(conf, cephConf(dir, fsid, monPort, rgwPort));
    await run('/usr/bin/monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, join(dir, 'monmap')]);
    await run('/usr/bin/ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', join(dir, 'monmap')]);
    children.push(daemon(dir, 'mon', '/usr/bin/ceph-mon', ['-f', '-c', conf, '-i', 'a']));
    const rgwArgs = ['-f', '-c', conf, '-n', 'client.rgw'];
    children.push(daemon(dir, 'rgw', '/usr/bin/radosgw', rgwArgs));
    const RGW = 1; // index of radosgw in children
    const osdUuid = randomUUID();
    const id = (await run('/usr/bin/ceph', ['-c', conf, '--connect-timeout', '30', 'osd', 'new', osdUuid])).trim();
    await mkdir(join(dir, 'osd', `osd.${id}`));
    await run('/usr/bin/ceph-osd', ['-c', conf, '-i', id, '--mkfs', '--osd-uuid', osdUuid], 60_000);
    children.push(daemon(dir, 'osd', '/usr/bin/ceph-osd', ['-f', '-c', conf, '-i', id]));
    await waitHttp(rgwPort, children, dir);
    const accessKey = `SLIPWAY${randomBytes(6).toString('hex').toUpperCase()}`;
    const secretKey = randomBytes(20).toString('hex');
    await run('/usr/bin/radosgw-admin', ['-c', conf, '-n', 'client.rgw', 'user', 'create', '--uid', 'slipway', '--display-name', 'slipway tests', '--access-key', accessKey, '--secret-key', secretKey]);
    const gateway = (): ChildProcess => children[RGW]!;
    const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
    const admin = (args: string[]) => run('/usr/bin/radosgw-admin', ['-c', conf, '-n', 'client.rgw', ...args]);
    return {
      ...s3Server(`http://127.0.0.1:${rgwPort}`, accessKey, secretKey, stop),
      dir,
      admin,
      pids: () => children.filter(alive).map((c) => c.pid!),
      pause: () => void (alive(gateway()) && gateway().kill('SIGSTOP')),
      resume: () => void (alive(gateway()) && gateway().kill('SIGCONT')),
      stopGateway: async () => {
        const g = gateway();
        if (!alive(g)) return;
        const exited = new Promise((r) => g.once('exit', r));
        g.kill('SIGKILL');
        await exited;
      },
      startGateway: async () => {
        if (alive(gateway())) throw new Error('radosgw is still running; stopGateway() first');
        children[RGW] = daemon(dir, 'rgw', '/usr/bin/radosgw', rgwArgs);
        await waitHttp(rgwPort, children, dir);
      },
    };
  } catch (err) {
    const log = await readFile(join(dir, 'log', 'rgw.out'), 'utf8').catch(() => '');
    await stop();
    throw new Error(`${(err as Error).message}${log ? `\nradosgw said:\n${log.slice(-2000)}` : ''}`);
  }
}

/** The S3Server view of an endpoint, with bucket helpers. */
export function s3Server(endpoint: string, accessKey: string, secretKey: string, stop: () => Promise<void>): S3Server {
  const url = new URL(endpoint);
  const port = Number(url.port);
  const client = () =>
    new Client({ endPoint: url.hostname, port, useSSL: url.protocol === 'https:', accessKey, secretKey, region: 'us-east-1', pathStyle: true });
  return {
    endpoint,
    port,
    accessKey,
    secretKey,
    client,
    createBucket: (name) => client().makeBucket(name, 'us-east-1'),
    deleteBucket: async (name) => {
      const c = client();
      if (!(await c.bucketExists(name))) return;
      for await (const u of c.listIncompleteUploads(name, '', true)) {
        const upload = u as { key: string; uploadId: string };
        await c.abortMultipartUpload(name, upload.key, upload.uploadId);
      }
      const keys: string[] = [];
      for await (const o of c.listObjectsV2(name, '', true)) keys.push((o as { name: string }).name);
      for (let i = 0; i < keys.length; i += 1000) await c.removeObjects(name, keys.slice(i, i + 1000));
      await c.removeBucket(name);
    },
    stop,
  };
}

/**
 * The S3 server a test file should use: the runner's shared one when
 * SLIPWAY_TEST_S3_ENDPOINT is set (release does nothing), else its own (release stops it).
 */
export async function sharedRadosgw(): Promise<{ s3: S3Server; release(): Promise<void> }> {
  const endpoint = process.env[SHARED_S3_ENV.endpoint];
  if (endpoint) {
    const accessKey = process.env[SHARED_S3_ENV.accessKey];
    const secretKey = process.env[SHARED_S3_ENV.secretKey];
    if (!accessKey || !secretKey) throw new Error(`${SHARED_S3_ENV.endpoint} is set but ${SHARED_S3_ENV.accessKey}/${SHARED_S3_ENV.secretKey} are not`);
    const s3 = s3Server(endpoint, accessKey, secretKey, async () => {
      throw new Error(`the shared radosgw at ${endpoint} belongs to the test runner; do not stop it`);
    });
    await s3.client().listBuckets().catch((err: Error) => {
      throw new Error(`${SHARED_S3_ENV.endpoint}=${endpoint} does not answer: ${err.message}`);
    });
    return { s3, release: async () => {} };
  }
  const s3 = await startRadosgw();
  return { s3, release: () => s3.stop() };
}

/** `node dist/test/harness/radosgw.js serve`: one radosgw for a whole test run, stopped on SIGTERM/SIGINT. */
async function serve(): Promise<void> {
  let server: S3Server | undefined;
  let signalled = false;
  const shutdown = async () => {
    signalled = true;
    if (!server) return; // still starting: stopped as soon as it is up
    const s = server;
    server = undefined;
    await s.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown());
  process.on('SIGINT', () => void shutdown());
  const started = Date.now();
  server = await startRadosgw();
  if (signalled) return shutdown();
  process.stderr.write(`radosgw ready in ${((Date.now() - started) / 1000).toFixed(1)}s\n`);
  process.stdout.write(`S3_ENDPOINT=${server.endpoint}\nS3_ACCESS_KEY=${server.accessKey}\nS3_SECRET_KEY=${server.secretKey}\n`);
}

const invokedAs = process.argv[1] ? resolve(process.argv[1]) : '';
if (invokedAs === fileURLToPath(import.meta.url) && process.argv[2] === 'serve') {
  serve().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
