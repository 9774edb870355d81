/*
 * The network's state on the node, under the runner root:
 *
 *   <root>/network/
 *     endpoints.json          every attached container: its address (this is the IPAM), names, devices
 *     lock                    held (see lock.ts) while endpoints.json is read, changed and written
 *     containers/<id>/
 *       hosts                 bind-mounted at /etc/hosts; rewritten in place when peers come and go
 *       resolv.conf           bind-mounted at /etc/resolv.conf
 *       hostname              bind-mounted at /etc/hostname
 *
 * endpoints.json is replaced by rename (nobody mounts it); the files under containers/ are
 * only ever rewritten in place, since a bind mount keeps pointing at the old inode.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NetworkError } from './errors.js';

export interface Endpoint {
  id: string;
  mode: 'none' | 'bridge';
  /** Name of the netns under /var/run/netns. */
  netns: string;
  /** Host end of the veth pair (bridge mode). */
  veth?: string;
  ip?: string;
  mac?: string;
  name?: string;
  hostname: string;
  aliases: string[];
  created: string;
}

export interface NetworkState {
  bridge: string;
  subnet: string;
  endpoints: Record<string, Endpoint>;
}

export interface NetworkPaths {
  dir: string;
  state: string;
  lock: string;
  container(id: string): { dir: string; hosts: string; resolvConf: string; hostname: string };
}

export function networkPaths(root: string): NetworkPaths {
  const dir = join(root, 'network');
  return {
    dir,
    state: join(dir, 'endpoints.json'),
    lock: join(dir, 'lock'),
    container(id) {
      const d = join(dir, 'containers', id);
      return { dir: d, hosts: join(d, 'hosts'), resolvConf: join(d, 'resolv.conf'), hostname: join(d, 'hostname') };
    },
  };
}

/**
 * Reads the state; a root used before with another bridge or subnet is refused while it still
 * has containers attached (their addresses would not fit the new subnet).
 */
export async function loadState(paths: NetworkPaths, bridge: string, subnet: string): Promise<NetworkState> {
  let text: string;
  try {
    text = await readFile(paths.state, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { bridge, subnet, endpoints: {} };
    throw err;
  }
  let state: NetworkState;
  try {
    state = JSON.parse(text) as NetworkState;
  } catch (err) {
    throw new NetworkError('STATE_MISMATCH', `network state ${paths.state} is not valid JSON (${(err as Error).message}); move it aside to start over`);
  }
  const busy = Object.keys(state.endpoints).length > 0;
  if (busy && (state.bridge !== bridge || state.subnet !== subnet)) {
    throw new NetworkError(
      'STATE_MISMATCH',
      `${paths.state} has containers attached to bridge ${state.bridge} (${state.subnet}), not ${bridge} (${subnet}); remove them first or use the same network options`,
    );
  }
  return { ...state, bridge, subnet };
}

export async function saveState(paths: NetworkPaths, state: NetworkState): Promise<void> {
  await mkdir(paths.dir, { recursive: true });
  const tmp = `${paths.state}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(state, null, 2) + '\n');
  await rename(tmp, paths.state);
}
