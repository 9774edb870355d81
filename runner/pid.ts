/**
 * Whether a process with this pid exists (signal 0). EPERM means it exists but
 * belongs to someone else. Not a positive integer: no process (pid 0 or -1
 * would address a process group).
 */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
