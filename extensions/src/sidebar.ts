// The Gaudi sidebar: nodes with a utilization bar per device, active and recent runs, a Stop button per run.
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ACTIVE, INode, IRun, ISnapshot, Updates } from './api';
import { el, loss, percent, perHour, rate, usd } from './format';

export interface ISidebarActions {
  watch(run: IRun): void;
  stop(run: IRun): void;
  attach(): void;
  launcher(): void;
}

export class GaudiSidebar extends Widget {
  constructor(updates: Updates, actions: ISidebarActions) {
    super();
    this._updates = updates;
    this._actions = actions;
    this.addClass('gaudi-nb-sidebar');
    this.title.caption = 'Gaudi: nodes, runs and money';

    const header = el('div', 'gaudi-nb-header');
    header.appendChild(el('span', 'gaudi-nb-title', 'Gaudi'));
    this._pause = el('button', 'gaudi-nb-link gaudi-nb-pause', 'Pause');
    this._pause.title = 'Stop the live updates (or resume them)';
    this._pause.onclick = () => {
      updates.setPaused(!updates.paused);
      this._pause.textContent = updates.paused ? 'Resume' : 'Pause';
      this._pause.dataset.paused = String(updates.paused);
    };
    header.appendChild(this._pause);
    this.node.appendChild(header);

    this._message = el('div', 'gaudi-nb-message', 'Connecting to the server…');
    this.node.appendChild(this._message);
    this._empty = this._emptyState();
    this.node.appendChild(this._empty);

    this._nodesSection = el('section', 'gaudi-nb-section gaudi-nb-nodes');
    this._nodesSection.appendChild(el('h3', 'gaudi-nb-heading', 'Nodes'));
    this._nodesList = el('div', 'gaudi-nb-list');
    this._nodesSection.appendChild(this._nodesList);
    this.node.appendChild(this._nodesSection);

    this._runsSection = el('section', 'gaudi-nb-section gaudi-nb-runs');
    this._activeHeading = el('h3', 'gaudi-nb-heading', 'Active runs');
    this._activeList = el('div', 'gaudi-nb-list');
    this._recentHeading = el('h3', 'gaudi-nb-heading', 'Recent runs');
    this._recentList = el('div', 'gaudi-nb-list');
    for (const child of [this._activeHeading, this._activeList, this._recentHeading, this._recentList]) {
      this._runsSection.appendChild(child);
    }
    this.node.appendChild(this._runsSection);

    updates.changed.connect((_, snapshot) => this._render(snapshot), this);
    updates.failed.connect((_, message) => this._show(`The server could not read the run store: ${message}`), this);
    this._empty.hidden = this._nodesSection.hidden = this._runsSection.hidden = true;
    if (updates.latest) {
      this._render(updates.latest);
    }
  }

  dispose(): void {
    Signal.clearData(this);
    super.dispose();
  }

  private _show(message: string): void {
    this._message.textContent = message;
    this._message.hidden = !message;
  }

  private _emptyState(): HTMLElement {
    const box = el('div', 'gaudi-nb-empty');
    box.appendChild(el('p', 'gaudi-nb-empty-title', 'No nodes and no runs yet.'));
    box.appendChild(el('p', '', 'Attach a Gaudi node over SSH:'));
    box.appendChild(el('code', '', '%gaudi_attach ssh://user@host'));
    const attach = el('button', 'jp-Button jp-mod-styled jp-mod-accept', 'Attach a node…');
    attach.onclick = () => this._actions.attach();
    box.appendChild(attach);
    box.appendChild(el('p', '', 'Or start a run on this machine, in a notebook:'));
    box.appendChild(el('code', '', '%load_ext gaudi_nb\n%gaudi_train --max-steps 30'));
    const launcher = el('button', 'jp-Button jp-mod-styled', 'Open the launcher');
    launcher.onclick = () => this._actions.launcher();
    box.appendChild(launcher);
    return box;
  }

  private _render(snapshot: ISnapshot): void {
    // the numbers shown are the last good read; say why they may be behind
    this._show(snapshot.error ? `Last read failed: ${snapshot.error}` : '');
    const nothing = snapshot.nodes.length === 0 && snapshot.runs.length === 0;
    this._empty.hidden = !nothing;
    this._nodesSection.hidden = snapshot.nodes.length === 0;
    this._runsSection.hidden = snapshot.runs.length === 0;
    this._renderNodes(snapshot.nodes);
    const active = snapshot.runs.filter(run => ACTIVE.includes(run.status));
    const recent = snapshot.runs.filter(run => !ACTIVE.includes(run.status));
    this._activeHeading.hidden = active.length === 0;
    this._recentHeading.hidden = recent.length === 0;
    this._renderRuns(this._activeList, active);
    this._renderRuns(this._recentList, recent.slice(0, 10));
  }

  private _renderNodes(nodes: INode[]): void {
    // nothing to click in a node: redrawn whole
    this._nodesList.replaceChildren(...nodes.map(node => this._nodeRow(node)));
  }

  private _nodeRow(node: INode): HTMLElement {
    const row = el('div', 'gaudi-nb-node');
    row.dataset.node = node.name;
    row.dataset.state = node.state;
    // a machine that bills by the hour and is idle (billing's rule, judged by the server): the money the status bar warns about
    row.classList.toggle('gaudi-nb-idle-billing', !!node.provider && node.state === 'running' && node.idle);
    const head = el('div', 'gaudi-nb-node-head');
    head.appendChild(el('span', 'gaudi-nb-node-name', node.name === 'local' ? 'this machine' : node.name));
    const what = [node.accelerator || (node.devices[0] && node.devices[0].kind) || 'accelerator unknown'];
    if (node.device_count) {
      what.push(`× ${node.device_count}`);
    }
    head.appendChild(el('span', 'gaudi-nb-node-kind', what.join(' ')));
    const busy = node.active_runs.length ? `${node.active_runs.length} run${node.active_runs.length > 1 ? 's' : ''}` : 'idle';
    // a provisioned machine has a state of its own (running, stopped) and a price by the hour
    const state = node.provider ? [node.state, busy, perHour(node.price_per_hour)] : [busy];
    head.appendChild(el('span', 'gaudi-nb-node-state', state.join(' · ')));
    row.appendChild(head);
    if (node.devices.length === 0) {
      row.appendChild(el('div', 'gaudi-nb-muted', node.active_runs.length ? 'waiting for the first sample…' : 'no utilization while nothing runs'));
    }
    for (const device of node.devices) {
      const line = el('div', 'gaudi-nb-device');
      line.appendChild(el('span', 'gaudi-nb-device-label', device.label || device.kind || '?'));
      const bar = el('div', 'gaudi-nb-bar');
      const fill = el('div', 'gaudi-nb-bar-fill');
      const pct = device.utilization_pct === null ? 0 : Math.max(0, Math.min(100, device.utilization_pct));
      fill.style.width = `${pct}%`;
      bar.appendChild(fill);
      bar.title = `utilization ${percent(device.utilization_pct)} · memory ${percent(device.memory_pct)} (last 3 s)`;
      line.appendChild(bar);
      line.appendChild(el('span', 'gaudi-nb-device-pct', percent(device.utilization_pct)));
      row.appendChild(line);
    }
    return row;
  }

  private _renderRuns(list: HTMLElement, runs: IRun[]): void {
    // rows are kept by run id and changed in place, so a click on Stop never lands on a row redrawn under the pointer
    const wanted = new Set(runs.map(run => run.run_id));
    for (const [id, row] of this._rows) {
      if (!wanted.has(id) && row.parentElement === list) {
        row.remove();
        this._rows.delete(id);
      }
    }
    runs.forEach((run, index) => {
      let row = this._rows.get(run.run_id);
      if (!row) {
        row = this._runRow(run);
        this._rows.set(run.run_id, row);
      }
      this._fillRun(row, run);
      if (list.children[index] !== row) {
        list.insertBefore(row, list.children[index] || null);
      }
    });
  }

  private _runRow(run: IRun): HTMLElement {
    const row = el('div', 'gaudi-nb-run');
    row.dataset.runId = run.run_id;
    row.title = `Open the live panel of ${run.run_id} in the notebook`;
    const head = el('div', 'gaudi-nb-run-head');
    head.appendChild(el('span', 'gaudi-nb-dot'));
    head.appendChild(el('span', 'gaudi-nb-run-name'));
    row.appendChild(head);
    const numbers = el('div', 'gaudi-nb-run-numbers');
    for (const name of ['status', 'step', 'loss', 'speed', 'usd']) {
      numbers.appendChild(el('span', `gaudi-nb-${name}`));
    }
    row.appendChild(numbers);
    const stop = el('button', 'gaudi-nb-stop jp-Button jp-mod-styled jp-mod-warn', 'Stop');
    stop.title = 'Stop this run after a checkpoint';
    stop.onclick = event => {
      event.stopPropagation();
      const current = this._updates.latest?.runs.find(r => r.run_id === run.run_id);
      this._actions.stop(current || run);
    };
    head.appendChild(stop);
    row.onclick = () => {
      const current = this._updates.latest?.runs.find(r => r.run_id === run.run_id);
      this._actions.watch(current || run);
    };
    return row;
  }

  private _fillRun(row: HTMLElement, run: IRun): void {
    const active = ACTIVE.includes(run.status);
    row.dataset.status = run.status;
    row.classList.toggle('gaudi-nb-active', active);
    const field = (name: string) => row.querySelector(`.gaudi-nb-${name}`) as HTMLElement;
    field('run-name').textContent = run.name ? `${run.name} · ${run.run_id}` : run.run_id;
    field('status').textContent = run.bad_lines ? `${run.status} ⚠` : run.status;
    field('status').title = run.bad_lines || '';
    const step = field('step');
    step.dataset.step = String(run.step);
    step.textContent = run.max_steps ? `step ${run.step}/${run.max_steps}` : `step ${run.step}`;
    field('loss').textContent = `loss ${loss(run.loss)}`;
    field('speed').textContent = rate(run.tokens_per_second);
    field('usd').textContent = usd(run.usd);
    field('usd').title = run.budget_usd ? `budget ${usd(run.budget_usd)}` : 'no budget';
    const stop = field('stop') as HTMLButtonElement;
    stop.hidden = !active || run.can_stop === false;
    stop.disabled = run.status === 'stopping';
    if (!active && run.reason) {
      row.title = `${run.run_id}: ${run.reason}`;
    }
  }

  private _updates: Updates;
  private _actions: ISidebarActions;
  private _pause: HTMLButtonElement;
  private _message: HTMLElement;
  private _empty: HTMLElement;
  private _nodesSection: HTMLElement;
  private _nodesList: HTMLElement;
  private _runsSection: HTMLElement;
  private _activeHeading: HTMLElement;
  private _activeList: HTMLElement;
  private _recentHeading: HTMLElement;
  private _recentList: HTMLElement;
  private _rows = new Map<string, HTMLElement>();
}
