/** A Dockerfile problem, named by file and line as `docker build` names it: `Dockerfile:7: …`. */
export class DockerfileError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly reason: string,
  ) {
    super(`${file}:${line}: ${reason}`);
    this.name = 'DockerfileError';
  }
}
