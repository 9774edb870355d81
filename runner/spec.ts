/**
 * The OCI runtime spec (config.json) of a container: the image config merged with the user's
 * flags (model.ts), with docker's defaults for everything a user does not choose: capabilities,
 * masked and read-only /proc and /sys paths, the devices allowlist, the standard mounts.
 */
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { linuxResources, deviceNumbers, type DeviceRule } from './cgroups.js';
import type { ContainerRecord } from './model.js';
import type { NetworkAttachment } from './types.js';
import { mergeEnv } from './units.js';
import { resolveUser, secureJoin } from './users.js';
import { specMounts } from './volumes.js';

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Docker's default capability set. */
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

export const MASKED_PATHS = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];
export const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** Docker's default mounts; the builder's RUN steps get the same. */
export const STANDARD_MOUNTS = [
  { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
  { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
  { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['ro', 'nosuid', 'noexec', 'nodev'] },
  { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
  { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
];

export interface SpecContext {
  /** The mounted root filesystem (users and the working directory are looked up in it). */
  rootfs: string;
  cgroupsPath: string;
  /** Absent: runc makes a fresh network namespace with loopback only. */
  network?: NetworkAttachment;
  terminal: boolean;
}

/** argv of a container: ENTRYPOINT + CMD, as docker joins them. */
export function containerArgv(rec: ContainerRecord): string[] {
  return [...rec.Config.Entrypoint, ...rec.Config.Cmd];
}

export async function runtimeSpec(rec: ContainerRecord, ctx: SpecContext): Promise<Record<string, unknown>> {
  const cfg = rec.Config;
  const args = containerArgv(rec);
  if (args.length === 0) throw new Error(`container ${rec.Name} has no command: the image sets no ENTRYPOINT or CMD, and none was given`);
  const user = await resolveUser(ctx.rootfs, cfg.User);
  const cwd = cfg.WorkingDir || '/';
  await mkdir(await secureJoin(ctx.rootfs, cwd), { recursive: true });
  const env = mergeEnv([DEFAULT_PATH, `HOME=${user.home}`], cfg.Env, [`HOSTNAME=${cfg.Hostname}`], ctx.terminal ? ['TERM=xterm'] : []);
  const devices = await Promise.all(rec.HostConfig.Devices.map((d) => deviceNumbers(d.PathOnHost, '--device').then((n) => ({ d, n }))));
  const deviceRules: DeviceRule[] = devices.map(({ d, n }) => ({ allow: true, type: n.type, major: n.major, minor: n.minor, access: d.CgroupPermissions }));
  const caps = user.uid === 0 ? DEFAULT_CAPABILITIES : [];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: ctx.terminal,
      user: { uid: user.uid, gid: user.gid, ...(user.additionalGids.length ? { additionalGids: user.additionalGids } : {}) },
      args,
      env,
      cwd,
      capabilities: { bounding: DEFAULT_CAPABILITIES, effective: caps, permitted: caps },
      rlimits: [nofileLimit()],
      noNewPrivileges: false,
    },
    root: { path: ctx.rootfs, readonly: rec.HostConfig.ReadonlyRootfs },
    hostname: cfg.Hostname,
    mounts: [...STANDARD_MOUNTS, ...networkFileMounts(ctx.network, rec.HostConfig.ReadonlyRootfs), ...sortByDepth(specMounts(rec.Mounts))],
    linux: {
      cgroupsPath: ctx.cgroupsPath,
      resources: await linuxResources(rec.HostConfig, deviceRules),
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network', ...(ctx.network ? { path: ctx.network.netnsPath } : {}) }],
      devices: devices.map(({ d, n }) => ({ path: d.PathInContainer, type: n.type, major: n.major, minor: n.minor, fileMode: n.mode, uid: n.uid, gid: n.gid })),
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
    },
  };
}

/**
 * Open files: docker's 1048576 where this process may grant it, else its own hard limit (runc
 * cannot raise it without CAP_SYS_RESOURCE, which sandboxes often withhold).
 */
export function nofileLimit(): { type: string; hard: number; soft: number } {
  const line = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const hard = line?.[2] === undefined || line[2] === 'unlimited' ? 1048576 : Math.min(Number(line[2]), 1048576);
  return { type: 'RLIMIT_NOFILE', hard, soft: hard };
}

function networkFileMounts(network: NetworkAttachment | undefined, readOnly: boolean): Record<string, unknown>[] {
  if (!network) return [];
  const files: [string, string][] = [
    ['/etc/hosts', network.hostsPath],
    ['/etc/resolv.conf', network.resolvConfPath],
    ['/etc/hostname', network.hostnamePath],
  ];
  return files.map(([destination, source]) => ({ destination, type: 'bind', source, options: ['rbind', 'rprivate', ...(readOnly ? ['ro'] : [])] }));
}

/** Parents before children, so `-v a:/data -v b:/data/sub` mounts in a working order. */
function sortByDepth(mounts: Record<string, unknown>[]): Record<string, unknown>[] {
  const depth = (m: Record<string, unknown>) => String(m.destination).split('/').filter(Boolean).length;
  return [...mounts].sort((a, b) => depth(a) - depth(b));
}
