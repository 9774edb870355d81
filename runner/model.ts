/*
 * What the lifecycle stores about a container, in docker's vocabulary so `inspect` can show it
 * as it is. A container's directory holds two documents with one writer each:
 *   container.json  ContainerRecord: written once by `create` (the CLI side), never changed
 *   state.json      RuntimeState: written by `create`, then only by the container's supervisor
 * plus `stopped-by-user`, a marker the CLI drops so the supervisor does not restart it.
 */
import type { PortMapping } from './types.js';

export type RestartPolicyName = 'no' | 'on-failure' | 'always' | 'unless-stopped';

export interface RestartPolicy {
  Name: RestartPolicyName;
  /** on-failure only; 0 = no limit. */
  MaximumRetryCount: number;
}

/** Durations in nanoseconds, as docker's image config and API have them. */
export interface HealthConfig {
  /** `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`. */
  Test: string[];
  Interval: number;
  Timeout: number;
  StartPeriod: number;
  Retries: number;
}

export interface MountPoint {
  Type: 'bind' | 'volume' | 'tmpfs';
  /** Host path (bind), the volume's _data dir (volume), empty for tmpfs. */
  Source: string;
  Destination: string;
  RW: boolean;
  /** Volume name (volume mounts). */
  Name?: string;
  /** A volume made for an image VOLUME or `-v /path`: removed by `rm -v`. */
  Anonymous?: boolean;
  /** tmpfs mount options. */
  Options?: string[];
}

export interface DeviceMapping {
  PathOnHost: string;
  PathInContainer: string;
  CgroupPermissions: string;
}

export interface ThrottleDevice {
  Path: string;
  /** Bytes per second. */
  Rate: number;
}

export interface HostConfig {
  Binds: string[];
  Tmpfs: Record<string, string>;
  ReadonlyRootfs: boolean;
  NetworkMode: 'bridge' | 'none';
  PortBindings: PortMapping[];
  RestartPolicy: RestartPolicy;
  AutoRemove: boolean;
  /** Bytes; 0 = unlimited. */
  Memory: number;
  /** Memory + swap in bytes; 0 = default (twice Memory), -1 = unlimited. */
  MemorySwap: number;
  NanoCpus: number;
  CpuShares: number;
  CpusetCpus: string;
  CpusetMems: string;
  /** 0 = unlimited. */
  PidsLimit: number;
  BlkioWeight: number;
  BlkioDeviceReadBps: ThrottleDevice[];
  BlkioDeviceWriteBps: ThrottleDevice[];
  Devices: DeviceMapping[];
  /** Our names: net_cls class id and net_prio interface priorities (docker has none). */
  NetClsClassid: number;
  NetPrioIfpriomap: { name: string; priority: number }[];
  LogConfig: { Type: 'json-file'; Config: { 'max-size': string; 'max-file': string } };
}

export interface ContainerConfig {
  Hostname: string;
  User: string;
  Env: string[];
  Cmd: string[];
  Entrypoint: string[];
  Image: string;
  WorkingDir: string;
  Labels: Record<string, string>;
  ExposedPorts: Record<string, object>;
  Healthcheck?: HealthConfig;
  StopSignal: string;
  /** Seconds. */
  StopTimeout: number;
  Tty: boolean;
  OpenStdin: boolean;
}

export interface ContainerRecord {
  Id: string;
  Name: string;
  Created: string;
  /** Image id (config digest). */
  Image: string;
  /** Image reference as given. */
  ImageRef: string;
  Path: string;
  Args: string[];
  Config: ContainerConfig;
  HostConfig: HostConfig;
  Mounts: MountPoint[];
  /** The image's unpacked layers, bottom to top. */
  LayerDirs: string[];
}

export type HealthStatus = 'starting' | 'healthy' | 'unhealthy';

export interface HealthResult {
  Start: string;
  End: string;
  ExitCode: number;
  Output: string;
}

export interface HealthState {
  Status: HealthStatus;
  FailingStreak: number;
  Log: HealthResult[];
}

/** What `inspect` shows as State.Status; `paused` is read from runc, never stored. */
export type ContainerStatus = 'created' | 'running' | 'paused' | 'restarting' | 'exited' | 'dead';

export interface RuntimeState {
  Status: Exclude<ContainerStatus, 'paused'>;
  Pid: number;
  /** The supervisor (shim) process and its start time (/proc/<pid>/stat), to survive pid reuse. */
  ShimPid: number;
  ShimStart: string;
  StartedAt: string;
  FinishedAt: string;
  ExitCode: number;
  OOMKilled: boolean;
  Error: string;
  RestartCount: number;
  Health?: HealthState;
  Network?: { IPAddress: string; Gateway: string; Ports: PortMapping[]; SandboxKey: string };
}

export const ZERO_TIME = '0001-01-01T00:00:00Z';
