/** The container lifecycle's public surface; runner/index.ts re-exports it. */
export { Runner, containerConfig } from './containers.js';
export type { CreateRequest, ImageSource, RunnerOptions } from './containers.js';
export { StateError } from './control.js';
export type { ExecRequest } from './control.js';
export { StartError } from './launcher.js';
export type { AttachStreams, Launched } from './launcher.js';
export type { LogSink } from './log-reader.js';
export { humanDuration } from './inspect.js';
export type { ContainerSummary } from './inspect.js';
export type { ContainerConfig, ContainerRecord, ContainerStatus, HealthConfig, HealthState, HostConfig, MountPoint, RestartPolicy, RuntimeState } from './model.js';
export { RUN_FLAGS, parseRunFlags } from './options.js';
export type { RunFlags } from './options.js';
export { DEFAULT_ROOT, DEFAULT_RUNC_ROOT, cgroupPath, runnerPaths } from './paths.js';
export type { RootOptions, RunnerPaths } from './paths.js';
export { RuncError, RuncMissingError, findRunc, lastRuncError } from './runc.js';
export { NotFoundError } from './state.js';
export { BadOptionError, signalName } from './units.js';
export { cpuUsageNs, freezerState, memoryUsage, oomKills, pidsCurrent, pidsLimitHits, cgroupExists } from './cgroup-stats.js';
