/*
 * `slipway run` (-d, or in the foreground without --rm: the runs that get a supervisor process)
 * starts its container's supervisor before it loads anything else: a Node.js
 * process takes ~50 ms to boot and the supervisor ~30 ms more to load its modules, which now
 * overlaps this process loading its own and creating the container, instead of following it.
 * The standby waits for its arguments on fd 3 (runner/shim.ts); launcher.ts wakes it, or sends
 * it away when it is not the shim.js it would start itself. One that is never used sees its
 * pipes close when this process exits, and exits too. SLIPWAY_NO_STANDBY=1 turns this off.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** dist/runner/shim.js beside this file's dist/cli/: the runner checks that it is its own supervisor. */
const SHIM = fileURLToPath(new URL('../runner/shim.js', import.meta.url));

/**
 * Arguments after which `run` will not want a supervisor process: --rm and -t containers are
 * supervised by the client itself. A guess (these may also be the container's own arguments),
 * which costs only speed when wrong: launcher.ts starts a supervisor when there is no standby.
 */
const SUPERVISED_HERE = (arg: string) => arg === '--rm' || arg === '--tty' || /^-[di]*t[dit]*$/.test(arg);

/** The standby supervisor for `argv` (`run` only), or undefined. */
export function startStandby(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ChildProcess | undefined {
  if (argv[2] !== 'run' || argv.includes('--help') || argv.some(SUPERVISED_HERE) || env.SLIPWAY_NO_STANDBY === '1') return undefined;
  try {
    const child = spawn(process.execPath, [SHIM, '--standby'], {
      detached: true,
      cwd: '/',
      // fds 3–6: events (and the arguments), the attached client's stdin, stdout, stderr.
      stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe', 'pipe', 'pipe'],
    });
    child.on('error', () => {});
    child.unref();
    for (const end of child.stdio.slice(3) as unknown as ({ on(e: 'error', f: () => void): void; unref(): void } | null)[]) {
      end?.on('error', () => {});
      end?.unref();
    }
    return child;
  } catch {
    return undefined;
  }
}

/** Sends an unused standby away now (it also goes when this process exits). */
export function dismissStandby(standby: ChildProcess | undefined): void {
  for (const end of standby?.stdio ?? []) end?.destroy();
}
