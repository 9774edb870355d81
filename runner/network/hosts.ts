/*
 * The files a container sees at /etc/hosts, /etc/resolv.conf and /etc/hostname. Names resolve
 * through /etc/hosts alone: there is no DNS server on Slipway's network, and queries must not
 * leave the machine.
 */
import { mkdir, open } from 'node:fs/promises';
import type { Endpoint } from './state.js';

const LOCALHOST = [
  '127.0.0.1\tlocalhost',
  '::1\tlocalhost ip6-localhost ip6-loopback',
  'fe00::0\tip6-localnet',
  'ff00::0\tip6-mcastprefix',
  'ff02::1\tip6-allnodes',
  'ff02::2\tip6-allrouters',
];

/** Every name an endpoint answers to, first the one it calls itself. */
function namesOf(e: Endpoint): string[] {
  return [...new Set([e.hostname, ...(e.name ? [e.name] : []), ...e.aliases])];
}

/**
 * /etc/hosts of `self`: localhost, its own names, then every peer on the bridge (a container
 * with `--network none` has no peers and its names point at loopback).
 */
export function hostsFile(self: Endpoint, peers: Endpoint[]): string {
  const lines = [...LOCALHOST, `${self.ip ?? '127.0.1.1'}\t${namesOf(self).join(' ')}`];
  const others = peers.filter((p) => p.id !== self.id && p.ip).sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
  if (self.mode === 'bridge' && others.length > 0) {
    lines.push('# other containers on this node');
    for (const p of others) lines.push(`${p.ip}\t${namesOf(p).join(' ')}`);
  }
  return lines.join('\n') + '\n';
}

export function resolvConf(): string {
  return [
    '# Slipway: no DNS on this network; containers on this node find each other through /etc/hosts.',
    'nameserver 127.0.0.1',
    'options ndots:0 timeout:1 attempts:1',
    '',
  ].join('\n');
}

/**
 * Rewrites a file keeping its inode, so a bind mount of it in a running container sees the new
 * content (a rename would leave the mount on the old file). The new bytes go over the old ones
 * before the tail is cut, so a reader never sees an empty file. Returns false if unchanged.
 */
export async function writeInPlace(path: string, content: string): Promise<boolean> {
  const fh = await open(path, 'r+').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return open(path, 'w+');
    throw err;
  });
  try {
    const bytes = Buffer.from(content);
    const old = await fh.readFile();
    if (old.equals(bytes)) return false;
    await fh.write(bytes, 0, bytes.length, 0);
    await fh.truncate(bytes.length);
    return true;
  } finally {
    await fh.close();
  }
}

export async function writeContainerFiles(
  files: { dir: string; hosts: string; resolvConf: string; hostname: string },
  self: Endpoint,
  peers: Endpoint[],
): Promise<void> {
  await mkdir(files.dir, { recursive: true });
  await writeInPlace(files.hosts, hostsFile(self, peers));
  await writeInPlace(files.resolvConf, resolvConf());
  await writeInPlace(files.hostname, `${self.hostname}\n`);
}
