/*
 * The contract between the builder's parts: the executor (Dockerfile → image
 * pushed to the registry) and the queue side (BullMQ worker, CLI, webhooks,
 * /api/builds), which calls `build()` for each job.
 */

/**
 * A build secret's bytes, as the client sent them (`slipway build --secret` reads the
 * file or variable on the client's machine). The server never resolves a path or a
 * variable a caller names; the worker holds the value in memory for the build only.
 */
export interface BuildSecret {
  id: string;
  value: Buffer;
}

/**
 * The id under which a git source's credentials (`user:password`, split off the
 * clone URL) travel with a build like its other secrets. Callers of the API cannot
 * name it: ids starting with `slipway.` are reserved.
 */
export const GIT_CREDENTIALS_SECRET = 'slipway.git-credentials';

export interface BuildRequest {
  /** Unique id of the build (the BullMQ job id). */
  id: string;
  /** Directory holding the build context, already extracted on this worker. */
  contextDir: string;
  /** Path of the Dockerfile relative to contextDir (default "Dockerfile"). */
  dockerfile: string;
  /** Full references to push to: `HOST:PORT/repo:tag`. At least one. */
  tags: string[];
  buildArgs: Record<string, string>;
  target?: string;
  noCache: boolean;
  /** `none` (default) or `host` (the builder's loopback reachable from RUN). */
  network: 'none' | 'host';
  secrets: BuildSecret[];
  labels: Record<string, string>;
}

export interface BuildStep {
  /** 1-based across the whole Dockerfile, as `docker build` numbers them. */
  index: number;
  stage: string;
  /** The instruction as written (continuations joined). */
  instruction: string;
  /** Line of the Dockerfile where the instruction starts. */
  line: number;
  status: 'planned' | 'cached' | 'running' | 'done' | 'failed' | 'skipped';
  /** Why it is cached or must run (e.g. "cache hit", "context file app.js changed", "--no-cache"). */
  reason: string;
  durationMs?: number;
  /** Digest of the layer it produced (compressed blob), when it made one. */
  layerDigest?: string;
}

export interface BuildResult {
  /** Digest of the pushed image manifest. */
  imageDigest: string;
  tags: string[];
  steps: BuildStep[];
  cacheHits: number;
  durationMs: number;
}

/** Where the executor reports progress; the queue side fans it out to followers. */
export interface BuildLogger {
  /** One line of build output (RUN stdout/stderr, plan lines, push progress). */
  line(text: string): void;
  /** A step changed status. */
  step(step: BuildStep): void;
}

/**
 * A failed build. `user` failures (a RUN that exits non-zero, a bad Dockerfile,
 * a missing COPY source) are not retried; `infrastructure` failures (registry
 * or runc unavailable, disk full) are retried with backoff by the queue.
 */
export class BuildError extends Error {
  constructor(
    message: string,
    readonly kind: 'user' | 'infrastructure',
    readonly detail: { exitCode?: number; line?: number; lastLines?: string[] } = {},
  ) {
    super(message);
  }
}

export interface BuildOptions {
  /** The worker's own directory (unpacked layers, cache mounts, scratch space). */
  workerRoot: string;
  signal?: AbortSignal;
  /** Redis connection for the cross-worker cache index, when the worker has one. */
  redisUrl?: string;
  /** Limits of every RUN step's cgroup; a field left out takes DEFAULT_BUILD_LIMITS' (builder/run.ts). */
  limits?: Partial<BuildLimits>;
  /**
   * ADD <url> may fetch from loopback, link-local and this worker's own addresses (refused
   * otherwise, unless the build runs with network=host). For tests and trusted setups.
   */
  allowLocalUrls?: boolean;
}

/** Limits of a RUN step; 0 means none. */
export interface BuildLimits {
  /** Bytes of memory (swap: as much again). */
  memory: number;
  /** Processes and threads. */
  pids: number;
  /** CPUs, as a CFS quota (0.5 = half of one). */
  cpus: number;
}

/** The executor's entry point, implemented in builder/executor.ts. */
export type BuildFunction = (req: BuildRequest, log: BuildLogger, opts: BuildOptions) => Promise<BuildResult>;
