/** Starting a container's supervisor (shim.ts) as a detached process and listening to what it reports. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { networkEnv, type RunnerPaths } from './paths.js';
import type { Runc } from './runc.js';
import { shimArgv } from './shim.js';
import type { ShimEvent } from './supervisor.js';

export class StartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StartError';
  }
}

export interface AttachStreams {
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
}

export interface Launched {
  pid: number;
  /** With attach: the first run's exit, once all of its output was delivered. */
  exited?: Promise<{ exitCode: number; oomKilled: boolean }>;
}

/** Spawns the supervisor and resolves when the container runs; rejects with why it could not start. */
export async function launchShim(paths: RunnerPaths, runc: Runc, id: string, attach?: AttachStreams): Promise<Launched> {
  const child = spawn(process.execPath, shimArgv({ root: paths.root, runcRoot: paths.runcRoot, runc: runc.binary, id, attach: !!attach }), {
    detached: true,
    cwd: '/',
    env: { ...process.env, ...networkEnv(paths) },
    stdio: attach ? [attach.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'] : ['ignore', 'ignore', 'ignore', 'pipe'],
  });
  const events = eventQueue(child);
  const first = await events.next();
  if (first?.event !== 'started') {
    release(child);
    throw new StartError(first?.event === 'error' ? first.message : `the supervisor of ${id.slice(0, 12)} exited before the container started; see ${paths.container(id).shimLog}`);
  }
  if (!attach) {
    release(child);
    return { pid: first.pid };
  }
  if (attach.stdin && child.stdin) {
    attach.stdin.pipe(child.stdin);
    child.stdin.on('error', () => {});
  }
  const outputs = [child.stdout!, child.stderr!].map((s, i) => {
    s.pipe(i === 0 ? attach.stdout : attach.stderr, { end: false });
    return new Promise<void>((resolve) => s.once('close', () => resolve()));
  });
  const exited = (async () => {
    const e = await events.next();
    await Promise.all(outputs);
    if (attach.stdin && child.stdin) attach.stdin.unpipe(child.stdin);
    release(child);
    if (e?.event !== 'exited') throw new StartError(`the supervisor of ${id.slice(0, 12)} ended without reporting the exit; see ${paths.container(id).shimLog}`);
    return { exitCode: e.exitCode, oomKilled: e.oomKilled };
  })();
  return { pid: first.pid, exited };
}

/** Lets this process exit without the supervisor, which keeps running. */
function release(child: ChildProcess): void {
  for (const s of child.stdio) s?.destroy();
  child.unref();
}

/** Events of fd 3 in order; `next()` gives undefined once the supervisor closed it. */
function eventQueue(child: ChildProcess): { next(): Promise<ShimEvent | undefined> } {
  const queue: (ShimEvent | undefined)[] = [];
  const waiting: ((e: ShimEvent | undefined) => void)[] = [];
  const push = (e: ShimEvent) => {
    const w = waiting.shift();
    if (w) w(e);
    else queue.push(e);
  };
  const lines = createInterface({ input: child.stdio[3] as Readable });
  lines.on('line', (line) => {
    try {
      push(JSON.parse(line) as ShimEvent);
    } catch {
      // not an event
    }
  });
  let closed = false;
  lines.on('close', () => {
    closed = true;
    for (const w of waiting.splice(0)) w(undefined);
  });
  (child.stdio[3] as Readable).on('error', () => {});
  return {
    next: () => (queue.length || closed ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiting.push(resolve))),
  };
}
