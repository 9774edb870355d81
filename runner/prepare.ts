/**
 * What a container needs before runc can run it, and the undoing of it: the overlay rootfs, the
 * network attachment, the published ports, the runtime spec in the bundle. Done once per start
 * by the supervisor; restarts reuse it; teardown runs when the supervisor finishes.
 */
import { writeFile } from 'node:fs/promises';
import type { ContainerRecord } from './model.js';
import { createNetwork, publishPorts, type PublishedPorts } from './network/index.js';
import { mountPoints, mountRootfs, unmountRootfs } from './overlay.js';
import { cgroupPath, type RunnerPaths } from './paths.js';
import { runtimeSpec } from './spec.js';
import type { NetworkAttachment } from './types.js';
import { copyUpVolumes } from './volumes.js';

export interface Prepared {
  network: NetworkAttachment;
  ports: PublishedPorts | undefined;
  teardown(): Promise<void>;
}

export async function prepareContainer(paths: RunnerPaths, rec: ContainerRecord, opts: { terminal: boolean }): Promise<Prepared> {
  const cp = paths.container(rec.Id);
  const undo: (() => Promise<void>)[] = [];
  // The steps are independent of each other (no container process exists yet), so they are undone together.
  const teardown = async () => {
    const results = await Promise.allSettled(undo.splice(0).map((step) => step()));
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
    if (errors.length) throw new Error(`cleaning up container ${rec.Id.slice(0, 12)}: ${errors.join('; ')}`);
  };
  try {
    // The root filesystem and the network namespace do not depend on each other: made side by side.
    const net = createNetwork(paths.root, paths.network);
    const [mounted, attached] = await Promise.allSettled([
      mountPoints().then((points) => (points.includes(cp.rootfs) ? undefined : mountRootfs(rec.LayerDirs, cp.dir))),
      net.attach(rec.Id, { mode: rec.HostConfig.NetworkMode, name: rec.Name, hostname: rec.Config.Hostname }),
    ]);
    undo.push(() => unmountRootfs(cp.rootfs));
    undo.push(() => net.detach(rec.Id));
    if (mounted.status === 'rejected') throw mounted.reason;
    if (attached.status === 'rejected') throw attached.reason;
    const network = attached.value;
    await copyUpVolumes(cp.rootfs, rec.Mounts);
    let ports: PublishedPorts | undefined;
    if (rec.HostConfig.PortBindings.length) {
      if (!network.ip) throw new Error('published ports need an address on the bridge network');
      ports = await publishPorts(rec.HostConfig.PortBindings, network.ip);
      undo.push(() => ports!.close());
    }
    const spec = await runtimeSpec(rec, { rootfs: cp.rootfs, cgroupsPath: cgroupPath(rec.Id), network, terminal: opts.terminal });
    await writeFile(cp.spec, JSON.stringify(spec, null, 1));
    return { network, ports, teardown };
  } catch (err) {
    await teardown().catch(() => {});
    throw err;
  }
}

/** For `rm` when no supervisor is left to tear down: whatever exists of the mount and network goes. */
export async function forceTeardown(paths: RunnerPaths, id: string): Promise<void> {
  await Promise.all([createNetwork(paths.root, paths.network).detach(id), unmountRootfs(paths.container(id).rootfs)]);
}
