/** Starting a container's supervisor (shim.ts) as a detached process and listening to what it reports. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Duplex, Readable, Writable } from 'node:stream';
import { networkEnv, type RunnerPaths } from './paths.js';
import type { Runc } from './runc.js';
import { ATTACH_FDS, SHIM_ENTRY, shimArgv, STANDBY_FLAG, type ShimArgs } from './shim.js';
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

export interface LaunchOptions {
  /**
   * With attach: `exited` waits (bounded) until the supervisor has finished too, so a `--rm`
   * container is gone when the foreground `run` returns, as with docker.
   */
  awaitSupervisor?: boolean;
  /**
   * A supervisor started ahead with `--standby` (`node shim.js --standby`, detached, stdio
   * ignore ×3 then four pipes: events, stdin, stdout, stderr), used instead of starting one now.
   * One that does not fit (another shim.js, exited) is sent away and a new one started.
   */
  standby?: ChildProcess;
}

/** How long a foreground `run --rm` waits for the supervisor's teardown after the container exited. */
const SUPERVISOR_END_MS = 30_000;

/** Spawns the supervisor (or wakes the standby) and resolves when the container runs; rejects with why it could not start. */
export async function launchShim(paths: RunnerPaths, runc: Runc, id: string, attach?: AttachStreams, opts: LaunchOptions = {}): Promise<Launched> {
  const args: ShimArgs = { root: paths.root, runcRoot: paths.runcRoot, runc: runc.binary, id, attach: !!attach, network: paths.network };
  let child: ChildProcess;
  if (opts.standby && fits(opts.standby)) {
    child = opts.standby;
    for (const fd of [3, 4, 5, 6]) refStream(fdOf(child, fd));
    // Ends it did not get are closed, so the supervisor never waits on them.
    if (!attach?.stdin) fdOf(child, ATTACH_FDS.stdin)?.destroy();
    if (!attach) for (const fd of [ATTACH_FDS.stdout, ATTACH_FDS.stderr]) fdOf(child, fd)?.destroy();
    fdOf(child, 3)!.write(`${JSON.stringify(args)}\n`);
  } else {
    if (opts.standby) release(opts.standby);
    const pipe = (wanted: boolean) => (wanted ? 'pipe' : 'ignore');
    child = spawn(process.execPath, shimArgv(args), {
      detached: true,
      cwd: '/',
      env: { ...process.env, ...networkEnv(paths) },
      stdio: ['ignore', 'ignore', 'ignore', 'pipe', pipe(!!attach?.stdin), pipe(!!attach), pipe(!!attach)],
    });
  }
  const [stdin, stdout, stderr] = [fdOf(child, ATTACH_FDS.stdin), fdOf(child, ATTACH_FDS.stdout), fdOf(child, ATTACH_FDS.stderr)];
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
  if (attach.stdin && stdin) {
    attach.stdin.pipe(stdin);
    stdin.on('error', () => {});
  }
  const outputs = [stdout!, stderr!].map((s, i) => {
    s.pipe(i === 0 ? attach.stdout : attach.stderr, { end: false });
    return new Promise<void>((resolve) => s.once('close', () => resolve()));
  });
  const exited = (async () => {
    const e = await events.next();
    await Promise.all(outputs);
    if (attach.stdin && stdin) attach.stdin.unpipe(stdin);
    if (opts.awaitSupervisor && e?.event === 'exited') {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([events.closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, SUPERVISOR_END_MS)))]);
      clearTimeout(timer);
    }
    release(child);
    if (e?.event !== 'exited') throw new StartError(`the supervisor of ${id.slice(0, 12)} ended without reporting the exit; see ${paths.container(id).shimLog}`);
    return { exitCode: e.exitCode, oomKilled: e.oomKilled };
  })();
  return { pid: first.pid, exited };
}

/** Whether `standby` is a waiting supervisor of this very shim.js, with the four pipes launchShim uses. */
function fits(standby: ChildProcess): boolean {
  const [, entry, flag] = standby.spawnargs;
  return standby.exitCode === null && standby.signalCode === null && entry === SHIM_ENTRY && flag === STANDBY_FLAG && [3, 4, 5, 6].every((fd) => fdOf(standby, fd)?.destroyed === false);
}

/** The parent's end of one of the child's pipes (ChildProcess types only the first five). */
function fdOf(child: ChildProcess, fd: number): Duplex | undefined {
  return (child.stdio as unknown as (Duplex | null | undefined)[])[fd] ?? undefined;
}

/** The spawner unrefs a standby's pipes so that an unused one does not keep it alive; in use, they must hold the loop. */
function refStream(stream: unknown): void {
  (stream as { ref?: () => void } | null)?.ref?.();
}

/** Lets this process exit without the supervisor, which keeps running. */
function release(child: ChildProcess): void {
  for (const s of child.stdio) s?.destroy();
  child.unref();
}

/** Events of fd 3 in order; `next()` gives undefined once the supervisor closed it (when it exits), and `closed` resolves. */
function eventQueue(child: ChildProcess): { next(): Promise<ShimEvent | undefined>; closed: Promise<void> } {
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
  const whenClosed = new Promise<void>((resolve) =>
    lines.on('close', () => {
      closed = true;
      for (const w of waiting.splice(0)) w(undefined);
      resolve();
    }),
  );
  (child.stdio[3] as Readable).on('error', () => {});
  return {
    next: () => (queue.length || closed ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiting.push(resolve))),
    closed: whenClosed,
  };
}
