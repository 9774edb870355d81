/*
 * Attaching containers to Slipway's network. Each container gets a named network namespace
 * (/var/run/netns/slipway-<short id>) that the lifecycle puts in its runtime spec. In bridge
 * mode a veth pair joins it to the bridge: the host end `sw<short id>` is a bridge port, the
 * other end is eth0 inside, with an address from the subnet and a default route via the bridge.
 * Every change happens under the lock, so several slipway processes can attach at once.
 */
import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import type { NetworkAttachment } from '../types.js';
import { ensureBridge, removeBridge } from './bridge.js';
import { NetworkError } from './errors.js';
import { ipBatch, linkExists, NETNS_DIR, netnsExists, run } from './exec.js';
import { writeContainerFiles, writeInPlace, hostsFile } from './hosts.js';
import { withLock } from './lock.js';
import { loadState, networkPaths, saveState, type Endpoint, type NetworkState } from './state.js';
import { gatewayOf, lowestFree, macFor, parseSubnet } from './subnet.js';

export const DEFAULT_BRIDGE = 'slipway0';
/** Private, and far from docker's 172.17–172.31 and the usual 192.168/10.0 home and office ranges. */
export const DEFAULT_SUBNET = '10.213.0.0/20';

export interface NetworkOptions {
  /** Bridge device name, at most 15 characters. */
  bridge?: string;
  /** IPv4 subnet in CIDR form; the bridge takes its first address. */
  subnet?: string;
}

export interface AttachOptions {
  mode: 'bridge' | 'none';
  /** The container's name (`--name`): peers resolve it. */
  name?: string;
  /** Hostname inside the container; defaults to the first 12 characters of the id, as docker. */
  hostname?: string;
  /** More names peers resolve to this container (`--network-alias`). */
  aliases?: string[];
}

export interface NetworkManager {
  readonly bridge: string;
  readonly subnet: string;
  readonly gateway: string;
  /** Attaches a container; attaching one that is already attached returns its attachment. */
  attach(containerId: string, opts: AttachOptions): Promise<NetworkAttachment>;
  /** Removes its devices, namespace, address and files; nothing attached is not an error. */
  detach(containerId: string): Promise<void>;
  /** The attachment of a container (after a restart of slipway, say), if it has one. */
  attachment(containerId: string): Promise<NetworkAttachment | undefined>;
  endpoints(): Promise<Endpoint[]>;
  /** Drops entries whose namespace is gone (removed by hand, or lost at reboot); returns their ids. */
  reclaim(): Promise<string[]>;
  /** Deletes the bridge and its iptables rules; refused while containers are attached. */
  remove(): Promise<void>;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$/;

/** Short id for device and namespace names: a hex id's prefix (as docker), else a hash. */
export function shortId(containerId: string): string {
  return /^[0-9a-f]{12,}$/.test(containerId) ? containerId.slice(0, 12) : createHash('sha256').update(containerId).digest('hex').slice(0, 12);
}

export function netnsNameFor(containerId: string): string {
  return `slipway-${shortId(containerId)}`;
}

export function createNetwork(root: string, opts: NetworkOptions = {}): NetworkManager {
  const bridge = opts.bridge ?? DEFAULT_BRIDGE;
  if (!/^[A-Za-z0-9_-]{1,15}$/.test(bridge)) throw new NetworkError('BAD_INPUT', `bridge name "${bridge}" must be 1–15 letters, digits, - or _`);
  const subnet = parseSubnet(opts.subnet ?? DEFAULT_SUBNET);
  const gateway = gatewayOf(subnet);
  const paths = networkPaths(root);

  const locked = async <T>(fn: (state: NetworkState) => Promise<T>): Promise<T> => {
    await mkdir(paths.dir, { recursive: true });
    return withLock(paths.lock, async () => fn(await loadState(paths, bridge, subnet.cidr)));
  };

  const toAttachment = (e: Endpoint): NetworkAttachment => {
    const files = paths.container(e.id);
    return {
      mode: e.mode,
      netnsPath: `${NETNS_DIR}/${e.netns}`,
      ...(e.ip ? { ip: e.ip, gateway } : {}),
      hostsPath: files.hosts,
      resolvConfPath: files.resolvConf,
      hostnamePath: files.hostname,
    };
  };

  /** Rewrites every bridge peer's hosts file after `state` changed. */
  const refreshPeers = async (state: NetworkState): Promise<void> => {
    const all = Object.values(state.endpoints);
    for (const e of all) {
      if (e.mode !== 'bridge') continue;
      await writeInPlace(paths.container(e.id).hosts, hostsFile(e, all)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err; // its directory was removed by hand: nothing to update
      });
    }
  };

  /** Deletes whatever exists of an endpoint's devices, namespace and files. */
  const teardown = async (id: string, netns: string, veth: string): Promise<void> => {
    if (linkExists(veth)) await run('ip', ['link', 'del', veth]).catch(() => {});
    if (netnsExists(netns)) await run('ip', ['netns', 'del', netns]);
    await rm(paths.container(id).dir, { recursive: true, force: true });
  };

  const reclaimIn = async (state: NetworkState): Promise<string[]> => {
    const gone = Object.values(state.endpoints).filter((e) => !netnsExists(e.netns));
    for (const e of gone) {
      await teardown(e.id, e.netns, e.veth ?? `sw${shortId(e.id)}`);
      delete state.endpoints[e.id];
    }
    return gone.map((e) => e.id);
  };

  // Checked once per process (iptables is slow to ask), and again whenever the bridge has vanished.
  let bridgeReady = false;

  const plumb = async (e: Endpoint): Promise<void> => {
    if (e.mode === 'none') {
      await run('ip', ['netns', 'add', e.netns]);
      await run('ip', ['-n', e.netns, 'link', 'set', 'lo', 'up']);
      return;
    }
    if (!bridgeReady || !linkExists(bridge)) await ensureBridge(bridge, subnet);
    bridgeReady = true;
    // The container end is created inside the namespace already, named eth0: no rename, no clash.
    await ipBatch([`netns add ${e.netns}`, `link add ${e.veth} type veth peer name eth0 address ${e.mac} netns ${e.netns}`, `link set ${e.veth} master ${bridge} up`]);
    await ipBatch(['link set lo up', `addr add ${e.ip}/${subnet.prefix} dev eth0`, 'link set eth0 up', `route add default via ${gateway} dev eth0`], e.netns);
  };

  return {
    bridge,
    subnet: subnet.cidr,
    gateway,

    async attach(containerId, a) {
      if (!ID.test(containerId)) throw new NetworkError('BAD_INPUT', `container id "${containerId}" must be letters, digits, _ . - (at most 128)`);
      for (const n of [a.name, a.hostname, ...(a.aliases ?? [])]) {
        if (n !== undefined && !NAME.test(n)) throw new NetworkError('BAD_INPUT', `"${n}" is not a valid container name, hostname or alias`);
      }
      if (a.mode !== 'bridge' && a.mode !== 'none') throw new NetworkError('BAD_INPUT', `network mode "${String(a.mode)}" must be bridge or none`);
      return locked(async (state) => {
        await reclaimIn(state);
        const existing = state.endpoints[containerId];
        if (existing) return toAttachment(existing);
        const short = shortId(containerId);
        const clash = Object.values(state.endpoints).find((e) => shortId(e.id) === short);
        if (clash) throw new NetworkError('BAD_INPUT', `container id ${containerId} shares its first 12 characters with attached container ${clash.id}`);
        const e: Endpoint = {
          id: containerId,
          mode: a.mode,
          netns: netnsNameFor(containerId),
          hostname: a.hostname ?? containerId.slice(0, 12),
          aliases: a.aliases ?? [],
          created: new Date().toISOString(),
          ...(a.name ? { name: a.name } : {}),
        };
        if (a.mode === 'bridge') {
          const used = new Set(Object.values(state.endpoints).flatMap((p) => (p.ip ? [p.ip] : [])));
          const ip = lowestFree(subnet, used);
          if (!ip) throw new NetworkError('SUBNET_EXHAUSTED', `no free address left in ${subnet.cidr} (${used.size} containers attached); detach some or configure a larger subnet`);
          Object.assign(e, { ip, mac: macFor(ip), veth: `sw${short}` });
        }
        // Leftovers of a slipway process killed half-way through an attach: not in the state, so ours to clean.
        await teardown(containerId, e.netns, `sw${short}`);
        try {
          await plumb(e);
          state.endpoints[containerId] = e;
          await writeContainerFiles(paths.container(containerId), e, Object.values(state.endpoints));
          await saveState(paths, state);
        } catch (err) {
          delete state.endpoints[containerId];
          await teardown(containerId, e.netns, `sw${short}`).catch(() => {});
          throw err;
        }
        await refreshPeers(state);
        return toAttachment(e);
      });
    },

    async detach(containerId) {
      if (!ID.test(containerId)) return;
      return locked(async (state) => {
        const e = state.endpoints[containerId];
        await teardown(containerId, e?.netns ?? netnsNameFor(containerId), e?.veth ?? `sw${shortId(containerId)}`);
        delete state.endpoints[containerId];
        await reclaimIn(state);
        await saveState(paths, state);
        await refreshPeers(state);
      });
    },

    attachment(containerId) {
      return locked(async (state) => {
        const e = state.endpoints[containerId];
        return e && netnsExists(e.netns) ? toAttachment(e) : undefined;
      });
    },

    endpoints() {
      return locked(async (state) => Object.values(state.endpoints));
    },

    reclaim() {
      return locked(async (state) => {
        const ids = await reclaimIn(state);
        if (ids.length > 0) {
          await saveState(paths, state);
          await refreshPeers(state);
        }
        return ids;
      });
    },

    remove() {
      return locked(async (state) => {
        await reclaimIn(state);
        const left = Object.keys(state.endpoints);
        if (left.length > 0) throw new NetworkError('BAD_INPUT', `bridge ${bridge} still has ${left.length} container(s) attached: ${left.join(', ')}`);
        await removeBridge(bridge);
        bridgeReady = false;
        await rm(paths.state, { force: true });
        await rm(`${paths.dir}/containers`, { recursive: true, force: true });
      });
    },
  };
}
