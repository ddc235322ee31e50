// gaudi_nb device grid: one cell per device, coloured by utilization (or memory), readable from 8 to 1024 devices.
// anywidget front end: render({model, el}) reads synced traits only; no network, no CDN.

function cellSize(n) {
  if (n <= 16) return "large";
  if (n <= 128) return "medium";
  return "small";
}

// a sequential palette: pale (idle) to deep teal (busy); unknown values get a hatched grey
function colour(pct) {
  if (pct === null || pct === undefined || pct < 0) return null;
  const p = Math.max(0, Math.min(100, pct)) / 100;
  const light = 94 - p * 62; // 94% (idle) .. 32% (100%)
  const sat = 35 + p * 45;
  return `hsl(188, ${sat.toFixed(0)}%, ${light.toFixed(0)}%)`;
}

function fmtPct(v) {
  return v === null || v === undefined || v < 0 ? "?" : `${Math.round(v)}%`;
}

function fmtGb(v) {
  return v === null || v === undefined || v < 0 ? "?" : `${v.toFixed(1)} GB`;
}

/** A new element with its class: the grid builds many of them. */
function element(tag, className) {
  const node = document.createElement(tag);
  node.className = className;
  return node;
}

function render({ model, el }) {
  const root = element("div", "gnb-grid-root");
  const head = element("div", "gnb-grid-head");
  const title = element("span", "gnb-grid-title");
  const stats = element("span", "gnb-grid-stats");
  const toggle = element("span", "gnb-grid-toggle");
  const modes = { utilization: "utilization", memory: "memory" };
  let mode = "utilization";
  const buttons = {};
  for (const key of Object.keys(modes)) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = modes[key];
    b.addEventListener("click", () => {
      mode = key;
      draw();
    });
    buttons[key] = b;
    toggle.appendChild(b);
  }
  head.append(title, stats, toggle);

  const grid = element("div", "gnb-grid");
  const legend = element("div", "gnb-grid-legend");
  legend.innerHTML =
    '<span>0%</span><span class="gnb-grid-ramp"></span><span>100%</span>' +
    '<span class="gnb-cell gnb-unknown gnb-legend-unknown"></span><span>unknown</span>';
  const empty = element("div", "gnb-grid-empty");
  root.append(head, grid, legend, empty);
  el.appendChild(root);

  let cells = [];

  function draw() {
    const util = model.get("utilization") || [];
    const mem = model.get("memory_pct") || [];
    const used = model.get("memory_used_gb") || [];
    const total = model.get("memory_total_gb") || [];
    const labels = model.get("labels") || [];
    const summary = model.get("summary") || {};
    const n = util.length;
    for (const key of Object.keys(buttons)) buttons[key].classList.toggle("gnb-active", key === mode);
    title.textContent = model.get("title") || "devices";
    stats.textContent = summary.text || "";
    empty.textContent = n === 0 ? model.get("placeholder") || "waiting for telemetry…" : "";
    legend.style.display = n === 0 ? "none" : "";
    const size = cellSize(n);
    grid.className = `gnb-grid gnb-${size}`;
    while (cells.length < n) {
      const c = element("div", "gnb-cell");
      const label = element("span", "gnb-cell-label");
      const value = element("span", "gnb-cell-value");
      const bar = element("span", "gnb-cell-mem");
      c.append(label, value, bar);
      grid.appendChild(c);
      cells.push(c);
    }
    while (cells.length > n) {
      grid.removeChild(cells.pop());
    }
    for (let i = 0; i < n; i++) {
      const c = cells[i];
      const shown = mode === "utilization" ? util[i] : mem[i];
      const bg = colour(shown);
      c.classList.toggle("gnb-unknown", bg === null);
      c.style.background = bg === null ? "" : bg;
      c.classList.toggle("gnb-hot", shown !== null && shown >= 60);
      const label = labels[i] || String(i);
      c.title = `${label}\nutilization ${fmtPct(util[i])}\nmemory ${fmtGb(used[i])} of ${fmtGb(total[i])} (${fmtPct(mem[i])})`;
      c.dataset.index = String(i);
      if (size === "large") {
        c.children[0].textContent = label;
        c.children[1].textContent = `${fmtPct(util[i])} · ${fmtGb(used[i])}`;
      } else if (size === "medium") {
        c.children[0].textContent = "";
        c.children[1].textContent = shown === null || shown < 0 ? "" : String(Math.round(shown));
      } else {
        c.children[0].textContent = "";
        c.children[1].textContent = "";
      }
      // memory as a bar along the bottom, in utilization mode (in memory mode the colour says it)
      const m = mem[i];
      c.children[2].style.width = mode === "utilization" && m !== null && m >= 0 && size !== "small" ? `${Math.min(100, m)}%` : "0";
    }
  }

  model.on("change:utilization", draw);
  model.on("change:memory_pct", draw);
  model.on("change:labels", draw);
  model.on("change:summary", draw);
  model.on("change:title", draw);
  draw();
  return () => {
    cells = [];
  };
}

export default { render };
