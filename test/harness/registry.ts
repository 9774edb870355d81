import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FilesystemDriver, checkIntegrity } from '../../storage/index.js';

/** The compiled CLI entry point (dist/cli/main.js). */
export const CLI = resolve(fileURLToPath(import.meta.url), '../../../cli/main.js');

export interface RegistryProcess {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, as docker/skopeo/podman name the registry */
  host: string;
  data: string;
  child: ChildProcess;
  /** SIGTERM and wait; the data directory stays. */
  stop(): Promise<void>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
  /** stop() and remove the data directory. */
  cleanup(): Promise<void>;
  /** Fails the test when any stored blob's bytes do not match its digest or a partial file is visible. */
  assertIntegrity(): Promise<void>;
  output(): string;
}

export async function tempDir(prefix = 'slipway-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/**
 * Starts `slipway registry` as its own process on an ephemeral loopback port,
 * over `data` (a new temporary directory when absent).
 */
export async function startRegistryProcess(opts: { data?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<RegistryProcess> {
  const data = opts.data ?? (await tempDir());
  const child = spawn(process.execPath, [CLI, 'registry', '--listen', '127.0.0.1:0', '--data', data, ...(opts.args ?? [])], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let out = '';
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`registry did not start within 20s:\n${out}`)), 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`registry exited with ${code} before it was ready:\n${out}`));
    });
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const signal = async (sig: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    await exited;
  };
  return {
    url,
    host: url.replace(/^http:\/\//, ''),
    data,
    child,
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
    cleanup: async () => {
      await signal('SIGTERM');
      await rm(data, { recursive: true, force: true });
    },
    assertIntegrity: async () => {
      const report = await checkIntegrity(new FilesystemDriver(data));
      if (report.problems.length) throw new Error(`store integrity problems:\n${report.problems.join('\n')}`);
    },
    output: () => out,
  };
}
