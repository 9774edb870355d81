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
  const teardown = async () => {
    const errors: string[] = [];
    for (const step of undo.splice(0).reverse()) await step().catch((err: Error) => errors.push(err.message));
    if (errors.length) throw new Error(`cleaning up container ${rec.Id.slice(0, 12)}: ${errors.join('; ')}`);
  };
  try {
    if (!(await mountPoints()).includes(cp.rootfs)) await mountRootfs(rec.LayerDirs, cp.dir);
    undo.push(() => unmountRootfs(cp.rootfs));
    await copyUpVolumes(cp.rootfs, rec.Mounts);
    const net = createNetwork(paths.root, paths.network);
    undo.push(() => net.detach(rec.Id));
    const network = await net.attach(rec.Id, { mode: rec.HostConfig.NetworkMode, name: rec.Name, hostname: rec.Config.Hostname });
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
  await createNetwork(paths.root, paths.network).detach(id);
  await unmountRootfs(paths.container(id).rootfs);
}
