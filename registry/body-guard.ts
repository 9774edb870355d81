import type { Request } from './context.js';

/**
 * How long a request body may take. A client that stops sending (idle) or
 * sends slower than `minRate` is cut: it would otherwise hold its upload
 * session (and a socket) for as long as it likes. Time the registry itself
 * holds the body back (storage backpressure, a handler not reading yet) never
 * counts against the client. 0 turns a limit off.
 */
export interface BodyLimits {
  /** ms without a body byte arriving while the registry is ready for more. */
  idleTimeoutMs: number;
  /** bytes/s a body must average over each `rateWindowMs` once `rateGraceMs` have passed. */
  minRate: number;
  rateGraceMs: number;
  rateWindowMs: number;
  /**
   * After an early answer (an error before the body was read), this many more
   * body bytes are read and dropped so the client sees the answer; beyond, the
   * connection is closed.
   */
  drainBytes: number;
}

export const BODY_LIMIT_DEFAULTS: BodyLimits = {
  idleTimeoutMs: 30_000,
  minRate: 1024,
  rateGraceMs: 10_000,
  rateWindowMs: 20_000,
  drainBytes: 8 * 1024 * 1024,
};

/** Whether the request declares a body (Content-Length above 0, or chunked). */
export function declaresBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return length === undefined ? req.headers['transfer-encoding'] !== undefined : length !== '0';
}

/**
 * Watches one request's body with one timer, which only reads the socket's
 * byte counter: nothing is added per chunk, so a fast upload costs a timer
 * tick every second or so. `cut` is called at most once, with the reason.
 * The watch ends by itself once the body is complete or the request closed.
 */
export function watchBody(req: Request, limits: BodyLimits, cut: (reason: 'idle' | 'slow') => void): void {
  const { idleTimeoutMs: idle, minRate, rateGraceMs: grace, rateWindowMs: window } = limits;
  const rated = minRate > 0 && window > 0;
  if (idle <= 0 && !rated) return;
  const tick = Math.min(1000, Math.max(10, Math.min(idle > 0 ? idle : Infinity, rated ? window : Infinity) / 4));
  const socket = req.socket;
  const started = performance.now();
  let lastBytes = socket.bytesRead;
  let lastProgress = started;
  let windowStart = started;
  let windowBytes = lastBytes;
  const timer = setInterval(() => {
    if (req.complete || req.destroyed) return stop();
    const now = performance.now();
    const bytes = socket.bytesRead;
    // Bytes waiting in the request, or a paused request: the registry is the slow side.
    const heldByUs = req.readableLength > 0 || socket.isPaused();
    if (bytes !== lastBytes || heldByUs) {
      lastBytes = bytes;
      lastProgress = now;
    } else if (idle > 0 && now - lastProgress >= idle) {
      stop();
      return cut('idle');
    }
    if (!rated) return;
    if (heldByUs || now - started < grace) {
      windowStart = now;
      windowBytes = bytes;
    } else if (now - windowStart >= window) {
      if (((bytes - windowBytes) * 1000) / (now - windowStart) < minRate) {
        stop();
        return cut('slow');
      }
      windowStart = now;
      windowBytes = bytes;
    }
  }, tick);
  timer.unref();
  const stop = () => {
    clearInterval(timer);
    req.off('end', stop);
    req.off('close', stop);
  };
  req.once('end', stop);
  req.once('close', stop);
}

/**
 * A body the handler left unread when it answered early (an error): read and
 * drop up to `maxBytes` more so the client, still sending, reads the answer
 * instead of a reset; past that the connection is closed. An idle or slow
 * client is still cut by its watch.
 */
export function drainBody(req: Request, maxBytes: number): void {
  if (req.complete || req.destroyed) return;
  let left = maxBytes;
  req.on('data', (chunk: Buffer) => {
    left -= chunk.length;
    if (left < 0) req.socket.destroy();
  });
  req.resume();
}
