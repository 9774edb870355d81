/*
 * The argument grammars of single instructions: KEY=VALUE lists (ENV, LABEL), ARG
 * declarations, EXPOSE ports, HEALTHCHECK and its durations, and leading --flags.
 */
import { processWord, splitWords, type Lookup } from './expand.js';
import type { Flag, Node } from './parse.js';

export interface HealthcheckOp {
  test: string[];
  interval?: number;
  timeout?: number;
  startPeriod?: number;
  startInterval?: number;
  retries?: number;
}

/** What expanding a word needs. */
export interface ExpandContext {
  escape: string;
  lookup: Lookup;
}


/** `K=V K2="V 2"`, or the legacy `K V V…` (one pair, the rest of the line as the value). */
export function keyValues(node: Node, ctx: ExpandContext, fail: (reason: string) => never): [string, string][] {
  const word = (s: string) => processWord(s, ctx.lookup, ctx.escape);
  const raw = splitWords(node.args, ctx.escape);
  const first = raw[0]!;
  if (!first.includes('=')) {
    const value = node.args.slice(node.args.indexOf(first) + first.length).trim();
    if (value === '') fail(`${node.keyword} ${first} needs a value: ${node.keyword} NAME=VALUE`);
    return [[word(first), word(value)]];
  }
  return raw.map((w) => {
    const eq = w.indexOf('=');
    if (eq < 0) fail(`syntax error - can't find = in "${w}"; must be of the form: name=value`);
    const key = word(w.slice(0, eq));
    if (key === '') fail(`${node.keyword} names can not be blank`);
    return [key, word(w.slice(eq + 1))];
  });
}

export function argDecl(raw: string, word: (s: string) => string, fail: (reason: string) => never): { name: string; default?: string } {
  const eq = raw.indexOf('=');
  const name = eq < 0 ? raw : raw.slice(0, eq);
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) fail(`ARG: invalid name "${name}"`);
  return eq < 0 ? { name } : { name, default: word(raw.slice(eq + 1)) };
}

export function exposedPorts(spec: string, fail: (reason: string) => never): string[] {
  const m = /^(\d+)(?:-(\d+))?(?:\/(tcp|udp|sctp))?$/i.exec(spec);
  const lo = Number(m?.[1]);
  const hi = m?.[2] === undefined ? lo : Number(m[2]);
  if (!m || lo < 1 || hi > 65535 || hi < lo) return fail(`EXPOSE: invalid port "${spec}": expected PORT[/tcp|udp|sctp] or a range START-END`);
  const proto = (m[3] ?? 'tcp').toLowerCase();
  return Array.from({ length: hi - lo + 1 }, (_, k) => `${lo + k}/${proto}`);
}

export function healthcheck(node: Node, fail: (reason: string) => never): HealthcheckOp {
  const [head = '', ...rest] = node.args.split(/\s+/);
  if (head.toUpperCase() === 'NONE') {
    if (rest.length || node.flags.length) fail('HEALTHCHECK NONE takes no other arguments');
    return { test: ['NONE'] };
  }
  if (head.toUpperCase() !== 'CMD') fail('HEALTHCHECK: expected NONE or [OPTIONS] CMD command');
  const cmdText = node.args.slice(head.length).trim();
  if (cmdText === '') fail('HEALTHCHECK CMD requires a command');
  const json = cmdText.startsWith('[') ? safeJson(cmdText) : undefined;
  const test = json ? ['CMD', ...json] : ['CMD-SHELL', cmdText];
  const out: HealthcheckOp = { test };
  const duration = (name: string): number | undefined => {
    const v = flagValue(node.flags, name);
    if (v === undefined) return undefined;
    const ns = parseDuration(v);
    if (ns === undefined || (ns !== 0 && ns < 1e6)) fail(`HEALTHCHECK --${name}=${v}: expected a duration of at least 1ms, such as 30s or 1m30s`);
    return ns;
  };
  const set = <K extends keyof HealthcheckOp>(k: K, v: HealthcheckOp[K] | undefined) => v !== undefined && v !== 0 && (out[k] = v);
  set('interval', duration('interval'));
  set('timeout', duration('timeout'));
  set('startPeriod', duration('start-period'));
  set('startInterval', duration('start-interval'));
  const retries = flagValue(node.flags, 'retries');
  if (retries !== undefined) {
    if (!/^\d+$/.test(retries) || Number(retries) < 1) fail(`HEALTHCHECK --retries=${retries}: expected a positive integer`);
    out.retries = Number(retries);
  }
  return out;
}

function safeJson(text: string): string[] | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return Array.isArray(v) && v.every((s) => typeof s === 'string') ? (v as string[]) : undefined;
  } catch {
    return undefined;
  }
}

const UNITS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds; undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  if (text === '0') return 0;
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text) return undefined;
  return Math.round(parts.reduce((sum, p) => sum + Number(p[1]) * UNITS[p[2]!]!, 0));
}

export function flagValue(flags: Flag[], name: string): string | undefined {
  return flags.filter((f) => f.name === name).at(-1)?.value ?? (flags.some((f) => f.name === name) ? '' : undefined);
}

export function flagValues(flags: Flag[], name: string): string[] {
  return flags.filter((f) => f.name === name).map((f) => f.value ?? '');
}
