import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

/** Source root: dist/test/unit/ → the repository. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const SUBSYSTEMS = ['storage', 'registry', 'builder', 'runner', 'dashboard', 'cli'];
/** Which subsystem may import which (STYLE.md: storage ← registry ← builder; runner; cli on top). */
const ALLOWED: Record<string, string[]> = {
  storage: [],
  registry: ['storage'],
  builder: ['storage', 'registry', 'runner'],
  runner: ['storage'],
  dashboard: ['storage', 'registry', 'builder', 'runner'],
  cli: ['storage', 'registry', 'builder', 'runner', 'dashboard'],
};

/**
 * A subsystem's doors: index.ts, and client.ts where a light client entry keeps
 * a CLI verb from loading its servers' dependencies (builder/client.ts).
 */
const DOORS = ['index.ts', 'client.ts'];

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...sources(full));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(full);
  }
  return out;
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*['"](\.[^'"]+)['"]/g)].map((m) => resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts')));
}

const files = SUBSYSTEMS.flatMap((s) => {
  try {
    return sources(join(ROOT, s));
  } catch {
    return [];
  }
});

test('subsystems import each other only through index.ts, in the allowed direction', () => {
  const problems: string[] = [];
  for (const file of files) {
    const own = relative(ROOT, file).split('/')[0]!;
    for (const target of imports(file)) {
      const other = relative(ROOT, target).split('/')[0]!;
      if (other === own || !SUBSYSTEMS.includes(other)) continue;
      if (!ALLOWED[own]!.includes(other)) problems.push(`${relative(ROOT, file)} imports ${other}/, which ${own}/ may not use`);
      if (!DOORS.includes(relative(ROOT, target).slice(other.length + 1)) || !relative(ROOT, target).startsWith(`${other}/`)) problems.push(`${relative(ROOT, file)} reaches past ${other}/index.ts: ${relative(ROOT, target)}`);
    }
  }
  assert.ok(files.length > 10, 'the sources were found');
  assert.deepEqual(problems, []);
});

test('no import cycles between modules', () => {
  const graph = new Map(files.map((f) => [f, imports(f).filter((t) => files.includes(t))]));
  const state = new Map<string, 'visiting' | 'done'>();
  const cycles: string[] = [];
  const visit = (f: string, path: string[]): void => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'visiting') {
      cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(ROOT, p)).join(' → '));
      return;
    }
    state.set(f, 'visiting');
    for (const t of graph.get(f) ?? []) visit(t, [...path, f]);
    state.set(f, 'done');
  };
  for (const f of files) visit(f, []);
  assert.deepEqual(cycles, []);
});
