/** Removing a container that no longer runs: everything but its named volumes. */
import { rm } from 'node:fs/promises';
import type { ContainerRecord } from './model.js';
import type { RunnerPaths } from './paths.js';
import { forceTeardown } from './prepare.js';
import type { Runc } from './runc.js';
import { releaseName } from './state.js';
import { removeAnonymousVolumes } from './volumes.js';

export async function removeContainerFiles(paths: RunnerPaths, runc: Runc, rec: ContainerRecord, opts: { volumes: boolean }): Promise<void> {
  await runc.delete(rec.Id, { force: true });
  await forceTeardown(paths, rec.Id);
  if (opts.volumes) await removeAnonymousVolumes(rec.Mounts);
  await rm(paths.container(rec.Id).dir, { recursive: true, force: true });
  await releaseName(paths, rec.Name, rec.Id);
}
