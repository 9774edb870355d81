/** Running a command inside a container and collecting its output (health probes, `exec` from code). */
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ProbeResult, Probe } from './health.js';
import type { ExecOptions, Runc } from './runc.js';

export interface CapturedExec extends ProbeResult {
  stdout: string;
  stderr: string;
}

/**
 * `runc exec` with output captured (at most `maxBytes` of each stream kept). On timeout the
 * process inside is killed by its host pid (killing `runc exec` alone would leave it running).
 */
export async function execCapture(runc: Runc, id: string, argv: string[], opts: ExecOptions & { timeoutMs?: number; maxBytes?: number } = {}): Promise<CapturedExec> {
  const pidFile = join(tmpdir(), `slipway-exec-${randomBytes(6).toString('hex')}.pid`);
  const max = opts.maxBytes ?? 1 << 20;
  const child = runc.spawnExec(id, argv, { ...opts, pidFile, stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks = { stdout: '', stderr: '' };
  child.stdout!.on('data', (d: Buffer) => (chunks.stdout = (chunks.stdout + d.toString()).slice(0, max)));
  child.stderr!.on('data', (d: Buffer) => (chunks.stderr = (chunks.stderr + d.toString()).slice(0, max)));
  let timedOut = false;
  const timer =
    opts.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          void readFile(pidFile, 'utf8').then((pid) => process.kill(Number(pid), 'SIGKILL'), () => child.kill('SIGKILL')).catch(() => {});
        }, opts.timeoutMs);
  const exitCode = await new Promise<number>((resolve) => {
    child.once('error', () => resolve(-1));
    child.once('close', (code, signal) => resolve(code ?? (signal ? 128 : -1)));
  });
  clearTimeout(timer);
  await rm(pidFile, { force: true });
  if (timedOut) return { exitCode: -1, output: `Health check exceeded timeout (${opts.timeoutMs}ms)`, stdout: chunks.stdout, stderr: chunks.stderr };
  return { exitCode, output: chunks.stdout + chunks.stderr, ...chunks };
}

export function probeInContainer(runc: Runc, id: string): Probe {
  return async (argv, timeoutMs) => {
    const r = await execCapture(runc, id, argv, { timeoutMs, maxBytes: 4096 });
    return { exitCode: r.exitCode, output: r.output };
  };
}
