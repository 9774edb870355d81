/*
 * Secrets at rest: values the server must keep (webhook secrets of triggers, a
 * build's secrets while it waits for a worker) are sealed with AES-256-GCM under
 * the installation's key, which lives in a file of its own (0600, directory 0700),
 * never in Redis or in the registry's storage, so neither a reader of Redis nor
 * a reader of the storage learns them.
 *
 * Sealed form: "sealed:v1:<iv>:<ciphertext>:<tag>" (base64url parts). The `aad`
 * binds a sealed value to what it belongs to (a trigger's field, a build id), so
 * one cannot be moved onto another.
 *
 * Key file: SLIPWAY_SECRETS_KEY_FILE, else `<state>/secrets.key` (./.slipway by
 * default; `slipway up --state DIR` uses DIR). Every registry instance that serves
 * /hooks/git or /api/builds and every `slipway trigger` caller must use the same file.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

export const SECRETS_KEY_ENV = 'SLIPWAY_SECRETS_KEY_FILE';
const PREFIX = 'sealed:v1:';

/** The key file to use: the variable, else `<stateDir>/secrets.key`. */
export function secretsKeyFile(stateDir = './.slipway'): string {
  return resolve(process.env[SECRETS_KEY_ENV] || `${stateDir}/secrets.key`);
}

/** Reads the 32-byte key (hex in the file); creates it, private, when it does not exist yet. */
export async function loadSecretsKey(file: string): Promise<Buffer> {
  const existing = await readKey(file);
  if (existing) return existing;
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  try {
    // O_EXCL: two processes starting at once end up with the one key the first wrote.
    const handle = await open(file, 'wx', 0o600);
    await handle.writeFile(`${key.toString('hex')}\n`);
    await handle.close();
    await chmod(file, 0o600);
    return key;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const raced = await readKey(file);
    if (!raced) throw new Error(`secrets key file ${file} is empty or malformed`);
    return raced;
  }
}

async function readKey(file: string): Promise<Buffer | null> {
  const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw err;
  });
  if (text === null) return null;
  const hex = text.trim();
  if (!/^[0-9a-f]{64}$/i.test(hex)) throw new Error(`secrets key file ${file} does not hold a 32-byte hex key`);
  return Buffer.from(hex, 'hex');
}

export const isSealed = (value: string): boolean => value.startsWith(PREFIX);

export function seal(key: Buffer, plaintext: Buffer | string, aad: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad));
  const body = Buffer.concat([cipher.update(typeof plaintext === 'string' ? Buffer.from(plaintext) : plaintext), cipher.final()]);
  return `${PREFIX}${iv.toString('base64url')}:${body.toString('base64url')}:${cipher.getAuthTag().toString('base64url')}`;
}

export class SealError extends Error {}

/** The plaintext; SealError when the value was not sealed under this key for this `aad`. */
export function unseal(key: Buffer, sealed: string, aad: string): Buffer {
  if (!isSealed(sealed)) throw new SealError('not a sealed value');
  const [iv, body, tag] = sealed.slice(PREFIX.length).split(':');
  if (!iv || body === undefined || !tag) throw new SealError('malformed sealed value');
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
    decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]);
  } catch {
    throw new SealError('sealed value does not open with this key (another installation\'s key, or tampered)');
  }
}
