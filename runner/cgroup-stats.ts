/**
 * Counters of a running container's cgroup, for `inspect`, `stats`-like checks and tests. Each
 * returns undefined when the file is not there (the container is gone, the controller is not
 * mounted), never a made-up zero.
 */
import { readFile } from 'node:fs/promises';
import { cgroupVersion, v1Mount } from './cgroups.js';
import { cgroupPath } from './paths.js';

/** The file `v1File` of `controller` (v1) or `v2File` (v2) in the container's cgroup. */
function cgroupFile(id: string, controller: string, v1File: string, v2File: string): string | undefined {
  if (cgroupVersion() === 2) return `/sys/fs/cgroup${cgroupPath(id)}/${v2File}`;
  const mount = v1Mount(controller);
  return mount ? `${mount}${cgroupPath(id)}/${v1File}` : undefined;
}

async function read(path: string | undefined): Promise<string | undefined> {
  if (!path) return undefined;
  return readFile(path, 'utf8').then(
    (s) => s.trim(),
    () => undefined,
  );
}

async function readNumber(path: string | undefined): Promise<number | undefined> {
  const text = await read(path);
  return text === undefined || text === 'max' ? undefined : Number(text);
}

/** `key value` lines (memory.oom_control, memory.events, cpu.stat, pids.events). */
async function readKeyed(path: string | undefined, key: string): Promise<number | undefined> {
  const text = await read(path);
  const m = text === undefined ? null : new RegExp(`^${key} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

export function memoryUsage(id: string): Promise<number | undefined> {
  return readNumber(cgroupFile(id, 'memory', 'memory.usage_in_bytes', 'memory.current'));
}

export function memoryLimit(id: string): Promise<number | undefined> {
  return readNumber(cgroupFile(id, 'memory', 'memory.limit_in_bytes', 'memory.max'));
}

/** OOM kills inside the container so far (v1 memory.oom_control oom_kill, v2 memory.events). */
export function oomKills(id: string): Promise<number | undefined> {
  return cgroupVersion() === 2
    ? readKeyed(cgroupFile(id, 'memory', '', 'memory.events'), 'oom_kill')
    : readKeyed(cgroupFile(id, 'memory', 'memory.oom_control', ''), 'oom_kill');
}

/** CPU time used, in nanoseconds. */
export async function cpuUsageNs(id: string): Promise<number | undefined> {
  if (cgroupVersion() === 2) {
    const usec = await readKeyed(cgroupFile(id, 'cpu', '', 'cpu.stat'), 'usage_usec');
    return usec === undefined ? undefined : usec * 1000;
  }
  return readNumber(cgroupFile(id, 'cpuacct', 'cpuacct.usage', ''));
}

export function pidsCurrent(id: string): Promise<number | undefined> {
  return readNumber(cgroupFile(id, 'pids', 'pids.current', 'pids.current'));
}

/** Forks refused because of the pids limit. */
export function pidsLimitHits(id: string): Promise<number | undefined> {
  return readKeyed(cgroupFile(id, 'pids', 'pids.events', 'pids.events'), 'max');
}

/** `THAWED`, `FREEZING` or `FROZEN` (v2's cgroup.freeze 0/1 mapped to the v1 words). */
export async function freezerState(id: string): Promise<string | undefined> {
  if (cgroupVersion() === 2) {
    const frozen = await readKeyed(cgroupFile(id, 'freezer', '', 'cgroup.events'), 'frozen');
    return frozen === undefined ? undefined : frozen === 1 ? 'FROZEN' : 'THAWED';
  }
  return read(cgroupFile(id, 'freezer', 'freezer.state', ''));
}

/** Raw file of a controller, e.g. ('cpu', 'cpu.cfs_quota_us'); v1 only. */
export function v1Value(id: string, controller: string, file: string): Promise<string | undefined> {
  return read(cgroupFile(id, controller, file, file));
}

/** Whether any of the container's cgroup directories is still there (for leak checks). */
export async function cgroupExists(id: string): Promise<boolean> {
  const controllers = cgroupVersion() === 2 ? [''] : ['memory', 'cpu', 'cpuacct', 'pids', 'freezer', 'blkio', 'devices', 'cpuset'];
  for (const c of controllers) {
    const dir = cgroupVersion() === 2 ? `/sys/fs/cgroup${cgroupPath(id)}` : `${v1Mount(c) ?? '/nonexistent'}${cgroupPath(id)}`;
    if ((await read(`${dir}/cgroup.procs`)) !== undefined) return true;
  }
  return false;
}
