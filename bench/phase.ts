import { join } from 'node:path';
import type { Cleanup } from './cleanup.js';
import { cpuSeconds, run } from './processes.js';
import { REGISTRIES, startRegistry, type Registry, type RegistryName, type RegistryOptions } from './registries.js';
import type { CpuSample } from './report.js';

export const log = (line: string) => console.error(`[bench] ${line}`);

/** What every phase of the benchmark shares: its work directory, what to undo, CPU accounting. */
export interface PhaseContext {
  root: string;
  cleanup: Cleanup;
  cpu: CpuSample[];
  registry: RegistryOptions;
}

/**
 * Flushes dirty pages of the shared disk (untimed) so one registry's writes are not paid for
 * by the write-back during the next one's measurement.
 */
export async function settle(root: string): Promise<void> {
  await run('sync', ['-f', root], { timeoutMs: 120_000 });
}

let storagePids: (() => number[]) | undefined;

/** Counts the CPU of these processes (the S3 server's) in every measurement from now on. */
export function countStorageCpu(pids: () => number[]): void {
  storagePids = pids;
}

async function storageSeconds(): Promise<number> {
  let total = 0;
  for (const pid of storagePids?.() ?? []) total += await cpuSeconds(pid);
  return total;
}

/** Times `work` and records how much CPU this process (the client), the registry and the storage server used meanwhile. */
export async function measured<T>(cpu: CpuSample[], phase: string, reg: Registry, clientIsUs: boolean, work: () => Promise<T>): Promise<T> {
  const server0 = await cpuSeconds(reg.process.pid);
  const storage0 = await storageSeconds();
  const client0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const value = await work();
  const wallSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const client = process.cpuUsage(client0);
  const serverCpu = (await cpuSeconds(reg.process.pid)) - server0;
  const sample: CpuSample = { phase, registry: reg.name, wallSeconds, clientCpu: clientIsUs ? (client.user + client.system) / 1e6 : NaN, serverCpu };
  if (storagePids) sample.storageCpu = (await storageSeconds()) - storage0;
  cpu.push(sample);
  return value;
}

/**
 * Both registries, each with fresh data under `root` (S3: a new bucket each, unless `each`
 * gives one), stopped by `cleanup` unless closed before.
 */
export async function startPair(
  root: string,
  opts: RegistryOptions,
  cleanup: Cleanup,
  each: (name: RegistryName) => RegistryOptions = () => opts,
): Promise<Record<RegistryName, Registry>> {
  const pair: Partial<Record<RegistryName, Registry>> = {};
  for (const name of REGISTRIES) {
    const reg = await startRegistry(name, join(root, name), each(name));
    pair[name] = { ...reg, close: cleanup.add(`${name} registry`, reg.close) };
    log(`${name} on ${reg.url} (pid ${reg.process.pid}${reg.bucket ? `, bucket ${reg.bucket}` : ''}${each(name).redirect ? ', redirecting' : ''})`);
  }
  return pair as Record<RegistryName, Registry>;
}
