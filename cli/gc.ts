import type { Command } from 'commander';
import type { GcReport } from '../storage/index.js';

interface GcFlags {
  data?: string;
  storage?: string;
  config?: string;
  dryRun?: boolean;
  deleteUntagged?: boolean;
  gracePeriod?: string;
  json?: boolean;
}

/** The report as lines: each deletion (or would-be deletion), then the totals. */
export function formatGcReport(report: GcReport): string[] {
  const verb = report.dryRun ? 'would delete' : 'deleted';
  const lines = [
    ...report.tagsDeleted.map((t) => `${verb} tag ${t}`),
    ...report.manifestsDeleted.map((m) => `${verb} manifest ${m}`),
    ...report.sweptBlobs.map((b) => `${verb} blob ${b.digest} (${b.size} bytes)`),
    ...report.skipped.map((p) => `skipped (changed while GC ran): ${p}`),
    ...report.problems.map((p) => `damage: ${p}`),
  ];
  const b = report.blobs;
  lines.push(
    `blobs: ${b.total} stored, ${b.marked} marked, ${b.swept} ${report.dryRun ? 'to sweep' : 'swept'}, ${b.keptYoung} unreferenced but kept (young or just referenced); ` +
      `${b.bytesFreed} bytes ${report.dryRun ? 'would be ' : ''}freed`,
    `${report.repositories} repositories, ${report.manifests} manifests marked; ${report.tagsDeleted.length} tags, ${report.manifestsDeleted.length} manifests, ` +
      `${report.linksPurged} links, ${report.uploadsPurged} upload sessions ${report.dryRun ? 'to delete' : 'deleted'}`,
    `${report.dryRun ? 'dry run, nothing deleted' : 'done'} in ${(report.durationMs / 1000).toFixed(1)} s` +
      (report.skipped.length ? `; ${report.skipped.length} changed while GC ran (harmless)` : '') +
      (report.problems.length ? `; found damage: ${report.problems.length} (see the damage: lines)` : ''),
  );
  return lines;
}

/**
 * `slipway gc`: one online GC run over the registry's storage (see storage/gc.ts);
 * registries may keep serving pushes and pulls meanwhile. Exit status 0 when it
 * ran (races with pushes, deletes or another GC that it skipped are harmless
 * and listed), 1 when it failed, 2 when it found damage: a revision or tag
 * whose manifest cannot be read, or a stored manifest naming a missing blob.
 */
export function registerGcCommand(program: Command): void {
  program
    .command('gc')
    .description('garbage-collect registry storage online: apply retention, then delete blobs no manifest references (pushes may go on)')
    .option('--data <dir>', 'storage directory (SLIPWAY_DATA; default ./.slipway/registry)')
    .option('--storage <spec>', 'storage, winning over --data: a directory, file:///dir or s3://HOST:PORT/BUCKET?… (SLIPWAY_STORAGE)')
    .option('--config <file>', "YAML configuration file; its storage and gc: settings apply (SLIPWAY_CONFIG)")
    .option('--dry-run', 'report what would be deleted, delete nothing')
    .option('--delete-untagged', 'also delete manifests no tag reaches, once older than the grace period')
    .option('--grace-period <duration>', 'keep unreferenced blobs younger than this, e.g. 30m (default gc.gracePeriod, else 1h)')
    .option('--json', 'print the report as JSON')
    .action(async (flags: GcFlags) => {
      // Loaded here, not at the top: client verbs start without the YAML parser and the store.
      const { loadRegistryConfig } = await import('./config.js');
      const cfg = loadRegistryConfig({ data: flags.data, storage: flags.storage, config: flags.config });
      const { collectGarbage, createDriver, createStore, parseDuration, parseGcSettings } = await import('../storage/index.js');
      const settings = parseGcSettings(cfg.gc, 'gc');
      const gracePeriod = flags.gracePeriod === undefined ? settings.gracePeriod : parseDuration(flags.gracePeriod, '--grace-period');
      const { driver, description } = await createDriver(cfg.storage || cfg.data);
      const report = await collectGarbage(createStore(driver), {
        gracePeriod,
        deleteUntagged: flags.deleteUntagged ?? settings.deleteUntagged,
        retention: settings.retention,
        dryRun: flags.dryRun ?? false,
        uploadMaxAge: cfg.uploadMaxAge * 1000,
      });
      if (flags.json) console.log(JSON.stringify(report, null, 2));
      else console.log([`slipway gc: ${description}`, ...formatGcReport(report)].join('\n'));
      if (report.problems.length) console.error(`slipway gc: found damage:\n${report.problems.map((p) => `  ${p}`).join('\n')}`);
      process.exitCode = report.problems.length ? 2 : 0;
    });
}
