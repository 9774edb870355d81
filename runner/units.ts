/** Docker's spellings of sizes, durations and signals, parsed the way docker parses them. */
import { constants } from 'node:os';

export class BadOptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BadOptionError';
  }
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 };

/** `16m`, `1.5g`, `512k`, `1024` (bytes): binary units, as docker's RAMInBytes. */
export function parseBytes(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtpb]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) throw new BadOptionError(`invalid size "${text}" for ${flag}: expected a number with an optional unit b, k, m, g, t (e.g. 512m)`);
  const bytes = Math.round(Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(bytes)) throw new BadOptionError(`size "${text}" for ${flag} is too large`);
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration (`1m30s`, `500ms`, `0`), in nanoseconds. */
export function parseDuration(text: string, flag: string): number {
  const bad = () => new BadOptionError(`invalid duration "${text}" for ${flag}: expected e.g. 30s, 1m30s, 500ms`);
  if (text === '0') return 0;
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) throw bad();
  return Math.round(parts.reduce((sum, p) => sum + Number(p[1]) * DURATION_UNITS[p[2]!]!, 0));
}

/** A non-negative integer option. */
export function parseCount(text: string, flag: string, opts: { min?: number; max?: number } = {}): number {
  const n = Number(text);
  if (!/^-?\d+$/.test(text.trim()) || !Number.isSafeInteger(n)) throw new BadOptionError(`invalid value "${text}" for ${flag}: expected an integer`);
  if (opts.min !== undefined && n < opts.min) throw new BadOptionError(`${flag} ${text} is below the minimum ${opts.min}`);
  if (opts.max !== undefined && n > opts.max) throw new BadOptionError(`${flag} ${text} is above the maximum ${opts.max}`);
  return n;
}

/** `TERM`, `SIGTERM`, `15` → `SIGTERM`. */
export function signalName(text: string): string {
  const upper = text.trim().toUpperCase();
  if (/^\d+$/.test(upper)) {
    const n = Number(upper);
    const found = Object.entries(constants.signals).find(([, v]) => v === n);
    if (!found) throw new BadOptionError(`unknown signal number ${text}`);
    return found[0];
  }
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
  if (!(name in constants.signals)) throw new BadOptionError(`unknown signal "${text}": expected a name like SIGTERM or a number`);
  return name;
}

export function signalNumber(name: string): number {
  return (constants.signals as Record<string, number>)[signalName(name)]!;
}

/** `KEY=VALUE` lines (docker's --env-file): blank lines and # comments skipped, `KEY` alone takes the caller's value. */
export function parseEnvLines(text: string, env: NodeJS.ProcessEnv): string[] {
  const out: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '').trimStart();
    if (line === '' || line.startsWith('#')) continue;
    out.push(...expandEnv(line, env));
  }
  return out;
}

/** `-e KEY=VALUE` as is; `-e KEY` takes KEY from the caller's environment, or is dropped when unset. */
export function expandEnv(entry: string, env: NodeJS.ProcessEnv): string[] {
  if (entry.includes('=')) {
    if (entry.startsWith('=')) throw new BadOptionError(`invalid environment variable "${entry}": the name is empty`);
    return [entry];
  }
  const value = env[entry];
  return value === undefined ? [] : [`${entry}=${value}`];
}

/** Later entries win, keeping the first position of each name (docker's merge of image and -e env). */
export function mergeEnv(...lists: string[][]): string[] {
  const byName = new Map<string, string>();
  for (const entry of lists.flat()) {
    const name = entry.split('=', 1)[0]!;
    byName.set(name, entry);
  }
  return [...byName.values()];
}
