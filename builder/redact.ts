/*
 * Credentials never reach a message, a log line or an API answer: every URL's
 * userinfo (`redis://:PW@host`, `https://user:token@host/repo.git`) is shown as
 * `***@`, and known secret values are masked wherever they appear.
 */

/** The URL without its password (and user): `redis://***@127.0.0.1:6379/0`. */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i, '$1***@');
}

/** Every URL with credentials inside `text`, redacted. */
export function redactUrls(text: string): string {
  return text.replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/@\s'"]*@/gi, '$1***@');
}

/** Splits a URL into the URL without userinfo and the userinfo (undefined when it has none). */
export function splitCredentials(url: string): { url: string; credentials?: { username: string; password: string } } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { url };
  }
  if (!parsed.username && !parsed.password) return { url };
  const credentials = { username: decodeURIComponent(parsed.username), password: decodeURIComponent(parsed.password) };
  parsed.username = '';
  parsed.password = '';
  return { url: parsed.toString(), credentials };
}

/**
 * Replaces every occurrence of the given secret values (and of each of their
 * lines of 4 characters or more, for multi-line secrets) with `****`.
 */
export function secretMasker(values: Iterable<string>): (text: string) => string {
  const needles = new Set<string>();
  for (const v of values) {
    if (v.length >= 4) needles.add(v);
    for (const line of v.split(/\r?\n/)) if (line.trim().length >= 4) needles.add(line.trim());
  }
  // Longest first, so a secret containing another is masked whole.
  const sorted = [...needles].sort((a, b) => b.length - a.length);
  if (sorted.length === 0) return (text) => text;
  return (text) => {
    let out = text;
    for (const n of sorted) if (out.includes(n)) out = out.split(n).join('****');
    return out;
  };
}
