/*
 * Container logs in docker's json-file format, one JSON object per line:
 *   {"log":"hello\n","stream":"stdout","time":"2024-01-01T00:00:00.000Z"}
 * Rotated by size: container.log is current, container.log.1 the one before, … up to max-file
 * files in all; the oldest is dropped. Lines longer than 16 KiB are split, as docker does.
 */
import { closeSync, fstatSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';

const MAX_LINE = 16 * 1024;

export type LogStream = 'stdout' | 'stderr';

export interface LogEntry {
  log: string;
  stream: LogStream;
  time: string;
}

export function rotatedName(path: string, n: number): string {
  return n === 0 ? path : `${path}.${n}`;
}

/** Appends entries synchronously (the supervisor has nothing better to do meanwhile, and order is kept). */
export class LogWriter {
  private fd: number;
  private size: number;
  private readonly partial: Record<LogStream, Buffer[]> = { stdout: [], stderr: [] };
  private readonly partialSize: Record<LogStream, number> = { stdout: 0, stderr: 0 };

  constructor(
    private readonly path: string,
    private readonly maxSize: number,
    private readonly maxFiles: number,
  ) {
    this.fd = openSync(path, 'a', 0o640);
    this.size = fstatSync(this.fd).size;
  }

  /** Takes a chunk of output; whole lines are written now, a trailing partial line waits for its end. */
  write(stream: LogStream, chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      this.take(stream, chunk.subarray(start, nl + 1));
      this.emit(stream);
      start = nl + 1;
    }
    if (start < chunk.length) this.take(stream, chunk.subarray(start));
    while (this.partialSize[stream] >= MAX_LINE) this.emit(stream, MAX_LINE);
  }

  /** Writes out partial lines (at exit of the container). */
  flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) while (this.partialSize[stream] > 0) this.emit(stream, MAX_LINE);
  }

  close(): void {
    this.flush();
    closeSync(this.fd);
  }

  private take(stream: LogStream, part: Buffer): void {
    this.partial[stream].push(Buffer.from(part));
    this.partialSize[stream] += part.length;
  }

  /** Writes the buffered bytes of `stream` (at most `limit`) as one entry. */
  private emit(stream: LogStream, limit = Infinity): void {
    const all = Buffer.concat(this.partial[stream]);
    const line = all.subarray(0, Math.min(limit, all.length));
    const rest = all.subarray(line.length);
    this.partial[stream] = rest.length ? [rest] : [];
    this.partialSize[stream] = rest.length;
    if (line.length === 0) return;
    const entry: LogEntry = { log: line.toString('utf8'), stream, time: new Date().toISOString() };
    const bytes = Buffer.from(`${JSON.stringify(entry)}\n`);
    if (this.size > 0 && this.size + bytes.length > this.maxSize) this.rotate();
    writeSync(this.fd, bytes);
    this.size += bytes.length;
  }

  private rotate(): void {
    closeSync(this.fd);
    if (this.maxFiles <= 1) rmSync(this.path, { force: true });
    else {
      rmSync(rotatedName(this.path, this.maxFiles - 1), { force: true });
      for (let n = this.maxFiles - 2; n >= 0; n--) {
        try {
          renameSync(rotatedName(this.path, n), rotatedName(this.path, n + 1));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
    this.fd = openSync(this.path, 'a', 0o640);
    this.size = 0;
  }
}
