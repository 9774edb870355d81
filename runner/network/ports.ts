/*
 * Published ports (`-p`), as a userland proxy like docker-proxy: a listener on the host address
 * that pipes each TCP connection (or relays each UDP flow) to the container's address. It is a
 * plain function, so whichever process supervises the container can hold the listeners.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import type { PortMapping } from '../types.js';
import { NetworkError } from './errors.js';

/** An idle UDP flow's relay socket is closed after this long (docker-proxy uses 90 s). */
const UDP_IDLE_MS = 60_000;
const UDP_MAX_FLOWS = 4096;

/**
 * Parses a docker `-p` spec: `CONTAINERPORT`, `HOSTPORT:CONTAINERPORT`, `IP:HOSTPORT:CONTAINERPORT`,
 * `IP::CONTAINERPORT`, IPv6 hosts in brackets, each with an optional `/tcp` or `/udp`.
 * hostPort 0 means "pick a free port"; hostIp defaults to 0.0.0.0 (every host address).
 */
export function parsePublish(spec: string): PortMapping {
  const bad = (why: string) => new NetworkError('BAD_PUBLISH', `invalid port publication "${spec}": ${why}; expected [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]`);
  const slash = spec.lastIndexOf('/');
  const protocol = slash >= 0 ? spec.slice(slash + 1) : 'tcp';
  if (protocol !== 'tcp' && protocol !== 'udp') throw bad(`protocol "${protocol}" is not supported`);
  const body = slash >= 0 ? spec.slice(0, slash) : spec;
  if (body.includes('-')) throw bad('port ranges are not supported');
  let parts: string[];
  const v6 = /^\[([^\]]*)\]:(.*)$/.exec(body);
  if (v6) parts = [v6[1]!, ...v6[2]!.split(':')];
  else parts = body.split(':');
  if (parts.length === 0 || parts.length > 3 || (v6 && parts.length !== 3)) throw bad('too many ":"');
  const containerPort = port(parts[parts.length - 1]!, false, bad);
  const hostPort = parts.length >= 2 ? port(parts[parts.length - 2]!, true, bad) : 0;
  const hostIp = parts.length === 3 ? parts[0]! : '0.0.0.0';
  if (net.isIP(hostIp) === 0) throw bad(`"${hostIp}" is not an IP address`);
  return { hostIp, hostPort, containerPort, protocol };
}

function port(text: string, optional: boolean, bad: (why: string) => Error): number {
  if (text === '' && optional) return 0;
  if (!/^\d{1,5}$/.test(text)) throw bad(`"${text}" is not a port number`);
  const n = Number(text);
  if (n > 65535 || (n === 0 && !optional)) throw bad(`port ${n} is out of range 1–65535`);
  return n;
}

export interface PublishedPorts {
  /** The mappings as published: automatic host ports filled in. */
  mappings: PortMapping[];
  /** Stops listening and cuts open connections. */
  close(): Promise<void>;
}

interface Listener {
  mapping: PortMapping;
  close(): Promise<void>;
}

/**
 * Starts a proxy per mapping to `containerIp`. Either every port is published or, on the first
 * that fails (a port in use, an address not on this host), none is left open.
 */
export async function publishPorts(mappings: PortMapping[], containerIp: string): Promise<PublishedPorts> {
  const open: Listener[] = [];
  const closeAll = async () => {
    await Promise.all(open.splice(0).map((l) => l.close()));
  };
  try {
    for (const m of mappings) open.push(m.protocol === 'udp' ? await udpRelay(m, containerIp) : await tcpProxy(m, containerIp));
  } catch (err) {
    await closeAll();
    throw err;
  }
  return { mappings: open.map((l) => l.mapping), close: closeAll };
}

function where(m: PortMapping): string {
  const host = m.hostIp.includes(':') ? `[${m.hostIp}]` : m.hostIp;
  return `${host}:${m.hostPort}${m.protocol === 'udp' ? '/udp' : ''}`;
}

function listenError(err: NodeJS.ErrnoException, m: PortMapping): Error {
  if (err.code === 'EADDRINUSE') return new NetworkError('PORT_IN_USE', `port ${where(m)} is already in use; publish on another host port, or leave it out for an automatic one`);
  if (err.code === 'EADDRNOTAVAIL') return new NetworkError('ADDRESS_UNAVAILABLE', `cannot publish on ${where(m)}: ${m.hostIp} is not an address of this host`);
  if (err.code === 'EACCES') return new NetworkError('PORT_IN_USE', `not allowed to listen on ${where(m)}: ports below 1024 need root`);
  return err;
}

async function tcpProxy(m: PortMapping, containerIp: string): Promise<Listener> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    const upstream = net.connect({ host: containerIp, port: m.containerPort, allowHalfOpen: true });
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(a);
      a.on('error', () => b.destroy());
      // Closed without ending its stream (a reset, a kill): cut the other side too; after a clean
      // end, the other side is left to flush what it still holds.
      a.on('close', () => {
        sockets.delete(a);
        if (!b.writableEnded) b.destroy();
      });
    }
    upstream.once('connect', () => {
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  });
  server.on('error', () => {}); // accept errors (EMFILE…) must not bring down the supervisor
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(listenError(err, m)));
    server.listen({ host: m.hostIp, port: m.hostPort, exclusive: true }, resolve);
  });
  const address = server.address() as net.AddressInfo;
  return {
    mapping: { ...m, hostPort: address.port },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}

async function udpRelay(m: PortMapping, containerIp: string): Promise<Listener> {
  const front = dgram.createSocket({ type: net.isIPv6(m.hostIp) ? 'udp6' : 'udp4', reuseAddr: false });
  // One socket per client address toward the container, so its replies find their way back.
  const flows = new Map<string, { back: dgram.Socket; timer: NodeJS.Timeout }>();
  const drop = (key: string) => {
    const f = flows.get(key);
    if (!f) return;
    flows.delete(key);
    clearTimeout(f.timer);
    f.back.close();
  };
  front.on('message', (msg, from) => {
    const key = `${from.address}:${from.port}`;
    let f = flows.get(key);
    if (!f) {
      if (flows.size >= UDP_MAX_FLOWS) return;
      const back = dgram.createSocket(net.isIPv6(containerIp) ? 'udp6' : 'udp4');
      back.on('message', (reply) => front.send(reply, from.port, from.address));
      back.on('error', () => drop(key));
      f = { back, timer: setTimeout(() => drop(key), UDP_IDLE_MS).unref() };
      flows.set(key, f);
    }
    f.timer.refresh();
    f.back.send(msg, m.containerPort, containerIp);
  });
  await new Promise<void>((resolve, reject) => {
    front.once('error', (err) => reject(listenError(err, m)));
    front.bind({ address: m.hostIp, port: m.hostPort, exclusive: true }, () => resolve());
  });
  front.on('error', () => {});
  return {
    mapping: { ...m, hostPort: front.address().port },
    close: async () => {
      for (const key of [...flows.keys()]) drop(key);
      await new Promise<void>((resolve) => front.close(() => resolve()));
    },
  };
}
