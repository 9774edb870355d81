import { execFile, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from '../../builder/redis.js';

const execFileP = promisify(execFile);

export interface GitDaemon {
  /** `git://127.0.0.1:PORT/<path>` of a repository under the served directory. */
  url(path: string): string;
  stop(): void;
}

/**
 * `git daemon` serving every repository under `served` on a free loopback port,
 * ready once `probe` (a repository path under it) answers `git ls-remote`.
 */
export async function serveGit(served: string, probe: string): Promise<GitDaemon> {
  const port = await freePort();
  const daemon = spawn('git', ['daemon', '--export-all', `--base-path=${served}`, `--port=${port}`, '--listen=127.0.0.1', '--reuseaddr', '--informative-errors', served], {
    stdio: 'ignore',
  });
  const url = (path: string) => `git://127.0.0.1:${port}/${path}`;
  for (let i = 0; ; i++) {
    if (await execFileP('git', ['ls-remote', url(probe)]).then(() => true, () => false)) break;
    if (i > 100) {
      daemon.kill('SIGTERM');
      throw new Error('git daemon did not start');
    }
    await sleep(100);
  }
  return { url, stop: () => void daemon.kill('SIGTERM') };
}
