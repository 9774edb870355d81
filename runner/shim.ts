/*
 * The per-container supervisor process (like podman's conmon): started detached, in its own
 * session, by `slipway run/start`; lives as long as the container (restarts included); owns
 * state.json. No daemon: a crash or upgrade of one supervisor touches one container, and every
 * `slipway` command is a short-lived client that reads the files and asks runc.
 *
 *   node shim.js --root R --runc-root RR --runc BIN ID [--attach]
 *
 * fd 3 carries events to the launcher (JSON lines: started | error | exited). With --attach,
 * fds 0/1/2 are the foreground client's stdin/stdout/stderr for the first run; the container's
 * output still goes to the log, and losing the client changes nothing for the container.
 */
import { closeSync, openSync, realpathSync, writeSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { runnerPaths, type RunnerPaths } from './paths.js';
import { Runc } from './runc.js';
import { processAlive, processStart, readRecord } from './state.js';
import { supervise, type ShimEvent } from './supervisor.js';
import type { Attached } from './run-once.js';

export const SHIM_ENTRY = fileURLToPath(import.meta.url);

export interface ShimArgs {
  root: string;
  runcRoot: string;
  runc: string;
  id: string;
  attach: boolean;
}

export function shimArgv(a: ShimArgs): string[] {
  return [SHIM_ENTRY, '--root', a.root, '--runc-root', a.runcRoot, '--runc', a.runc, a.id, ...(a.attach ? ['--attach'] : [])];
}

function parseArgs(argv: string[]): ShimArgs {
  const value = (flag: string) => {
    const i = argv.indexOf(flag);
    const v = i >= 0 ? argv[i + 1] : undefined;
    if (!v) throw new Error(`slipway shim: ${flag} is required`);
    return v;
  };
  const id = argv.find((a, i) => /^[0-9a-f]{64}$/.test(a) && !argv[i - 1]?.startsWith('--'));
  if (!id) throw new Error('slipway shim: a container id is required');
  return { root: value('--root'), runcRoot: value('--runc-root'), runc: value('--runc'), id, attach: argv.includes('--attach') };
}

function sendEvent(e: ShimEvent): void {
  try {
    writeSync(3, `${JSON.stringify(e)}\n`);
  } catch {
    // the launcher is gone: nobody to tell
  }
}

function socketOn(fd: number, mode: 'read' | 'write'): net.Socket {
  const s = new net.Socket({ fd, readable: mode === 'read', writable: mode === 'write' });
  s.on('error', () => s.destroy());
  return s;
}

/** One supervisor per container: `shim.pid` is created exclusively; a stale one (dead owner) is taken over. */
async function lock(paths: RunnerPaths, id: string): Promise<() => Promise<void>> {
  const file = `${paths.container(id).dir}/shim.pid`;
  const mine = `${process.pid} ${processStart(process.pid)}`;
  try {
    await writeFile(file, mine, { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const [pid, start] = (await readFile(file, 'utf8')).split(' ');
    if (processAlive(Number(pid), start ?? '')) throw new Error(`container ${id.slice(0, 12)} already has a supervisor (pid ${pid})`);
    await writeFile(file, mine);
  }
  return () => rm(file, { force: true });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const paths = runnerPaths({ root: args.root, runcRoot: args.runcRoot });
  const cp = paths.container(args.id);
  process.title = `slipway-shim ${args.id.slice(0, 12)}`;
  const diag = openSync(cp.shimLog, 'a');
  const note = (msg: string) => writeSync(diag, `${new Date().toISOString()} ${msg}\n`);
  // A supervisor that dies orphans its container: note the fault and keep supervising.
  process.on('uncaughtException', (err) => note(`uncaught: ${err.stack ?? String(err)}`));
  process.on('unhandledRejection', (err) => note(`unhandled: ${(err as Error)?.stack ?? String(err)}`));
  process.on('SIGHUP', () => {});
  process.on('SIGINT', () => {});
  const runc = new Runc(paths.runcRoot, args.runc);
  const rec = await readRecord(paths, args.id);
  // SIGTERM (a shutdown): stop the container the way `slipway stop` would, then finish normally.
  process.on('SIGTERM', () => {
    void writeFile(cp.stopMarker, 'SIGTERM to the supervisor\n').then(() => runc.kill(args.id, rec.Config.StopSignal)).catch(() => {});
  });
  let unlock: () => Promise<void>;
  try {
    unlock = await lock(paths, args.id);
  } catch (err) {
    sendEvent({ event: 'error', message: (err as Error).message });
    process.exit(1);
  }
  const attach: Attached | undefined = args.attach
    ? { stdout: socketOn(1, 'write'), stderr: socketOn(2, 'write'), ...(rec.Config.OpenStdin ? { stdin: socketOn(0, 'read') } : {}) }
    : undefined;
  note(`supervisor up ${(performance.now()).toFixed(0)} ms after its process started`);
  const final = await supervise({ paths, id: args.id, runc, terminal: false, attach, events: sendEvent, note });
  note(`container ended: exit code ${final.ExitCode}${final.Error ? `, ${final.Error}` : ''}`);
  await unlock();
  closeSync(diag);
  process.exit(0);
}

const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === SHIM_ENTRY) {
  main().catch((err: Error) => {
    sendEvent({ event: 'error', message: err.message });
    process.exit(1);
  });
}
