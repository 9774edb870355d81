/** A thin driver over Debian's `runc`: each call is one runc command; a failure carries runc's stderr. */
import { execFile, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

export class RuncMissingError extends Error {
  constructor() {
    super('runc not found in PATH: apt-get install runc');
    this.name = 'RuncMissingError';
  }
}

export class RuncError extends Error {
  constructor(
    readonly args: string[],
    readonly stderr: string,
    readonly code: number | null,
  ) {
    super(`runc ${args.join(' ')} failed${code === null ? '' : ` (exit ${code})`}: ${cleanStderr(stderr) || 'no message'}`);
    this.name = 'RuncError';
  }
}

/** runc prints JSON log lines or `time=… level=error msg="…"`; keep the message. */
function cleanStderr(stderr: string): string {
  const lines = stderr.trim().split('\n').filter(Boolean);
  const msgs = lines.map((l) => {
    try {
      return (JSON.parse(l) as { msg?: string }).msg ?? l;
    } catch {
      return /msg="((?:[^"\\]|\\.)*)"/.exec(l)?.[1]?.replace(/\\"/g, '"') ?? l;
    }
  });
  return msgs.join('; ');
}

/** The runc executable on PATH; the one place that says what to install when it is missing. */
export function findRunc(env: NodeJS.ProcessEnv = process.env): string {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, 'runc');
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new RuncMissingError();
}

export interface RuncState {
  id: string;
  pid: number;
  status: 'creating' | 'created' | 'running' | 'paused' | 'stopped';
  bundle: string;
}

export interface ExecOptions {
  tty?: boolean;
  env?: string[];
  /** `uid:gid` (runc takes numbers only). */
  user?: string;
  cwd?: string;
  /** Where runc writes the host pid of the exec'd process. */
  pidFile?: string;
  stdio?: StdioOptions;
}

export class Runc {
  readonly binary: string;

  constructor(
    readonly root: string,
    binary?: string,
  ) {
    this.binary = binary ?? findRunc();
  }

  /** Runs `runc --root R ARGS…` to completion. */
  command(args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
    const full = ['--root', this.root, ...args];
    return new Promise((resolve, reject) => {
      execFile(this.binary, full, { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const code = typeof err.code === 'number' ? err.code : null;
        reject(new RuncError(args, stderr || err.message, code));
      });
    });
  }

  /** The container's state, or undefined when runc does not know it. */
  async state(id: string): Promise<RuncState | undefined> {
    try {
      return JSON.parse(await this.command(['state', id])) as RuncState;
    } catch (err) {
      if (err instanceof RuncError && /does not exist|not exist/i.test(err.stderr)) return undefined;
      throw err;
    }
  }

  async list(): Promise<RuncState[]> {
    const out = await this.command(['list', '--format', 'json']);
    return (JSON.parse(out || 'null') as RuncState[] | null) ?? [];
  }

  /**
   * `runc create`: the container's init waits for `start`, with `stdio` as its stdio (runc hands
   * its own on, so they must not be pipes this call waits on); runc's errors come from `log`.
   */
  async create(id: string, bundle: string, opts: { pidFile: string; log: string; stdio?: StdioOptions }): Promise<void> {
    const args = ['--root', this.root, '--log', opts.log, '--log-format', 'json', 'create', '--bundle', bundle, '--pid-file', opts.pidFile, id];
    const child = spawn(this.binary, args, { stdio: opts.stdio ?? 'ignore' });
    const code = await new Promise<number | null>((resolve) => {
      child.once('error', () => resolve(null));
      child.once('exit', (c) => resolve(c));
    });
    if (code !== 0) throw new RuncError(['create', id], lastRuncError(await readFile(opts.log, 'utf8').catch(() => '')), code);
  }

  async start(id: string): Promise<void> {
    await this.command(['start', id]);
  }

  async kill(id: string, signal: string, opts: { all?: boolean } = {}): Promise<void> {
    await this.command(['kill', ...(opts.all ? ['--all'] : []), id, signal.replace(/^SIG/, '')]);
  }

  async pause(id: string): Promise<void> {
    await this.command(['pause', id]);
  }

  async resume(id: string): Promise<void> {
    await this.command(['resume', id]);
  }

  /** Deletes runc's record of a container; one runc does not know is not an error. */
  async delete(id: string, opts: { force?: boolean } = {}): Promise<void> {
    try {
      await this.command(['delete', ...(opts.force ? ['--force'] : []), id]);
    } catch (err) {
      if (err instanceof RuncError && /does not exist|not exist/i.test(err.stderr)) return;
      throw err;
    }
  }

  /**
   * Starts `runc run` in the foreground: runc stays the container's parent, forwards signals,
   * and exits with the container's exit status (128+N for a signal). `--log` keeps runc's own
   * messages apart from the container's stderr, which shares runc's stderr.
   */
  spawnRun(id: string, bundle: string, opts: { pidFile: string; log: string; stdio: StdioOptions; detached?: boolean }): ChildProcess {
    const args = ['--root', this.root, '--log', opts.log, '--log-format', 'json', 'run', '--bundle', bundle, '--pid-file', opts.pidFile, id];
    return spawn(this.binary, args, { stdio: opts.stdio, detached: opts.detached ?? false });
  }

  /** Starts `runc exec`; the caller owns the child (stdio, exit). */
  spawnExec(id: string, argv: string[], opts: ExecOptions = {}): ChildProcess {
    const args = ['--root', this.root, 'exec'];
    if (opts.tty) args.push('--tty');
    for (const e of opts.env ?? []) args.push('--env', e);
    if (opts.user) args.push('--user', opts.user);
    if (opts.cwd) args.push('--cwd', opts.cwd);
    if (opts.pidFile) args.push('--pid-file', opts.pidFile);
    args.push(id, ...argv);
    return spawn(this.binary, args, { stdio: opts.stdio ?? 'inherit' });
  }
}

/** The last error message in runc's JSON `--log` file (why a `runc run` failed before the container started). */
export function lastRuncError(logText: string): string {
  const errors = logText
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      try {
        return JSON.parse(l) as { level?: string; msg?: string };
      } catch {
        return { level: 'error', msg: l };
      }
    })
    .filter((e) => e.level === 'error' || e.level === 'fatal');
  return errors.at(-1)?.msg ?? '';
}
