/** Acting on a container that runs: stop, kill, pause, unpause, exec, wait. */
import type { StdioOptions } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { observe, type Observed, type RunnerContext } from './inspect.js';
import { execCapture, type CapturedExec } from './probe.js';
import { RuncError } from './runc.js';
import { signalName } from './units.js';
import { resolveUser } from './users.js';

export class StateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StateError';
  }
}

const live = (o: Observed) => o.status === 'running' || o.status === 'paused' || o.status === 'restarting';
const TERMINATING = new Set(['SIGKILL', 'SIGTERM', 'SIGINT', 'SIGQUIT']);

/**
 * Polls until the container is no longer live and its supervisor has finished (bounded by
 * `ms`); undefined when it is gone altogether (`--rm`).
 */
export async function waitUntilStopped(ctx: RunnerContext, id: string, ms: number): Promise<Observed | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const o = await observe(ctx, id).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!o || (!live(o) && !o.supervised) || Date.now() >= deadline) return o;
    await sleep(50);
  }
}

async function markStopped(ctx: RunnerContext, id: string, why: string): Promise<void> {
  await writeFile(ctx.paths.container(id).stopMarker, `${why}\n`);
}

async function signal(ctx: RunnerContext, id: string, sig: string): Promise<void> {
  try {
    await ctx.runc().kill(id, sig);
  } catch (err) {
    // It exited meanwhile: that is what we wanted.
    if (!(err instanceof RuncError && /not running|does not exist|stopped/i.test(err.stderr))) throw err;
  }
}

/** docker stop: the stop signal, SIGKILL after `timeSec`; a container that is not running is left as it is. */
export async function stop(ctx: RunnerContext, id: string, timeSec?: number): Promise<void> {
  const o = await observe(ctx, id);
  if (!live(o)) {
    // Exited, but its supervisor may still be tearing down: let it finish first.
    if (o.supervised) await waitUntilStopped(ctx, id, 15_000);
    return;
  }
  await markStopped(ctx, id, 'stop');
  const grace = (timeSec ?? o.rec.Config.StopTimeout) * 1000;
  if (o.status !== 'restarting') {
    await signal(ctx, id, grace === 0 ? 'SIGKILL' : o.rec.Config.StopSignal);
    if (o.status === 'paused') await ctx.runc().resume(id).catch(() => {});
    const after = await waitUntilStopped(ctx, id, grace);
    if (after && live(after)) await signal(ctx, id, 'SIGKILL');
  }
  const o2 = await waitUntilStopped(ctx, id, 15_000);
  if (o2 && (live(o2) || o2.supervised)) throw new StateError(`container ${id.slice(0, 12)} did not stop within 15 s of SIGKILL; see ${ctx.paths.container(id).shimLog}`);
}

export async function kill(ctx: RunnerContext, id: string, sig = 'SIGKILL'): Promise<void> {
  const name = signalName(sig);
  const o = await observe(ctx, id);
  if (o.status === 'paused') throw new StateError(`container ${id.slice(0, 12)} is paused: unpause it before killing it (or stop or rm -f it)`);
  if (o.status !== 'running') throw new StateError(`cannot kill container ${id.slice(0, 12)}: it is not running`);
  if (TERMINATING.has(name) || name === o.rec.Config.StopSignal) await markStopped(ctx, id, `kill ${name}`);
  await signal(ctx, id, name);
}

export async function pause(ctx: RunnerContext, id: string): Promise<void> {
  const o = await observe(ctx, id);
  if (o.status === 'paused') throw new StateError(`container ${id.slice(0, 12)} is already paused`);
  if (o.status !== 'running') throw new StateError(`container ${id.slice(0, 12)} is not running`);
  await ctx.runc().pause(id);
}

export async function unpause(ctx: RunnerContext, id: string): Promise<void> {
  const o = await observe(ctx, id);
  if (o.status !== 'paused') throw new StateError(`container ${id.slice(0, 12)} is not paused`);
  await ctx.runc().resume(id);
}

export interface ExecRequest {
  tty?: boolean;
  interactive?: boolean;
  env?: string[];
  user?: string;
  workdir?: string;
}

async function execTarget(ctx: RunnerContext, id: string, req: ExecRequest): Promise<{ user?: string }> {
  const o = await observe(ctx, id);
  if (o.status === 'paused') throw new StateError(`container ${id.slice(0, 12)} is paused: unpause it before exec`);
  if (o.status !== 'running') throw new StateError(`container ${id.slice(0, 12)} is not running`);
  if (!req.user) return {};
  const u = await resolveUser(ctx.paths.container(id).rootfs, req.user);
  return { user: `${u.uid}:${u.gid}` };
}

/** `exec` on this process's stdio; resolves with the command's exit code. */
export async function exec(ctx: RunnerContext, id: string, argv: string[], req: ExecRequest = {}): Promise<number> {
  const { user } = await execTarget(ctx, id, req);
  const stdio: StdioOptions = [req.interactive || req.tty ? 'inherit' : 'ignore', 'inherit', 'inherit'];
  const child = ctx.runc().spawnExec(id, argv, { tty: req.tty, env: req.env, user, cwd: req.workdir, stdio });
  return new Promise((resolve) => {
    child.once('error', () => resolve(126));
    child.once('close', (code, sig) => resolve(code ?? 128 + (sig ? 9 : 0)));
  });
}

/** `exec` with the output collected (for code and tests). */
export async function execOutput(ctx: RunnerContext, id: string, argv: string[], req: ExecRequest = {}): Promise<CapturedExec> {
  const { user } = await execTarget(ctx, id, req);
  return execCapture(ctx.runc(), id, argv, { env: req.env, user, cwd: req.workdir });
}
