/*
 * The runner's files on the node:
 *
 *   <root>/                            SLIPWAY_RUNNER_ROOT or --root; default /var/lib/slipway/runner
 *     containers/<id>/
 *       container.json                 the ContainerRecord (model.ts), written once by create
 *       state.json                     the RuntimeState, written by the supervisor (atomic rename)
 *       stopped-by-user                marker: stop/kill asked for it; the supervisor will not restart it
 *       config.json                    the OCI runtime spec; this directory is runc's bundle
 *       rootfs/ upper/ work/           the overlay mount and its writable layer (overlay.ts)
 *       logs/container.log[.1 …]       JSON lines, rotated (logs.ts)
 *       shim.log  runc.log  pid        the supervisor's own messages, runc's log, the init pid
 *     names/<name>                     holds the id; created with O_EXCL, so names stay unique
 *     volumes/<name>/_data             named and anonymous volumes, outliving containers
 *     network/                         the network part's state (network/state.ts)
 *     images/                          the image store
 *   <runc root>/                       SLIPWAY_RUNC_ROOT or --runc-root; default /run/slipway/runc
 */
import { join, resolve } from 'node:path';

export const DEFAULT_ROOT = '/var/lib/slipway/runner';
export const DEFAULT_RUNC_ROOT = '/run/slipway/runc';

export interface ContainerPaths {
  dir: string;
  record: string;
  state: string;
  stopMarker: string;
  spec: string;
  rootfs: string;
  logDir: string;
  log: string;
  shimLog: string;
  runcLog: string;
  pidFile: string;
}

export interface RunnerPaths {
  root: string;
  /** The bridge network's settings (network/manager.ts defaults when unset). */
  network: { bridge?: string; subnet?: string };
  runcRoot: string;
  containers: string;
  names: string;
  volumes: string;
  images: string;
  container(id: string): ContainerPaths;
  volume(name: string): string;
}

export interface RootOptions {
  root?: string;
  runcRoot?: string;
  /** Bridge device and subnet (SLIPWAY_BRIDGE, SLIPWAY_SUBNET); the supervisors get them through their environment. */
  network?: { bridge?: string; subnet?: string };
}

/** The environment a supervisor needs to see the same node settings as its launcher. */
export function networkEnv(paths: RunnerPaths): Record<string, string> {
  return {
    ...(paths.network.bridge ? { SLIPWAY_BRIDGE: paths.network.bridge } : {}),
    ...(paths.network.subnet ? { SLIPWAY_SUBNET: paths.network.subnet } : {}),
  };
}

export function runnerPaths(opts: RootOptions = {}, env: NodeJS.ProcessEnv = process.env): RunnerPaths {
  const root = resolve(opts.root ?? env.SLIPWAY_RUNNER_ROOT ?? DEFAULT_ROOT);
  const runcRoot = resolve(opts.runcRoot ?? env.SLIPWAY_RUNC_ROOT ?? DEFAULT_RUNC_ROOT);
  const containers = join(root, 'containers');
  const bridge = opts.network?.bridge ?? env.SLIPWAY_BRIDGE;
  const subnet = opts.network?.subnet ?? env.SLIPWAY_SUBNET;
  return {
    root,
    runcRoot,
    network: { ...(bridge ? { bridge } : {}), ...(subnet ? { subnet } : {}) },
    containers,
    names: join(root, 'names'),
    volumes: join(root, 'volumes'),
    images: join(root, 'images'),
    container(id) {
      const dir = join(containers, id);
      return {
        dir,
        record: join(dir, 'container.json'),
        state: join(dir, 'state.json'),
        stopMarker: join(dir, 'stopped-by-user'),
        spec: join(dir, 'config.json'),
        rootfs: join(dir, 'rootfs'),
        logDir: join(dir, 'logs'),
        log: join(dir, 'logs', 'container.log'),
        shimLog: join(dir, 'shim.log'),
        runcLog: join(dir, 'runc.log'),
        pidFile: join(dir, 'pid'),
      };
    },
    volume: (name) => join(root, 'volumes', name, '_data'),
  };
}

/** runc's cgroupsPath: absolute, so it means the same under v1 (each controller) and v2. */
export function cgroupPath(id: string): string {
  return `/slipway/${id}`;
}
