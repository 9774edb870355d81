import { rm } from 'node:fs/promises';
import { FilesystemDriver } from '../storage/index.js';
import { tempDir } from './harness/registry.js';
import { driverSuite } from './storage/driver-suite.js';

driverSuite('filesystem', async () => {
  const dir = await tempDir('slipway-fs-');
  return { driver: new FilesystemDriver(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});
