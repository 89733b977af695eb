/**
 * A small QMP client (QEMU Machine Protocol over a unix socket) for the live
 * save: one command at a time, replies matched by id, events kept aside.
 * Every failure is a RamsnapError: QMP_CONNECT when the socket cannot be
 * reached or is not QMP, QMP_ERROR with QEMU's own message when QEMU
 * refuses a command, QMP_CLOSED when QEMU goes away, QMP_TIMEOUT.
 */
import net from 'node:net';
import { RamsnapError } from '../format/errors.js';

export type Json = Record<string, unknown>;

export class QmpError extends RamsnapError {
  constructor(
    code: string,
    message: string,
    /** QEMU's error class (GenericError, CommandNotFound, ...), when it sent one. */
    readonly errorClass?: string,
  ) {
    super(code, message);
  }
}

/** Longest wait for one reply: every command the save sends returns at once. */
const REPLY_TIMEOUT_MS = 30_000;
/** A greeting larger than this is not QMP. */
const MAX_LINE = 16 << 20;

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly waiting = new Map<string, { resolve: (m: Json) => void; reject: (e: Error) => void }>();
  private closedError: QmpError | undefined;
  readonly events: Json[] = [];

  private constructor(
    private readonly sock: net.Socket,
    readonly socketPath: string,
    /** QEMU's version from the greeting, e.g. { major: 10, minor: 0, micro: 2 }. */
    readonly version: { major: number; minor: number; micro: number },
  ) {}

  static async connect(socketPath: string, timeoutMs = 5000): Promise<QmpClient> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      const timer = setTimeout(() => s.destroy(new Error('no answer')), timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new QmpError('QMP_CONNECT', `cannot connect to QMP socket ${socketPath}: ${err.code ?? err.message}`));
      });
    });
    sock.setEncoding('utf8');
    let greeting: Json;
    try {
      greeting = await readGreeting(sock, timeoutMs);
    } catch (err) {
      sock.destroy();
      throw new QmpError('QMP_CONNECT', `${socketPath} is not a QMP socket: ${(err as Error).message}`);
    }
    const v = ((greeting.QMP as Json | undefined)?.version as Json | undefined)?.qemu as { major: number; minor: number; micro: number } | undefined;
    const client = new QmpClient(sock, socketPath, v ?? { major: 0, minor: 0, micro: 0 });
    sock.on('data', (d: string) => client.onData(d));
    sock.on('close', () => client.fail(new QmpError('QMP_CLOSED', 'QEMU closed the QMP connection')));
    sock.on('error', (err) => client.fail(new QmpError('QMP_CLOSED', `QMP connection failed: ${err.message}`)));
    await client.execute('qmp_capabilities');
    return client;
  }

  private onData(s: string): void {
    this.buffer += s;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Json;
      try {
        msg = JSON.parse(line) as Json;
      } catch {
        this.fail(new QmpError('QMP_CLOSED', `QEMU sent a line that is not JSON: ${line.slice(0, 80)}`));
        return;
      }
      if ('event' in msg) {
        this.events.push(msg);
        continue;
      }
      const id = typeof msg.id === 'string' ? msg.id : undefined;
      const w = id ? this.waiting.get(id) : undefined;
      if (id && w) {
        this.waiting.delete(id);
        w.resolve(msg);
      }
    }
    if (this.buffer.length > MAX_LINE) this.fail(new QmpError('QMP_CLOSED', 'QEMU sent a line longer than 16 MiB'));
  }

  private fail(err: QmpError): void {
    this.closedError ??= err;
    for (const w of this.waiting.values()) w.reject(this.closedError);
    this.waiting.clear();
    this.sock.destroy();
  }

  /** Runs a command and returns its `return` value; QEMU's refusal becomes QMP_ERROR with its message. */
  async execute<T = unknown>(command: string, args?: Json, timeoutMs = REPLY_TIMEOUT_MS): Promise<T> {
    if (this.closedError) throw this.closedError;
    const id = `ramsnap-${this.nextId++}`;
    const reply = new Promise<Json>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new QmpError('QMP_TIMEOUT', `QEMU did not answer ${command} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    const msg = await reply;
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      throw new QmpError('QMP_ERROR', `QEMU refused ${command}: ${e.desc ?? JSON.stringify(e)}`, e.class);
    }
    return msg.return as T;
  }

  /** An HMP command through QMP (human-monitor-command): its text output. */
  hmp(commandLine: string): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine });
  }

  close(): void {
    this.closedError ??= new QmpError('QMP_CLOSED', 'the QMP connection was closed');
    this.sock.destroy();
  }
}

function readGreeting(sock: net.Socket, timeoutMs: number): Promise<Json> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new Error('no greeting')), timeoutMs);
    const onData = (d: string): void => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_LINE) done(new Error('greeting too long'));
        return;
      }
      try {
        const msg = JSON.parse(buf.slice(0, nl)) as Json;
        if (!('QMP' in msg)) throw new Error('no QMP greeting');
        sock.unshift(buf.slice(nl + 1));
        done(undefined, msg);
      } catch (err) {
        done(err as Error);
      }
    };
    const onClose = (): void => done(new Error('closed before the greeting'));
    const done = (err?: Error, msg?: Json): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('close', onClose);
      if (err) reject(err);
      else resolve(msg as Json);
    };
    sock.on('data', onData);
    sock.on('close', onClose);
  });
}
