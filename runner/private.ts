/*
 * State roots only their owner can enter. The runner's root holds unpacked layers (device
 * nodes included, exactly as an image ships them: a `brw-rw-rw-` disk node is legal in a
 * layer) and the builder's holds what RUN steps made, so neither may be traversable by
 * another local user: the root is 0700 (docker keeps /var/lib/docker 0710 root, BuildKit
 * /var/lib/buildkit 0700), whatever the umask, and is checked and tightened at start. What
 * lies below keeps the modes the image gave it; the root's mode is the one gate.
 */
import { chmod, mkdir, stat } from 'node:fs/promises';

export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/**
 * Creates `dir` (and missing parents) 0700, or tightens an existing one to 0700. Refuses a
 * root another user owns (its owner could open it again): the message names the fix.
 */
export async function privateRoot(dir: string, what: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  const st = await stat(dir);
  if (!st.isDirectory()) throw new Error(`${what} ${dir} is not a directory`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new Error(`${what} ${dir} belongs to uid ${st.uid}, not to this process (uid ${uid}); run: chown ${uid} ${dir} && chmod 700 ${dir}, or choose another directory`);
  }
  if ((st.mode & 0o777) !== PRIVATE_DIR_MODE) await chmod(dir, PRIVATE_DIR_MODE);
}

/** A directory inside a private root, 0700 whatever the umask (mkdir's mode is masked by it). */
export async function privateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  const st = await stat(dir);
  if ((st.mode & 0o777) !== PRIVATE_DIR_MODE) await chmod(dir, PRIVATE_DIR_MODE);
}
