import { finished, type Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FileWriter } from './driver.js';

/**
 * Streams a request body through `through` (a meter, a hash) into `writer`
 * and commits it. The body stays out of the pipeline: on an error it is
 * unpiped, never destroyed, so an HTTP caller can still answer on its
 * connection (and then drain or close it). A body that fails or closes before
 * its end fails the write. On an error the writer is destroyed and closed
 * before this rejects; whether to cancel (take back its bytes) is the caller's call.
 */
export async function writeFromBody(body: Readable, through: Transform, writer: FileWriter, signal?: AbortSignal): Promise<void> {
  // pipe() alone would leave the write waiting on a body that was cut off.
  const stopWatching = finished(body, (err) => err && through.destroy(err));
  body.pipe(through);
  try {
    await pipeline(through, writer, { signal });
    await writer.commit();
  } catch (err) {
    body.unpipe(through);
    writer.destroy();
    if (!writer.closed) await new Promise((resolve) => writer.once('close', resolve));
    throw err;
  } finally {
    stopWatching();
  }
}
