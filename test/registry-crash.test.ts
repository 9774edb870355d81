import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { startRegistryProcess, tempDir } from './harness/registry.js';
import { http, makeImage, putManifest, sha256 } from './harness/http.js';

test('SIGKILL mid-upload, then restart: blobs and tags intact, the half upload invisible', async () => {
  const first = await startRegistryProcess();
  const repo = `crash/r${randomBytes(4).toString('hex')}`;
  const manifest = await makeImage(first.url, repo);
  const put = await putManifest(first.url, repo, 'stable', manifest);
  const manifestDigest = put.headers.get('docker-content-digest')!;

  const big = randomBytes(8 * 1024 * 1024);
  const bigDigest = sha256(big);
  const u = new URL(first.url);
  const socket = connect(Number(u.port), u.hostname);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  socket.on('error', () => undefined);
  socket.write(
    `POST /v2/${repo}/blobs/uploads/?digest=${bigDigest} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: ${big.length}\r\n\r\n`,
  );
  await new Promise<void>((resolve) => socket.write(big.subarray(0, 3 * 1024 * 1024), () => resolve()));
  await new Promise((r) => setTimeout(r, 300));
  await first.kill();
  socket.destroy();

  const second = await startRegistryProcess({ data: first.data });
  try {
    const tag = await http(`${second.url}/v2/${repo}/manifests/stable`);
    assert.equal(tag.status, 200);
    assert.equal(tag.headers.get('docker-content-digest'), manifestDigest);
    for (const d of [(manifest.config as { digest: string }).digest, ...(manifest.layers as { digest: string }[]).map((l) => l.digest)]) {
      assert.equal((await http(`${second.url}/v2/${repo}/blobs/${d}`, { method: 'HEAD' })).status, 200);
    }
    assert.equal((await http(`${second.url}/v2/${repo}/blobs/${bigDigest}`, { method: 'HEAD' })).status, 404);
    await second.assertIntegrity();
    const retry = await http(`${second.url}/v2/${repo}/blobs/uploads/?digest=${bigDigest}`, { method: 'POST', body: big });
    assert.equal(retry.status, 201, 'the client can push again after the crash');
    await second.assertIntegrity();
  } finally {
    await second.cleanup();
  }
});

test('SIGTERM stops the registry cleanly (exit 0)', async () => {
  const reg = await startRegistryProcess();
  await reg.stop();
  assert.equal(reg.child.exitCode, 0);
  await reg.cleanup();
});

test('configuration from a YAML file and SLIPWAY_* variables; flags win', async () => {
  const dir = await tempDir();
  const cfg = join(dir, 'slipway.yaml');
  await writeFile(cfg, 'deleteEnabled: false\nuploadMaxAge: 3600\n');
  const reg = await startRegistryProcess({ args: ['--config', cfg] });
  try {
    const repo = `cfg/r${randomBytes(4).toString('hex')}`;
    const m = await makeImage(reg.url, repo);
    await putManifest(reg.url, repo, 't', m);
    const del = await http(`${reg.url}/v2/${repo}/manifests/t`, { method: 'DELETE' });
    assert.equal(del.status, 405);
    assert.equal(del.code, 'UNSUPPORTED');
  } finally {
    await reg.cleanup();
  }
  const viaEnv = await startRegistryProcess({ env: { SLIPWAY_DELETE_ENABLED: 'false' } });
  try {
    const r = await http(`${viaEnv.url}/v2/x/blobs/${sha256('x')}`, { method: 'DELETE' });
    assert.equal(r.code, 'UNSUPPORTED');
  } finally {
    await viaEnv.cleanup();
  }
  const bad = startRegistryProcess({ env: { SLIPWAY_DELETE_ENABLED: 'perhaps' } });
  await assert.rejects(bad, /SLIPWAY_DELETE_ENABLED/);
});
