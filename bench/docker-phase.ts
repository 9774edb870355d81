import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { buildImage, layerStatuses, removeAllImages, startDockerd, type BenchImage } from './docker-daemon.js';
import { log, measured, settle, startPair, type PhaseContext } from './phase.js';
import { orderFor, REGISTRIES } from './registries.js';
import type { Metric } from './report.js';

const MiB = 1 << 20;
const EXTRA_LAYERS = 4;
const LAYER_BYTES = 50 * MiB;

function countStatus(output: string, status: string): number {
  return layerStatuses(output)[status] ?? 0;
}

/** docker push / pull of a 5-layer image through a private dockerd, fresh registries per round. */
export async function dockerPhase(ctx: PhaseContext, rounds: number, push: Metric, pull: Metric): Promise<BenchImage> {
  const { root, cleanup, cpu } = ctx;
  // Short path: the daemon's unix socket lives inside it.
  const dockerDir = await mkdtemp('/tmp/swd-');
  const d = await startDockerd(dockerDir);
  const stopDockerd = cleanup.add('private dockerd', d.stop);
  log(`private dockerd up in ${dockerDir}; building the image offline`);
  const image = await buildImage(d, join(root, 'image'), EXTRA_LAYERS, LAYER_BYTES);
  const size = `${image.layers} layers, ${(image.bytes / 1e6).toFixed(0)} MB`;
  log(`image ${image.ref}: ${size}`);
  push.label = `docker push, ${size}`;
  pull.label = `docker pull, ${size}`;
  for (let round = 0; round < rounds; round++) {
    const order = orderFor(round);
    // Fresh registries on new ports each round: dockerd remembers which layers it pushed to which
    // registry and would mount or skip them instead of uploading.
    const regs = await startPair(join(root, `docker-r${round}`), ctx.registry, cleanup);
    if (round > 0) await d.docker(['load', '-q', '-i', image.archive], 300_000);
    for (const n of order) {
      const ref = `${regs[n].host}/bench/big:latest`;
      await d.docker(['tag', image.ref, ref], 30_000);
      await settle(root);
      const pushed = await measured(cpu, 'docker push (client: dockerd)', regs[n], false, () => d.docker(['push', ref], 600_000));
      const count = countStatus(pushed.stdout, 'Pushed');
      if (count !== image.layers) throw new Error(`docker push to ${n}: ${count} of ${image.layers} layers pushed:\n${pushed.stdout}`);
      push.samples[n].push(pushed.ms / 1000);
    }
    await removeAllImages(d);
    for (const n of order) {
      const ref = `${regs[n].host}/bench/big:latest`;
      await settle(root);
      const pulled = await measured(cpu, 'docker pull (client: dockerd)', regs[n], false, () => d.docker(['pull', ref], 600_000));
      const count = countStatus(pulled.stdout, 'Pull complete');
      if (count !== image.layers) throw new Error(`docker pull from ${n}: ${count} of ${image.layers} layers downloaded:\n${pulled.stdout}`);
      pull.samples[n].push(pulled.ms / 1000);
      await removeAllImages(d);
    }
    for (const n of REGISTRIES) await regs[n].close();
    log(`docker round ${round + 1}/${rounds} done (${order.join(' first, then ')})`);
  }
  await stopDockerd();
  return image;
}
