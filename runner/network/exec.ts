import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { NetworkError } from './errors.js';

/** Where `ip netns add NAME` mounts a named network namespace. */
export const NETNS_DIR = '/var/run/netns';

const PACKAGE_OF: Record<string, string> = { ip: 'iproute2', iptables: 'iptables' };

/**
 * Runs a tool (ip, iptables) and resolves with its stdout; `input` goes to stdin (for
 * `ip -batch -`). A failure names the command and carries the tool's own message.
 */
export function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        const pkg = PACKAGE_OF[cmd] ?? cmd;
        reject(new NetworkError('TOOL_MISSING', `${cmd} is not installed; install it with: apt-get install ${pkg}`));
      } else reject(err);
    });
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else {
        const what = input ? `${cmd} ${args.join(' ')} <<< ${JSON.stringify(input.trim())}` : `${cmd} ${args.join(' ')}`;
        reject(new NetworkError('COMMAND_FAILED', `${what} failed (exit ${code}): ${stderr.trim() || stdout.trim()}`));
      }
    });
    child.stdin.on('error', () => {}); // the tool may exit before reading all of its input
    child.stdin.end(input ?? '');
  });
}

/** Runs `ip` with one command per line in a single process (`ip -batch`); stops at the first failure. */
export function ipBatch(lines: string[], netns?: string): Promise<string> {
  return run('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], lines.join('\n') + '\n');
}

export function netnsExists(name: string): boolean {
  return existsSync(`${NETNS_DIR}/${name}`);
}

/** Whether a network device of that name exists in the host's namespace. */
export function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

/** `ip netns exec` takes a name; accept the path a NetworkAttachment carries too. */
function netnsNameOf(netns: string): string {
  return netns.includes('/') ? basename(netns) : netns;
}

/**
 * The argv that runs `argv` inside a network namespace (by name or by its /var/run/netns
 * path): spawn it to keep a server running there, or use execInNetns for one command.
 */
export function netnsCommand(netns: string, argv: string[]): [string, string[]] {
  return ['ip', ['netns', 'exec', netnsNameOf(netns), ...argv]];
}

/** Runs one command inside a network namespace and resolves with its stdout. */
export function execInNetns(netns: string, argv: string[], input?: string): Promise<string> {
  const [cmd, args] = netnsCommand(netns, argv);
  return run(cmd, args, input);
}
