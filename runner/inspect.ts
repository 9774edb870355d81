/**
 * What a container looks like now: the stored state checked against reality (is its supervisor
 * alive, what does runc say), and docker's shapes of `inspect` and `ps`.
 */
import type { ContainerRecord, ContainerStatus, RuntimeState } from './model.js';
import type { RunnerPaths } from './paths.js';
import { forceTeardown } from './prepare.js';
import { uppermostFirst } from './overlay.js';
import type { Runc } from './runc.js';
import { processAlive, readRecord, readState, writeState } from './state.js';

export interface RunnerContext {
  paths: RunnerPaths;
  runc(): Runc;
}

export interface Observed {
  rec: ContainerRecord;
  state: RuntimeState;
  status: ContainerStatus;
  supervised: boolean;
}

/**
 * A container whose state says running but whose supervisor is gone (killed, or the machine
 * rebooted) is either still running under runc (shown as is, without supervision) or over:
 * then it is recorded as exited with 255, as docker does after a daemon crash, and cleaned up.
 */
export async function observe(ctx: RunnerContext, id: string): Promise<Observed> {
  const rec = await readRecord(ctx.paths, id);
  let state = await readState(ctx.paths, id);
  const supervised = processAlive(state.ShimPid, state.ShimStart);
  if (state.Status !== 'running' && state.Status !== 'restarting') return { rec, state, status: state.Status, supervised };
  const rs = state.Status === 'running' || !supervised ? await ctx.runc().state(id) : undefined;
  if (rs && (rs.status === 'running' || rs.status === 'paused' || rs.status === 'created')) {
    const status = rs.status === 'paused' ? 'paused' : 'running';
    return { rec, state: supervised ? state : { ...state, Error: 'the supervisor of this container is gone: its logs, health checks and restarts have stopped' }, status, supervised };
  }
  if (supervised) return { rec, state, status: state.Status, supervised };
  state = { ...state, Status: 'exited', Pid: 0, ShimPid: 0, ShimStart: '', ExitCode: state.Status === 'running' ? 255 : state.ExitCode, Error: 'the supervisor of this container exited unexpectedly', FinishedAt: new Date().toISOString() };
  await ctx.runc().delete(id, { force: true });
  await forceTeardown(ctx.paths, id).catch(() => {});
  await writeState(ctx.paths, id, state);
  return { rec, state, status: 'exited', supervised: false };
}

function portMap(state: RuntimeState, rec: ContainerRecord): Record<string, { HostIp: string; HostPort: string }[] | null> {
  const out: Record<string, { HostIp: string; HostPort: string }[] | null> = {};
  for (const p of Object.keys(rec.Config.ExposedPorts)) out[p] = null;
  for (const m of state.Network?.Ports ?? []) (out[`${m.containerPort}/${m.protocol}`] ??= [])!.push({ HostIp: m.hostIp, HostPort: String(m.hostPort) });
  return out;
}

export function inspectDocument(o: Observed, paths: RunnerPaths): Record<string, unknown> {
  const { rec, state, status } = o;
  const cp = paths.container(rec.Id);
  return {
    Id: rec.Id,
    Created: rec.Created,
    Path: rec.Path,
    Args: rec.Args,
    State: {
      Status: status,
      Running: status === 'running' || status === 'paused',
      Paused: status === 'paused',
      Restarting: status === 'restarting',
      OOMKilled: state.OOMKilled,
      Dead: status === 'dead',
      Pid: state.Pid,
      ExitCode: state.ExitCode,
      Error: state.Error,
      StartedAt: state.StartedAt,
      FinishedAt: state.FinishedAt,
      ...(state.Health ? { Health: state.Health } : {}),
    },
    Image: rec.Image,
    Name: `/${rec.Name}`,
    RestartCount: state.RestartCount,
    Driver: 'overlay',
    LogPath: cp.log,
    Mounts: rec.Mounts.map((m) => ({ Type: m.Type, ...(m.Name ? { Name: m.Name } : {}), Source: m.Source, Destination: m.Destination, Mode: m.RW ? '' : 'ro', RW: m.RW, Propagation: 'rprivate' })),
    Config: rec.Config,
    HostConfig: rec.HostConfig,
    NetworkSettings: { IPAddress: state.Network?.IPAddress ?? '', Gateway: state.Network?.Gateway ?? '', SandboxKey: state.Network?.SandboxKey ?? '', Ports: portMap(state, rec) },
    GraphDriver: { Name: 'overlay', Data: { MergedDir: cp.rootfs, UpperDir: `${cp.dir}/upper`, WorkDir: `${cp.dir}/work`, LowerDir: uppermostFirst(rec.LayerDirs).join(':') } },
  };
}

/** docker's units.HumanDuration. */
export function humanDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 1) return 'Less than a second';
  if (s === 1) return '1 second';
  if (s < 60) return `${s} seconds`;
  const min = Math.round(s / 60);
  if (min === 1) return 'About a minute';
  if (min < 60) return `${min} minutes`;
  const h = Math.round(s / 3600);
  if (h === 1) return 'About an hour';
  if (h < 48) return `${h} hours`;
  if (h < 24 * 7 * 2) return `${Math.round(h / 24)} days`;
  if (h < 24 * 30 * 2) return `${Math.round(h / 24 / 7)} weeks`;
  if (h < 24 * 365 * 2) return `${Math.round(h / 24 / 30)} months`;
  return `${Math.round(h / 24 / 365)} years`;
}

export function statusText(o: Observed, now = Date.now()): string {
  const since = (t: string) => humanDuration(now - Date.parse(t));
  const health = o.state.Health ? { starting: ' (health: starting)', healthy: ' (healthy)', unhealthy: ' (unhealthy)' }[o.state.Health.Status] : '';
  switch (o.status) {
    case 'created':
      return 'Created';
    case 'running':
      return `Up ${since(o.state.StartedAt)}${health}`;
    case 'paused':
      return `Up ${since(o.state.StartedAt)} (Paused)`;
    case 'restarting':
      return `Restarting (${o.state.ExitCode}) ${since(o.state.FinishedAt)} ago`;
    default:
      return `Exited (${o.state.ExitCode}) ${since(o.state.FinishedAt)} ago`;
  }
}

export interface ContainerSummary {
  Id: string;
  Names: string;
  Image: string;
  Command: string;
  Created: string;
  State: ContainerStatus;
  Status: string;
  Ports: string;
}

export function summary(o: Observed): ContainerSummary {
  const ports = (o.status === 'running' || o.status === 'paused' ? (o.state.Network?.Ports ?? []) : []).map((m) => `${m.hostIp}:${m.hostPort}->${m.containerPort}/${m.protocol}`);
  return {
    Id: o.rec.Id,
    Names: o.rec.Name,
    Image: o.rec.ImageRef,
    Command: JSON.stringify([o.rec.Path, ...o.rec.Args].join(' ')),
    Created: o.rec.Created,
    State: o.status,
    Status: statusText(o),
    Ports: ports.join(', '),
  };
}
