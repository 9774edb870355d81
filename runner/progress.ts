/*
 * Pull progress: events the image store emits per layer, and a printer for a terminal.
 * On a TTY the printer redraws one line per layer in place (docker pull's look); otherwise
 * it prints one plain line per state change, so logs and CI output stay readable.
 */

export type LayerPhase =
  /** Queued behind the download limit. */
  | 'waiting'
  /** Bytes arriving; `current`/`total` count compressed bytes. */
  | 'downloading'
  /** Already unpacked on this node: not fetched again. */
  | 'exists'
  /** Another pull on this node is fetching the same layer; this one waits for it. */
  | 'shared'
  | 'done'
  | 'failed';

export interface PullProgress {
  /** The layer's blob digest. */
  digest: string;
  phase: LayerPhase;
  current: number;
  total: number;
}

export type ProgressListener = (event: PullProgress) => void;

export interface ProgressOutput {
  write(text: string): unknown;
  isTTY?: boolean;
}

const short = (digest: string): string => digest.replace(/^sha256:/, '').slice(0, 12);

function describe(e: PullProgress): string {
  switch (e.phase) {
    case 'downloading':
      return `downloading ${mib(e.current)}/${mib(e.total)}`;
    case 'exists':
      return 'already exists';
    case 'shared':
      return 'waiting for another pull of this layer';
    case 'done':
      return `pull complete (${mib(e.total)})`;
    default:
      return e.phase;
  }
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** A listener that prints progress to `out` (default stderr). Call `finish()` after the pull. */
export function progressPrinter(out: ProgressOutput = process.stderr): ProgressListener & { finish(): void } {
  return out.isTTY ? ttyPrinter(out) : linePrinter(out);
}

function linePrinter(out: ProgressOutput): ProgressListener & { finish(): void } {
  const last = new Map<string, LayerPhase>();
  const listener = (e: PullProgress): void => {
    if (last.get(e.digest) === e.phase) return;
    last.set(e.digest, e.phase);
    out.write(`${short(e.digest)}: ${describe(e)}\n`);
  };
  return Object.assign(listener, { finish: () => undefined });
}

const REDRAW_MS = 100;

function ttyPrinter(out: ProgressOutput): ProgressListener & { finish(): void } {
  const lines = new Map<string, string>();
  let drawn = 0;
  let lastDraw = 0;
  const draw = (): void => {
    const text = [...lines].map(([digest, line]) => `\x1b[2K${short(digest)}: ${line}\n`).join('');
    out.write((drawn ? `\x1b[${drawn}A` : '') + text);
    drawn = lines.size;
    lastDraw = Date.now();
  };
  const listener = (e: PullProgress): void => {
    lines.set(e.digest, describe(e));
    if (e.phase !== 'downloading' || Date.now() - lastDraw >= REDRAW_MS) draw();
  };
  return Object.assign(listener, { finish: draw });
}
