/** Reading json-file logs back (`slipway logs`), across rotated files, optionally following. */
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { rotatedName, type LogEntry } from './logs.js';

export interface LogSink {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export interface ReadLogsOptions {
  /** Only the last N entries (of what exists now). */
  tail?: number;
  timestamps?: boolean;
  /** Keep printing new entries until `done()` says the container stopped. */
  follow?: boolean;
  done?: () => Promise<boolean>;
  maxFiles: number;
  pollMs?: number;
}

function parseLines(text: string): LogEntry[] {
  const out: LogEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as LogEntry);
    } catch {
      // a line cut by a crash mid-write: skip it
    }
  }
  return out;
}

/** Entries of the rotated files (oldest first) and of the current file's first `currentBytes`. */
async function snapshot(path: string, maxFiles: number, current: FileHandle | undefined, currentBytes: number): Promise<LogEntry[]> {
  const entries: LogEntry[] = [];
  for (let n = maxFiles - 1; n >= 1; n--) entries.push(...parseLines(await readFile(rotatedName(path, n), 'utf8').catch(() => '')));
  if (current) entries.push(...parseLines((await readRange(current, 0, currentBytes)).toString('utf8')));
  return entries;
}

/** Every entry still on disk, oldest first. */
export async function readAllEntries(path: string, maxFiles: number): Promise<LogEntry[]> {
  const fh = await open(path, 'r').catch(() => undefined);
  try {
    return await snapshot(path, maxFiles, fh, fh ? (await fh.stat()).size : 0);
  } finally {
    await fh?.close();
  }
}

function print(sink: LogSink, e: LogEntry, timestamps: boolean): void {
  (e.stream === 'stderr' ? sink.stderr : sink.stdout).write(timestamps ? `${e.time} ${e.log}` : e.log);
}

/** Prints what is on disk (the last `tail` entries), then, with `follow`, what comes until `done()`. */
export async function writeLogs(path: string, sink: LogSink, opts: ReadLogsOptions): Promise<void> {
  // What the dump shows ends at `offset` of the file open now; following goes on from there.
  let fh = await open(path, 'r').catch(() => undefined);
  let offset = fh ? (await fh.stat()).size : 0;
  try {
    const all = await snapshot(path, opts.maxFiles, fh, offset);
    const shown = opts.tail === undefined ? all : opts.tail <= 0 ? [] : all.slice(-opts.tail);
    for (const e of shown) print(sink, e, opts.timestamps ?? false);
    let pending = '';
    while (opts.follow) {
      const finished = opts.done ? await opts.done() : true;
      if (!fh && (fh = await open(path, 'r').catch(() => undefined))) offset = 0;
      if (fh) {
        const { bytes, rotated } = await readNew(fh, offset, path);
        offset += bytes.length;
        pending += bytes.toString('utf8');
        const cut = pending.lastIndexOf('\n');
        for (const e of parseLines(pending.slice(0, cut + 1))) print(sink, e, opts.timestamps ?? false);
        pending = pending.slice(cut + 1);
        if (rotated) {
          await fh.close();
          fh = undefined;
          continue;
        }
      }
      if (finished) return;
      await sleep(opts.pollMs ?? 100);
    }
  } finally {
    await fh?.close();
  }
}

/** Bytes after `offset`; `rotated` when the path now names another file (this one was renamed away). */
async function readNew(fh: FileHandle, offset: number, path: string): Promise<{ bytes: Buffer; rotated: boolean }> {
  const size = (await fh.stat()).size;
  const bytes = size > offset ? await readRange(fh, offset, size - offset) : Buffer.alloc(0);
  const [mine, now] = await Promise.all([fh.stat(), stat(path).catch(() => undefined)]);
  return { bytes, rotated: !now || now.ino !== mine.ino };
}

async function readRange(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, position);
  return buf.subarray(0, bytesRead);
}
