import { connect, type Socket } from 'node:net';
import type { Writable } from 'node:stream';
import type { S3Target } from './s3-client.js';
import { CHUNKS_META } from './s3-chunks.js';

/** Blob bytes smaller than this go through the ordinary reader: the fast path opens a connection of its own. */
export const FAST_COPY_MIN = 256 * 1024;
const BUFFERS = 4;
const BUFFER_SIZE = 128 * 1024;
const MAX_HEAD = 16 * 1024;

const coded = (message: string, code: string): Error => Object.assign(new Error(message), { code });

/**
 * Sends bytes [offset, offset+length) of the object `key` into `dest` (left
 * open), for blob pulls. Node's HTTP client allocates a buffer for every read
 * of a response and hands it through a stream, and on a pull of hundreds of MB
 * the garbage collector then works about as hard as the copying does. Here a
 * presigned GET goes out on a plain socket whose reads land in a few reused
 * buffers (net's `onread`): each is written to `dest` and read into again only
 * once that write is done, so backpressure holds the S3 connection.
 *
 * Resolves false, having written nothing, when this path does not apply (TLS,
 * an answer other than a plain 200/206 with Content-Length, a chunked file's
 * marker): the caller then uses the ordinary reader, which also produces the
 * right error for a missing object.
 */
export async function fastCopy(t: S3Target, key: string, dest: Writable, opts: { offset: number; length: number; signal?: AbortSignal }): Promise<boolean> {
  if (!t.endpoint.startsWith('http:')) return false;
  const signed = new URL(await t.client.presignedUrl('GET', t.bucket, key, 300));
  const { connectMs, idleMs } = t.transport.timeouts;
  const buffers = Array.from({ length: BUFFERS }, () => Buffer.allocUnsafe(BUFFER_SIZE));
  const busy = buffers.map(() => false);
  let next = 0;
  let head: Buffer | null = Buffer.alloc(0);
  let expected = -1;
  let received = 0;
  let pending = 0;
  let waiting = false;
  let settled = false;
  let socket: Socket;
  let connectTimer: NodeJS.Timeout | undefined;

  return new Promise<boolean>((resolve, reject) => {
    const finish = (err: Error | null, result = true) => {
      if (settled) return;
      settled = true;
      clearTimeout(connectTimer);
      dest.off('close', onDestClose);
      opts.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(result);
    };
    const maybeDone = () => {
      if (expected >= 0 && received >= expected && pending === 0) finish(null);
    };
    const onDestClose = () => finish(Object.assign(new Error('the destination closed'), { name: 'AbortError' }));
    const onAbort = () => finish(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    /** Writes body bytes; `index` is the pooled buffer they are in (undefined: a buffer of their own). */
    const body = (chunk: Buffer, index: number | undefined) => {
      const take = chunk.subarray(0, Math.max(0, Math.min(chunk.length, expected - received)));
      received += take.length;
      if (take.length === 0) return;
      if (index !== undefined) busy[index] = true;
      pending++;
      dest.write(take, (err) => {
        if (index !== undefined) busy[index] = false;
        pending--;
        if (err) return finish(err);
        if (waiting && !busy[next]) {
          waiting = false;
          socket.resume();
        }
        maybeDone();
      });
    };
    /** The response head: a plain 200/206 with the length asked for, or give up before writing anything. */
    const parseHead = (chunk: Buffer): Buffer | null => {
      head = Buffer.concat([head!, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_HEAD) finish(null, false);
        return null;
      }
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1]);
      const headers = new Map(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      const length = Number(headers.get('content-length') ?? NaN);
      if ((status !== 200 && status !== 206) || length !== opts.length || headers.has('transfer-encoding') || headers.has(`x-amz-meta-${CHUNKS_META}`)) {
        finish(null, false);
        return null;
      }
      expected = length;
      const rest = head.subarray(end + 4);
      head = null;
      return rest;
    };
    socket = connect({
      host: signed.hostname.replace(/^\[|\]$/g, ''),
      port: Number(signed.port || 80),
      onread: {
        buffer: () => buffers[next]!,
        callback: (nread: number, buf: Uint8Array): boolean => {
          if (settled) return false;
          const index = next;
          const chunk = Buffer.from(buf.buffer, buf.byteOffset, nread);
          if (head) {
            const rest = parseHead(chunk);
            if (rest) body(rest, undefined); // already a copy: the head was concatenated
            maybeDone();
            return !settled;
          }
          body(chunk, index);
          next = (next + 1) % BUFFERS;
          maybeDone();
          if (busy[next]) {
            waiting = true;
            return false;
          }
          return true;
        },
      },
    });
    connectTimer = setTimeout(() => finish(coded(`no connection within ${connectMs} ms`, 'ETIMEDOUT')), connectMs);
    socket.once('connect', () => {
      clearTimeout(connectTimer);
      const range = `bytes=${opts.offset}-${opts.offset + opts.length - 1}`;
      socket.write(`GET ${signed.pathname}${signed.search} HTTP/1.1\r\nHost: ${signed.host}\r\nRange: ${range}\r\nConnection: close\r\n\r\n`);
    });
    socket.setTimeout(idleMs);
    socket.on('timeout', () => {
      // Stalled because `dest` is slow, not S3: look again later.
      if (waiting) socket.setTimeout(idleMs);
      else finish(coded(`no progress for ${idleMs} ms receiving ${key}`, 'ETIMEDOUT'));
    });
    socket.once('error', (err) => finish(err));
    socket.once('close', () => {
      clearTimeout(connectTimer);
      if (!settled && !(expected >= 0 && received >= expected)) finish(coded(`S3 closed the connection after ${received} of ${opts.length} bytes of ${key}`, 'ECONNRESET'));
    });
    dest.once('close', onDestClose);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
  });
}
