/**
 * One run of a container: `runc run` in the foreground with the FIFOs of stdio.ts, output into
 * the log (and to an attached client on the first run), until runc exits. The container counts
 * as started once runc wrote its pid file; output before that is held back, because a runc
 * that fails to start prints its error on the stderr the container would have had.
 */
import { once } from 'node:events';
import { watch } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { constants } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { LogStream, LogWriter } from './logs.js';
import type { ContainerPaths } from './paths.js';
import { lastRuncError, type Runc } from './runc.js';
import { ensureFifo, openInputPipe, openOutputPipe, type InputPipe } from './stdio.js';

export interface Attached {
  stdout: Writable;
  stderr: Writable;
  stdin?: Readable;
}

export interface RunOnceOptions {
  runc: Runc;
  id: string;
  cp: ContainerPaths;
  /** runc on the caller's terminal (`-t`): no FIFOs, no log. */
  terminal: boolean;
  log?: LogWriter;
  attach?: Attached;
  /** Give the container a stdin FIFO (`-i`), fed from `attach.stdin` when there is one. */
  openStdin: boolean;
  onStarted(pid: number): void;
}

export interface RunOutcome {
  started: boolean;
  exitCode: number;
  error: string;
}

/** The container's stdio FIFOs (kept across restarts); the supervisor makes them while it prepares the rest. */
export async function makeStdioFifos(cp: ContainerPaths, openStdin: boolean): Promise<void> {
  await Promise.all(['stdout', 'stderr', ...(openStdin ? ['stdin'] : [])].map((name) => ensureFifo(join(cp.dir, name))));
}

export async function runOnce(o: RunOnceOptions): Promise<RunOutcome> {
  await Promise.all([rm(o.cp.pidFile, { force: true }), rm(o.cp.runcLog, { force: true })]);
  if (o.terminal) return finish(o, o.runc.spawnRun(o.id, o.cp.dir, { pidFile: o.cp.pidFile, log: o.cp.runcLog, stdio: 'inherit' }), []);
  const fifo = (name: string) => join(o.cp.dir, name);
  await makeStdioFifos(o.cp, o.openStdin);
  const out = openOutputPipe(fifo('stdout'));
  const err = openOutputPipe(fifo('stderr'));
  const input: InputPipe | undefined = o.openStdin ? openInputPipe(fifo('stdin')) : undefined;
  // In a session of its own: a terminal's ^C reaches the client, which forwards it once (as docker's sig-proxy).
  const child = o.runc.spawnRun(o.id, o.cp.dir, { pidFile: o.cp.pidFile, log: o.cp.runcLog, stdio: [input?.childFd ?? 'ignore', out.childFd, err.childFd], detached: true });
  for (const end of [out, err, input]) end?.closeChildEnd();
  if (input && o.attach?.stdin) o.attach.stdin.pipe(input.writer);
  const held: [LogStream, Buffer][] = [];
  let started = false;
  const deliver = (stream: LogStream, chunk: Buffer, source: Readable) => {
    if (!started) return void held.push([stream, chunk]);
    o.log?.write(stream, chunk);
    const target = o.attach?.[stream];
    // A slow attached client slows the container (as a terminal would); a gone one stops mattering.
    if (target && !target.destroyed && !target.write(chunk) && !source.isPaused()) {
      source.pause();
      const resume = () => {
        target.off('drain', resume).off('close', resume);
        source.resume();
      };
      target.on('drain', resume).on('close', resume);
    }
  };
  out.reader.on('data', (c: Buffer) => deliver('stdout', c, out.reader));
  err.reader.on('data', (c: Buffer) => deliver('stderr', c, err.reader));
  const drained = Promise.all([once(out.reader, 'close'), once(err.reader, 'close')]);
  const onStarted = (pid: number) => {
    started = true;
    o.onStarted(pid);
    for (const [stream, chunk] of held.splice(0)) deliver(stream, chunk, stream === 'stdout' ? out.reader : err.reader);
  };
  const outcome = await finish(o, child, [drained], onStarted, () => held.map(([, c]) => c.toString()).join(''));
  if (o.attach?.stdin) o.attach.stdin.unpipe(input!.writer);
  input?.writer.destroy();
  return outcome;
}

/** Waits for runc to exit (and for `also`), noticing the pid file on the way. */
async function finish(
  o: RunOnceOptions,
  child: ReturnType<Runc['spawnRun']>,
  also: Promise<unknown>[],
  onStarted: (pid: number) => void = (pid) => o.onStarted(pid),
  heldOutput: () => string = () => '',
): Promise<RunOutcome> {
  let started = false;
  const check = async () => {
    if (started) return;
    const pid = Number(await readFile(o.cp.pidFile, 'utf8').catch(() => ''));
    if (pid > 0 && !started) {
      started = true;
      onStarted(pid);
    }
  };
  const watcher = watch(o.cp.dir, () => void check());
  const poll = setInterval(() => void check(), 50);
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    child.once('exit', (code, signal) => resolve([code, signal]));
    child.once('error', () => resolve([128, null]));
  });
  try {
    const [[code, signal]] = await Promise.all([exited, ...also]);
    await check();
    const exitCode = code ?? 128 + (signal ? constants.signals[signal] : 0);
    if (started) return { started, exitCode, error: '' };
    const message = lastRuncError(await readFile(o.cp.runcLog, 'utf8').catch(() => '')) || heldOutput().trim() || `runc run exited with ${exitCode}`;
    return { started, exitCode: /no such file|not found/i.test(message) ? 127 : /permission denied/i.test(message) ? 126 : 128, error: message };
  } finally {
    watcher.close();
    clearInterval(poll);
  }
}
