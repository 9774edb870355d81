import { NetworkError } from './errors.js';

/** An IPv4 subnet as numbers: enough arithmetic for IPAM and overlap checks. */
export interface Subnet {
  cidr: string;
  base: number;
  prefix: number;
  /** Number of addresses, network and broadcast included. */
  size: number;
}

export function ipToInt(ip: string): number {
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new NetworkError('BAD_INPUT', `"${ip}" is not an IPv4 address`);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function parseSubnet(cidr: string): Subnet {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  const prefix = Number(m?.[2]);
  // /30 leaves one container address after the gateway; anything smaller leaves none.
  if (!m || prefix < 8 || prefix > 30) {
    throw new NetworkError('BAD_INPUT', `subnet "${cidr}" must be an IPv4 CIDR between /8 and /30, e.g. 10.213.0.0/20`);
  }
  const size = 2 ** (32 - prefix);
  const base = ipToInt(m[1]!);
  if (base % size !== 0) {
    throw new NetworkError('BAD_INPUT', `subnet "${cidr}" has host bits set; did you mean ${intToIp(base - (base % size))}/${prefix}?`);
  }
  return { cidr, base, prefix, size };
}

/** The bridge's own address: the first one after the network address. */
export function gatewayOf(s: Subnet): string {
  return intToIp(s.base + 1);
}

/** The lowest address not in `used`, skipping network, gateway and broadcast. */
export function lowestFree(s: Subnet, used: Set<string>): string | undefined {
  for (let n = s.base + 2; n < s.base + s.size - 1; n++) {
    const ip = intToIp(n);
    if (!used.has(ip)) return ip;
  }
  return undefined;
}

export function overlaps(a: Subnet, b: Subnet): boolean {
  return a.base < b.base + b.size && b.base < a.base + a.size;
}

/**
 * A MAC derived from the IP (as docker does): an address handed to a new container after
 * another one left keeps its MAC, so peers' ARP caches stay right.
 */
export function macFor(ip: string): string {
  const n = ipToInt(ip);
  const bytes = [0x02, 0x73, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}
