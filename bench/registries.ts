import { Agent } from 'node:http';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { send } from './http-client.js';
import { freePort, spawnChild, waitFor, type Child } from './processes.js';

export type RegistryName = 'distribution' | 'slipway';
export const REGISTRIES: readonly RegistryName[] = ['distribution', 'slipway'];

export const DISTRIBUTION_BIN = '/usr/bin/docker-registry';
/** dist/cli/main.js, beside this file's dist/bench/. */
export const SLIPWAY_CLI = resolve(fileURLToPath(import.meta.url), '../../cli/main.js');

/** A registry process serving over loopback from its own data directory. */
export interface Registry {
  name: RegistryName;
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, as docker names it */
  host: string;
  dir: string;
  /** S3 only: the bucket it stores in. */
  bucket?: string;
  process: Child;
  /** Stops the process (by PID) and removes its directory. */
  close(): Promise<void>;
}

export interface RegistryOptions {
  /** distribution: enable the in-memory blob descriptor cache (Debian's default config has it). */
  distributionCache?: boolean;
  /** Extra node flags for the Slipway process, e.g. --cpu-prof. */
  slipwayNodeArgs?: string[];
  /** Store in S3 (each registry in its own bucket) instead of the filesystem. */
  s3?: S3Storage;
  /** S3: use this bucket (another instance's) instead of a new one. */
  bucket?: string;
  /** S3: answer blob GETs with 307 to a presigned URL (distribution's default; Slipway's redirect=true). */
  redirect?: boolean;
}

/** An S3 endpoint both registries store on, each in buckets of its own. */
export interface S3Storage {
  /** http://127.0.0.1:PORT */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  /** Creates a new, empty bucket; returns its name. */
  newBucket(label: string): Promise<string>;
}

/** The shared secret of distribution's instances over one bucket (upload state is signed with it). */
const DISTRIBUTION_SECRET = 'slipway-bench-shared-secret';

function storageConfig(data: string, opts: RegistryOptions, bucket: string | undefined): string[] {
  const cache = opts.distributionCache ? ['  cache:', '    blobdescriptor: inmemory'] : [];
  if (!opts.s3 || !bucket) return ['storage:', ...cache, '  filesystem:', `    rootdirectory: ${data}`, '  delete:', '    enabled: true'];
  return [
    'storage:',
    ...cache,
    '  s3:',
    '    region: us-east-1',
    `    regionendpoint: ${opts.s3.endpoint}`,
    `    bucket: ${bucket}`,
    `    accesskey: ${opts.s3.accessKey}`,
    `    secretkey: ${opts.s3.secretKey}`,
    '    secure: false',
    '    v4auth: true',
    '  redirect:',
    `    disable: ${opts.redirect ? 'false' : 'true'}`,
    '  delete:',
    '    enabled: true',
  ];
}

const STARTUP_MS = 30_000;

function distributionConfig(data: string, port: number, opts: RegistryOptions, bucket: string | undefined): string {
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    ...storageConfig(data, opts, bucket),
    'http:',
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${DISTRIBUTION_SECRET}`,
    '',
  ].join('\n');
}

/** S3: the bucket a new registry uses. */
async function bucketFor(name: RegistryName, opts: RegistryOptions): Promise<string | undefined> {
  if (!opts.s3) return undefined;
  return opts.bucket ?? opts.s3.newBucket(name === 'distribution' ? 'dist' : 'slip');
}

async function answersV2(url: string, child: Child): Promise<boolean> {
  if (child.exited()) throw new Error(`exited before it was ready:\n${child.output()}`);
  const agent = new Agent({ keepAlive: false });
  try {
    const reply = await send(agent, new URL('/v2/', url), { method: 'GET', timeoutMs: 2000 });
    return reply.status === 200;
  } finally {
    agent.destroy();
  }
}

function closer(child: Child, dir: string): () => Promise<void> {
  return async () => {
    await child.stop();
    await rm(dir, { recursive: true, force: true });
  };
}

/** CNCF distribution 2.8 (Debian's docker-registry) over filesystem storage in `dir`/data, or over S3. */
export async function startDistribution(dir: string, opts: RegistryOptions = {}): Promise<Registry> {
  await mkdir(join(dir, 'data'), { recursive: true });
  const port = await freePort();
  const config = join(dir, 'config.yml');
  const bucket = await bucketFor('distribution', opts);
  await writeFile(config, distributionConfig(join(dir, 'data'), port, opts, bucket));
  // Its AWS SDK panics (LoadCustomCABundleError) when AWS_CA_BUNDLE is set, as it is on these machines.
  const env = { ...process.env };
  delete env.AWS_CA_BUNDLE;
  const child = spawnChild(DISTRIBUTION_BIN, ['serve', config], { env });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(`distribution on ${url}`, () => answersV2(url, child), STARTUP_MS);
  } catch (err) {
    await closer(child, dir)();
    throw err;
  }
  return { name: 'distribution', url, host: `127.0.0.1:${port}`, dir, bucket, process: child, close: closer(child, dir) };
}

/** `slipway registry` on an ephemeral loopback port over `dir`/data, or over S3. */
export async function startSlipway(dir: string, opts: RegistryOptions = {}): Promise<Registry> {
  await mkdir(dir, { recursive: true });
  const bucket = await bucketFor('slipway', opts);
  const storage: string[] = [];
  const env = { ...process.env };
  if (opts.s3 && bucket) {
    const query = `region=us-east-1&tls=false${opts.redirect ? '&redirect=true' : ''}`;
    storage.push('--storage', `s3://${new URL(opts.s3.endpoint).host}/${bucket}?${query}`);
    Object.assign(env, { SLIPWAY_S3_ACCESS_KEY: opts.s3.accessKey, SLIPWAY_S3_SECRET_KEY: opts.s3.secretKey });
  }
  const args = [...(opts.slipwayNodeArgs ?? []), SLIPWAY_CLI, 'registry', '--listen', '127.0.0.1:0', '--data', join(dir, 'data'), ...storage];
  const child = spawnChild(process.execPath, args, { env });
  let url = '';
  try {
    await waitFor(
      'slipway registry',
      async () => {
        if (child.exited()) throw new Error(`slipway exited before it was ready:\n${child.output()}`);
        url = /listening on (http:\/\/\S+)/.exec(child.output())?.[1] ?? '';
        return url !== '';
      },
      STARTUP_MS,
      50,
    );
    await waitFor(`slipway on ${url}`, () => answersV2(url, child), STARTUP_MS);
  } catch (err) {
    await closer(child, dir)();
    throw err;
  }
  return { name: 'slipway', url, host: url.replace(/^http:\/\//, ''), dir, bucket, process: child, close: closer(child, dir) };
}

export function startRegistry(name: RegistryName, dir: string, opts: RegistryOptions): Promise<Registry> {
  return name === 'distribution' ? startDistribution(dir, opts) : startSlipway(dir, opts);
}

/** Round `round`'s order of the two registries: distribution first on even rounds, Slipway on odd ones. */
export function orderFor(round: number): RegistryName[] {
  return round % 2 === 0 ? ['distribution', 'slipway'] : ['slipway', 'distribution'];
}
