import { Agent } from 'node:http';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { PayloadSource, pullBlob, pullRedirected, pushBlob, timed, verifyBlob, type Payload } from './blob-load.js';
import { pool } from './http-client.js';
import { checkManifestGet, pushSmallImage, wrkManifest } from './manifest-load.js';
import { log, measured, settle, startPair, type PhaseContext } from './phase.js';
import { orderFor, REGISTRIES, type Registry, type RegistryName } from './registries.js';
import type { Metric } from './report.js';

export interface HttpPlan {
  rounds: number;
  bigBlobs: number;
  bigBlob: number;
  bigParallel: number;
  smallBlobs: number;
  smallBlob: number;
  smallParallel: number;
  wrkSeconds: number;
  phases: ReadonlySet<string>;
}

export interface HttpMetrics {
  blobPush: Metric;
  blobPull: Metric;
  /** S3 only: pulls answered with 307 to a presigned URL, which the client follows. */
  blobPullRedirected?: Metric;
  manifestGet: Metric;
  smallPush: Metric;
  smallPull: Metric;
}

type Pair = Record<RegistryName, Registry>;

/**
 * Blob push/pull, small blobs and manifest GETs against one long-lived pair of registries.
 * With `redirected` metrics (S3), a second pair over the same buckets redirects blob GETs
 * to S3, and the pull is timed there too, the client following the 307.
 */
export async function httpPhases(plan: HttpPlan, ctx: PhaseContext, metrics: HttpMetrics): Promise<void> {
  const { phases } = plan;
  const { root, cleanup, cpu } = ctx;
  const regs = await startPair(join(root, 'http'), ctx.registry, cleanup);
  let redirecting: Pair | undefined;
  if (metrics.blobPullRedirected && phases.has('blobs')) {
    const buckets = (n: RegistryName) => ({ ...ctx.registry, bucket: regs[n].bucket, redirect: true });
    redirecting = await startPair(join(root, 'http-redirect'), ctx.registry, cleanup, buckets);
  }
  const agents = Object.fromEntries(REGISTRIES.map((n) => [n, new Agent({ keepAlive: true, maxSockets: 16 })])) as Record<RegistryName, Agent>;
  const storageAgent = new Agent({ keepAlive: true, maxSockets: 16 });
  const closeAgents = cleanup.add('http agents', async () => [...Object.values(agents), storageAgent].forEach((a) => a.destroy()));
  const big = new PayloadSource(plan.bigBlob);
  const small = new PayloadSource(plan.smallBlob);
  const manifestRepo = 'bench/manifest';

  // Untimed: every registry answers correctly before anything is measured.
  for (const name of REGISTRIES) {
    const { url } = regs[name];
    const [warm] = big.make(1) as [Payload];
    await pushBlob(agents[name], url, 'bench/warmup', warm);
    await verifyBlob(agents[name], url, 'bench/warmup', warm);
    if (redirecting) await pullRedirected(agents[name], storageAgent, redirecting[name].url, 'bench/warmup', warm);
    const smalls = small.make(plan.smallParallel);
    await pool(smalls, plan.smallParallel, (b) => pushBlob(agents[name], url, 'bench/warmup', b));
    await verifyBlob(agents[name], url, 'bench/warmup', smalls[0] as Payload);
    if (phases.has('manifest')) {
      const digest = await pushSmallImage(agents[name], url, manifestRepo, 'latest');
      await checkManifestGet(agents[name], url, manifestRepo, 'latest', digest);
    }
  }

  const spot: { name: RegistryName; repo: string; blob: Payload }[] = [];
  // Every blob twice, so a pull measurement lasts about as long as the push did.
  const twice = (list: Payload[]) => [...list, ...list];
  for (let round = 0; round < plan.rounds; round++) {
    const order = orderFor(round);
    if (phases.has('blobs')) {
      const repo = `bench/big-r${round}`;
      const blobs = Object.fromEntries(order.map((n) => [n, big.make(plan.bigBlobs)])) as Record<RegistryName, Payload[]>;
      for (const n of order) {
        await settle(root);
        const t = await measured(cpu, 'blob push', regs[n], true, () => timed(blobs[n], plan.bigParallel, (b) => pushBlob(agents[n], regs[n].url, repo, b)));
        metrics.blobPush.samples[n].push(t.bytes / 1e6 / t.seconds);
        spot.push({ name: n, repo, blob: blobs[n][0] as Payload });
      }
      for (const n of order) {
        const t = await measured(cpu, 'blob pull', regs[n], true, () => timed(twice(blobs[n]), plan.bigParallel, (b) => pullBlob(agents[n], regs[n].url, repo, b)));
        metrics.blobPull.samples[n].push(t.bytes / 1e6 / t.seconds);
      }
      for (const n of redirecting ? order : []) {
        const reg = redirecting![n];
        const t = await measured(cpu, 'blob pull, redirected', reg, true, () =>
          timed(twice(blobs[n]), plan.bigParallel, (b) => pullRedirected(agents[n], storageAgent, reg.url, repo, b)),
        );
        metrics.blobPullRedirected!.samples[n].push(t.bytes / 1e6 / t.seconds);
      }
    }
    if (phases.has('small')) {
      const repo = `bench/small-r${round}`;
      const blobs = Object.fromEntries(order.map((n) => [n, small.make(plan.smallBlobs)])) as Record<RegistryName, Payload[]>;
      for (const n of order) {
        await settle(root);
        const t = await measured(cpu, 'small push', regs[n], true, () => timed(blobs[n], plan.smallParallel, (b) => pushBlob(agents[n], regs[n].url, repo, b)));
        metrics.smallPush.samples[n].push(t.ops / t.seconds);
        spot.push({ name: n, repo, blob: blobs[n][plan.smallBlobs - 1] as Payload });
      }
      for (const n of order) {
        const t = await measured(cpu, 'small pull', regs[n], true, () => timed(blobs[n], plan.smallParallel, (b) => pullBlob(agents[n], regs[n].url, repo, b)));
        metrics.smallPull.samples[n].push(t.ops / t.seconds);
      }
    }
    if (phases.has('manifest')) {
      for (const n of order) {
        const url = `${regs[n].url}/v2/${manifestRepo}/manifests/latest`;
        const w = await measured(cpu, 'manifest GET (client: wrk)', regs[n], false, () => wrkManifest(url, plan.wrkSeconds));
        if (w.non2xx > 0) throw new Error(`${n}: wrk saw ${w.non2xx} non-2xx responses to GET ${url}`);
        if (w.socketErrors) log(`${n}: wrk ${w.socketErrors}`);
        metrics.manifestGet.samples[n].push(w.requestsPerSecond);
      }
    }
    log(`round ${round + 1}/${plan.rounds} done (${order.join(' first, then ')}); load ${loadavg()[0]?.toFixed(2)}`);
  }
  // Untimed: what was pushed in the timed rounds reads back with the right digest.
  for (const { name, repo, blob } of spot) await verifyBlob(agents[name], regs[name].url, repo, blob);
  await closeAgents();
  for (const n of REGISTRIES) await redirecting?.[n].close();
  for (const n of REGISTRIES) await regs[n].close();
}
