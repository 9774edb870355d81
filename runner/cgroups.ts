/*
 * cgroup limits go into the runtime spec's linux.resources and runc writes them. The
 * cgroupsPath is absolute (`/slipway/<id>`, paths.ts): under cgroup v1 runc creates it under
 * every controller's mount (/sys/fs/cgroup/memory/slipway/<id>, …), under v2 it is one
 * directory of the unified tree. net_cls and net_prio exist only in v1; a kernel may have them
 * enabled but not mounted, so they are mounted on first use.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, stat, symlink } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { promisify } from 'node:util';
import type { HostConfig, ThrottleDevice } from './model.js';
import { BadOptionError } from './units.js';

const run = promisify(execFile);
const CGROUP = '/sys/fs/cgroup';
const MIN_MEMORY = 6 * 1024 * 1024;
const CPU_PERIOD = 100_000;

export type CgroupVersion = 1 | 2;

export function cgroupVersion(): CgroupVersion {
  return existsSync(`${CGROUP}/cgroup.controllers`) ? 2 : 1;
}

/** Mount point of a v1 controller (from /proc/self/mountinfo), or undefined. */
export function v1Mount(controller: string): string | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    const [fstype, , superOpts] = (right ?? '').split(' ');
    if (fstype === 'cgroup' && superOpts?.split(',').includes(controller)) return left!.split(' ')[4];
  }
  return undefined;
}

/** Checks the limits against this host, with docker's messages where docker has one. */
export async function validateResources(hc: HostConfig): Promise<void> {
  if (hc.Memory > 0 && hc.Memory < MIN_MEMORY) throw new BadOptionError('Minimum memory limit allowed is 6MB');
  if (hc.MemorySwap > 0 && hc.Memory === 0) throw new BadOptionError('You should always set the Memory limit when using Memoryswap limit, see usage');
  if (hc.MemorySwap > 0 && hc.MemorySwap < hc.Memory) throw new BadOptionError('Minimum memoryswap limit should be larger than memory limit, see usage');
  const cpus = availableParallelism();
  if (hc.NanoCpus > cpus * 1e9 || (hc.NanoCpus > 0 && hc.NanoCpus < 1e7)) {
    throw new BadOptionError(`Range of CPUs is from 0.01 to ${cpus}.00, as there are only ${cpus} CPUs available`);
  }
  checkCpuset(hc.CpusetCpus, 'cpus', 'CPUs');
  checkCpuset(hc.CpusetMems, 'mems', 'memory nodes');
  if (hc.BlkioWeight > 0 && !blkioWeightSupported()) {
    throw new BadOptionError(
      '--blkio-weight needs a block I/O weight file (blkio.weight or blkio.bfq.weight), which this kernel only offers with the BFQ scheduler: echo bfq > /sys/block/DEVICE/queue/scheduler',
    );
  }
  if (hc.PidsLimit > 0 && cgroupVersion() === 1 && !v1Mount('pids')) throw new BadOptionError('--pids-limit: the pids cgroup controller is not mounted on this host');
  await throttles(hc.BlkioDeviceReadBps, '--device-read-bps');
  await throttles(hc.BlkioDeviceWriteBps, '--device-write-bps');
  for (const d of hc.Devices) await deviceNumbers(d.PathOnHost, '--device');
}

function checkCpuset(requested: string, kind: 'cpus' | 'mems', what: string): void {
  if (!requested) return;
  const wanted = parseCpuList(requested, `--cpuset-${kind}`);
  const availableText = readFirst([`${CGROUP}/cpuset/cpuset.effective_${kind}`, `${CGROUP}/cpuset.${kind}.effective`]) ?? '0';
  const available = parseCpuList(availableText, 'the host cpuset');
  const missing = [...wanted].filter((n) => !available.has(n));
  if (missing.length) throw new BadOptionError(`Requested ${what} are not available - requested ${requested}, available: ${availableText}`);
}

/** `0-2,4` → {0,1,2,4}. */
export function parseCpuList(text: string, flag: string): Set<number> {
  const out = new Set<number>();
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new BadOptionError(`invalid ${flag} "${text}": expected a list like 0-2,4`);
    const [from, to] = [Number(m[1]), Number(m[2] ?? m[1])];
    if (to < from || to - from > 4096) throw new BadOptionError(`invalid range "${part}" in ${flag}`);
    for (let n = from; n <= to; n++) out.add(n);
  }
  return out;
}

function readFirst(paths: string[]): string | undefined {
  for (const p of paths) {
    try {
      return readFileSync(p, 'utf8').trim();
    } catch {
      // try the next
    }
  }
  return undefined;
}

function blkioWeightSupported(): boolean {
  if (cgroupVersion() === 2) return readFileSync(`${CGROUP}/cgroup.controllers`, 'utf8').split(' ').includes('io');
  const mount = v1Mount('blkio');
  return !!mount && (existsSync(`${mount}/blkio.weight`) || existsSync(`${mount}/blkio.bfq.weight`));
}

function swapAccounting(): boolean {
  if (cgroupVersion() === 2) return true;
  const mount = v1Mount('memory');
  return !!mount && existsSync(`${mount}/memory.memsw.limit_in_bytes`);
}

/** Major and minor of a device node (for bps limits and --device). */
export async function deviceNumbers(path: string, flag: string): Promise<{ type: 'b' | 'c'; major: number; minor: number; mode: number; uid: number; gid: number }> {
  const s = await stat(path, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
    throw new BadOptionError(`${flag} ${path}: ${err.code === 'ENOENT' ? 'no such device' : err.message}`);
  });
  if (!s.isBlockDevice() && !s.isCharacterDevice()) throw new BadOptionError(`${flag} ${path}: not a device node`);
  const rdev = s.rdev;
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { type: s.isBlockDevice() ? 'b' : 'c', major, minor, mode: Number(s.mode & 0o7777n), uid: Number(s.uid), gid: Number(s.gid) };
}

async function throttles(list: ThrottleDevice[], flag: string): Promise<{ major: number; minor: number; rate: number }[]> {
  const out = [];
  for (const t of list) {
    const dev = await deviceNumbers(t.Path, flag);
    if (dev.type !== 'b') throw new BadOptionError(`${flag} ${t.Path}: not a block device`);
    out.push({ major: dev.major, minor: dev.minor, rate: t.Rate });
  }
  return out;
}

export interface DeviceRule {
  allow: boolean;
  type?: 'a' | 'b' | 'c';
  major?: number;
  minor?: number;
  access: string;
}

/** Docker's default devices allowlist: deny all, then mknod of anything, the standard character devices, ptys. */
export const DEFAULT_DEVICE_RULES: DeviceRule[] = [
  { allow: false, access: 'rwm' },
  { allow: true, type: 'c', access: 'm' },
  { allow: true, type: 'b', access: 'm' },
  ...(
    [
      [1, 3], // null
      [1, 5], // zero
      [1, 7], // full
      [1, 8], // random
      [1, 9], // urandom
      [5, 0], // tty
      [5, 1], // console
      [5, 2], // ptmx
      [10, 200], // tun
    ] as const
  ).map(([major, minor]): DeviceRule => ({ allow: true, type: 'c', major, minor, access: 'rwm' })),
  { allow: true, type: 'c', major: 136, access: 'rwm' }, // pts/*
];

/** Memory limit and swap as docker sets them: swap (memory + swap) twice the limit unless given; -1 unlimited. */
function memoryLimit(memory: number, memorySwap: number): Record<string, unknown> {
  const swap = memorySwap === -1 ? -1 : memorySwap > 0 ? memorySwap : 2 * memory;
  return { limit: memory, ...(swapAccounting() ? { swap } : {}) };
}

const cpuQuota = (nanoCpus: number) => ({ quota: Math.round((nanoCpus / 1e9) * CPU_PERIOD), period: CPU_PERIOD });

/** Fixed limits of a sandboxed process that is no container (a build's RUN step); 0 means none. */
export interface SandboxLimits {
  /** Bytes. */
  memory: number;
  pids: number;
  /** CPUs, as --cpus (0.5 = half of one). */
  cpus: number;
}

/** linux.resources for `limits`, with docker's device allowlist (mknod allowed, no access to what it makes). */
export function sandboxResources(limits: SandboxLimits): Record<string, unknown> {
  return {
    devices: DEFAULT_DEVICE_RULES,
    ...(limits.memory > 0 ? { memory: memoryLimit(limits.memory, 0) } : {}),
    ...(limits.cpus > 0 ? { cpu: cpuQuota(limits.cpus * 1e9) } : {}),
    ...(limits.pids > 0 ? { pids: { limit: limits.pids } } : {}),
  };
}

/** linux.resources of the runtime spec. `extraDevices` are the --device allow rules. */
export async function linuxResources(hc: HostConfig, extraDevices: DeviceRule[]): Promise<Record<string, unknown>> {
  const r: Record<string, unknown> = { devices: [...DEFAULT_DEVICE_RULES, ...extraDevices] };
  if (hc.Memory > 0) r.memory = memoryLimit(hc.Memory, hc.MemorySwap);
  const cpu: Record<string, unknown> = {};
  if (hc.CpuShares) cpu.shares = hc.CpuShares;
  if (hc.NanoCpus) Object.assign(cpu, cpuQuota(hc.NanoCpus));
  if (hc.CpusetCpus) cpu.cpus = hc.CpusetCpus;
  if (hc.CpusetMems) cpu.mems = hc.CpusetMems;
  if (Object.keys(cpu).length) r.cpu = cpu;
  if (hc.PidsLimit > 0) r.pids = { limit: hc.PidsLimit };
  const read = await throttles(hc.BlkioDeviceReadBps, '--device-read-bps');
  const write = await throttles(hc.BlkioDeviceWriteBps, '--device-write-bps');
  if (hc.BlkioWeight || read.length || write.length) {
    r.blockIO = { ...(hc.BlkioWeight ? { weight: hc.BlkioWeight } : {}), ...(read.length ? { throttleReadBpsDevice: read } : {}), ...(write.length ? { throttleWriteBpsDevice: write } : {}) };
  }
  if (hc.NetClsClassid || hc.NetPrioIfpriomap.length) {
    await ensureNetClsMounted();
    r.network = { ...(hc.NetClsClassid ? { classID: hc.NetClsClassid } : {}), ...(hc.NetPrioIfpriomap.length ? { priorities: hc.NetPrioIfpriomap } : {}) };
  }
  return r;
}

/**
 * Mounts the v1 net_cls,net_prio hierarchy if the kernel has it and nothing mounted it, with
 * the usual net_cls and net_prio symlinks. Under v2 there is no such controller; runc then
 * ignores the settings, and so do we.
 */
export async function ensureNetClsMounted(): Promise<void> {
  if (cgroupVersion() === 2 || (v1Mount('net_cls') && v1Mount('net_prio'))) return;
  const enabled = readFileSync('/proc/cgroups', 'utf8');
  if (!/^net_cls\s/m.test(enabled) || !/^net_prio\s/m.test(enabled)) throw new BadOptionError('--net-cls-classid/--net-prio: this kernel has no net_cls/net_prio cgroup controllers');
  const dir = `${CGROUP}/net_cls,net_prio`;
  await mkdir(dir, { recursive: true });
  try {
    await run('mount', ['-t', 'cgroup', '-o', 'net_cls,net_prio', 'net_cls,net_prio', dir]);
  } catch (err) {
    // Another slipway process may have won the race.
    if (!v1Mount('net_cls')) throw new Error(`mounting the net_cls,net_prio cgroup hierarchy at ${dir} failed: ${(err as { stderr?: string }).stderr ?? String(err)}`);
  }
  for (const link of ['net_cls', 'net_prio']) {
    await symlink('net_cls,net_prio', `${CGROUP}/${link}`).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
}
