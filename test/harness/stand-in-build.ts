import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { BuildError, type BuildFunction, type BuildStep } from '../../builder/types.js';
import { MT, pushBlob, putManifest } from './http.js';

/*
 * A stand-in for the executor, for the queue tests: its "Dockerfile" is a tiny
 * script, one instruction per line, each a step:
 *   LOG text           a log line              SLEEP ms       sleeps, honouring the AbortSignal
 *   FAIL user CODE     a RUN that exits CODE   FAIL infra     an infrastructure failure
 *   FAILUNTIL N        infrastructure failure on attempts < N (counted in the worker root)
 *   CAT path           logs a context file     LIST           logs every context file
 *   CACHED text        a step that was cached
 * Then it pushes a trivial image to every tag and returns its digest.
 *
 * Run as `node stand-in-build.js worker --redis URL --prefix P --root DIR --name N [--lock MS --stalled MS]`
 * it is a builder worker process; as `… cli ARGS` it is `slipway` with the build commands.
 */
export const concurrency = { now: 0, max: 0 };

async function contextFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else out.push(relative(dir, join(d, e.name)));
    }
  };
  await walk(dir);
  return out.sort();
}

export const standInBuild: BuildFunction = async (req, log, opts) => {
  const started = Date.now();
  concurrency.now++;
  concurrency.max = Math.max(concurrency.max, concurrency.now);
  try {
    const script = await readFile(join(req.contextDir, req.dockerfile), 'utf8').catch(() => {
      throw new BuildError(`Dockerfile ${req.dockerfile} not found in the context`, 'user');
    });
    const lines = script.split('\n').map((l) => l.trim()).filter(Boolean);
    const steps: BuildStep[] = lines.map((instruction, i) => ({ index: i + 1, stage: '0', instruction, line: i + 1, status: 'planned', reason: 'stand-in' }));
    for (const s of steps) log.step({ ...s });
    let cacheHits = 0;
    for (const step of steps) {
      const [op, ...args] = step.instruction.split(/\s+/);
      log.step({ ...step, status: 'running' });
      if (op === 'LOG') log.line(args.join(' '));
      else if (op === 'SLEEP') {
        const until = Date.now() + Number(args[0]);
        while (Date.now() < until) {
          if (opts.signal?.aborted) throw new BuildError('the build was cancelled', 'user');
          await sleep(Math.min(50, until - Date.now()));
        }
      } else if (op === 'FAIL' && args[0] === 'user') {
        log.line(`step ${step.index} is failing`);
        throw new BuildError(`RUN ${args.slice(1).join(' ')} exited with ${args[1]}`, 'user', { exitCode: Number(args[1]), line: step.line });
      } else if (op === 'FAIL') throw new BuildError('the registry is unavailable (stand-in)', 'infrastructure');
      else if (op === 'FAILUNTIL') {
        await mkdir(opts.workerRoot, { recursive: true });
        const counter = join(opts.workerRoot, `attempts-${req.id}`);
        const n = Number(await readFile(counter, 'utf8').catch(() => '0')) + 1;
        await writeFile(counter, String(n));
        if (n < Number(args[0])) throw new BuildError(`infrastructure hiccup on attempt ${n}`, 'infrastructure');
      } else if (op === 'CAT') log.line(`${args[0]}: ${(await readFile(join(req.contextDir, args[0]!), 'utf8')).trim()}`);
      else if (op === 'LIST') log.line(`files: ${(await contextFiles(req.contextDir)).join(' ')}`);
      else if (op === 'CACHED') cacheHits++;
      step.status = op === 'CACHED' ? 'cached' : 'done';
      log.step({ ...step });
    }
    const digests = new Set<string>();
    for (const tag of req.tags) digests.add(await pushTrivialImage(tag, req.id));
    const digest = [...digests].join(',');
    return { imageDigest: digest, tags: req.tags, steps, cacheHits, durationMs: Date.now() - started };
  } finally {
    concurrency.now--;
  }
};

/** `HOST:PORT/repo:tag` → a two-blob image there, the same bytes for the same `label`; returns the manifest digest. */
export async function pushTrivialImage(ref: string, label: string): Promise<string> {
  const slash = ref.indexOf('/');
  const colon = ref.lastIndexOf(':');
  const base = `http://${ref.slice(0, slash)}`;
  const repo = ref.slice(slash + 1, colon > slash ? colon : undefined);
  const tag = colon > slash ? ref.slice(colon + 1) : 'latest';
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, build: label }));
  const layer = Buffer.from(`stand-in layer of ${label}`);
  const manifest = {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config: { mediaType: MT.ociConfig, digest: await pushBlob(base, repo, config), size: config.length },
    layers: [{ mediaType: MT.ociLayer, digest: await pushBlob(base, repo, layer), size: layer.length }],
  };
  const r = await putManifest(base, repo, tag, manifest);
  if (r.status !== 201) throw new BuildError(`push of ${ref} failed: ${r.status} ${r.body.toString()}`, 'infrastructure');
  return r.headers.get('docker-content-digest') ?? '';
}

function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(): Promise<void> {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === 'worker') {
    const { startBuildWorker } = await import('../../builder/worker.js');
    const w = await startBuildWorker({
      redisUrl: flag(args, '--redis')!,
      prefix: flag(args, '--prefix')!,
      root: flag(args, '--root')!,
      name: flag(args, '--name'),
      lockDuration: Number(flag(args, '--lock') ?? 30_000),
      stalledInterval: Number(flag(args, '--stalled') ?? 30_000),
      build: standInBuild,
      cancelPollMs: 300,
    });
    process.on('SIGTERM', () => void w.close(true).then(() => process.exit(0)));
    process.stdout.write(`ready ${w.name}\n`);
  } else if (mode === 'cli') {
    const { Command } = await import('commander');
    const { registerBuildCommands } = await import('../../cli/build.js');
    const program = new Command('slipway').exitOverride();
    registerBuildCommands(program, { build: standInBuild });
    await program.parseAsync(args, { from: 'user' }).catch((err: unknown) => {
      if ((err as { code?: string }).code?.startsWith('commander.')) process.exit(2);
      process.stderr.write(`slipway: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
