/*
 * `slipway run`'s docker-style flags: the table the CLI registers, and their parsing into a
 * HostConfig plus the overrides of the image config. Values that depend on the host (is the
 * memory limit too small, are those CPUs there, does that path exist) are checked later, by
 * cgroups.ts and volumes.ts, when the container is created.
 */
import { readFileSync } from 'node:fs';
import { parsePublish } from './network/index.js';
import type { HealthConfig, HostConfig, RestartPolicy, ThrottleDevice, DeviceMapping } from './model.js';
import { BadOptionError, expandEnv, parseBytes, parseCount, parseDuration, parseEnvLines, signalName } from './units.js';

/** The flags as typed: strings, repeatable ones as lists (commander's camelCase names). */
export interface RunFlags {
  name?: string;
  detach?: boolean;
  interactive?: boolean;
  tty?: boolean;
  rm?: boolean;
  env?: string[];
  envFile?: string[];
  label?: string[];
  workdir?: string;
  user?: string;
  publish?: string[];
  network?: string;
  hostname?: string;
  volume?: string[];
  tmpfs?: string[];
  readOnly?: boolean;
  restart?: string;
  memory?: string;
  memorySwap?: string;
  cpus?: string;
  cpuShares?: string;
  cpusetCpus?: string;
  cpusetMems?: string;
  pidsLimit?: string;
  blkioWeight?: string;
  deviceReadBps?: string[];
  deviceWriteBps?: string[];
  device?: string[];
  netClsClassid?: string;
  netPrio?: string[];
  healthCmd?: string;
  healthInterval?: string;
  healthTimeout?: string;
  healthRetries?: string;
  healthStartPeriod?: string;
  noHealthcheck?: boolean;
  logOpt?: string[];
  entrypoint?: string;
  stopSignal?: string;
  stopTimeout?: string;
}

/** For the CLI: commander flag syntax, help, and whether the flag repeats. */
export const RUN_FLAGS: { flags: string; help: string; repeat?: boolean }[] = [
  { flags: '-d, --detach', help: 'run in the background and print the container id' },
  { flags: '-i, --interactive', help: 'keep stdin open and attach it' },
  { flags: '-t, --tty', help: 'allocate a terminal (the command runs runc in the foreground on this terminal)' },
  { flags: '--rm', help: 'remove the container when it exits' },
  { flags: '--name <name>', help: 'container name (default: a generated one)' },
  { flags: '-e, --env <KEY=VALUE>', help: 'set an environment variable (KEY alone copies it from here)', repeat: true },
  { flags: '--env-file <file>', help: 'read KEY=VALUE lines from a file', repeat: true },
  { flags: '-l, --label <KEY=VALUE>', help: 'set a label', repeat: true },
  { flags: '-w, --workdir <dir>', help: 'working directory inside the container' },
  { flags: '-u, --user <user[:group]>', help: 'user name or uid, optionally with group name or gid' },
  { flags: '-p, --publish <[ip:][hostPort:]containerPort[/proto]>', help: 'publish a container port on the host', repeat: true },
  { flags: '--network <mode>', help: 'bridge (default) or none' },
  { flags: '-h, --hostname <name>', help: 'hostname inside (default: the short container id)' },
  { flags: '-v, --volume <src:dst[:ro]>', help: 'bind mount HOST:CONTAINER, named volume NAME:CONTAINER, or anonymous volume CONTAINER', repeat: true },
  { flags: '--tmpfs <dst[:opts]>', help: 'mount a tmpfs', repeat: true },
  { flags: '--read-only', help: 'mount the root filesystem read-only' },
  { flags: '--restart <policy>', help: 'no, on-failure[:N], always or unless-stopped; an unhealthy container is restarted too' },
  { flags: '-m, --memory <bytes>', help: 'memory limit (e.g. 256m; at least 6m)' },
  { flags: '--memory-swap <bytes>', help: 'memory + swap limit; -1 for unlimited swap' },
  { flags: '--cpus <n>', help: 'number of CPUs (CFS quota)' },
  { flags: '-c, --cpu-shares <n>', help: 'relative CPU weight' },
  { flags: '--cpuset-cpus <list>', help: 'CPUs allowed (0-3, 0,1)' },
  { flags: '--cpuset-mems <list>', help: 'NUMA memory nodes allowed' },
  { flags: '--pids-limit <n>', help: 'maximum number of processes (-1 unlimited)' },
  { flags: '--blkio-weight <n>', help: 'block IO weight 10-1000 (needs the BFQ scheduler)' },
  { flags: '--device-read-bps <path:rate>', help: 'limit read rate from a device (e.g. /dev/vda:1mb)', repeat: true },
  { flags: '--device-write-bps <path:rate>', help: 'limit write rate to a device', repeat: true },
  { flags: '--device <host[:container[:rwm]]>', help: 'add a host device', repeat: true },
  { flags: '--net-cls-classid <id>', help: 'net_cls class id for traffic shaping (MAJOR:MINOR in hex, or a number)' },
  { flags: '--net-prio <iface=prio>', help: 'net_prio priority of an interface', repeat: true },
  { flags: '--health-cmd <cmd>', help: 'command to check health (run with /bin/sh -c)' },
  { flags: '--health-interval <duration>', help: 'time between checks (default 30s)' },
  { flags: '--health-timeout <duration>', help: 'time a check may take (default 30s)' },
  { flags: '--health-retries <n>', help: 'consecutive failures that make it unhealthy (default 3)' },
  { flags: '--health-start-period <duration>', help: 'grace period in which failures do not count' },
  { flags: '--no-healthcheck', help: "disable the image's HEALTHCHECK" },
  { flags: '--log-opt <key=value>', help: 'max-size (default 10m) and max-file (default 3) of the rotated log', repeat: true },
  { flags: '--entrypoint <cmd>', help: "override the image's ENTRYPOINT" },
  { flags: '--stop-signal <signal>', help: 'signal that stops the container (default SIGTERM)' },
  { flags: '--stop-timeout <seconds>', help: 'seconds to wait before SIGKILL on stop (default 10)' },
];

/** The image-config overrides the flags ask for. */
export interface ConfigOverrides {
  Env: string[];
  Labels: Record<string, string>;
  WorkingDir?: string;
  User?: string;
  Hostname?: string;
  Entrypoint?: string[];
  Healthcheck?: HealthConfig;
  StopSignal?: string;
  StopTimeout?: number;
  Tty: boolean;
  OpenStdin: boolean;
}

export interface ParsedRunFlags {
  name?: string;
  hostConfig: HostConfig;
  overrides: ConfigOverrides;
}

export const DEFAULT_LOG = { 'max-size': '10m', 'max-file': '3' } as const;

export function parseRunFlags(f: RunFlags, env: NodeJS.ProcessEnv = process.env): ParsedRunFlags {
  if (f.rm && f.restart && f.restart !== 'no') throw new BadOptionError('conflicting options: --restart and --rm');
  const network = f.network ?? 'bridge';
  if (network !== 'bridge' && network !== 'none') throw new BadOptionError(`--network "${network}": expected bridge or none`);
  if (network === 'none' && f.publish?.length) throw new BadOptionError('--publish needs --network bridge: a container without a network has no ports to publish');
  const hostConfig: HostConfig = {
    Binds: f.volume ?? [],
    Tmpfs: Object.fromEntries((f.tmpfs ?? []).map(splitTmpfs)),
    ReadonlyRootfs: f.readOnly ?? false,
    NetworkMode: network,
    PortBindings: (f.publish ?? []).map(parsePublish),
    RestartPolicy: parseRestart(f.restart ?? 'no'),
    AutoRemove: f.rm ?? false,
    Memory: f.memory ? parseBytes(f.memory, '--memory') : 0,
    MemorySwap: f.memorySwap ? (f.memorySwap === '-1' ? -1 : parseBytes(f.memorySwap, '--memory-swap')) : 0,
    NanoCpus: f.cpus ? parseCpus(f.cpus) : 0,
    CpuShares: f.cpuShares ? parseCount(f.cpuShares, '--cpu-shares', { min: 2, max: 262144 }) : 0,
    CpusetCpus: f.cpusetCpus ?? '',
    CpusetMems: f.cpusetMems ?? '',
    PidsLimit: f.pidsLimit ? Math.max(0, parseCount(f.pidsLimit, '--pids-limit', { min: -1 })) : 0,
    BlkioWeight: f.blkioWeight ? parseCount(f.blkioWeight, '--blkio-weight', { min: 10, max: 1000 }) : 0,
    BlkioDeviceReadBps: (f.deviceReadBps ?? []).map((s) => parseThrottle(s, '--device-read-bps')),
    BlkioDeviceWriteBps: (f.deviceWriteBps ?? []).map((s) => parseThrottle(s, '--device-write-bps')),
    Devices: (f.device ?? []).map(parseDevice),
    NetClsClassid: f.netClsClassid ? parseClassid(f.netClsClassid) : 0,
    NetPrioIfpriomap: (f.netPrio ?? []).map(parseNetPrio),
    LogConfig: { Type: 'json-file', Config: parseLogOpts(f.logOpt ?? []) },
  };
  return { name: f.name, hostConfig, overrides: parseOverrides(f, env) };
}

function parseOverrides(f: RunFlags, env: NodeJS.ProcessEnv): ConfigOverrides {
  const fileEnv = (f.envFile ?? []).flatMap((path) => {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new BadOptionError(`--env-file ${path}: ${(err as Error).message}`);
    }
    return parseEnvLines(text, env);
  });
  if (f.workdir !== undefined && !f.workdir.startsWith('/')) throw new BadOptionError(`--workdir "${f.workdir}": the working directory must be an absolute path`);
  return {
    Env: [...fileEnv, ...(f.env ?? []).flatMap((e) => expandEnv(e, env))],
    Labels: Object.fromEntries((f.label ?? []).map((l) => [l.split('=', 1)[0]!, l.includes('=') ? l.slice(l.indexOf('=') + 1) : ''])),
    WorkingDir: f.workdir,
    User: f.user,
    Hostname: f.hostname,
    Entrypoint: f.entrypoint === undefined ? undefined : f.entrypoint === '' ? [] : [f.entrypoint],
    Healthcheck: parseHealth(f),
    StopSignal: f.stopSignal === undefined ? undefined : signalName(f.stopSignal),
    StopTimeout: f.stopTimeout === undefined ? undefined : parseCount(f.stopTimeout, '--stop-timeout', { min: 0 }),
    Tty: f.tty ?? false,
    OpenStdin: f.interactive ?? false,
  };
}

export function parseRestart(text: string): RestartPolicy {
  const m = /^(no|always|unless-stopped|on-failure)(?::(\d+))?$/.exec(text);
  if (!m || (m[2] !== undefined && m[1] !== 'on-failure')) {
    throw new BadOptionError(`invalid restart policy "${text}": expected no, always, unless-stopped or on-failure[:max-retries]`);
  }
  return { Name: m[1] as RestartPolicy['Name'], MaximumRetryCount: m[2] === undefined ? 0 : Number(m[2]) };
}

/** `--cpus 0.5` → nano CPUs. */
export function parseCpus(text: string): number {
  const n = Number(text);
  if (!/^\d*\.?\d+$/.test(text) || !(n > 0)) throw new BadOptionError(`invalid --cpus "${text}": expected a positive number such as 0.5 or 2`);
  return Math.round(n * 1e9);
}

function parseHealth(f: RunFlags): HealthConfig | undefined {
  if (f.noHealthcheck) {
    if (f.healthCmd) throw new BadOptionError('conflicting options: --no-healthcheck and --health-cmd');
    return { Test: ['NONE'], Interval: 0, Timeout: 0, StartPeriod: 0, Retries: 0 };
  }
  const tuned = f.healthInterval ?? f.healthTimeout ?? f.healthRetries ?? f.healthStartPeriod;
  if (f.healthCmd === undefined && tuned === undefined) return undefined;
  const positive = (text: string | undefined, flag: string) => {
    if (text === undefined) return 0;
    const ns = parseDuration(text, flag);
    if (ns !== 0 && ns < 1e6) throw new BadOptionError(`${flag} ${text} is below the minimum 1ms`);
    return ns;
  };
  return {
    // No --health-cmd: the image's test with these timings (merged in containers.ts).
    Test: f.healthCmd === undefined ? [] : ['CMD-SHELL', f.healthCmd],
    Interval: positive(f.healthInterval, '--health-interval'),
    Timeout: positive(f.healthTimeout, '--health-timeout'),
    StartPeriod: positive(f.healthStartPeriod, '--health-start-period'),
    Retries: f.healthRetries === undefined ? 0 : parseCount(f.healthRetries, '--health-retries', { min: 0 }),
  };
}

function splitTmpfs(spec: string): [string, string] {
  const i = spec.indexOf(':');
  const [dst, opts] = i < 0 ? [spec, ''] : [spec.slice(0, i), spec.slice(i + 1)];
  if (!dst.startsWith('/')) throw new BadOptionError(`--tmpfs "${spec}": the mount point must be an absolute path`);
  return [dst, opts];
}

function parseThrottle(spec: string, flag: string): ThrottleDevice {
  const i = spec.lastIndexOf(':');
  if (i <= 0 || !spec.startsWith('/')) throw new BadOptionError(`invalid ${flag} "${spec}": expected /dev/DEVICE:RATE (e.g. /dev/vda:1mb)`);
  return { Path: spec.slice(0, i), Rate: parseBytes(spec.slice(i + 1), flag) };
}

function parseDevice(spec: string): DeviceMapping {
  const [host, inside, perms, ...rest] = spec.split(':');
  const permissions = perms ?? (inside !== undefined && /^[rwm]+$/.test(inside) ? inside : 'rwm');
  const target = inside !== undefined && !/^[rwm]+$/.test(inside) ? inside : host;
  if (!host?.startsWith('/') || !target?.startsWith('/') || rest.length > 0 || !/^[rwm]{1,3}$/.test(permissions)) {
    throw new BadOptionError(`invalid --device "${spec}": expected /dev/HOST[:/dev/CONTAINER[:rwm]]`);
  }
  return { PathOnHost: host, PathInContainer: target, CgroupPermissions: permissions };
}

/** `10:1` (tc's MAJOR:MINOR in hex) or a number (decimal or 0x…). */
function parseClassid(text: string): number {
  const tc = /^([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(text);
  const n = tc ? parseInt(tc[1]!, 16) * 0x10000 + parseInt(tc[2]!, 16) : Number(text);
  if (!Number.isInteger(n) || n <= 0 || n > 0xffffffff) throw new BadOptionError(`invalid --net-cls-classid "${text}": expected MAJOR:MINOR in hex (10:1) or a number`);
  return n;
}

function parseNetPrio(spec: string): { name: string; priority: number } {
  const m = /^([A-Za-z0-9_.-]{1,15})=(\d+)$/.exec(spec);
  if (!m) throw new BadOptionError(`invalid --net-prio "${spec}": expected INTERFACE=PRIORITY (e.g. eth0=5)`);
  return { name: m[1]!, priority: Number(m[2]) };
}

function parseLogOpts(opts: string[]): { 'max-size': string; 'max-file': string } {
  const out: { 'max-size': string; 'max-file': string } = { ...DEFAULT_LOG };
  for (const opt of opts) {
    const [key, value] = [opt.split('=', 1)[0]!, opt.slice(opt.indexOf('=') + 1)];
    if (!opt.includes('=') || (key !== 'max-size' && key !== 'max-file')) throw new BadOptionError(`invalid --log-opt "${opt}": expected max-size=SIZE or max-file=N`);
    if (key === 'max-size' && parseBytes(value, '--log-opt max-size') < 1) throw new BadOptionError('--log-opt max-size must be at least 1 byte');
    if (key === 'max-file') parseCount(value, '--log-opt max-file', { min: 1, max: 100 });
    out[key] = value;
  }
  return out;
}
