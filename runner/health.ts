/**
 * Health checks, with docker's semantics: the first probe runs one interval after start; a
 * probe that fails within the start period does not count, unless the container was already
 * healthy; `retries` consecutive failures make it unhealthy; the last five results are kept.
 * Unlike docker, an unhealthy container is handed to the restart policy (supervisor.ts).
 */
import type { HealthConfig, HealthResult, HealthState } from './model.js';

export const HEALTH_DEFAULTS = { Interval: 30e9, Timeout: 30e9, StartPeriod: 0, Retries: 3 } as const;
const KEEP_RESULTS = 5;
const MAX_OUTPUT = 4096;

export interface ProbeResult {
  exitCode: number;
  output: string;
}

/** Runs one probe inside the container; must resolve (exit code -1 when it could not run). */
export type Probe = (argv: string[], timeoutMs: number) => Promise<ProbeResult>;

/** argv of a test, or undefined when health checks are off. */
export function probeArgv(test: string[]): string[] | undefined {
  const [kind, ...rest] = test;
  if (kind === 'CMD' && rest.length) return rest;
  if (kind === 'CMD-SHELL' && rest.length) return ['/bin/sh', '-c', rest.join(' ')];
  return undefined;
}

/** The image's check, with the flags' test and timings laid over it. */
export function mergeHealth(image: Partial<HealthConfig> | undefined, flags: HealthConfig | undefined): HealthConfig | undefined {
  const test = flags?.Test.length ? flags.Test : image?.Test;
  if (!test?.length || test[0] === 'NONE') return flags?.Test[0] === 'NONE' ? flags : undefined;
  const pick = (k: 'Interval' | 'Timeout' | 'StartPeriod' | 'Retries') => flags?.[k] || image?.[k] || HEALTH_DEFAULTS[k];
  return { Test: test, Interval: pick('Interval'), Timeout: pick('Timeout'), StartPeriod: pick('StartPeriod'), Retries: pick('Retries') };
}

export class HealthChecker {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly startedAt = Date.now();
  readonly state: HealthState = { Status: 'starting', FailingStreak: 0, Log: [] };

  constructor(
    private readonly config: HealthConfig,
    private readonly argv: string[],
    private readonly probe: Probe,
    /** Called after every probe with the new state. */
    private readonly onChange: (state: HealthState) => void,
    /** Whether to skip this round (the container is paused). */
    private readonly skip: () => Promise<boolean>,
  ) {}

  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.round(), this.config.Interval / 1e6);
  }

  private async round(): Promise<void> {
    if (!(await this.skip())) await this.check();
    this.schedule();
  }

  private async check(): Promise<void> {
    const start = new Date().toISOString();
    const { exitCode, output } = await this.probe(this.argv, this.config.Timeout / 1e6);
    if (this.stopped) return;
    const result: HealthResult = { Start: start, End: new Date().toISOString(), ExitCode: exitCode, Output: output.slice(0, MAX_OUTPUT) };
    this.state.Log = [...this.state.Log, result].slice(-KEEP_RESULTS);
    if (exitCode === 0) {
      this.state.Status = 'healthy';
      this.state.FailingStreak = 0;
    } else {
      const inStartPeriod = Date.now() - this.startedAt < this.config.StartPeriod / 1e6;
      if (!inStartPeriod || this.state.Status === 'healthy') {
        this.state.FailingStreak++;
        if (this.state.FailingStreak >= this.config.Retries) this.state.Status = 'unhealthy';
      }
    }
    this.onChange({ ...this.state, Log: [...this.state.Log] });
  }
}
