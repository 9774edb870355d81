import { execFile, spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/*
 * Git for the webhook tests: a command runner, `git` in a work tree, and git's
 * smart HTTP protocol on loopback behind Basic auth (a Node server in front of
 * `git http-backend`, CGI), as a private repository host is. Every HTTP request
 * is counted with the credentials it came with, so a test can tell the clone
 * really had to authenticate.
 */

/** Runs a command (30 s at most); never rejects. */
export const run = (cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((ok) =>
    execFile(cmd, args, { ...opts, env: { ...process.env, ...opts.env }, timeout: 30_000 }, (err, stdout, stderr) =>
      ok({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );

/** `git ARGS` in `cwd` with a committer set; its stdout, trimmed. */
export async function git(cwd: string, ...args: string[]): Promise<string> {
  const r = await run('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...args], { cwd });
  if (r.code !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}
export interface GitHttpServer {
  /** `http://127.0.0.1:PORT/<path>`, no credentials in it. */
  url(path: string): string;
  /** One entry per request: its path and whether it carried the right credentials. */
  requests: { path: string; authorized: boolean }[];
  close(): Promise<void>;
}

export async function serveGitHttp(root: string, credentials: { username: string; password: string }): Promise<GitHttpServer> {
  const expected = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
  const requests: GitHttpServer['requests'] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const authorized = req.headers.authorization === expected;
    requests.push({ path: url.pathname, authorized });
    if (!authorized) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="git"' }).end();
      return;
    }
    backend(root, url, credentials.username, req, res);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', () => ok()));
  const { port } = server.address() as AddressInfo;
  return {
    url: (path) => `http://127.0.0.1:${port}/${path}`,
    requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Runs `git http-backend` for one request: CGI variables in, `Status:` and headers out. */
function backend(root: string, url: URL, user: string, req: IncomingMessage, res: ServerResponse): void {
  const header = (name: string) => String(req.headers[name] ?? '');
  const cgi = spawn('git', ['http-backend'], {
    env: {
      PATH: process.env.PATH,
      GIT_PROJECT_ROOT: root,
      GIT_HTTP_EXPORT_ALL: '1',
      REQUEST_METHOD: req.method ?? 'GET',
      PATH_INFO: decodeURIComponent(url.pathname),
      QUERY_STRING: url.search.slice(1),
      CONTENT_TYPE: header('content-type'),
      HTTP_CONTENT_ENCODING: header('content-encoding'),
      GIT_PROTOCOL: header('git-protocol'),
      REMOTE_USER: user,
      REMOTE_ADDR: '127.0.0.1',
    },
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  req.pipe(cgi.stdin);
  let head: Buffer | null = Buffer.alloc(0);
  cgi.stdout.on('data', (chunk: Buffer) => {
    if (!head) return void res.write(chunk);
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) return;
    let status = 200;
    for (const line of head.subarray(0, end).toString().split('\r\n')) {
      const colon = line.indexOf(':');
      const [name, value] = [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
      if (name.toLowerCase() === 'status') status = Number.parseInt(value, 10);
      else res.setHeader(name, value);
    }
    res.writeHead(status);
    res.write(head.subarray(end + 4));
    head = null;
  });
  cgi.stdout.on('end', () => res.end());
  cgi.on('error', (err) => res.destroy(err));
}
