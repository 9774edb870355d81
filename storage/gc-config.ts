/*
 * Garbage collection settings, as the YAML file writes them:
 *
 *   gc:
 *     interval: 24h          scheduled GC in the registry process; 0 turns it off
 *     gracePeriod: 1h        unreferenced blobs (and untagged manifests) younger than this stay
 *     deleteUntagged: false  also delete manifests no tag reaches (after gracePeriod)
 *     retention:             first rule whose pattern matches a repository applies to it
 *       - repositories: "team/*"   glob: * within one path component, ** across, ? one character
 *         keepLast: 5              the 5 most recently pushed tags stay
 *         keepTags: "^v\\d+"       tags matching stay too
 *         untaggedAfter: 7d        manifests no tag reaches are deleted after this age
 *
 * Durations: a number of seconds, or a number with ms, s, m, h, d or w.
 */
export interface RetentionRule {
  repositories: string;
  keepLast?: number;
  keepTags?: string;
  /** ms */
  untaggedAfter?: number;
}

export interface GcSettings {
  /** ms between scheduled runs; 0: no schedule. */
  interval: number;
  /** ms */
  gracePeriod: number;
  deleteUntagged: boolean;
  retention: RetentionRule[];
}

export const GC_DEFAULTS: GcSettings = { interval: 24 * 3600_000, gracePeriod: 3600_000, deleteUntagged: false, retention: [] };

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3600_000, d: 86_400_000, w: 7 * 86_400_000 };

/** `90`, `1.5s`, `30m`, `7d` … into milliseconds. */
export function parseDuration(value: unknown, where: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value * 1000;
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/.exec(value) : null;
  if (!m) throw new Error(`${where}: ${JSON.stringify(value)} is not a duration (e.g. 90, 30s, 15m, 1h, 7d)`);
  return Number(m[1]) * UNITS[m[2] ?? 's']!;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseRule(raw: unknown, where: string): RetentionRule {
  if (!isObject(raw)) throw new Error(`${where}: a rule is an object with repositories and keepLast/keepTags/untaggedAfter`);
  const known = ['repositories', 'keepLast', 'keepTags', 'untaggedAfter'];
  for (const k of Object.keys(raw)) if (!known.includes(k)) throw new Error(`${where}: unknown setting ${k} (known: ${known.join(', ')})`);
  if (typeof raw.repositories !== 'string' || raw.repositories === '') throw new Error(`${where}.repositories: a glob such as "team/*" is required`);
  const rule: RetentionRule = { repositories: raw.repositories };
  if (raw.keepLast !== undefined) {
    const n = Number(raw.keepLast);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${where}.keepLast: ${JSON.stringify(raw.keepLast)} is not a non-negative integer`);
    rule.keepLast = n;
  }
  if (raw.keepTags !== undefined) {
    if (typeof raw.keepTags !== 'string') throw new Error(`${where}.keepTags: a regular expression string is required`);
    try {
      new RegExp(raw.keepTags);
    } catch (err) {
      throw new Error(`${where}.keepTags: ${(err as Error).message}`);
    }
    rule.keepTags = raw.keepTags;
  }
  if (raw.untaggedAfter !== undefined) rule.untaggedAfter = parseDuration(raw.untaggedAfter, `${where}.untaggedAfter`);
  return rule;
}

/** The `gc:` section of a config file (absent or null: defaults). */
export function parseGcSettings(raw: unknown, where = 'gc'): GcSettings {
  if (raw === undefined || raw === null) return { ...GC_DEFAULTS };
  if (!isObject(raw)) throw new Error(`${where}: expected a mapping with interval, gracePeriod, deleteUntagged, retention`);
  const known = ['interval', 'gracePeriod', 'deleteUntagged', 'retention'];
  for (const k of Object.keys(raw)) if (!known.includes(k)) throw new Error(`${where}: unknown setting ${k} (known: ${known.join(', ')})`);
  const out: GcSettings = { ...GC_DEFAULTS, retention: [] };
  if (raw.interval !== undefined) out.interval = parseDuration(raw.interval, `${where}.interval`);
  if (raw.gracePeriod !== undefined) out.gracePeriod = parseDuration(raw.gracePeriod, `${where}.gracePeriod`);
  if (raw.deleteUntagged !== undefined) {
    if (typeof raw.deleteUntagged !== 'boolean') throw new Error(`${where}.deleteUntagged: true or false`);
    out.deleteUntagged = raw.deleteUntagged;
  }
  if (raw.retention !== undefined) {
    if (!Array.isArray(raw.retention)) throw new Error(`${where}.retention: a list of rules`);
    out.retention = raw.retention.map((r, i) => parseRule(r, `${where}.retention[${i}]`));
  }
  return out;
}

/** `team/*` → a RegExp over whole repository names. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}
