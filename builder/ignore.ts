/*
 * `.dockerignore`: docker's patterns (filepath.Match per component, `**`, `!` exceptions,
 * last match wins), through @balena/dockerignore. BuildKit's `<Dockerfile>.dockerignore`
 * beside the Dockerfile takes precedence over the context's `.dockerignore`.
 */
import { createRequire } from 'node:module';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type IgnoreFactory from '@balena/dockerignore';

const require = createRequire(import.meta.url);
const ignoreFactory = require('@balena/dockerignore') as typeof IgnoreFactory.default;

/** True when a context path (relative, `/`-separated) is excluded. */
export type IgnoreTest = (relPath: string) => boolean;

export function ignoreMatcher(patterns: string[]): IgnoreTest {
  const clean = patterns.map((p) => p.trim()).filter((p) => p !== '' && !p.startsWith('#'));
  if (clean.length === 0) return () => false;
  const ig = ignoreFactory().add(clean);
  return (rel) => rel !== '' && ig.ignores(rel);
}

/**
 * Reads the ignore patterns for `dockerfile` (relative to `contextDir`). `read` opens a
 * context file by its relative name; the worker passes one that stays inside the context.
 */
export async function loadIgnore(
  contextDir: string,
  dockerfile: string,
  read: (name: string) => Promise<string> = (name) => readFile(join(contextDir, name), 'utf8'),
): Promise<string[]> {
  const specific = await read(`${dockerfile}.dockerignore`).catch(() => undefined);
  const text = specific ?? (await read('.dockerignore').catch(() => ''));
  return text.split(/\r?\n/);
}
