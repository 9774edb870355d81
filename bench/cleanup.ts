type Task = { label: string; run: () => Promise<void> };

/**
 * What the benchmark must undo (processes it started, directories it made), undone in reverse
 * order at the end, on an error, on SIGINT/SIGTERM, or when the overall deadline passes.
 */
export class Cleanup {
  private tasks: Task[] = [];
  private running: Promise<void> | undefined;

  constructor(
    private readonly last: () => Promise<void>,
    private readonly log: (line: string) => void,
  ) {}

  /** Registers `fn`; the returned function runs it now (once) and unregisters it. */
  add(label: string, fn: () => Promise<void>): () => Promise<void> {
    let done: Promise<void> | undefined;
    const task: Task = {
      label,
      run: () => {
        this.tasks = this.tasks.filter((t) => t !== task);
        done ??= fn();
        return done;
      },
    };
    this.tasks.push(task);
    return task.run;
  }

  runAll(): Promise<void> {
    this.running ??= (async () => {
      for (let task = this.tasks.at(-1); task; task = this.tasks.at(-1)) {
        await task.run().catch((err: unknown) => this.log(`cleanup of ${task?.label} failed: ${String(err)}`));
      }
      await this.last().catch((err: unknown) => this.log(`cleanup failed: ${String(err)}`));
    })();
    return this.running;
  }

  /** Cleans up and exits on SIGINT/SIGTERM, or when `deadlineMs` has passed. */
  onSignalsAndDeadline(deadlineMs: number): void {
    const stop = (why: string, code: number) => {
      this.log(`${why}: cleaning up`);
      void this.runAll().finally(() => process.exit(code));
    };
    process.once('SIGINT', () => stop('SIGINT', 130));
    process.once('SIGTERM', () => stop('SIGTERM', 143));
    setTimeout(() => stop(`deadline of ${deadlineMs / 60_000} min passed`, 1), deadlineMs).unref();
  }
}
