// rollout serve's dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// It reads the operator API (GET /v1/features, /v1/features/F/history), listens to the server's
// change events (GET /v1/events) to read again within moments of a change, and acts through the
// same API as the CLI (POST /v1/features/F/pause|resume|kill|unkill), which audits each change.
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="rollout-csrf"]').content;
  const canOperate = document.querySelector('meta[name="rollout-operate"]').content === "true";
  const list = document.getElementById("features");
  const summary = document.getElementById("summary");
  const empty = document.getElementById("empty");
  const banner = document.getElementById("banner");
  const connection = document.getElementById("connection");
  const dialog = document.getElementById("action-dialog");
  const form = document.getElementById("action-form");
  const reasonField = document.getElementById("action-reason");
  const actionError = document.getElementById("action-error");

  // A safety net under the event stream (a change the gate does not see, such as a guard lock).
  const pollInterval = 30000;
  const historyDays = 7;
  const historyRefresh = 5 * 60000;

  const labels = {
    "rolling-out": "Rolling out", full: "At 100%", off: "Off (0%)", killed: "Killed", paused: "Paused",
    guard: "Guard locked", frozen: "Frozen", invalid: "Invalid state", "no-data": "No data",
  };
  const actions = {
    pause: { title: "Pause", help: "The controller stops moving this feature until it is resumed. Checks keep answering as now.", danger: false },
    resume: { title: "Resume", help: "The controller moves this feature again at its next run.", danger: false },
    kill: { title: "Kill", help: "The kill switch turns the feature off for every subject at once, wherever the gate runs.", danger: true },
    unkill: { title: "Turn the kill switch off", help: "The feature answers by its percent and rules again.", danger: false },
  };

  let lastRead = null;
  let refreshing = false;
  let refreshAgain = false;
  const histories = new Map(); // feature -> { key, fetchedAt }

  // ISO-8601 with microseconds (the keyspace's form) parsed as milliseconds since the epoch.
  function parseTime(text) {
    if (!text) return NaN;
    return Date.parse(String(text).replace(/(\.\d{3})\d+/, "$1"));
  }

  function formatTime(ms) {
    if (!Number.isFinite(ms)) return "unknown time";
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  function formatPercent(value) {
    return value === null || value === undefined ? "?" : String(value) + "%";
  }

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function fact(label, text) {
    return element("li", {}, element("strong", {}, label + ": "), text);
  }

  // What the badge says beyond its label: why paused, until when guarded, which key is invalid.
  function statusDetail(feature) {
    switch (feature.status) {
      case "paused":
        return feature.last_change && feature.last_change.change === "paused" ? feature.last_change.reason : null;
      case "frozen":
        return feature.paused_reason || "flap protection paused it";
      case "guard": {
        const remaining = feature.guard && feature.guard.remaining_ms;
        if (remaining === null || remaining === undefined) return feature.guard ? feature.guard.value : null;
        return "until " + formatTime(Date.now() + remaining);
      }
      case "invalid":
        // Each message names its key.
        return (feature.invalid_keys || []).map((problem) => problem.message).join("; ");
      case "no-data":
        return feature.last_verdict ? "held: " + feature.last_verdict.reason : null;
      default:
        return null;
    }
  }

  function renderFeature(feature, node) {
    node.dataset.feature = feature.feature;
    node.dataset.status = feature.status;
    node.dataset.percent = feature.rollout_percent === null || feature.rollout_percent === undefined ? "" : String(feature.rollout_percent);
    const body = node.querySelector(".feature-body") || node.appendChild(element("div", { class: "feature-body" }));
    const detail = statusDetail(feature);
    const headingId = "feature-" + feature.feature;
    const head = element("div", { class: "feature-head" },
      element("h2", { id: headingId }, feature.feature),
      element("span", { class: "badge", "data-badge": feature.status }, labels[feature.status] || feature.status),
      feature.bucketing ? element("span", { class: "scheme", title: "bucketing scheme" }, "bucketing " + feature.bucketing) : null);
    const percent = feature.rollout_percent;
    const bar = element("div", { class: "percent" },
      element("progress", { max: "100", value: percent === null || percent === undefined ? "0" : String(percent), "aria-labelledby": headingId + "-percent" }),
      element("span", { class: "percent-value", id: headingId + "-percent" }, formatPercent(percent)));
    const facts = element("ul", { class: "facts" });
    if (detail) facts.append(fact(labels[feature.status] || feature.status, detail));
    if (feature.internal_only) facts.append(fact("Internal only", "only internal subjects see it"));
    const change = feature.last_change;
    if (change) {
      facts.append(fact("Last change", formatTime(parseTime(change.time)) + " · " + change.change + " · by " + change.by + (change.reason ? " · " + change.reason : "")));
    } else {
      facts.append(fact("Last change", "none recorded"));
    }
    const verdict = feature.last_verdict;
    if (verdict) {
      facts.append(fact("Controller", verdict.result + " (" + verdict.reason + ") at " + formatTime(parseTime(verdict.time))));
    }
    const parts = [head, bar, facts];
    if (canOperate) parts.push(actionButtons(feature));
    body.replaceChildren(...parts);
    if (!node.querySelector(".chart")) node.append(element("div", { class: "chart" }));
  }

  function actionButtons(feature) {
    const group = element("div", { class: "actions", role: "group", "aria-label": "Actions on " + feature.feature });
    const add = (action, label) => {
      const button = element("button", { type: "button", class: actions[action].danger ? "danger" : "secondary", "data-action": action }, label);
      button.addEventListener("click", () => openAction(feature.feature, action));
      group.append(button);
    };
    if (feature.paused) add("resume", "Resume"); else add("pause", "Pause");
    if (feature.enabled === false) add("unkill", "Turn kill switch off"); else add("kill", "Kill");
    return group;
  }

  function render(answer) {
    const features = answer.features || [];
    const seen = new Set();
    let previous = null;
    for (const feature of features) {
      seen.add(feature.feature);
      let node = list.querySelector('li[data-feature="' + CSS.escape(feature.feature) + '"]');
      if (!node) node = element("li", { class: "feature" });
      renderFeature(feature, node);
      // Keep the server's order (by name) without moving nodes that are in place.
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== node) list.insertBefore(node, expected);
      previous = node;
      updateHistory(feature, node);
    }
    for (const node of Array.from(list.children)) {
      if (!seen.has(node.dataset.feature)) node.remove();
    }
    const counts = {};
    for (const feature of features) counts[feature.status] = (counts[feature.status] || 0) + 1;
    summary.textContent = features.length + (features.length === 1 ? " feature" : " features") +
      (features.length ? ": " + Object.entries(counts).map(([status, count]) => count + " " + (labels[status] || status).toLowerCase()).join(", ") : "");
    empty.hidden = features.length !== 0;
    showSnapshot(answer.snapshot);
  }

  function showSnapshot(snapshot) {
    if (!snapshot || snapshot.freshness === "live") {
      banner.hidden = true;
      document.body.dataset.state = "live";
      return;
    }
    const age = snapshot.age_ms === null || snapshot.age_ms === undefined ? null : Math.round(snapshot.age_ms / 1000);
    const words = {
      stale: "The server's snapshot is stale" + (age === null ? "" : " (read " + age + " s ago)") + ": it cannot reach Redis, and its checks answer as last read.",
      snapshot_file: "The server answers from its snapshot file: it has not reached Redis since it started.",
      expired: "The server's snapshot is older than its max staleness: its checks answer off.",
      none: "The server has not loaded a snapshot yet.",
    };
    banner.textContent = words[snapshot.freshness] || "The server's snapshot is " + snapshot.freshness + ".";
    banner.dataset.kind = "stale";
    banner.hidden = false;
    document.body.dataset.state = snapshot.freshness;
  }

  function showUnreachable(detail) {
    banner.textContent = detail + (lastRead ? " What is shown was read at " + formatTime(lastRead) + "." : "");
    banner.dataset.kind = "unreachable";
    banner.hidden = false;
    document.body.dataset.state = "unreachable";
  }

  async function problemDetail(response) {
    try {
      const problem = await response.json();
      if (problem && problem.detail) return problem.detail;
    } catch (_) { /* no body */ }
    if (response.status === 401) return "The server did not accept this page's token: open /?token=YOUR_TOKEN again.";
    if (response.status === 403) return "Refused (HTTP 403): the token lacks the scope, or the page is older than the server's restart: reload it.";
    return "HTTP " + response.status;
  }

  async function refresh() {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    try {
      do {
        refreshAgain = false;
        let response;
        try {
          response = await fetch("/v1/features", { cache: "no-store", credentials: "same-origin" });
        } catch (_) {
          showUnreachable("rollout serve does not answer.");
          continue;
        }
        if (!response.ok) {
          showUnreachable(response.status === 503 ? "Redis is unreachable: " + (await problemDetail(response)) : await problemDetail(response));
          continue;
        }
        const answer = await response.json();
        lastRead = Date.now();
        render(answer);
      } while (refreshAgain);
    } finally {
      refreshing = false;
    }
  }

  // --- The percent over time, from the audit trail; the checks' values where Prometheus is configured.

  function updateHistory(feature, node) {
    const key = (feature.last_change ? feature.last_change.id || feature.last_change.time : "") + "|" + feature.rollout_percent;
    const known = histories.get(feature.feature);
    if (known && known.key === key && Date.now() - known.fetchedAt < historyRefresh) return;
    histories.set(feature.feature, { key, fetchedAt: Date.now() });
    loadHistory(feature.feature, node.querySelector(".chart"));
  }

  async function loadHistory(name, container) {
    let response;
    try {
      response = await fetch("/v1/features/" + encodeURIComponent(name) + "/history?days=" + historyDays, { cache: "no-store", credentials: "same-origin" });
    } catch (_) {
      return;
    }
    if (response.status === 404) { container.replaceChildren(); return; }
    if (!response.ok) {
      container.replaceChildren(element("p", { class: "chart-note" }, "History: " + (await problemDetail(response))));
      return;
    }
    drawHistory(await response.json(), container);
  }

  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(svgNS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child);
    return node;
  }

  function drawHistory(history, container) {
    const width = 600, left = 34, right = 8, top = 6, percentHeight = 70, checkHeight = 34;
    const since = parseTime(history.since), until = parseTime(history.until);
    if (!Number.isFinite(since) || !Number.isFinite(until) || until <= since) { container.replaceChildren(); return; }
    const checks = (history.checks || []);
    const height = top + percentHeight + 16 + checks.length * (checkHeight + 8);
    const x = (ms) => left + ((Math.min(Math.max(ms, since), until) - since) / (until - since)) * (width - left - right);
    const y = (percent) => top + percentHeight - (percent / 100) * percentHeight;
    const points = (history.percent || []).map((point) => ({ ...point, ms: parseTime(point.time) })).filter((point) => Number.isFinite(point.ms));
    const rollbacks = points.filter((point) => point.rollback);
    const changes = points.filter((point) => point.by !== undefined);
    if (!changes.length && !checks.length) {
      container.replaceChildren(element("p", { class: "chart-note" }, "No change of the percent in the last " + historyDays + " days."));
      return;
    }
    const description = "Percent over the last " + historyDays + " days: " + changes.length + (changes.length === 1 ? " change, " : " changes, ") + rollbacks.length + (rollbacks.length === 1 ? " rollback" : " rollbacks");
    const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": description });
    for (const mark of [0, 50, 100]) {
      chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(mark), y2: y(mark) }));
      const label = svg("text", { x: 2, y: y(mark) + 4 });
      label.textContent = mark + "%";
      chart.append(label);
    }
    if (points.length) {
      let path = "M" + x(points[0].ms) + " " + y(points[0].percent);
      for (const point of points.slice(1)) path += " H" + x(point.ms) + " V" + y(point.percent);
      path += " H" + x(until);
      chart.append(svg("path", { class: "step", d: path }));
    }
    for (const point of rollbacks) {
      const marker = svg("circle", { class: "rollback", cx: x(point.ms), cy: y(point.percent), r: 4.5 });
      const title = svg("title");
      title.textContent = "Rollback to " + point.percent + "% at " + formatTime(point.ms) + (point.reason ? ": " + point.reason : "");
      marker.append(title);
      chart.append(marker);
    }
    const dates = svg("text", { x: left, y: top + percentHeight + 13 });
    dates.textContent = formatTime(since) + " → " + formatTime(until);
    chart.append(dates);
    checks.forEach((check, index) => {
      const base = top + percentHeight + 16 + index * (checkHeight + 8) + checkHeight;
      const values = (check.points || []).filter((point) => Number.isFinite(point[1]));
      const label = svg("text", { x: left, y: base - checkHeight + 10 });
      if (check.error) {
        label.textContent = check.name + ": " + check.error;
      } else if (!values.length) {
        label.textContent = check.name + ": no data";
      } else {
        const low = Math.min(...values.map((point) => point[1])), high = Math.max(...values.map((point) => point[1]));
        const span = high - low || 1;
        const line = values.map((point) => x(point[0] * 1000) + "," + (base - ((point[1] - low) / span) * (checkHeight - 14))).join(" ");
        chart.append(svg("polyline", { class: "check", points: line }));
        label.textContent = check.name + ": " + values[values.length - 1][1].toPrecision(3) + " now (range " + low.toPrecision(3) + " to " + high.toPrecision(3) + ")";
      }
      chart.append(label);
    });
    container.replaceChildren(chart);
  }

  // --- Actions: a reason, then the operator API (audited as api:<token name>).

  function openAction(feature, action) {
    const spec = actions[action];
    dialog.dataset.feature = feature;
    dialog.dataset.action = action;
    document.getElementById("action-title").textContent = spec.title + " " + feature;
    document.getElementById("action-help").textContent = spec.help;
    const confirm = document.getElementById("action-confirm");
    confirm.textContent = spec.title;
    confirm.className = spec.danger ? "danger" : "";
    reasonField.value = "";
    actionError.hidden = true;
    dialog.showModal();
    reasonField.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = reasonField.value.trim();
    if (!reason) {
      actionError.textContent = "Say why: the reason goes to the audit log.";
      actionError.hidden = false;
      return;
    }
    const feature = dialog.dataset.feature, action = dialog.dataset.action;
    let response;
    try {
      response = await fetch("/v1/features/" + encodeURIComponent(feature) + "/" + action, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ reason }),
      });
    } catch (_) {
      actionError.textContent = "rollout serve does not answer: nothing was changed.";
      actionError.hidden = false;
      return;
    }
    if (!response.ok) {
      actionError.textContent = await problemDetail(response);
      actionError.hidden = false;
      return;
    }
    dialog.close();
    refresh();
  });
  document.getElementById("action-cancel").addEventListener("click", () => dialog.close());

  // --- Live updates: the server says when the snapshot changed; read again then.

  let source = null;
  function listen() {
    source = new EventSource("/v1/events");
    source.onopen = () => {
      connection.dataset.connection = "live";
      connection.textContent = "Live";
      refresh();
    };
    // A change, and also the snapshot going stale or fresh again (Redis away or back).
    source.onmessage = () => refresh();
    source.onerror = () => {
      connection.dataset.connection = "lost";
      connection.textContent = "Live updates lost: reconnecting…";
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (a restart, too many streams): try again shortly.
        source = null;
        setTimeout(listen, 5000);
      }
    };
  }

  refresh();
  listen();
  setInterval(refresh, pollInterval);
})();
