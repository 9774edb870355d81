import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { collectGarbage, type GcOptions } from '../storage/index.js';
import { setGuardHooks } from '../storage/gc-guard.js';
import { http } from './harness/http.js';
import {
  imageProblems,
  newImage,
  newIndex,
  openLane,
  pushWhole,
  putImage,
  storeProblems,
  uploadBlob,
  type GcImage,
  type GcLane,
} from './harness/gc.js';

/*
 * #10 Every ordering of a push against a GC run, on both drivers. A GC run
 * pauses at one of its steps (gc-guard.ts, gc.ts: gc:begin … gc:deleted); a
 * push then runs until its k-th step (push:announced, push:protected,
 * push:checked, push:linked, push:ending of each upload and manifest PUT) or
 * until it waits for the GC; the GC finishes; the push finishes. Whatever the
 * ordering, the manifest PUT is either acknowledged and the image stays whole
 * — through another GC run, read from storage with nothing cached, and at the
 * end through a fresh registry process — or refused with 400
 * MANIFEST_BLOB_UNKNOWN, and pushing again then works. GC runs with grace 0
 * and no clock slack, deleting untagged manifests: the protocol alone protects.
 */
const GC_POINTS = ['none', 'gc:begin', 'gc:announced', 'gc:records', 'gc:scanned', 'gc:pruning', 'gc:pruned', 'gc:marked', 'gc:walked', 'gc:sweep', 'gc:intent', 'gc:decided', 'gc:deleted'];
const GC_OPTS: GcOptions = { gracePeriod: 0, clockSlack: 0, deleteUntagged: true };

/** Pauses one side at the first call that `stop` selects, until released; `blocked` when the side says it waits for the other. */
class Gate {
  private calls = 0;
  private free = false;
  private open!: () => void;
  private readonly released = new Promise<void>((r) => (this.open = r));
  reachedAt: string | null = null;
  readonly reached: Promise<void>;
  readonly blocked: Promise<void>;
  private onReached!: () => void;
  private onBlocked!: () => void;
  constructor(private readonly stop: (point: string, detail: string | undefined, n: number) => boolean) {
    this.reached = new Promise((r) => (this.onReached = r));
    this.blocked = new Promise((r) => (this.onBlocked = r));
  }
  at = async (point: string, detail?: string): Promise<void> => {
    if (point === 'push:waiting') return this.onBlocked();
    const n = this.calls++;
    if (this.free || this.reachedAt !== null || !this.stop(point, detail, n)) return;
    this.reachedAt = point;
    this.onReached();
    await this.released;
  };
  release(): void {
    this.free = true;
    this.open();
  }
}

interface Scenario {
  name: string;
  /** Whatever must be in storage before the GC run; returns the image the push will push. */
  setup(base: string, repo: string): Promise<GcImage>;
  /** The push as a client does it; returns the manifest PUT's reply. */
  push(base: string, img: GcImage): Promise<{ status: number; code?: string; body: Buffer }>;
}

const head = async (base: string, repo: string, digest: string): Promise<boolean> =>
  (await http(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status === 200;

/** Uploads the blobs a HEAD does not find (the client's skip), then PUTs the manifest. */
async function headThenPush(base: string, img: GcImage, byDigest = false) {
  for (const b of img.blobs) if (!(await head(base, img.repo, b.digest))) await uploadBlob(base, img.repo, b.bytes);
  return putImage(base, img, byDigest);
}

const SCENARIOS: Scenario[] = [
  {
    name: 'new blobs',
    setup: async (_base, repo) => newImage(repo, 'v1'),
    push: async (base, img) => {
      await uploadBlob(base, img.repo, img.blobs[0]!.bytes);
      await uploadBlob(base, img.repo, img.blobs[1]!.bytes, true);
      return putImage(base, img);
    },
  },
  {
    // A deleted image's layer, unreferenced and old: the client's HEAD finds it and skips the upload.
    name: 're-used blob after HEAD',
    setup: async (base, repo) => {
      const old = newImage(repo, 'old');
      await pushWhole(base, old);
      assert.equal((await http(`${base}/v2/${repo}/manifests/${old.digest}`, { method: 'DELETE' })).status, 202);
      return newImage(repo, 'v1', { layers: [old.blobs[1]!.bytes] });
    },
    push: (base, img) => headThenPush(base, img),
  },
  {
    // Blobs referenced by another tag; the manifest's own bytes are what is new: by digest first, then tagged.
    name: 'manifest',
    setup: async (base, repo) => {
      const other = newImage(repo, 'other');
      await pushWhole(base, other);
      return newImage(repo, 'v1', { config: other.blobs[0]!.bytes, layers: [other.blobs[1]!.bytes] });
    },
    push: async (base, img) => {
      const first = await putImage(base, img, true);
      if (first.status !== 201) return first;
      return putImage(base, img);
    },
  },
  {
    // The child was pushed by digest and left untagged: GC prunes it and sweeps its blobs unless the index protects them.
    name: 'index with a child',
    setup: async (base, repo) => {
      const child = newImage(repo, 'child');
      await pushWhole(base, child, true);
      return newIndex(repo, 'v1', [child]);
    },
    push: (base, img) => putImage(base, img),
  },
  {
    // Deleted by digest (manifest, tag and revision gone; bytes and blobs orphaned), then pushed again exactly.
    name: 'delete and re-push',
    setup: async (base, repo) => {
      const img = newImage(repo, 'v1');
      await pushWhole(base, img);
      assert.equal((await http(`${base}/v2/${repo}/manifests/${img.digest}`, { method: 'DELETE' })).status, 202);
      return img;
    },
    push: (base, img) => headThenPush(base, img),
  },
];

interface Outcome {
  scenario: string;
  gcPoint: string;
  pushStep: number;
  pausedAt: string | null;
  accepted: boolean;
  img: GcImage;
}

/** One ordering: GC paused at `gcPoint`, the push up to its `k`-th step, GC finishes, the push finishes. */
async function interleave(lane: GcLane, sc: Scenario, gcPoint: string, k: number, n: number): Promise<Outcome & { more: boolean }> {
  const slug = (x: string) => x.replace(/[^a-z]+/g, '-').replace(/^-|-$/g, '');
  const repo = `il/${slug(sc.name)}/${slug(gcPoint)}-${k}-${n}`;
  const img = await sc.setup(lane.base, repo);
  const interest = new Set([img, ...img.children].flatMap((i) => [i.digest, ...i.blobs.map((b) => b.digest)]));
  const gcGate = new Gate((point, detail) => point === gcPoint && (detail === undefined || interest.has(detail)));
  const pushGate = new Gate((_point, _detail, i) => i === k);
  const gc = collectGarbage(lane.other, { ...GC_OPTS, hooks: { at: gcGate.at } });
  await Promise.race([gcGate.reached, gc]);
  setGuardHooks(lane.driver, { at: pushGate.at });
  const push = sc.push(lane.base, img);
  await Promise.race([pushGate.reached, pushGate.blocked, push.catch(() => undefined)]);
  gcGate.release();
  await gc;
  pushGate.release();
  const reply = await push;
  setGuardHooks(lane.driver, undefined);
  const accepted = reply.status === 201;
  if (!accepted) {
    assert.equal(reply.status, 400, `${sc.name} @ ${gcPoint}/${k}: refused with ${reply.status} ${reply.body.toString()}`);
    assert.equal(reply.code, 'MANIFEST_BLOB_UNKNOWN');
    await pushWhole(lane.base, img); // the client pushes again, everything this time
  }
  // Orderings stop growing once the push no longer reaches step k, or the GC never came to its pause point (then it ran before the push).
  const more = pushGate.reachedAt !== null && gcGate.reachedAt !== null;
  return { scenario: sc.name, gcPoint, pushStep: k, pausedAt: pushGate.reachedAt, accepted, img, more };
}

function interleaveSuite(kind: 'filesystem' | 's3'): void {
  // Scenarios run side by side, each over its own storage (a directory, a bucket): orderings within one are sequential.
  describe(`#10 pushes against a GC run paused at each step, on ${kind}`, { concurrency: SCENARIOS.length }, () => {
    for (const sc of SCENARIOS) {
      test(`#10 ${sc.name}: every ordering against a GC run keeps the image whole or refuses the PUT (${kind})`, { timeout: 900_000 }, async () => {
        const lane = await openLane(kind);
        try {
          const outcomes: Outcome[] = [];
          let n = 0;
          for (const gcPoint of GC_POINTS) {
            for (let k = 0; ; k++) {
              const o = await interleave(lane, sc, gcPoint, k, n++);
              outcomes.push(o);
              // Another run, then storage read with nothing cached: what the first run left must hold.
              await collectGarbage(lane.other, GC_OPTS);
              const problems = await storeProblems(lane.other, o.img);
              assert.deepEqual(problems, [], `${sc.name}: GC paused at ${gcPoint}, push paused at step ${k} (${o.pausedAt}), ${o.accepted ? 'accepted' : 'refused, pushed again'}`);
              if (!o.more) break;
            }
          }
          // Every image every ordering left, through a fresh registry process.
          const fresh = await lane.fresh();
          try {
            const broken: string[] = [];
            for (const o of outcomes) broken.push(...(await imageProblems(fresh.url, o.img)));
            assert.deepEqual(broken, [], 'a fresh registry process serves every image whole');
          } finally {
            await fresh.stop();
          }
          const refused = outcomes.filter((o) => !o.accepted).length;
          console.log(`# ${kind} ${sc.name}: ${outcomes.length} orderings, ${refused} PUTs refused (then pushed again), 0 broken`);
        } finally {
          await lane.close();
        }
      });
    }
  });
}

interleaveSuite('filesystem');
interleaveSuite('s3');
