/**
 * Builder benchmark: BuildKit (DOCKER_BUILDKIT=1 docker build on a private dockerd), `buildah bud
 * --runtime runc` (private storage) and Slipway (`slipway build` through a running registry +
 * redis-server + builder worker, end to end from the CLI) side by side in one run: the first
 * build (--no-cache) and the no-op rebuild of one small 10-step Dockerfile; medians and ratios
 * against DESIGN.md §8 (no-op rebuild ≤ BuildKit). Run it through `bash bench/builder [--quick]`.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build as executorBuild } from '../builder/index.js';
import { Cleanup } from './cleanup.js';
import { writeBenchLayout, pushLayout } from './oci-image.js';
import { log } from './phase.js';
import { run } from './processes.js';
import { median } from './report.js';
import { breakdownTable, resultTable, type Sample, type ToolResult } from './builder-report.js';
import { hasBuildah, startBuildah, startBuildkit, startSlipwayStack, type SlipwayStack, type Tool, type ToolName } from './builder-tools.js';

const LIGHT_CLI = resolve(fileURLToPath(import.meta.url), '../builder-cli-light.js');

const USAGE = `usage: bench/builder [--quick] [--rounds N] [--json FILE]
  --quick      2 rounds (default 5), a smoke check
  --rounds N   timed rounds per tool (1–15)
  --json FILE  also write every sample as JSON`;

function dockerfile(base: string): string {
  return [
    `FROM ${base}`,
    'ENV APP_HOME=/app MODE=bench',
    'WORKDIR /app',
    'COPY app.sh /app/app.sh',
    'RUN echo built > /app/stamp && cat /app/app.sh > /app/run.sh',
    'COPY data/ /app/data/',
    'RUN ls /app/data > /app/index.txt',
    'ARG VERSION=1',
    'LABEL org.example.version=$VERSION',
    'EXPOSE 8080',
    'CMD ["/bin/sh", "/app/run.sh"]',
    '',
  ].join('\n');
}

async function writeContext(dir: string, base: string): Promise<void> {
  await mkdir(join(dir, 'data'), { recursive: true });
  await writeFile(join(dir, 'Dockerfile'), dockerfile(base));
  await writeFile(join(dir, 'app.sh'), 'echo "hello from $MODE"\ncat /app/index.txt\n');
  for (let i = 0; i < 8; i++) await writeFile(join(dir, 'data', `file${i}.txt`), `${'x'.repeat(2048 * (i + 1))}\n`);
  await writeFile(join(dir, '.dockerignore'), 'ignored/\n');
}

/**
 * Gives the layout's image config a history entry for its layer: buildah refuses an image whose
 * history lists fewer non-empty layers than it has ("history lists 0 non-empty layers").
 */
async function addHistory(dir: string): Promise<void> {
  const blob = (digest: string) => join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  const put = async (bytes: Buffer) => {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    await writeFile(blob(digest), bytes);
    return { digest, size: bytes.length };
  };
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; size: number }> };
  const entry = index.manifests[0];
  if (!entry) throw new Error(`${dir}/index.json lists no manifest`);
  const manifest = JSON.parse(await readFile(blob(entry.digest), 'utf8')) as { config: { digest: string; size: number } };
  const config = JSON.parse(await readFile(blob(manifest.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] }; history?: unknown[] };
  config.history = config.rootfs.diff_ids.map(() => ({ created: '1970-01-01T00:00:00Z', created_by: 'busybox rootfs (bench)' }));
  Object.assign(manifest.config, await put(Buffer.from(JSON.stringify(config))));
  Object.assign(entry, await put(Buffer.from(JSON.stringify(manifest))));
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
}

const seconds = (ms: number) => ms / 1000;

async function timeTool(tool: Tool, context: string, ref: string, into: ToolResult): Promise<void> {
  const first = await tool.build(context, ref, true);
  const noop = await tool.build(context, ref, false);
  const cached = await tool.cachedSteps(noop);
  into.first.push(seconds(first.ms));
  into.noop.push(seconds(noop.ms));
  into.cachedSteps.push(cached);
}

/** The executor alone: build() in this process, warm (one untimed build first). */
async function timeExecutor(stack: SlipwayStack, context: string, work: string, rounds: number): Promise<ToolResult> {
  const out: ToolResult = { name: 'executor', first: [], noop: [], cachedSteps: [] };
  const quiet = { line: () => undefined, step: () => undefined };
  let n = 0;
  const once = async (noCache: boolean) => {
    const started = process.hrtime.bigint();
    const req = { id: `benchinproc${n++}`, contextDir: context, dockerfile: 'Dockerfile', tags: [`${stack.registryHost}/bench/inproc:1`], buildArgs: {}, noCache, network: 'none' as const, secrets: [], labels: {} };
    const r = await executorBuild(req, quiet, { workerRoot: join(work, 'inproc'), redisUrl: stack.redisUrl });
    return { s: Number(process.hrtime.bigint() - started) / 1e9, cacheHits: r.cacheHits };
  };
  await once(true);
  await once(false);
  for (let i = 0; i < rounds; i++) {
    out.first.push((await once(true)).s);
    const noop = await once(false);
    out.noop.push(noop.s);
    out.cachedSteps.push(noop.cacheHits);
  }
  return out;
}

/** Where a Slipway no-op rebuild's time goes: CLI start-up, then the server's own timings of the last build. */
async function slipwayBreakdown(stack: SlipwayStack, context: string, ref: string): Promise<Sample[]> {
  const helps: number[] = [];
  for (let i = 0; i < 3; i++) helps.push((await run(process.execPath, [stack.cli, 'build', '--help'], { timeoutMs: 30_000 })).ms);
  const bare: number[] = [];
  for (let i = 0; i < 3; i++) bare.push((await run(process.execPath, ['-e', '0'], { timeoutMs: 30_000 })).ms);
  const light: number[] = [];
  for (let i = 0; i < 3; i++) light.push((await run(process.execPath, [LIGHT_CLI, stack.registryUrl, ref, context], { timeoutMs: 60_000 })).ms);
  const samples: Sample[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await stack.build(context, ref, false);
    const list = (await (await fetch(`${stack.registryUrl}/api/builds?limit=1`)).json()) as Array<{ createdAt: string; startedAt?: string; finishedAt?: string; queuedMs?: number; durationMs?: number }>;
    const rec = list[0];
    if (!rec) throw new Error('no build record after a Slipway build');
    const server = rec.finishedAt ? Date.parse(rec.finishedAt) - Date.parse(rec.createdAt) : NaN;
    samples.push({ wallMs: r.ms, queuedMs: rec.queuedMs ?? NaN, executorMs: rec.durationMs ?? NaN, serverMs: server, cliHelpMs: median(helps), nodeBareMs: median(bare), lightCliMs: median(light) });
  }
  return samples;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, rounds: { type: 'string' }, json: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const rounds = values.rounds ? Number(values.rounds) : values.quick ? 2 : 5;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 15) throw new Error(`--rounds must be 1–15, not ${values.rounds}`);
  // Short: the private dockerd's socket path must fit in sockaddr_un.
  const work = await mkdtemp('/tmp/sb-');
  const cleanup = new Cleanup(() => rm(work, { recursive: true, force: true }), log);
  cleanup.onSignalsAndDeadline((values.quick ? 10 : 25) * 60_000);
  try {
    log(`work dir ${work}; ${rounds} rounds`);
    const stack = await startSlipwayStack(join(work, 'sw'));
    cleanup.add('slipway stack', () => stack.close());
    for (const f of stack.fallbacks) log(`fallback: ${f}`);
    const baseRef = `${stack.registryHost}/bench/busybox:base`;
    const layout = await writeBenchLayout(join(work, 'layout'), 'base');
    await addHistory(layout.dir);
    await pushLayout(layout, baseRef);
    const context = join(work, 'ctx');
    await writeContext(context, baseRef);

    const tools: Tool[] = [stack];
    const buildkit = await startBuildkit(join(work, 'dk'), baseRef);
    cleanup.add('private dockerd', () => buildkit.close());
    tools.push(buildkit);
    if (hasBuildah()) {
      const buildah = await startBuildah(join(work, 'ba'), baseRef, log);
      cleanup.add('buildah storage', () => buildah.close());
      tools.push(buildah);
    } else log('buildah is not installed: its row is left out');

    const results = new Map<ToolName, ToolResult>(tools.map((t) => [t.name, { name: t.name, first: [], noop: [], cachedSteps: [] }]));
    const ref = (t: Tool) => (t.name === 'slipway' ? `${stack.registryHost}/bench/app:1` : `localhost/bench/app-${t.name}:1`);
    log('warm-up round (untimed)');
    for (const t of tools) await timeTool(t, context, ref(t), { name: t.name, first: [], noop: [], cachedSteps: [] });
    for (let r = 0; r < rounds; r++) {
      // Rotate the order so no tool always runs right after the same neighbour.
      const order = tools.map((_, i) => tools[(i + r) % tools.length] as Tool);
      for (const t of order) await timeTool(t, context, ref(t), results.get(t.name) as ToolResult);
      log(`round ${r + 1}/${rounds}: ${order.map((t) => `${t.name} ${(results.get(t.name)?.first.at(-1) ?? 0).toFixed(2)}/${(results.get(t.name)?.noop.at(-1) ?? 0).toFixed(2)} s`).join(', ')}`);
    }
    log('executor alone (in-process, warm)');
    const executor = await timeExecutor(stack, context, work, rounds);
    log('Slipway no-op breakdown');
    const breakdown = await slipwayBreakdown(stack, context, ref(stack));

    const all = [...results.values(), executor];
    console.log(`\n## Builder benchmark (${rounds} rounds, medians; ratio = other tool's time / Slipway's, > 1 means Slipway is faster)\n`);
    console.log(resultTable(all, stack.fallbacks.length > 0));
    console.log(`\n### Where a Slipway no-op rebuild's time goes (medians of 3)\n`);
    console.log(breakdownTable(breakdown));
    if (stack.fallbacks.length) console.log(`\nNot wired yet, stood in for by the bench:\n${stack.fallbacks.map((f) => `- ${f}`).join('\n')}`);
    if (values.json) await writeFile(values.json, `${JSON.stringify({ rounds, fallbacks: stack.fallbacks, results: all, breakdown }, null, 2)}\n`);
  } finally {
    await cleanup.runAll();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench/builder: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
