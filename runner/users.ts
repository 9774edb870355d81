/**
 * `-u` and the image's USER, resolved against the container's own /etc/passwd and /etc/group
 * (docker's rules: a name must exist; a numeric uid need not, and then its gid is 0). Paths are
 * looked up inside the rootfs with symlinks resolved inside it, never on the host.
 */
import { lstat, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BadOptionError } from './units.js';

/** `path` inside `root`, following symlinks as if `root` were `/` (like runc's securejoin). */
export async function secureJoin(root: string, path: string): Promise<string> {
  const pending = path.split('/').filter(Boolean);
  const done: string[] = [];
  let links = 0;
  while (pending.length) {
    const part = pending.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const full = join(root, ...done, part);
    const st = await lstat(full).catch(() => undefined);
    if (!st?.isSymbolicLink()) {
      done.push(part);
      continue;
    }
    if (++links > 40) throw new Error(`too many symbolic links resolving ${path} in the container`);
    const target = await readlink(full);
    if (target.startsWith('/')) done.length = 0;
    pending.unshift(...target.split('/').filter(Boolean));
  }
  return join(root, ...done);
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
}

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

async function readTable(rootfs: string, file: string): Promise<string[][]> {
  const text = await readFile(await secureJoin(rootfs, file), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => l.split(':'));
}

async function passwd(rootfs: string): Promise<PasswdEntry[]> {
  return (await readTable(rootfs, '/etc/passwd')).map((f) => ({ name: f[0] ?? '', uid: Number(f[2]), gid: Number(f[3]), home: f[5] || '/' }));
}

const isNumber = (s: string) => /^\d+$/.test(s);

export async function resolveUser(rootfs: string, spec: string): Promise<ResolvedUser> {
  const [userPart = '', groupPart] = spec.split(':', 2);
  const users = await passwd(rootfs);
  let entry: PasswdEntry | undefined;
  if (userPart === '') entry = users.find((u) => u.uid === 0) ?? { name: 'root', uid: 0, gid: 0, home: '/root' };
  else if (isNumber(userPart)) entry = users.find((u) => u.uid === Number(userPart)) ?? { name: '', uid: Number(userPart), gid: 0, home: '/' };
  else entry = users.find((u) => u.name === userPart);
  if (!entry) throw new BadOptionError(`unable to find user ${userPart}: no matching entries in passwd file`);
  const groups = await readTable(rootfs, '/etc/group');
  let gid = entry.gid;
  if (groupPart !== undefined && groupPart !== '') {
    if (isNumber(groupPart)) gid = Number(groupPart);
    else {
      const g = groups.find((f) => f[0] === groupPart);
      if (!g) throw new BadOptionError(`unable to find group ${groupPart}: no matching entries in group file`);
      gid = Number(g[2]);
    }
  }
  const additionalGids = entry.name
    ? groups.filter((f) => (f[3] ?? '').split(',').includes(entry.name)).map((f) => Number(f[2])).filter((g) => g !== gid && Number.isInteger(g))
    : [];
  return { uid: entry.uid, gid, additionalGids, home: entry.home };
}
