/**
 * The supervisor of one container (run by shim.ts, or in the foreground for `-t`): prepares it,
 * runs it with runc, records its state, checks its health, restarts it under its policy, and
 * tears it down when it is over. It is the only writer of state.json while it lives.
 */
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HealthChecker, probeArgv } from './health.js';
import { LogWriter } from './logs.js';
import type { ContainerRecord, RestartPolicy, RuntimeState } from './model.js';
import { KernelLogWatch } from './oom.js';
import { cgroupPath, type RunnerPaths } from './paths.js';
import { prepareContainer, type Prepared } from './prepare.js';
import { probeInContainer } from './probe.js';
import { removeContainerFiles } from './remove.js';
import type { Runc } from './runc.js';
import { makeStdioFifos, runOnce, type Attached } from './run-once.js';
import { processStart, readRecord, readState, releaseName, writeState } from './state.js';
import { freezerState } from './cgroup-stats.js';
import { parseBytes } from './units.js';
import { removeAnonymousVolumes } from './volumes.js';

export type ShimEvent = { event: 'started'; pid: number } | { event: 'error'; message: string } | { event: 'exited'; exitCode: number; oomKilled: boolean };

export interface SuperviseOptions {
  paths: RunnerPaths;
  id: string;
  runc: Runc;
  terminal: boolean;
  attach?: Attached;
  events(e: ShimEvent): void;
  /** Diagnostics (the shim's own log). */
  note?(message: string): void;
}

/** Whether the policy restarts a container that exited with `exitCode` (or was found unhealthy). */
export function shouldRestart(policy: RestartPolicy, exitCode: number, restartCount: number, unhealthy = false): boolean {
  if (policy.Name === 'always' || policy.Name === 'unless-stopped') return true;
  if (policy.Name !== 'on-failure' || (exitCode === 0 && !unhealthy)) return false;
  return policy.MaximumRetryCount === 0 || restartCount < policy.MaximumRetryCount;
}

export async function supervise(o: SuperviseOptions): Promise<RuntimeState> {
  const rec = await readRecord(o.paths, o.id);
  const cp = o.paths.container(o.id);
  const before = await readState(o.paths, o.id);
  let state: RuntimeState = { ...before, RestartCount: 0, Error: '', ShimPid: process.pid, ShimStart: processStart(process.pid) };
  let saving = Promise.resolve();
  const save = () => {
    const snapshot = structuredClone(state);
    saving = saving.then(() => writeState(o.paths, o.id, snapshot)).catch(() => {});
    return saving;
  };
  await rm(cp.stopMarker, { force: true });
  let prepared: Prepared;
  const t0 = performance.now();
  // The mount, the namespace and the FIFOs are made by other processes; meanwhile this one reads
  // the kernel log to its end (synchronous, several ms), which must happen before runc starts.
  const preparing = Promise.all([prepareContainer(o.paths, rec, { terminal: o.terminal }), o.terminal ? undefined : makeStdioFifos(cp, rec.Config.OpenStdin)]);
  preparing.catch(() => {});
  const kmsg = new KernelLogWatch(cgroupPath(o.id));
  try {
    [prepared] = await preparing;
    o.note?.(`prepared in ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (err) {
    await preparing.then(([p]) => p.teardown(), () => {}).catch(() => {});
    kmsg.close();
    state = { ...state, ShimPid: 0, ShimStart: '', Error: (err as Error).message };
    await save();
    o.events({ event: 'error', message: (err as Error).message });
    return state;
  }
  const { network, ports } = prepared;
  state.Network = { IPAddress: network.ip ?? '', Gateway: network.gateway ?? '', Ports: ports?.mappings ?? [], SandboxKey: network.netnsPath };
  await mkdir(cp.logDir, { recursive: true });
  const logConfig = rec.HostConfig.LogConfig.Config;
  const log = o.terminal ? undefined : new LogWriter(cp.log, parseBytes(logConfig['max-size'], 'max-size'), Number(logConfig['max-file']));
  await loop(o, rec, log, kmsg, () => state, (s) => ((state = s), save()));
  let tornDown = true;
  await prepared.teardown().catch((err: Error) => {
    tornDown = false;
    state.Error ||= err.message;
  });
  kmsg.close();
  log?.close();
  state = { ...state, Status: 'exited', Pid: 0, ShimPid: 0, ShimStart: '' };
  await save();
  if (rec.HostConfig.AutoRemove) {
    // After a clean teardown only the files are left (runc forgot the container in the loop).
    if (tornDown) await removeFiles(o.paths, rec);
    else await removeContainerFiles(o.paths, o.runc, rec, { volumes: true });
  }
  return state;
}

/** `--rm` once the container is torn down: its anonymous volumes, its directory, its name. */
async function removeFiles(paths: RunnerPaths, rec: ContainerRecord): Promise<void> {
  await removeAnonymousVolumes(rec.Mounts);
  await rm(paths.container(rec.Id).dir, { recursive: true, force: true });
  await releaseName(paths, rec.Name, rec.Id);
}

/**
 * A foreground `runc run` deletes its container when it exits; its state directory is left only
 * when runc itself was killed or failed half-way, and then `runc delete` cleans up.
 */
async function forget(runc: Runc, id: string): Promise<void> {
  if (existsSync(join(runc.root, id))) await runc.delete(id, { force: true });
}

/** Runs the container until its policy says it is over. */
async function loop(o: SuperviseOptions, rec: ContainerRecord, log: LogWriter | undefined, kmsg: KernelLogWatch, get: () => RuntimeState, set: (s: RuntimeState) => Promise<void>): Promise<void> {
  const cp = o.paths.container(o.id);
  let attach = o.attach;
  let delayMs = 50;
  for (let first = true; ; first = false) {
    let unhealthy = false;
    let health: HealthChecker | undefined;
    const startedAt = performance.now();
    const outcome = await runOnce({
      runc: o.runc,
      id: o.id,
      cp,
      terminal: o.terminal,
      log,
      attach,
      openStdin: rec.Config.OpenStdin,
      onStarted: (pid) => {
        const argv = rec.Config.Healthcheck ? probeArgv(rec.Config.Healthcheck.Test) : undefined;
        const Health = argv ? { Status: 'starting' as const, FailingStreak: 0, Log: [] } : undefined;
        // Reported only once state.json says running, so a client that was told can rely on it.
        const saved = set({ ...get(), Status: 'running', Pid: pid, StartedAt: new Date().toISOString(), ExitCode: 0, OOMKilled: false, Error: '', Health });
        if (first) void saved.then(() => o.events({ event: 'started', pid }));
        o.note?.(`started pid ${pid} ${(performance.now() - startedAt).toFixed(0)} ms after runc was asked`);
        if (!argv || !rec.Config.Healthcheck) return;
        health = new HealthChecker(rec.Config.Healthcheck, argv, probeInContainer(o.runc, o.id), (h) => {
          void set({ ...get(), Health: h });
          if (h.Status === 'unhealthy' && !unhealthy && shouldRestart(rec.HostConfig.RestartPolicy, 1, get().RestartCount, true)) {
            unhealthy = true;
            void stopForRestart(o.runc, rec, get().Pid);
          }
        }, async () => (await freezerState(o.id)) === 'FROZEN');
        health.start();
      },
    });
    health?.stop();
    log?.flush();
    const oomKilled = outcome.started && kmsg.oomKilled();
    await set({ ...get(), Status: 'exited', Pid: 0, ExitCode: outcome.exitCode, FinishedAt: new Date().toISOString(), OOMKilled: oomKilled, Error: outcome.error });
    if (first) {
      o.events(outcome.started ? { event: 'exited', exitCode: outcome.exitCode, oomKilled } : { event: 'error', message: outcome.error });
      attach?.stdout.end();
      attach?.stderr.end();
      attach = undefined;
    }
    await forget(o.runc, o.id).catch(() => {});
    if (!outcome.started || existsSync(cp.stopMarker) || !shouldRestart(rec.HostConfig.RestartPolicy, outcome.exitCode, get().RestartCount, unhealthy)) return;
    // docker's back-off: doubling from 100 ms, back to the start after a run of 10 s or more.
    delayMs = performance.now() - startedAt >= 10_000 ? 100 : Math.min(delayMs * 2, 60_000);
    await set({ ...get(), Status: 'restarting' });
    for (let waited = 0; waited < delayMs && !existsSync(cp.stopMarker); waited += 50) await sleep(Math.min(50, delayMs - waited));
    if (existsSync(cp.stopMarker)) return;
    await set({ ...get(), RestartCount: get().RestartCount + 1 });
  }
}

/** The stop signal, then SIGKILL after the stop timeout: how an unhealthy container is ended before its restart. */
async function stopForRestart(runc: Runc, rec: ContainerRecord, pid: number): Promise<void> {
  await runc.kill(rec.Id, rec.Config.StopSignal).catch(() => {});
  await sleep(rec.Config.StopTimeout * 1000);
  // Only the run that was found unhealthy: a restarted one has another pid.
  const st = await runc.state(rec.Id).catch(() => undefined);
  if (st && st.pid === pid && st.status !== 'stopped') await runc.kill(rec.Id, 'SIGKILL').catch(() => {});
}
