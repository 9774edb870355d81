/*
 * ADD <url>: the body streamed to a file under the build's scratch space, hashed on the way.
 *
 * The worker fetches, not the build's sandbox, so a URL could reach what only the worker can:
 * its loopback services (Redis, the registry's API), link-local metadata endpoints, its own
 * interface addresses. Unless the build runs with network=host or the worker allows local
 * URLs, every hop (the URL and each redirect) is resolved once and refused when any address
 * it resolves to is loopback, link-local, unspecified or the worker's own; the connection then
 * goes to the address that was checked (no second lookup a rebinding DNS server could answer
 * differently), with the name kept for the Host header and TLS.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join, posix } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface FetchedUrl {
  url: string;
  path: string;
  digest: string;
  size: number;
  /** The file name the URL's path ends in ('' when it has none). */
  name: string;
  /** From Last-Modified, when the server sent it. */
  mtimeMs?: number;
}

export interface FetchPolicy {
  /** Loopback, link-local and the worker's own addresses may be fetched from. */
  allowLocal: boolean;
  signal?: AbortSignal;
}

const MAX_REDIRECTS = 10;

export const isUrl = (s: string): boolean => /^https?:\/\//i.test(s);

export async function fetchUrl(url: string, dir: string, policy: FetchPolicy): Promise<FetchedUrl> {
  const { res, final } = await open(url, policy);
  const hash = createHash('sha256');
  let size = 0;
  const path = join(dir, `url-${createHash('sha256').update(url).digest('hex').slice(0, 16)}-${Date.now()}`);
  const counting = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  await pipeline(res, counting, createWriteStream(path));
  const modified = res.headers['last-modified'];
  const mtimeMs = modified ? Date.parse(modified) : NaN;
  const name = decodeURIComponent(posix.basename(final.pathname));
  return { url, path, digest: `sha256:${hash.digest('hex')}`, size, name, ...(Number.isFinite(mtimeMs) ? { mtimeMs } : {}) };
}

/** GET `url`, following redirects, each hop checked; resolves with a 2xx response. */
async function open(url: string, policy: FetchPolicy): Promise<{ res: IncomingMessage; final: URL }> {
  let current = new URL(url);
  for (let hop = 0; ; hop++) {
    if (current.protocol !== 'http:' && current.protocol !== 'https:') throw new Error(`cannot fetch ${url}: a redirect leads to ${current.protocol} (only http and https)`);
    const address = await checkedAddress(url, current, policy.allowLocal);
    const res = await get(current, address, policy.signal).catch((err: Error) => {
      throw new Error(`cannot fetch ${url}: ${err.message}`);
    });
    const status = res.statusCode ?? 0;
    if (status >= 300 && status < 400 && res.headers.location) {
      res.resume();
      if (hop >= MAX_REDIRECTS) throw new Error(`cannot fetch ${url}: more than ${MAX_REDIRECTS} redirects`);
      current = new URL(res.headers.location, current);
      continue;
    }
    if (status < 200 || status >= 300) {
      res.resume();
      throw new Error(`cannot fetch ${url}: HTTP ${status} ${res.statusMessage ?? ''}`.trimEnd());
    }
    return { res, final: current };
  }
}

/** The address to connect to for `target`: resolved once, every address checked unless local ones are allowed. */
async function checkedAddress(url: string, target: URL, allowLocal: boolean): Promise<{ address: string; family: number }> {
  const host = target.hostname.replace(/^\[|\]$/g, '');
  const found = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookup(host, { all: true, verbatim: true }).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`cannot fetch ${url}: cannot resolve ${host} (${err.code ?? err.message})`);
  });
  if (found.length === 0) throw new Error(`cannot fetch ${url}: ${host} has no address`);
  if (!allowLocal) {
    for (const a of found) {
      const why = localReason(a.address);
      if (why) {
        throw new Error(
          `refusing to fetch ${url}: ${host === a.address ? host : `${host} resolves to ${a.address}, which`} is ${why}; ADD may not reach the build worker's own network (a build with --network host may, or a worker started with --allow-local-urls)`,
        );
      }
    }
  }
  return found[0]!;
}

const LOCAL = new BlockList();
LOCAL.addSubnet('127.0.0.0', 8, 'ipv4');
LOCAL.addSubnet('::1', 128, 'ipv6');
const LINK_LOCAL = new BlockList();
LINK_LOCAL.addSubnet('169.254.0.0', 16, 'ipv4');
LINK_LOCAL.addSubnet('fe80::', 10, 'ipv6');
const UNSPECIFIED = new BlockList();
UNSPECIFIED.addSubnet('0.0.0.0', 8, 'ipv4'); // "this network": Linux sends 0.x to the local host
UNSPECIFIED.addAddress('::', 'ipv6');

/** Why `address` is the worker's own (undefined when it is not). IPv4-mapped IPv6 counts as its IPv4. */
export function localReason(address: string): string | undefined {
  const ip = unmapped(address.replace(/%.*$/, '').toLowerCase());
  const type = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
  if (LOCAL.check(ip, type)) return 'a loopback address';
  if (LINK_LOCAL.check(ip, type)) return 'a link-local address';
  if (UNSPECIFIED.check(ip, type)) return 'an unspecified address';
  const own = Object.values(networkInterfaces()).flatMap((list) => list ?? []);
  if (own.some((i) => unmapped(i.address.toLowerCase()) === ip)) return "an address of the build worker's own interfaces";
  return undefined;
}

/** `::ffff:a.b.c.d` and `::ffff:7f00:1` (as URLs write it) → the IPv4 address; others as they are. */
function unmapped(ip: string): string {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(ip)?.[1];
  if (dotted) return dotted;
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(ip);
  if (!hex) return ip;
  const [hi, lo] = [parseInt(hex[1]!, 16), parseInt(hex[2]!, 16)];
  return [hi >> 8, hi & 255, lo >> 8, lo & 255].join('.');
}

/** One GET to `address`, the URL's name kept for the Host header and TLS (SNI, certificate check). */
function get(target: URL, to: { address: string; family: number }, signal?: AbortSignal): Promise<IncomingMessage> {
  const tls = target.protocol === 'https:';
  const name = target.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)({
      host: to.address,
      family: to.family,
      port: target.port || (tls ? 443 : 80),
      path: `${target.pathname}${target.search}`,
      headers: { host: target.host, 'user-agent': 'slipway-builder' },
      ...(tls && !isIP(name) ? { servername: name } : {}),
      ...(signal ? { signal } : {}),
    });
    req.once('response', resolve);
    req.once('error', reject);
    req.end();
  });
}
