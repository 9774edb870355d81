import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadRegistryConfig } from '../cli/config.js';
import { startRegistry, type RegistryServerOptions, type RunningRegistry } from '../registry/index.js';
import { FilesystemDriver, checkIntegrity, createDriver, createStore, type FileWriter } from '../storage/index.js';
import { MT, http, makeImage, putManifest, rawPath, sha256 } from './harness/http.js';
import { CLI, tempDir } from './harness/registry.js';
import { eventually } from './harness/slow-patch.js';

/*
 * Hostile clients of the registry (issue 9): bodies that stall or trickle, bodies that
 * overrun what they declared, malformed percent-encoding, and data left readable to
 * other local users. The registry runs in this process with small body limits, so no
 * test waits for a production timeout.
 */

interface InProcess {
  reg: RunningRegistry;
  data: string;
  logs: unknown[];
  assertIntegrity(): Promise<void>;
  close(): Promise<void>;
}

const SMALL_LIMITS = { idleTimeoutMs: 300, minRate: 1024, rateGraceMs: 200, rateWindowMs: 400 };

/** A filesystem driver whose upload writers take their first chunk only after `stallMs`: storage that holds a body back. */
class StallingDriver extends FilesystemDriver {
  constructor(
    root: string,
    private readonly stallMs: number,
  ) {
    super(root);
  }
  override async writer(path: string, opts?: { append?: boolean }): Promise<FileWriter> {
    const writer = await super.writer(path, opts);
    if (!path.includes('/_uploads/')) return writer;
    const write = writer._write.bind(writer);
    let first = true;
    writer._write = (chunk, encoding, done) => {
      if (!first) return write(chunk, encoding, done);
      first = false;
      setTimeout(() => write(chunk, encoding, done), this.stallMs);
    };
    return writer;
  }
}

async function startInProcess(bodyLimits: object = SMALL_LIMITS, stallMs = 0): Promise<InProcess> {
  const data = await tempDir('slipway-hostile-');
  const logs: unknown[] = [];
  const driver = stallMs ? new StallingDriver(data, stallMs) : new FilesystemDriver(data);
  // A variable, not a literal: the options are checked structurally.
  const opts = { store: createStore(driver), host: '127.0.0.1', port: 0, bodyLimits, log: (err: unknown) => logs.push(err) };
  const reg = await startRegistry(opts as RegistryServerOptions);
  return {
    reg,
    data,
    logs,
    assertIntegrity: async () => {
      const report = await checkIntegrity(new FilesystemDriver(data));
      assert.deepEqual(report.problems, []);
    },
    close: async () => {
      await reg.close();
      await rm(data, { recursive: true, force: true });
    },
  };
}

/** One in-process registry (small limits) for the enclosing describe. */
function registryForSuite(): () => InProcess {
  let srv: InProcess | undefined;
  before(async () => {
    srv = await startInProcess();
  });
  after(async () => srv?.close());
  return () => srv!;
}

const repoName = () => `hostile/r${randomBytes(5).toString('hex')}`;

async function session(base: string, repo: string): Promise<string> {
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  assert.equal(post.status, 202);
  return `${base}${post.headers.get('location')}`;
}

/** The session's stored offset from GET status (`Range: 0-<last>`; 0-0 reads as 0, though one byte also reports it, as in distribution). */
async function offsetOf(loc: string): Promise<number> {
  const status = await http(loc);
  assert.equal(status.status, 204, `status of ${loc}: ${status.status} ${status.body.toString()}`);
  const m = /^0-(\d+)$/.exec(status.headers.get('range') ?? '');
  assert.ok(m, `Range header: ${status.headers.get('range')}`);
  return Number(m[1]) === 0 ? 0 : Number(m[1]) + 1;
}

async function dataSize(data: string, loc: string): Promise<number> {
  const u = new URL(loc);
  const m = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/.exec(u.pathname)!;
  return (await stat(join(data, 'v2/repositories', m[1]!, '_uploads', m[2]!, 'data'))).size;
}

/**
 * A raw client connection: what is sent goes out byte for byte; what comes back is
 * collected until the server closes (or resets) the connection.
 */
interface RawConnection {
  socket: Socket;
  /** Everything received so far. */
  received(): string;
  /** Writes, waiting for the socket to take the bytes; false when the connection is gone. */
  send(bytes: Buffer | string): Promise<boolean>;
  /** Resolves when the server has closed the connection (bounded). */
  closed(timeoutMs: number): Promise<{ error?: Error }>;
  /** Resolves when a whole response head has arrived (bounded); its status. */
  status(timeoutMs: number): Promise<number>;
}

async function rawConnection(base: string): Promise<RawConnection> {
  const u = new URL(base);
  const socket = connect(Number(u.port), u.hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let data = '';
  let error: Error | undefined;
  socket.on('data', (d: Buffer) => (data += d.toString('latin1')));
  socket.on('error', (err) => (error = err));
  const gone = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return {
    socket,
    received: () => data,
    send: (bytes) =>
      new Promise((resolve) => {
        if (socket.destroyed) return resolve(false);
        socket.write(bytes, (err) => resolve(!err));
      }),
    closed: async (timeoutMs) => {
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([gone.then(() => 'closed' as const), new Promise<'open'>((r) => (timer = setTimeout(() => r('open'), timeoutMs)))]);
      clearTimeout(timer);
      if (outcome === 'open') {
        socket.destroy();
        assert.fail(`the server kept the connection open for ${timeoutMs} ms; received: ${JSON.stringify(data.slice(0, 300))}`);
      }
      return { error };
    },
    status: (timeoutMs) =>
      eventually(
        'a response head',
        async () => {
          const m = /^HTTP\/1\.1 (\d{3})[^\r]*\r\n[\s\S]*?\r\n\r\n/.exec(data);
          if (m) return Number(m[1]);
          if (socket.destroyed) throw new Error(`connection closed without a response (${error?.message ?? 'no error'}); received ${JSON.stringify(data.slice(0, 200))}`);
          return undefined;
        },
        timeoutMs,
        20,
      ),
  };
}

const head = (lines: string[]): string => lines.join('\r\n') + '\r\n\r\n';

describe('#12 request bodies that stall or trickle', () => {
  const srv = registryForSuite();

  test('#12 five PATCHes that send 10 of 1 MiB and go idle are cut, and each session resumes from its stored offset', async () => {
    const repo = repoName();
    const blobs = Array.from({ length: 5 }, () => randomBytes(1024 * 1024));
    const locs = await Promise.all(blobs.map(() => session(srv().reg.url, repo)));
    const conns = await Promise.all(
      locs.map(async (loc, i) => {
        const conn = await rawConnection(srv().reg.url);
        const u = new URL(loc);
        await conn.send(head([`PATCH ${u.pathname} HTTP/1.1`, `Host: ${u.host}`, 'Content-Type: application/octet-stream', `Content-Length: ${blobs[i]!.length}`]));
        await conn.send(blobs[i]!.subarray(0, 10));
        return conn;
      }),
    );
    for (const conn of conns) {
      await conn.closed(15_000);
      // An idle client is told why before the connection closes.
      assert.match(conn.received(), /^HTTP\/1\.1 408 /);
      assert.match(conn.received(), /REQUEST_TIMEOUT/);
    }
    for (const [i, loc] of locs.entries()) {
      const bytes = blobs[i]!;
      const offset = await offsetOf(loc);
      assert.equal(offset, await dataSize(srv().data, loc), 'the status is what is on disk');
      assert.ok(offset <= 10, `offset ${offset}`);
      const rest = await http(loc, { method: 'PATCH', body: bytes.subarray(offset), headers: { 'Content-Range': `${offset}-${bytes.length - 1}` } });
      assert.equal(rest.status, 202, `resume: ${rest.status} ${rest.body.toString()}`);
      const put = await http(`${loc}?digest=${sha256(bytes)}`, { method: 'PUT' });
      assert.equal(put.status, 201);
    }
    await srv().assertIntegrity();
  });

  test('#12 a PATCH that trickles below the minimum rate is cut; its session is unlocked', async () => {
    const repo = repoName();
    const loc = await session(srv().reg.url, repo);
    const u = new URL(loc);
    const conn = await rawConnection(srv().reg.url);
    await conn.send(head([`PATCH ${u.pathname} HTTP/1.1`, `Host: ${u.host}`, `Content-Length: ${1024 * 1024}`]));
    // 16 bytes every 40 ms: never idle for 300 ms, but 400 B/s against a minimum of 1 KiB/s.
    const trickle = setInterval(() => void conn.send(randomBytes(16)), 40);
    try {
      await conn.closed(15_000);
    } finally {
      clearInterval(trickle);
    }
    const offset = await offsetOf(loc);
    const bytes = randomBytes(1000);
    const more = await http(loc, { method: 'PATCH', body: bytes, headers: { 'Content-Range': `${offset}-${offset + bytes.length - 1}` } });
    assert.equal(more.status, 202, 'the session is not left locked');
    await srv().assertIntegrity();
  });

  test('#12 every /v2/ body is guarded: monolithic POST, completing PUT, manifest PUT', async () => {
    const repo = repoName();
    const loc = new URL(await session(srv().reg.url, repo));
    const digest = sha256('whatever');
    const requests = [
      `POST /v2/${repo}/blobs/uploads/?digest=${digest} HTTP/1.1`,
      `PUT ${loc.pathname}?digest=${digest} HTTP/1.1`,
      `PUT /v2/${repo}/manifests/latest HTTP/1.1`,
    ];
    for (const line of requests) {
      const conn = await rawConnection(srv().reg.url);
      await conn.send(head([line, `Host: ${loc.host}`, 'Content-Type: application/vnd.oci.image.manifest.v1+json', 'Content-Length: 1000']));
      await conn.send('{"schema');
      await conn.closed(15_000);
      assert.match(conn.received(), /^HTTP\/1\.1 408 /, line);
    }
    // The completing PUT was cut: the session is still there, holding what arrived, and usable.
    const offset = await offsetOf(loc.href);
    const bytes = Buffer.concat([Buffer.from('{"schema').subarray(0, offset), randomBytes(2000)]);
    const put = await http(`${loc.href}?digest=${sha256(bytes)}`, {
      method: 'PUT',
      body: bytes.subarray(offset),
      headers: { 'Content-Range': `${offset}-${bytes.length - 1}` },
    });
    assert.equal(put.status, 201, `${put.status} ${put.body.toString()}`);
    assert.equal((await http(`${srv().reg.url}/v2/${repo}/manifests/latest`)).status, 404);
    await srv().assertIntegrity();
  });

  test('#12 a fast upload is never cut, even while storage holds it back for longer than the idle timeout', async () => {
    const stalling = await startInProcess(SMALL_LIMITS, 1500);
    try {
      const repo = repoName();
      const bytes = randomBytes(24 * 1024 * 1024);
      const loc = await session(stalling.reg.url, repo);
      const patch = await http(loc, { method: 'PATCH', body: bytes });
      assert.equal(patch.status, 202, patch.body.toString());
      assert.equal((await http(`${loc}?digest=${sha256(bytes)}`, { method: 'PUT' })).status, 201);
      const mono = randomBytes(8 * 1024 * 1024);
      assert.equal((await http(`${stalling.reg.url}/v2/${repo}/blobs/uploads/?digest=${sha256(mono)}`, { method: 'POST', body: mono })).status, 201);
      assert.deepEqual(stalling.logs, []);
    } finally {
      await stalling.close();
    }
  });

  test('#12 413 from a declared Content-Length before any body byte, then the idle connection is closed', async () => {
    const conn = await rawConnection(srv().reg.url);
    await conn.send(head([`PUT /v2/${repoName()}/manifests/latest HTTP/1.1`, 'Host: x', `Content-Type: ${MT.ociManifest}`, `Content-Length: ${100 * 1024 * 1024}`]));
    assert.equal(await conn.status(10_000), 413);
    assert.match(conn.received(), /MANIFEST_TOO_LARGE/);
    await conn.closed(15_000);
  });

  test('#12 body limits come from YAML keys and SLIPWAY_* variables', async () => {
    const dir = await tempDir();
    try {
      const file = join(dir, 'slipway.yaml');
      await writeFile(file, 'bodyIdleTimeout: 12\nbodyMinRate: 2048\n');
      const fromFile = loadRegistryConfig({ config: file }, {});
      assert.equal(fromFile.bodyIdleTimeout, 12);
      assert.equal(fromFile.bodyMinRate, 2048);
      const fromEnv = loadRegistryConfig({ config: file }, { SLIPWAY_BODY_IDLE_TIMEOUT: '0.5', SLIPWAY_BODY_RATE_GRACE: '3', SLIPWAY_BODY_RATE_WINDOW: '7' });
      assert.equal(fromEnv.bodyIdleTimeout, 0.5);
      assert.equal(fromEnv.bodyRateGrace, 3);
      assert.equal(fromEnv.bodyRateWindow, 7);
      const defaults = loadRegistryConfig({}, {});
      assert.deepEqual([defaults.bodyIdleTimeout, defaults.bodyMinRate, defaults.bodyRateGrace, defaults.bodyRateWindow], [30, 1024, 10, 20]);
      assert.throws(() => loadRegistryConfig({}, { SLIPWAY_BODY_MIN_RATE: 'fast' }), /SLIPWAY_BODY_MIN_RATE/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('#16 #17 #18 malformed requests', () => {
  const srv = registryForSuite();

  test('#16 malformed percent-encoding answers 400/404 with its OCI code and logs nothing', async () => {
    const repo = repoName();
    const upload = new URL(await session(srv().reg.url, repo)).pathname;
    const cases: [string, string, number, string][] = [
      ['GET', `/v2/${repo}/manifests/%ZZ`, 400, 'TAG_INVALID'],
      ['GET', `/v2/${repo}/manifests/%E0%A4%A`, 400, 'TAG_INVALID'],
      ['GET', `/v2/${repo}/manifests/%`, 400, 'TAG_INVALID'],
      ['HEAD', `/v2/${repo}/manifests/sha256%3A%ZZ`, 400, ''],
      ['DELETE', `/v2/${repo}/manifests/%E0%A4%A`, 400, 'TAG_INVALID'],
      ['GET', `/v2/${repo}/blobs/%ZZ`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/${repo}/blobs/uploads/%FF`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['PATCH', `/v2/${repo}/blobs/uploads/%FF`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['DELETE', `/v2/${repo}/blobs/uploads/${upload.split('/').pop()!.slice(0, 30)}%FF`, 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['GET', `/v2/${repo}/referrers/%`, 400, 'DIGEST_INVALID'],
      ['GET', '/v2/%ZZ/tags/list', 400, 'NAME_INVALID'],
      ['GET', `/v2/${repo}%/tags/list`, 400, 'NAME_INVALID'],
    ];
    for (const [method, path, status, code] of cases) {
      const r = await rawPath(srv().reg.url, method, path);
      assert.equal(r.status, status, `${method} ${path}: ${r.body}`);
      if (code) assert.equal((JSON.parse(r.body) as { errors: { code: string }[] }).errors[0]?.code, code, `${method} ${path}`);
    }
    assert.deepEqual(srv().logs, [], 'nothing logged');
  });

  test('#17 a chunked manifest over 4 MiB gets a readable 413 MANIFEST_TOO_LARGE, not a reset', async () => {
    for (const size of [5 * 1024 * 1024, 40 * 1024 * 1024]) {
      const conn = await rawConnection(srv().reg.url);
      await conn.send(head([`PUT /v2/${repoName()}/manifests/latest HTTP/1.1`, 'Host: x', `Content-Type: ${MT.ociManifest}`, 'Transfer-Encoding: chunked']));
      const piece = Buffer.alloc(64 * 1024, 0x20);
      for (let sent = 0; sent < size; sent += piece.length) {
        if (!(await conn.send(Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')])))) break;
        if (/\r\n\r\n/.test(conn.received())) break; // answered: a real client stops sending here
      }
      await conn.send('0\r\n\r\n');
      assert.equal(await conn.status(10_000), 413, `${size} bytes`);
      assert.match(conn.received(), /MANIFEST_TOO_LARGE/);
      conn.socket.destroy();
    }
    assert.deepEqual(srv().logs, []);
  });

  /** A PATCH or PUT with a chunked body (no Content-Length) and the given headers. */
  function chunked(url: string, method: string, headers: Record<string, string>, body: Buffer): Promise<{ status: number; code?: string; range?: string }> {
    return new Promise((resolve, reject) => {
      const req = request(url, { method, headers: { ...headers, 'Transfer-Encoding': 'chunked' }, agent: false }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => {
          let code: string | undefined;
          try {
            code = (JSON.parse(text) as { errors: { code: string }[] }).errors[0]?.code;
          } catch {
            code = undefined;
          }
          resolve({ status: res.statusCode ?? 0, code, range: res.headers.range });
        });
      });
      req.on('error', reject);
      req.write(body.subarray(0, 3));
      req.end(body.subarray(3));
    });
  }

  test('#18 a chunked PATCH longer or shorter than its Content-Range is refused whole; the session stays at its offset', async () => {
    const repo = repoName();
    const loc = await session(srv().reg.url, repo);
    const bytes = randomBytes(10);
    const over = await chunked(loc, 'PATCH', { 'Content-Range': '0-4' }, bytes);
    assert.equal(over.status, 416);
    assert.equal(over.code, 'RANGE_INVALID');
    assert.equal(await dataSize(srv().data, loc), 0, 'nothing of the chunk was stored');
    const under = await chunked(loc, 'PATCH', { 'Content-Range': '0-19' }, bytes);
    assert.equal(under.status, 416);
    assert.equal(await dataSize(srv().data, loc), 0);
    // The session is usable from offset 0.
    const good = await chunked(loc, 'PATCH', { 'Content-Range': '0-4' }, bytes.subarray(0, 5));
    assert.equal(good.status, 202);
    assert.equal(good.range, '0-4');
    const overLast = await chunked(`${loc}?digest=${sha256(bytes)}`, 'PUT', { 'Content-Range': '5-6' }, bytes.subarray(5));
    assert.equal(overLast.status, 416, 'a completing PUT is held to its range too');
    assert.equal(await dataSize(srv().data, loc), 5);
    assert.equal(overLast.range, '0-4');
    const last = await chunked(`${loc}?digest=${sha256(bytes)}`, 'PUT', { 'Content-Range': '5-9' }, bytes.subarray(5));
    assert.equal(last.status, 201);
    assert.ok((await http(`${srv().reg.url}/v2/${repo}/blobs/${sha256(bytes)}`)).body.equals(bytes));
    await srv().assertIntegrity();
  });
});

describe('#15 stored data is private whatever the umask', () => {
  /** Every directory and file below `root` (and root itself) with its permission bits. */
  async function modes(root: string): Promise<{ path: string; dir: boolean; mode: number }[]> {
    const out = [{ path: root, dir: true, mode: (await stat(root)).mode & 0o777 }];
    for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
      const path = join(entry.parentPath ?? entry.path, entry.name);
      out.push({ path, dir: entry.isDirectory(), mode: (await stat(path)).mode & 0o777 });
    }
    return out;
  }

  function assertPrivate(found: { path: string; dir: boolean; mode: number }[]): void {
    const loose = found.filter((f) => f.mode !== (f.dir ? 0o700 : 0o600)).map((f) => `${f.path} ${f.mode.toString(8)}`);
    assert.deepEqual(loose, [], 'directories 0700, files 0600');
    assert.ok(found.some((f) => !f.dir && f.path.endsWith('/data')), 'blobs were stored');
  }

  test('#15 a registry started under umask 000 stores blobs, uploads, links and manifests 0700/0600', async () => {
    const dir = await tempDir();
    await chmod(dir, 0o755);
    const data = join(dir, 'new', 'data');
    const child = spawn('sh', ['-c', `umask 000 && exec "${process.execPath}" "${CLI}" registry --listen 127.0.0.1:0 --data "${data}"`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      const url = await eventually('the registry to listen', async () => /listening on (http:\/\/\S+)/.exec(out)?.[1], 20_000, 50);
      const repo = repoName();
      const m = await makeImage(url, repo);
      assert.equal((await putManifest(url, repo, 'v1', m)).status, 201);
      const loc = await session(url, repo);
      assert.equal((await http(loc, { method: 'PATCH', body: randomBytes(5000) })).status, 202, 'an upload left in progress');
      const found = await modes(data);
      assert.ok(found.some((f) => f.path.includes('/_uploads/')), 'an upload session is on disk');
      assertPrivate(found);
      assert.equal((await stat(join(dir, 'new'))).mode & 0o777, 0o700, 'the parent the registry created too');
    } finally {
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('#15 an existing data directory with loose modes is tightened; contexts written through the driver are private', async () => {
    const dir = await tempDir();
    const data = join(dir, 'data');
    await mkdir(join(data, 'v2', 'blobs'), { recursive: true, mode: 0o755 });
    await chmod(data, 0o755);
    await chmod(join(data, 'v2'), 0o755);
    const previous = process.umask(0);
    try {
      const { driver } = await createDriver(data);
      const writer = await driver.writer('/slipway/contexts/c1.tar');
      writer.end(randomBytes(100));
      await writer.commit();
      await driver.putContent('/v2/repositories/a/_layers/sha256/ab/link', 'sha256:ab');
      await driver.putContent('/v2/blobs/sha256/ab/ab/data', 'x');
      assert.equal((await stat(data)).mode & 0o777, 0o700);
      const found = (await modes(data)).filter((f) => f.path !== join(data, 'v2', 'blobs'));
      assertPrivate(found);
    } finally {
      process.umask(previous);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
