// MiniModal dashboard: sign in with a token (kept in sessionStorage), then poll /stats and draw it.
// Everything from the server is written with textContent, never as markup: errors are user text.
"use strict";

(() => {
  const TOKEN_KEY = "minimodal.token";
  const POLL_MS = Number(document.body.dataset.pollMs) || 1500;
  const STATUSES = document.body.dataset.statuses.split(",");
  const HISTORY = 120; // points kept in the time charts (3 minutes at 1.5 s)
  const COLORS = {
    queued: "#8c8c8c", running: "#1f77b4", completed: "#2ca02c", failed: "#d62728", dead_letter: "#9467bd",
  };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let charts = null;
  let dlqSkip = 0;

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}), Authorization: `Bearer ${token()}` };
    const reply = await fetch(path, { ...options, headers, cache: "no-store" });
    const body = (reply.headers.get("content-type") || "").includes("json") ? await reply.json() : await reply.text();
    if (!reply.ok) {
      const message = body && body.error ? `${body.error.type}: ${body.error.message}` : `HTTP ${reply.status}`;
      const error = new Error(message);
      error.status = reply.status;
      throw error;
    }
    return body;
  }

  function show(element, visible) { element.hidden = !visible; }

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "-" : String(value);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, items, render) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren();
    for (const item of items) {
      const row = document.createElement("tr");
      render(row, item);
      body.appendChild(row);
    }
    if (!items.length) {
      const row = document.createElement("tr");
      const td = cell(row, "none", "muted");
      td.colSpan = $(tableId).querySelectorAll("thead th").length;
      body.appendChild(row);
    }
  }

  const seconds = (s) => (s === null || s === undefined ? "-" : s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`);
  const ms = (s) => (s === null || s === undefined ? null : Math.round(s * 100000) / 100);

  function makeCharts() {
    if (typeof Chart === "undefined") return null; // the page still works without the charting library
    const common = {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { beginAtZero: true } },
    };
    const status = new Chart($("chart-status"), {
      type: "line",
      data: {
        labels: [],
        datasets: STATUSES.map((s) => ({ label: s, data: [], borderColor: COLORS[s], backgroundColor: COLORS[s], pointRadius: 0 })),
      },
      options: common,
    });
    const latency = new Chart($("chart-latency"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "run avg", data: [], borderColor: "#2ca02c", backgroundColor: "#2ca02c", pointRadius: 0 },
          { label: "run p95", data: [], borderColor: "#ff7f0e", backgroundColor: "#ff7f0e", pointRadius: 0 },
          { label: "queued wait p95", data: [], borderColor: "#8c8c8c", backgroundColor: "#8c8c8c", pointRadius: 0 },
        ],
      },
      options: common,
    });
    return { status, latency };
  }

  function push(chart, label, values) {
    chart.data.labels.push(label);
    chart.data.datasets.forEach((dataset, i) => dataset.data.push(values[i]));
    if (chart.data.labels.length > HISTORY) {
      chart.data.labels.shift();
      chart.data.datasets.forEach((dataset) => dataset.data.shift());
    }
    chart.update("none");
  }

  async function showLogs(callId) {
    // PLACEHOLDER until call logs land everywhere: GET /v1/calls/{id}/logs (the owner's token only).
    $("logs-call").textContent = callId;
    $("logs-text").textContent = "loading...";
    show($("logs-panel"), true);
    try {
      const reply = await api(`/v1/calls/${encodeURIComponent(callId)}/logs`);
      const lines = (reply.logs || []).map((entry) => entry.text || "").join("");
      $("logs-text").textContent = lines || "(this call printed nothing)";
    } catch (error) {
      $("logs-text").textContent = error.status === 404
        ? "No logs: call logs are not available for this call (not yours, expired, or not built yet)."
        : `Cannot read the logs: ${error.message}`;
    }
  }

  async function retryDeadLetter(entryId, button) {
    // PLACEHOLDER: the endpoint comes with the dead-letter queue (issue 9, second part).
    button.disabled = true;
    try {
      await api(`/dead-letter-queue/${encodeURIComponent(entryId)}/retry`, { method: "POST" });
      button.textContent = "retried";
    } catch (error) {
      button.textContent = `failed: ${error.message}`;
      button.disabled = false;
    }
  }

  function render(stats) {
    $("whoami").textContent = `${stats.user} (${stats.scope === "all" ? "admin: everyone" : "own numbers"})`;
    $("updated").textContent = `updated ${new Date(stats.at * 1000).toLocaleTimeString()}, up ${Math.round(stats.uptime)} s`;
    $("count-functions").textContent = stats.functions;
    $("count-function_calls").textContent = stats.function_calls;
    for (const status of STATUSES) $(`count-${status}`).textContent = stats.calls[status] ?? 0;
    $("count-workers").textContent = `${stats.workers.total}`;
    $("count-capacity").textContent = `${stats.workers.capacity}`;
    $("duration").textContent = `${seconds(stats.duration.avg)} / ${seconds(stats.duration.p95)}`;
    $("queued-wait").textContent = seconds(stats.queued_wait.p95);

    fill("users", stats.users, (row, u) => {
      cell(row, u.name); cell(row, u.running); cell(row, u.queued); cell(row, u.quota); cell(row, u.weight);
      const fair = u.fair_share === null || u.fair_share === undefined ? "" : ` (due ${Math.round(u.fair_share * 100)}%)`;
      const td = cell(row, `${Math.round(u.share * 100)}%${fair}`);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.round(u.share * 100)}%`;
      td.appendChild(bar);
    });
    const d = stats.dispatcher;
    $("dispatcher").textContent = d.alive ? `dispatcher alive (heartbeat ${seconds(d.heartbeat_age)} ago)` : "dispatcher DOWN: no fresh heartbeat";
    $("dispatcher").className = d.alive ? "muted" : "bad";
    fill("workers", stats.workers.list, (row, w) => {
      cell(row, w.id);
      cell(row, w.draining ? `${w.state}, draining` : w.state, w.healthy ? `state-${w.state}` : "bad");
      cell(row, w.runtimes.join(", ")); cell(row, w.slots); cell(row, w.active_tasks);
      cell(row, `${w.busy}/${w.idle}`); cell(row, `${w.heartbeat_age.toFixed(1)} s ago`);
    });
    fill("queues", Object.entries(stats.queues), (row, [name, depth]) => { cell(row, name); cell(row, depth); });
    fill("functions", stats.function_list, (row, f) => {
      cell(row, f.tag); cell(row, f.id); cell(row, f.in_flight);
      cell(row, f.warm_runners === null ? "not reported" : f.warm_runners);
      cell(row, f.min_containers); cell(row, f.max_containers); cell(row, seconds(f.avg_run));
    });
    fill("failures", stats.recent_failures, (row, f) => {
      cell(row, f.finished_at ? new Date(f.finished_at).toLocaleTimeString() : "-");
      cell(row, f.idx ? `${f.call_id}[${f.idx}]` : f.call_id, "call-id");
      cell(row, f.function); cell(row, f.user);
      cell(row, f.status === "dead_letter" ? `[dead letter] ${f.error}` : f.error, "error");
      const td = cell(row, "");
      const link = document.createElement("a");
      link.href = `/v1/calls/${encodeURIComponent(f.call_id)}/logs`;
      link.textContent = "logs";
      link.addEventListener("click", (event) => { event.preventDefault(); showLogs(f.call_id); });
      td.appendChild(link);
    });

    charts = charts || makeCharts();
    if (charts) {
      const label = new Date(stats.at * 1000).toLocaleTimeString();
      push(charts.status, label, STATUSES.map((s) => stats.calls[s] ?? 0));
      push(charts.latency, label, [ms(stats.duration.avg), ms(stats.duration.p95), ms(stats.queued_wait.p95)]);
    }
    document.body.dataset.polls = String(Number(document.body.dataset.polls) + 1);
  }

  async function deadLetters() {
    // PLACEHOLDER (dead-letter queue, issue 9 second part): drawn when GET /dead-letter-queue answers
    // ({items: [{id, call_id, index, function, error, state}]}); until then the section keeps its note.
    if (dlqSkip > 0) { dlqSkip -= 1; return; }
    let reply;
    try {
      reply = await api("/dead-letter-queue?per_page=20");
    } catch (error) {
      if (error.status === 404) dlqSkip = 20; // not there (yet): ask again in half a minute
      return;
    }
    show($("dlq-tag"), false);
    show($("dlq-note"), false);
    show($("dlq-table"), true);
    fill("dlq-table", reply.items || [], (row, e) => {
      cell(row, e.id); cell(row, e.index ? `${e.call_id}[${e.index}]` : e.call_id, "call-id");
      cell(row, e.function); cell(row, e.error, "error");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Retry";
      button.addEventListener("click", () => retryDeadLetter(e.id, button));
      cell(row, "").appendChild(button);
    });
  }

  function age(iso) {
    if (!iso) return "-";
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s >= 86400) return `${Math.floor(s / 86400)}d`;
    if (s >= 3600) return `${Math.floor(s / 3600)}h`;
    if (s >= 60) return `${Math.floor(s / 60)}m`;
    return `${s}s`;
  }

  async function sandboxes() {
    const reply = await api("/v1/sandboxes");
    fill("sandboxes", (reply.sandboxes || []).slice(0, 20), (row, s) => {
      cell(row, s.sandbox_id, "call-id");
      const code = s.returncode === null || s.returncode === undefined ? "" : ` (${s.returncode})`;
      cell(row, s.state + code, `state-${s.state}`);
      cell(row, age(s.created_at));
      cell(row, s.worker);
      cell(row, (s.command || []).join(" ") || "-");
    });
  }

  async function poll() {
    try {
      render(await api("/stats"));
      await sandboxes();
      await deadLetters();
      show($("poll-error"), false);
    } catch (error) {
      if (error.status === 401) return signOut(`Signed out: ${error.message}`);
      $("poll-error").textContent = `cannot read /stats: ${error.message}`;
      show($("poll-error"), true);
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function signOut(message) {
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    show($("board"), false);
    show($("logout"), false);
    show($("login"), true);
    $("whoami").textContent = "";
    $("updated").textContent = "";
    $("login-error").textContent = message || "";
    show($("login-error"), Boolean(message));
  }

  async function start() {
    try {
      await api("/v1/me");
    } catch (error) {
      return signOut(error.status === 401 ? "That token is not valid." : `Cannot reach the API: ${error.message}`);
    }
    show($("login"), false);
    show($("login-error"), false);
    show($("board"), true);
    show($("logout"), true);
    poll();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => signOut());
  $("logs-close").addEventListener("click", () => show($("logs-panel"), false));
  if (token()) start();
})();
