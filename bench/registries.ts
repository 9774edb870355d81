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
  process: Child;
  /** Stops the process (by PID) and removes its directory. */
  close(): Promise<void>;
}

export interface RegistryOptions {
  /** distribution: enable the in-memory blob descriptor cache (Debian's default config has it). */
  distributionCache?: boolean;
  /** Extra node flags for the Slipway process, e.g. --cpu-prof. */
  slipwayNodeArgs?: string[];
}

const STARTUP_MS = 30_000;

function distributionConfig(data: string, port: number, cache: boolean): string {
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    ...(cache ? ['  cache:', '    blobdescriptor: inmemory'] : []),
    '  filesystem:',
    `    rootdirectory: ${data}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '',
  ].join('\n');
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

/** CNCF distribution 2.8 (Debian's docker-registry) over filesystem storage in `dir`/data. */
export async function startDistribution(dir: string, opts: RegistryOptions = {}): Promise<Registry> {
  await mkdir(join(dir, 'data'), { recursive: true });
  const port = await freePort();
  const config = join(dir, 'config.yml');
  await writeFile(config, distributionConfig(join(dir, 'data'), port, opts.distributionCache === true));
  const child = spawnChild(DISTRIBUTION_BIN, ['serve', config]);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(`distribution on ${url}`, () => answersV2(url, child), STARTUP_MS);
  } catch (err) {
    await closer(child, dir)();
    throw err;
  }
  return { name: 'distribution', url, host: `127.0.0.1:${port}`, dir, process: child, close: closer(child, dir) };
}

/** `slipway registry` on an ephemeral loopback port over `dir`/data. */
export async function startSlipway(dir: string, opts: RegistryOptions = {}): Promise<Registry> {
  await mkdir(dir, { recursive: true });
  const args = [...(opts.slipwayNodeArgs ?? []), SLIPWAY_CLI, 'registry', '--listen', '127.0.0.1:0', '--data', join(dir, 'data')];
  const child = spawnChild(process.execPath, args);
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
  return { name: 'slipway', url, host: url.replace(/^http:\/\//, ''), dir, process: child, close: closer(child, dir) };
}

export function startRegistry(name: RegistryName, dir: string, opts: RegistryOptions): Promise<Registry> {
  return name === 'distribution' ? startDistribution(dir, opts) : startSlipway(dir, opts);
}

/** Round `round`'s order of the two registries: distribution first on even rounds, Slipway on odd ones. */
export function orderFor(round: number): RegistryName[] {
  return round % 2 === 0 ? ['distribution', 'slipway'] : ['slipway', 'distribution'];
}
