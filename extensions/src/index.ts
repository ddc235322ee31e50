// gaudi_nb in JupyterLab: the Gaudi sidebar, the cost ticker in the status bar, and the command-palette commands.
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, InputDialog, Notification, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ACTIVE, IRun, requestAPI, Updates } from './api';
import { GaudiSidebar } from './sidebar';
import { CostTicker } from './status';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><rect x="5" y="5" width="14" height="14" rx="2" fill="none" stroke="#616161" stroke-width="2"/>
<rect x="9" y="9" width="6" height="6"/><rect x="8" y="1" width="2" height="4"/><rect x="14" y="1" width="2" height="4"/>
<rect x="8" y="19" width="2" height="4"/><rect x="14" y="19" width="2" height="4"/><rect x="1" y="8" width="4" height="2"/>
<rect x="1" y="14" width="4" height="2"/><rect x="19" y="8" width="4" height="2"/><rect x="19" y="14" width="4" height="2"/></g></svg>`;

const gaudiIcon = new LabIcon({ name: 'gaudi-nb:chip', svgstr: ICON_SVG });

namespace CommandIDs {
  export const attach = 'gaudi-nb:attach-node';
  export const launcher = 'gaudi-nb:open-launcher';
  export const stop = 'gaudi-nb:stop-run';
  export const dashboard = 'gaudi-nb:open-dashboard';
  export const watch = 'gaudi-nb:watch-run';
  export const sidebar = 'gaudi-nb:show-sidebar';
}

/** The attach dialog's body: the node's ssh:// address, its name, and whether to trust a host key seen for the first time. */
class AttachForm extends Widget {
  constructor() {
    super();
    this.addClass('gaudi-nb-attach-form');
    const url = document.createElement('label');
    url.textContent = 'Address (ssh://user@host[:port])';
    this._url = document.createElement('input');
    this._url.className = 'jp-mod-styled gaudi-nb-attach-url';
    this._url.placeholder = 'ssh://ubuntu@10.0.0.5';
    url.appendChild(this._url);
    const name = document.createElement('label');
    name.textContent = 'Name (what runs call it; default: its host name)';
    this._name = document.createElement('input');
    this._name.className = 'jp-mod-styled gaudi-nb-attach-name';
    name.appendChild(this._name);
    const trust = document.createElement('label');
    trust.className = 'gaudi-nb-attach-trust';
    this._trust = document.createElement('input');
    this._trust.type = 'checkbox';
    trust.appendChild(this._trust);
    trust.appendChild(document.createTextNode(' trust a host key this machine has not seen before'));
    this.node.append(url, name, trust);
  }

  getValue(): { url: string; name: string; trust_new_host: boolean } {
    return { url: this._url.value.trim(), name: this._name.value.trim(), trust_new_host: this._trust.checked };
  }

  private _url: HTMLInputElement;
  private _name: HTMLInputElement;
  private _trust: HTMLInputElement;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gaudi-nb-jupyterlab:plugin',
  description: 'A Gaudi sidebar (nodes, runs, stop), a cost ticker in the status bar and gaudi_nb commands.',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  optional: [ICommandPalette, IStatusBar],
  activate: (app: JupyterFrontEnd, shell: ILabShell, notebooks: INotebookTracker, palette: ICommandPalette | null, statusBar: IStatusBar | null) => {
    const updates = new Updates();
    const { commands } = app;

    /** The active notebook, or a new one when none is open, ready to run cells. */
    async function notebook(): Promise<NotebookPanel> {
      let panel = notebooks.currentWidget;
      if (!panel) {
        panel = (await commands.execute('notebook:create-new', { kernelName: 'python3' })) as NotebookPanel;
      }
      await panel.sessionContext.ready;
      shell.activateById(panel.id);
      return panel;
    }

    /** Add a cell below the active one with `source`, and run it. */
    async function insertAndRun(source: string): Promise<void> {
      const panel = await notebook();
      const kernel = panel.sessionContext.session?.kernel;
      if (kernel) {
        // the magics without a visible %load_ext (which would print "already loaded" the second time)
        await kernel.requestExecute({ code: "get_ipython().extension_manager.load_extension('gaudi_nb')", silent: true, store_history: false }).done;
      }
      const content = panel.content;
      if (content.widgets.length === 1 && content.activeCell && content.activeCell.model.sharedModel.getSource() === '') {
        content.activeCell.model.sharedModel.setSource(source); // a fresh notebook's empty first cell
      } else {
        NotebookActions.insertBelow(content);
        content.activeCell!.model.sharedModel.setSource(source);
      }
      await NotebookActions.run(content, panel.sessionContext);
    }

    async function stopRun(run: IRun): Promise<void> {
      const result = await showDialog({
        title: 'Stop the run?',
        body: `${run.run_id} is ${run.status} at step ${run.step}. It finishes two more steps, saves a checkpoint and ends as stopped.`,
        buttons: [Dialog.cancelButton({ label: 'Keep running' }), Dialog.warnButton({ label: 'Stop' })]
      });
      if (!result.button.accept) {
        return;
      }
      try {
        const answer = await requestAPI<{ first: boolean; status: string }>(`runs/${encodeURIComponent(run.run_id)}/stop`, { method: 'POST' });
        Notification.info(`Stop requested for ${run.run_id}${answer.first ? '' : ' (already requested)'}: it ends after a checkpoint.`, { autoClose: 5000 });
      } catch (error) {
        Notification.error(`Could not stop ${run.run_id}: ${(error as Error).message}`);
      }
    }

    commands.addCommand(CommandIDs.watch, {
      label: 'Gaudi: Watch a Run in the Notebook',
      execute: async args => {
        const runId = args.run_id as string | undefined;
        if (runId) {
          // Python with the id as a quoted string (JSON's escapes are Python's), never a magic line: a run id
          // comes from a shared store, and IPython would evaluate {…} in a line magic's text
          await insertAndRun(`from gaudi_nb import get_run, notebook\nnotebook.show(get_run(${JSON.stringify(runId)}));`);
        }
      }
    });

    commands.addCommand(CommandIDs.attach, {
      label: 'Gaudi: Attach a Node…',
      caption: 'Attach a machine over SSH (gaudi_nb.attach): checked, gaudi_nb installed there, recorded',
      execute: async () => {
        const result = await showDialog({ title: 'Attach a node', body: new AttachForm(), buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Attach' })] });
        if (!result.button.accept || !result.value) {
          return;
        }
        const form = result.value;
        if (!form.url) {
          Notification.warning('Give the node address: ssh://user@host[:port]');
          return;
        }
        const pending = Notification.emit(`Attaching ${form.url}… (installing gaudi_nb there can take a few minutes)`, 'in-progress', { autoClose: false });
        try {
          const record = await requestAPI<{ name: string; accelerator: string | null; device_count: number | null }>('nodes', { method: 'POST', body: JSON.stringify(form) });
          Notification.update({ id: pending, message: `Attached ${record.name} (${record.accelerator || 'no accelerator'}${record.device_count ? ` × ${record.device_count}` : ''}): train there with --target ${record.name}`, type: 'success', autoClose: 8000 });
        } catch (error) {
          Notification.update({ id: pending, message: `Could not attach: ${(error as Error).message}`, type: 'error', autoClose: false });
        }
      }
    });

    commands.addCommand(CommandIDs.launcher, {
      label: 'Gaudi: Open the Run Launcher',
      caption: 'Insert gaudi_nb.launcher() in the active notebook: a form that starts a run',
      execute: () => insertAndRun('import gaudi_nb\ngaudi_nb.launcher()')
    });

    commands.addCommand(CommandIDs.stop, {
      label: 'Gaudi: Stop a Run…',
      execute: async args => {
        const active = (updates.latest?.runs || []).filter(run => ACTIVE.includes(run.status) && run.status !== 'stopping' && run.can_stop !== false);
        let run = active.find(r => r.run_id === args.run_id);
        if (!run) {
          if (active.length === 0) {
            Notification.info('No run is active.', { autoClose: 4000 });
            return;
          }
          const choice = await InputDialog.getItem({ title: 'Stop which run?', items: active.map(r => r.run_id) });
          run = active.find(r => r.run_id === choice.value);
        }
        if (run) {
          await stopRun(run);
        }
      }
    });

    commands.addCommand(CommandIDs.dashboard, {
      label: 'Gaudi: Open the Team Dashboard',
      execute: async () => {
        const config = await requestAPI<{ dashboard_url: string | null }>('config');
        if (config.dashboard_url) {
          window.open(config.dashboard_url, '_blank', 'noopener');
          return;
        }
        const body = document.createElement('div');
        body.className = 'gaudi-nb-dashboard-help';
        for (const [text, code] of [
          ['Start it in a terminal:', 'gaudi-nb dashboard'],
          ['and tell JupyterLab where it listens, before starting JupyterLab:', 'export GAUDI_NB_DASHBOARD_URL=http://127.0.0.1:5006']
        ]) {
          const p = document.createElement('p');
          p.textContent = text;
          const c = document.createElement('pre');
          c.textContent = code;
          body.append(p, c);
        }
        await showDialog({ title: 'The team dashboard is not configured', body: new Widget({ node: body }), buttons: [Dialog.okButton()] });
      }
    });

    const sidebar = new GaudiSidebar(updates, {
      watch: run => void commands.execute(CommandIDs.watch, { run_id: run.run_id }),
      stop: run => void stopRun(run),
      attach: () => void commands.execute(CommandIDs.attach),
      launcher: () => void commands.execute(CommandIDs.launcher)
    });
    sidebar.id = 'gaudi-nb-sidebar';
    sidebar.title.icon = gaudiIcon;
    shell.add(sidebar, 'left', { rank: 850 });

    commands.addCommand(CommandIDs.sidebar, {
      label: 'Gaudi: Show the Sidebar',
      execute: () => shell.activateById(sidebar.id)
    });

    if (palette) {
      for (const command of [CommandIDs.attach, CommandIDs.launcher, CommandIDs.stop, CommandIDs.dashboard, CommandIDs.sidebar]) {
        palette.addItem({ command, category: 'Gaudi' });
      }
    }

    if (statusBar) {
      const ticker = new CostTicker(updates, () => shell.activateById(sidebar.id));
      statusBar.registerStatusItem('gaudi-nb:cost', { item: ticker, align: 'left', rank: 50 });
    }
  }
};

export default plugin;
