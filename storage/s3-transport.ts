import http, { type ClientRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import https from 'node:https';

/** How long the S3 client waits, in ms. */
export interface S3Timeouts {
  /** For a TCP (and TLS) connection to be established. */
  connectMs: number;
  /**
   * For any progress while a request is in flight: sending its body, waiting
   * for the response, receiving the response body. Not counted while the
   * response waits for a slow reader of ours (a slow client of a blob pull).
   */
  idleMs: number;
}

export const DEFAULT_TIMEOUTS: S3Timeouts = { connectMs: 5_000, idleMs: 30_000 };

/** After S3 was found unreachable, requests fail at once for this long; then one probe decides. */
const PROBE_EVERY_MS = 1_000;

/** An error with the errno-style code the driver classifies by. */
const coded = (message: string, code: string): Error => Object.assign(new Error(message), { code });

/**
 * The minio client has no per-request timeout and no notion of "the server is
 * down". This transport (minio's `transport` option, the `request` of
 * node:http/https) adds both, for every request the client makes:
 *
 * - a connect timeout and an idle timeout, each failing the request with
 *   ETIMEDOUT, so that no registry request hangs on a stalled S3;
 * - a breaker: after a request could not connect or got no answer in time,
 *   further requests fail at once (with that error) for a second instead of
 *   each waiting a timeout; then the driver's calls wait in `ready()` for one
 *   shared probe, and the first answer from S3 closes the breaker again, so
 *   the registry recovers by itself, without a 503 too many, once S3 is back.
 */
export class S3Transport {
  readonly agent: http.Agent;
  private openUntil = 0;
  private probing: Promise<void> | undefined;
  private lastFailure: Error | undefined;

  constructor(
    private readonly tls: boolean,
    readonly timeouts: S3Timeouts,
  ) {
    const options = { keepAlive: true, maxSockets: 256, maxFreeSockets: 64, timeout: 15_000, scheduling: 'lifo' as const };
    this.agent = tls ? new https.Agent(options) : new http.Agent(options);
  }

  /**
   * Resolves when requests may go to S3: at once while the breaker is closed;
   * while it is open, fails at once within a second of the last failure, then
   * lets `probe` (one cheap request, shared by all callers) decide.
   */
  async ready(probe: () => Promise<unknown>): Promise<void> {
    if (this.openUntil === 0) return;
    if (Date.now() < this.openUntil) throw this.fastFailure();
    this.probing ??= probe().then(
      () => undefined,
      () => undefined,
    ).finally(() => {
      this.probing = undefined;
    });
    await this.probing;
    // Tripped again by the probe: still down. (A probe that failed otherwise leaves the answer to the real request.)
    if (Date.now() < this.openUntil) throw this.fastFailure();
  }

  request = (opts: RequestOptions, onResponse?: (res: IncomingMessage) => void): ClientRequest => {
    if (Date.now() < this.openUntil) throw this.fastFailure();
    const base = this.tls ? https : http;
    let response: IncomingMessage | undefined;
    let settled = false;
    const settle = (failure?: Error) => {
      if (settled) return;
      settled = true;
      if (failure) this.trip(failure);
      else this.reset();
    };
    const req = base.request({ ...opts, agent: this.agent }, (res) => {
      response = res;
      settle();
      onResponse?.(res);
    });
    const { connectMs, idleMs } = this.timeouts;
    req.on('socket', (socket) => {
      if (socket.connecting) {
        const timer = setTimeout(() => {
          const err = coded(`no connection within ${connectMs} ms`, 'ETIMEDOUT');
          settle(err);
          req.destroy(err);
        }, connectMs);
        socket.once('connect', () => clearTimeout(timer));
        req.once('close', () => clearTimeout(timer));
      }
      const onIdle = () => {
        if (response?.complete || req.destroyed) return;
        // Bytes wait for our own reader: the stall is ours, not S3's. Look again later.
        if (response && response.readableLength > 0) {
          socket.setTimeout(idleMs);
          return;
        }
        const err = coded(`no progress for ${idleMs} ms ${response ? 'receiving the response' : 'waiting for an answer'}`, 'ETIMEDOUT');
        if (!response) settle(err);
        req.destroy(err);
        response?.destroy(err);
      };
      socket.setTimeout(idleMs);
      socket.on('timeout', onIdle);
      req.once('close', () => socket.off('timeout', onIdle));
    });
    req.once('error', (err: NodeJS.ErrnoException) => {
      if (['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN'].includes(err.code ?? '')) settle(err);
    });
    return req;
  };

  private trip(failure: Error): void {
    this.lastFailure = failure;
    this.openUntil = Date.now() + PROBE_EVERY_MS;
  }

  private reset(): void {
    this.openUntil = 0;
    this.lastFailure = undefined;
  }

  private fastFailure(): Error {
    const last = this.lastFailure as NodeJS.ErrnoException | undefined;
    return coded(`S3 was unreachable a moment ago (${last?.message ?? 'no answer'}); not retried before the next probe`, last?.code ?? 'ETIMEDOUT');
  }

  destroy(): void {
    this.agent.destroy();
  }
}
