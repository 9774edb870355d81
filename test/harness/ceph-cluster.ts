import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/*
 * The pieces of the throw-away Ceph cluster behind test/harness/radosgw.ts:
 * its one configuration file, and how its daemons and tools are run and waited for.
 */
const READY_TIMEOUT_MS = 60_000;

/** A loopback port nothing listens on now (radosgw segfaults if its port is taken). */
export { freePort } from '../../builder/redis.js';

export function cephConf(dir: string, fsid: string, monPort: number, rgwPort: number): string {
  return `[global]
fsid = ${fsid}
mon_host = [v2:127.0.0.1:${monPort}]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_bind_msgr1 = false
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
ms_bind_port_min = 6800
ms_bind_port_max = 7300
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
mon_data_avail_crit = 1
paxos_propose_interval = 0.01
mon_tick_interval = 1
objecter_tick_interval = 0.5
run_dir = ${dir}/run
admin_socket = ${dir}/run/$name.asok
pid_file = ${dir}/run/$name.pid
log_file = ${dir}/log/$name.log
keyring = ${dir}/keyring
mon_data = ${dir}/mon/$name
osd_data = ${dir}/osd/$name
osd_objectstore = bluestore
bluestore_block_path = ${dir}/osd/$name.block
bluestore_block_size = 21474836480
bluestore_block_create = true
osd_memory_target = 939524096

[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:${rgwPort} tcp_nodelay=1
rgw_data = ${dir}/rgw
rgw_gc_obj_min_wait = 5
rgw_gc_processor_period = 5
rgw_gc_processor_max_time = 5
`;
}

/** Runs a ceph tool to completion; rejects with its output. */
export function run(bin: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((ok, fail) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) fail(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else ok(stdout);
    });
  });
}

/** Starts a daemon in the foreground, its output in DIR/log/NAME.out; says so if it dies on its own. */
export function daemon(dir: string, name: string, bin: string, args: string[]): ChildProcess {
  const out = openSync(join(dir, 'log', `${name}.out`), 'a');
  const child = spawn(bin, args, { stdio: ['ignore', out, out] });
  closeSync(out);
  child.once('exit', (code, signal) => {
    if (signal !== 'SIGKILL') process.stderr.write(`radosgw harness: ${bin} exited (${code ?? signal}); logs in ${dir}/log\n`);
  });
  return child;
}

export async function waitHttp(port: number, children: ChildProcess[], dir: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const dead = children.find((c) => c.exitCode !== null || c.signalCode !== null);
    if (dead) throw new Error(`${dead.spawnfile} exited (${dead.exitCode ?? dead.signalCode}) while the cluster started; logs in ${dir}/log`);
    const up = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) }).then(
      () => true,
      () => false,
    );
    if (up) return;
    await sleep(100);
  }
  throw new Error(`radosgw did not answer on 127.0.0.1:${port} within ${READY_TIMEOUT_MS / 1000}s; logs in ${dir}/log`);
}

