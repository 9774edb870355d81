/*
 * The container's stdin/stdout/stderr are FIFOs in its directory, not the socketpairs Node's
 * `stdio: 'pipe'` makes: programs open /dev/stdout (nginx logs to it), which fails with ENXIO on a
 * socket. Node cannot pipe(2) or clear O_NONBLOCK, so the ends are opened in an order that
 * gives the container a blocking end of its own file description:
 *   output: our end O_RDONLY|O_NONBLOCK first, then theirs O_WRONLY (does not block: we read);
 *   input:  a throwaway O_RDONLY|O_NONBLOCK, ours O_WRONLY, theirs O_RDONLY, then drop the first.
 * Each run opens fresh ends, so EOF on our side means every writer in the container is gone.
 */
import { execFile } from 'node:child_process';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import net from 'node:net';
import { promisify } from 'node:util';

const run = promisify(execFile);

export async function ensureFifo(path: string): Promise<void> {
  if (existsSync(path)) return;
  await run('mkfifo', ['-m', '600', path]).catch((err: { stderr?: string }) => {
    if (!existsSync(path)) throw new Error(`mkfifo ${path} failed: ${err.stderr ?? String(err)}`);
  });
}

export interface OutputPipe {
  /** Our reading end. */
  reader: net.Socket;
  /** Theirs: pass to the child, then call `closeChildEnd`. */
  childFd: number;
  closeChildEnd(): void;
}

export function openOutputPipe(path: string): OutputPipe {
  const ours = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const theirs = openSync(path, constants.O_WRONLY);
  return { reader: new net.Socket({ fd: ours, readable: true, writable: false }), childFd: theirs, closeChildEnd: () => closeSync(theirs) };
}

export interface InputPipe {
  writer: net.Socket;
  childFd: number;
  closeChildEnd(): void;
}

export function openInputPipe(path: string): InputPipe {
  const placeholder = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const ours = openSync(path, constants.O_WRONLY);
  const theirs = openSync(path, constants.O_RDONLY);
  closeSync(placeholder);
  const writer = new net.Socket({ fd: ours, readable: false, writable: true });
  writer.on('error', () => {}); // the container closed its stdin: nothing left to deliver
  return { writer, childFd: theirs, closeChildEnd: () => closeSync(theirs) };
}
