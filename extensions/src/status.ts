// The status bar's cost ticker: dollars per hour being spent now and today's total, in a warning colour when money is at risk.
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ICosts, Updates } from './api';
import { el, perHour, usd } from './format';

export class CostTicker extends Widget {
  constructor(updates: Updates, onClick: () => void) {
    super();
    this.addClass('gaudi-nb-ticker');
    this.node.appendChild(el('span', 'gaudi-nb-ticker-label', 'Gaudi'));
    this._rate = el('span', 'gaudi-nb-ticker-rate', '…');
    this._today = el('span', 'gaudi-nb-ticker-today');
    this.node.appendChild(this._rate);
    this.node.appendChild(this._today);
    this.node.title = 'gaudi_nb: connecting…';
    this.node.onclick = onClick;
    updates.changed.connect((_, snapshot) => this._render(snapshot.costs), this);
    if (updates.latest) {
      this._render(updates.latest.costs);
    }
  }

  dispose(): void {
    Signal.clearData(this);
    super.dispose();
  }

  private _render(costs: ICosts): void {
    const unknown = costs.unknown_prices ? ` + ${costs.unknown_prices} unknown` : '';
    this._rate.textContent = `${perHour(costs.usd_per_hour)}${unknown}`;
    this._rate.dataset.usdPerHour = costs.usd_per_hour.toFixed(4);
    this._today.textContent = `· today ${usd(costs.today_usd)}`;
    const warn = costs.warnings.length > 0;
    this.node.classList.toggle('gaudi-nb-warning', warn);
    const lines = [`spending ${perHour(costs.usd_per_hour)} now across your nodes${unknown}; ${usd(costs.today_usd)} today`];
    for (const warning of costs.warnings) {
      lines.push(`⚠ ${warning.message}`);
    }
    this.node.title = lines.join('\n');
  }

  private _rate: HTMLElement;
  private _today: HTMLElement;
}
