/*
 * The per-container supervisor process (like podman's conmon): started detached, in its own
 * session, by `slipway run/start`; lives as long as the container (restarts included); owns
 * state.json. No daemon: a crash or upgrade of one supervisor touches one container, and every
 * `slipway` command is a short-lived client that reads the files and asks runc.
 *
 *   node shim.js --root R --runc-root RR --runc BIN ID [--attach]
 *   node shim.js --standby        (the same arguments arrive later as one JSON line on fd 3)
 *
 * fd 3 carries events to the launcher (JSON lines: started | error | exited). With --attach,
 * fds 4/5/6 are the foreground client's stdin/stdout/stderr for the first run; the container's
 * output still goes to the log, and losing the client changes nothing for the container. fds
 * 0/1/2 are /dev/null: nothing the supervisor prints by accident can reach a client.
 *
 * A standby supervisor is started by `slipway run` before it has even loaded its own modules, so
 * that the two Node.js processes boot side by side; once the container is created, the CLI
 * sends the arguments (see launcher.ts). End of file on fd 3 before that: nothing to do, exit.
 * (A foreground `run --rm` or `run -t` has no supervisor process: the CLI supervises it.)
 */
import { closeSync, openSync, readSync, realpathSync, writeSync } from 'node:fs';
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
  /** The bridge settings (otherwise SLIPWAY_BRIDGE / SLIPWAY_SUBNET of the environment). */
  network?: { bridge?: string; subnet?: string };
}

export const STANDBY_FLAG = '--standby';

/** Where the attached client's stdin, stdout and stderr are in the supervisor. */
export const ATTACH_FDS = { stdin: 4, stdout: 5, stderr: 6 } as const;

export function shimArgv(a: ShimArgs): string[] {
  return [SHIM_ENTRY, '--root', a.root, '--runc-root', a.runcRoot, '--runc', a.runc, a.id, ...(a.attach ? ['--attach'] : [])];
}

/** A standby supervisor's arguments: one JSON line, read with blocking reads (it has nothing else to do meanwhile). */
function readStandbyArgs(): ShimArgs | undefined {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(4096);
  for (let total = 0; total < 1 << 20; ) {
    let n: number;
    try {
      n = readSync(3, buf, 0, buf.length, null);
    } catch (err) {
      // fd 3 is a blocking socket in the child; should it not be, wait a little instead of spinning.
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
        continue;
      }
      throw err;
    }
    if (n === 0) return undefined;
    chunks.push(Buffer.from(buf.subarray(0, n)));
    total += n;
    const text = Buffer.concat(chunks).toString();
    const end = text.indexOf('\n');
    if (end >= 0) return JSON.parse(text.slice(0, end)) as ShimArgs;
  }
  throw new Error('slipway shim: the standby arguments are too long');
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
  const standby = process.argv.includes(STANDBY_FLAG);
  const args = standby ? readStandbyArgs() : parseArgs(process.argv.slice(2));
  if (!args) process.exit(0); // the client went away without a container for us
  const woken = performance.now();
  const paths = runnerPaths({ root: args.root, runcRoot: args.runcRoot, ...(args.network ? { network: args.network } : {}) });
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
    ? { stdout: socketOn(ATTACH_FDS.stdout, 'write'), stderr: socketOn(ATTACH_FDS.stderr, 'write'), ...(rec.Config.OpenStdin ? { stdin: socketOn(ATTACH_FDS.stdin, 'read') } : {}) }
    : undefined;
  note(`supervisor up ${performance.now().toFixed(0)} ms after its process started${standby ? ` (a standby, woken at ${woken.toFixed(0)} ms)` : ''}`);
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
