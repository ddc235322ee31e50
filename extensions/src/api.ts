// The server extension's REST routes and its 1 Hz WebSocket, as the sidebar and status bar use them.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

export interface IDevice {
  label: string | null;
  kind: string | null;
  utilization_pct: number | null;
  memory_pct: number | null;
}

export interface INode {
  name: string;
  url: string | null;
  accelerator: string | null;
  device_count: number | null;
  provider: string | null;
  instance_type?: string | null;
  state: string;
  price_per_hour: number | null;
  active_runs: string[];
  devices: IDevice[];
  // billing's (gaudi_nb/cost/billing.py): idle by its one rule, spend so far, $/h now
  idle: boolean;
  usd: number | null;
  usd_per_hour: number | null;
}

export interface IRun {
  run_id: string;
  name: string | null;
  status: string;
  target: string | null;
  accelerator: string | null;
  device_count: number | null;
  step: number;
  max_steps: number | null;
  loss: number | null;
  tokens_per_second: number | null;
  usd: number | null;
  price_per_hour: number | null;
  budget_usd: number | null;
  budget_left_usd: number | null;
  reason: string | null;
  can_stop?: boolean; // false: someone else's run on a team store (only its owner or an admin stops it)
  bad_lines: string | null; // lines of its events.jsonl kept aside (they broke the event contract)
}

export interface IWarning {
  kind: 'budget' | 'idle_node';
  message: string;
}

export interface ICosts {
  usd_per_hour: number;
  today_usd: number;
  unknown_prices: number;
  warnings: IWarning[];
}

export interface ISnapshot {
  type: 'snapshot';
  t: number;
  nodes: INode[];
  runs: IRun[];
  costs: ICosts;
  error?: string;
}

export const ACTIVE = ['pending', 'starting', 'running', 'stopping'];

/** A JSON request to <base_url>/gaudi-nb/<path>; a refused one throws with the server's message. */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gaudi-nb', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { message: text };
  }
  if (!response.ok) {
    throw new Error((body && body.message) || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

/**
 * The snapshot stream: one socket per page, reopened after a drop (the server restarting,
 * a laptop waking up), pausable, its interval changeable.
 */
export class Updates {
  constructor() {
    this._connect();
  }

  get changed(): ISignal<this, ISnapshot> {
    return this._changed;
  }

  get failed(): ISignal<this, string> {
    return this._failed;
  }

  get latest(): ISnapshot | null {
    return this._latest;
  }

  get paused(): boolean {
    return this._paused;
  }

  setPaused(paused: boolean): void {
    this._paused = paused;
    this._send({ paused });
  }

  setInterval(ms: number): void {
    this._intervalMs = ms;
    this._send({ interval_ms: ms });
  }

  dispose(): void {
    this._disposed = true;
    this._socket?.close();
  }

  private _send(message: object): void {
    if (this._socket && this._socket.readyState === WebSocket.OPEN) {
      this._socket.send(JSON.stringify(message));
    }
  }

  private _connect(): void {
    const settings = ServerConnection.makeSettings();
    let url = URLExt.join(settings.wsUrl, 'gaudi-nb', 'updates');
    if (settings.token) {
      url += `?token=${encodeURIComponent(settings.token)}`;
    }
    const socket = new WebSocket(url);
    this._socket = socket;
    socket.onopen = () => {
      this._retryMs = 1000;
      if (this._paused || this._intervalMs !== 1000) {
        this._send({ paused: this._paused, interval_ms: this._intervalMs });
      }
    };
    socket.onmessage = event => {
      const message = JSON.parse(event.data);
      if (message.type === 'snapshot') {
        this._latest = message as ISnapshot;
        this._changed.emit(this._latest);
      } else if (message.type === 'error') {
        this._failed.emit(message.message);
      }
    };
    socket.onclose = () => {
      if (this._disposed) {
        return;
      }
      // back off up to 30 s, so a server that is gone is not hammered
      window.setTimeout(() => this._connect(), this._retryMs);
      this._retryMs = Math.min(this._retryMs * 2, 30000);
    };
  }

  private _socket: WebSocket | null = null;
  private _latest: ISnapshot | null = null;
  private _paused = false;
  private _intervalMs = 1000;
  private _retryMs = 1000;
  private _disposed = false;
  private _changed = new Signal<this, ISnapshot>(this);
  private _failed = new Signal<this, string>(this);
}
