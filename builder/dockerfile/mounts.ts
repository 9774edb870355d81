/*
 * `RUN --mount=…` specifications (BuildKit's syntax): comma-separated key=value pairs.
 *   type=cache   a directory kept per worker across builds (never in a layer)
 *   type=secret  a build secret as a file (default /run/secrets/<id>) or an env variable
 *   type=tmpfs   an empty tmpfs
 *   type=bind    a read-only view of the context (or of a stage with from=)
 */
export type MountSpec =
  | { type: 'cache'; target: string; id: string; sharing: 'shared' | 'private' | 'locked'; readonly: boolean; mode: number; uid: number; gid: number }
  | { type: 'secret'; id: string; target?: string; env?: string; required: boolean; mode: number; uid: number; gid: number }
  | { type: 'tmpfs'; target: string; size?: number }
  | { type: 'bind'; target: string; source: string; from?: string; readwrite: boolean };

const KEYS: Record<string, string[]> = {
  cache: ['target', 'id', 'sharing', 'readonly', 'mode', 'uid', 'gid', 'from', 'source'],
  secret: ['target', 'id', 'env', 'required', 'mode', 'uid', 'gid'],
  tmpfs: ['target', 'size'],
  bind: ['target', 'source', 'from', 'readwrite'],
};
const ALIASES: Record<string, string> = { dst: 'target', destination: 'target', src: 'source', ro: 'readonly', rw: 'readwrite' };

export function parseMount(spec: string): MountSpec {
  const fields = new Map<string, string>();
  for (const part of splitCsv(spec)) {
    const eq = part.indexOf('=');
    const rawKey = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
    const key = ALIASES[rawKey] ?? rawKey;
    fields.set(key, eq < 0 ? 'true' : part.slice(eq + 1));
  }
  const type = fields.get('type') ?? 'bind';
  fields.delete('type');
  const allowed = KEYS[type];
  if (!allowed) throw new Error(`mount type "${type}" is not supported (cache, secret, tmpfs, bind)`);
  for (const k of fields.keys()) if (!allowed.includes(k)) throw new Error(`unknown key "${k}" for a ${type} mount`);
  const target = fields.get('target');
  const bool = (k: string, dflt: boolean) => (fields.has(k) ? fields.get(k) !== 'false' : dflt);
  const num = (k: string, dflt: number, base = 10) => {
    const v = fields.get(k);
    if (v === undefined) return dflt;
    const n = parseInt(v, base);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new Error(`${k}=${v} is not a number`);
    return n;
  };
  if (type === 'secret') {
    const id = fields.get('id') ?? (target ? target.split('/').filter(Boolean).at(-1) : undefined);
    if (!id) throw new Error('a secret mount needs id= (or target=)');
    const env = fields.get('env');
    return { type, id, ...(target ? { target } : {}), ...(env ? { env } : {}), required: bool('required', false), mode: num('mode', 0o400, 8), uid: num('uid', 0), gid: num('gid', 0) };
  }
  if (!target || !target.startsWith('/')) throw new Error('target= must be an absolute path');
  if (type === 'cache') {
    const sharing = fields.get('sharing') ?? 'shared';
    if (sharing !== 'shared' && sharing !== 'private' && sharing !== 'locked') throw new Error(`sharing=${sharing}: expected shared, private or locked`);
    if (fields.has('from') || fields.has('source')) throw new Error('cache mounts seeded from= a stage are not supported');
    return { type, target, id: fields.get('id') ?? target, sharing, readonly: bool('readonly', false), mode: num('mode', 0o755, 8), uid: num('uid', 0), gid: num('gid', 0) };
  }
  if (type === 'tmpfs') {
    const size = fields.get('size');
    return { type, target, ...(size ? { size: num('size', 0) } : {}) };
  }
  const from = fields.get('from');
  return { type: 'bind', target, source: fields.get('source') ?? '/', ...(from ? { from } : {}), readwrite: bool('readwrite', false) };
}

/** Splits on commas outside double quotes, dropping the quotes. */
function splitCsv(text: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const c of text) {
    if (c === '"') quoted = !quoted;
    else if (c === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out.filter((p) => p !== '');
}
