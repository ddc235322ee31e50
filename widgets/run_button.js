// gaudi_nb run button: Stop asks the Jupyter server's gaudi_nb stop route directly, so it works while the
// kernel runs a cell (run.wait()); without that server (VS Code, classic Notebook) it sends the click to the kernel.

const ICONS = { stop: "\u25A0", play: "\u25B6", check: "\u2713" }; // no icon font needed: plain characters

/** JupyterLab's page settings (the base URL, sometimes a token): the same source @jupyterlab/coreutils' PageConfig reads. */
function pageConfig() {
  const node = document.getElementById("jupyter-config-data");
  if (!node) return null;
  try {
    return JSON.parse(node.textContent || "{}");
  } catch (error) {
    return null;
  }
}

function cookie(name) {
  const match = document.cookie.match("\\b" + name + "=([^;]*)\\b");
  return match ? decodeURIComponent(match[1]) : undefined;
}

/** POST <base>/gaudi-nb/runs/<id>/stop as JupyterLab's ServerConnection would: XSRF header from the _xsrf cookie, the token if the page has one.
 * Returns the server's answer, or null when there is no such server here (fall back to the kernel). */
export async function stopOverServer(runId) {
  const config = pageConfig();
  if (!config || !config.baseUrl || !runId) return null;
  const headers = { "Content-Type": "application/json" };
  const xsrf = cookie("_xsrf");
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  if (config.token) headers["Authorization"] = `token ${config.token}`;
  const base = config.baseUrl.endsWith("/") ? config.baseUrl : config.baseUrl + "/";
  let response;
  try {
    response = await fetch(`${base}gaudi-nb/runs/${encodeURIComponent(runId)}/stop`, { method: "POST", headers, credentials: "same-origin", body: "{}" });
  } catch (error) {
    return null;
  }
  // 404: no gaudi_nb server extension here, or a server whose store lacks this run (another GAUDI_NB_HOME);
  // 403: this user may not stop runs through the server (a JupyterHub scope). The kernel can still ask.
  if (response.status === 404 || response.status === 403) return null;
  let body = {};
  try {
    body = await response.json();
  } catch (error) {
    body = {};
  }
  return { ok: response.ok, status: response.status, body };
}

function render({ model, el }) {
  const root = document.createElement("span");
  root.className = "gnb-run-button-root";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "gnb-run-button";
  const error = document.createElement("span");
  error.className = "gnb-run-button-error";
  root.append(button, error);
  el.appendChild(root);

  let pending = false; // a stop sent over the server, until the kernel's state catches up

  function draw() {
    const style = model.get("button_style");
    button.className = "gnb-run-button" + (style ? ` gnb-${style}` : "");
    const icon = ICONS[model.get("icon")] || "";
    button.innerHTML = "";
    if (icon) {
      const i = document.createElement("span");
      i.className = "gnb-run-icon";
      i.textContent = icon;
      button.appendChild(i);
    }
    const label = pending && model.get("mode") === "stop" ? "stopping\u2026" : model.get("description");
    button.appendChild(document.createTextNode(label));
    button.disabled = model.get("disabled") || (pending && model.get("mode") === "stop");
    button.title = model.get("tooltip");
    button.dataset.mode = model.get("mode");
  }

  button.addEventListener("click", async () => {
    error.textContent = "";
    if (model.get("mode") !== "stop") {
      model.send({ event: "click" }); // Resume: the kernel starts the next attempt
      return;
    }
    pending = true;
    draw();
    const answer = await stopOverServer(model.get("run_id"));
    if (answer === null) {
      model.send({ event: "click" }); // no server route here: the kernel stops it when it is free
      return;
    }
    if (!answer.ok) {
      pending = false;
      error.textContent = answer.body.message || `stop failed (HTTP ${answer.status})`;
      draw();
      return;
    }
    model.send({ event: "stopped_by_server", answer: answer.body });
  });

  for (const name of ["mode", "description", "icon", "button_style", "disabled", "tooltip"]) {
    model.on(`change:${name}`, () => {
      if (name === "mode" && model.get("mode") !== "stop") pending = false;
      draw();
    });
  }
  draw();
}

export default { render };
