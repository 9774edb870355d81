/*
 * overlayfs: the container's root is `lowerdir=<top>:…:<bottom>` (the image's unpacked
 * layers, top first) + its own `upperdir`/`workdir`. Unpacked layers carry overlay's own
 * markers, so they can be stacked as they are:
 *   - a whiteout (a file deleted by this layer) is a character device 0/0 with the name;
 *   - an opaque directory (hides everything below it) has xattr trusted.overlay.opaque=y.
 * Node has no mknod/setxattr, so those go through `mknod` (coreutils) and `setfattr`
 * (Debian's `attr` package); both need root, as the runner does.
 */
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, rm, symlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';

export const OPAQUE_XATTR = 'trusted.overlay.opaque';
/** The kernel takes mount options up to a page; stay well below it. */
const OPTIONS_MAX = 3800;

/** Runs a command; rejects with its stderr and a hint when it is missing. */
export function run(cmd: string, args: string[], opts: { cwd?: string; install?: string } = {}): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolvePromise(stdout);
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      const hint = missing ? `: ${cmd} is not installed${opts.install ? ` (apt-get install ${opts.install})` : ''}` : `: ${stderr.trim() || err.message}`;
      reject(Object.assign(new Error(`${cmd} ${args.join(' ')} failed${hint}`), { stderr }));
    });
  });
}

/** Makes a character device 0/0 at `path`: overlayfs' whiteout. */
export async function makeWhiteout(path: string): Promise<void> {
  await run('mknod', ['-m', '0', path, 'c', '0', '0'], { install: 'coreutils' });
}

export async function makeNode(path: string, type: 'c' | 'b' | 'p', major = 0, minor = 0): Promise<void> {
  await run('mknod', type === 'p' ? [path, 'p'] : [path, type, String(major), String(minor)], { install: 'coreutils' });
}

/** Sets one xattr on `path` itself (never through a final symlink). */
export async function setXattr(path: string, name: string, value: Buffer): Promise<void> {
  await run('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, path], { install: 'attr' });
}

export interface MountedRootfs {
  rootfs: string;
  upper: string;
  work: string;
  unmount(): Promise<void>;
}

/**
 * Mounts `layerDirs` (bottom to top, as LocalImage.layerDirs has them) under
 * `containerDir`: rootfs/, upper/, work/ (and lower-empty/ for an image with no layers).
 * When the absolute paths would not fit in one mount option page, the mount runs in
 * `containerDir` with short relative symlinks (`l/0`, `l/1`, …) to the layers.
 */
export async function mountRootfs(layerDirs: string[], containerDir: string): Promise<MountedRootfs> {
  const dir = resolve(containerDir);
  const [rootfs, upper, work] = ['rootfs', 'upper', 'work'].map((d) => join(dir, d)) as [string, string, string];
  for (const d of [rootfs, upper, work]) await mkdir(d, { recursive: true });
  // The merged root takes upper's mode: 0755 as in an image, not what the umask left.
  await chmod(upper, 0o755);
  let lowers = uppermostFirst(layerDirs);
  if (lowers.length === 0) {
    lowers = [join(dir, 'lower-empty')];
    await mkdir(lowers[0]!, { recursive: true });
  }
  let options = `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`;
  let cwd: string | undefined;
  if (options.length > OPTIONS_MAX) {
    await rm(join(dir, 'l'), { recursive: true, force: true });
    await mkdir(join(dir, 'l'));
    for (const [i, lower] of lowers.entries()) await symlink(lower, join(dir, 'l', String(i)));
    options = `lowerdir=${lowers.map((_, i) => `l/${i}`).join(':')},upperdir=upper,workdir=work`;
    cwd = dir;
    if (options.length > OPTIONS_MAX) throw new Error(`cannot mount ${lowers.length} layers at ${rootfs}: too many layers for one overlay mount`);
  }
  for (const lower of lowers) if (lower.includes(':') || lower.includes(',')) throw new Error(`layer path ${lower} contains ":" or ",", which overlayfs options cannot carry`);
  try {
    await run('mount', ['-t', 'overlay', 'overlay', '-o', options, rootfs], { cwd, install: 'mount' });
  } catch (err) {
    throw new Error(`mounting the root filesystem at ${rootfs} failed (${(err as Error).message}); is this root on a kernel with overlayfs?`);
  }
  return { rootfs, upper, work, unmount: () => unmountRootfs(rootfs) };
}

/**
 * `layerDirs` (bottom to top) as overlay's lowerdir list (top first), each directory once:
 * overlayfs refuses a lowerdir that repeats a directory (ELOOP, "Too many levels of symbolic
 * links"), and an image may list one layer twice (two steps with the same diff, or a step
 * whose diff equals the base's last layer). Keeping only the uppermost copy shows the same
 * files: that copy already shadows everything below it, and what it shadows is itself.
 */
export function uppermostFirst(layerDirs: string[]): string[] {
  return [...new Set([...layerDirs].reverse().map((d) => resolve(d)))];
}

/** Unmounts `rootfs` if it is mounted; a rootfs that is not mounted is not an error. */
export async function unmountRootfs(rootfs: string): Promise<void> {
  const target = resolve(rootfs);
  if (!(await mountPoints()).includes(target)) return;
  try {
    await run('umount', [target], { install: 'mount' });
  } catch (err) {
    // Still busy (a process inside holds it): detach now, the kernel frees it when released.
    if (!/busy/i.test((err as { stderr?: string }).stderr ?? '')) throw err;
    await run('umount', ['-l', target], { install: 'mount' });
  }
}

/** Mount points in this process's mount namespace (from /proc/self/mountinfo). */
export async function mountPoints(): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .filter(Boolean)
    .map((line) => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))));
}
