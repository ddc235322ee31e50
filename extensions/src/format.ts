// Numbers as the sidebar and status bar write them; an unknown value is a dash or "unknown", never zero.
// Money reads as gaudi_nb/formatting.py writes it in every other view: cents from $1 up and for $0, four decimals between.

export function usd(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return 'unknown';
  }
  const digits = value !== 0 && Math.abs(value) < 1 ? 4 : 2;
  const text = Math.abs(value).toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return `${value < 0 ? '-' : ''}$${text}`;
}

export function perHour(value: number | null | undefined): string {
  return value === null || value === undefined ? 'unknown' : `${usd(value)}/h`;
}

export function rate(value: number | null | undefined): string {
  if (value === null || value === undefined) {
    return '–';
  }
  return value >= 1000 ? `${(value / 1000).toFixed(1)}k tok/s` : `${value.toFixed(0)} tok/s`;
}

export function loss(value: number | null | undefined): string {
  return value === null || value === undefined ? '–' : value.toFixed(3);
}

export function percent(value: number | null | undefined): string {
  return value === null || value === undefined ? '–' : `${Math.round(value)}%`;
}

/** An element with a class and text (never HTML: names and messages come from the store). */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}
