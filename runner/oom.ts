/*
 * Was the container OOM-killed? runc's foreground `run` removes the cgroup (and its
 * memory.oom_control / memory.events counters) the moment the container exits, and cgroup v1
 * OOM notifications need an eventfd Node cannot make. The kernel log keeps the answer: every
 * OOM kill logs one record
 *   oom-kill:constraint=CONSTRAINT_MEMCG,…,oom_memcg=/slipway/<id>,task_memcg=/slipway/<id>,task=…
 * naming the victim's cgroup. The supervisor opens /dev/kmsg once, reads to its end, and after
 * each exit reads only the records that came since, looking for its own cgroup.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';

export class KernelLogWatch {
  private fd: number | undefined;
  private readonly buf = Buffer.alloc(8192);

  /** Opens /dev/kmsg and skips what is already there. Without access, `oomKilledSince` says false. */
  constructor(private readonly cgroup: string) {
    try {
      this.fd = openSync('/dev/kmsg', constants.O_RDONLY | constants.O_NONBLOCK);
      this.drain(() => {});
    } catch {
      this.fd = undefined;
    }
  }

  get available(): boolean {
    return this.fd !== undefined;
  }

  /** Whether a record since the last call reports an OOM kill of a process in the cgroup. */
  oomKilled(): boolean {
    let found = false;
    const needle = `task_memcg=${this.cgroup},`;
    this.drain((record) => {
      if (record.includes('oom-kill:') && record.includes(needle)) found = true;
    });
    return found;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** Each read returns one record; EAGAIN means the end, EPIPE that records were overwritten meanwhile. */
  private drain(onRecord: (text: string) => void): void {
    if (this.fd === undefined) return;
    for (let i = 0; i < 1_000_000; i++) {
      let n: number;
      try {
        n = readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EPIPE') continue;
        if (code === 'EAGAIN') return;
        throw err;
      }
      if (n === 0) return;
      onRecord(this.buf.toString('utf8', 0, n));
    }
  }
}
