// The console: a small client of the public /v1 API, nothing else. The key
// stays in this tab's sessionStorage and goes out only as the bearer token.
// Every value from the API is put on the page as text (never as HTML).

const main = document.getElementById("main");
const KEY = "automation-host.key";
let me = null; // {name, scopes}

const canDo = (scope) => {
  const s = me ? me.scopes : [];
  if (s.includes("admin")) return true;
  if (scope === "operate") return s.includes("operate") || s.includes("write");
  return s.includes(scope);
};

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  const opts = { method, headers: { Authorization: `Bearer ${key}` } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (!r.ok) {
    // Counted where anyone can read it (the browser tests do): a page that
    // works with its key makes no failing request.
    const d = document.documentElement.dataset;
    d.failedRequests = String(Number(d.failedRequests || 0) + 1);
    d.lastFailure = `${method} ${path}: ${r.status}`;
  }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    me = null;
    location.hash = "#/signin";
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const status = (s) => h("span", { class: `status status-${s}` }, s);
const link = (href, text) => h("a", { href }, text);
const q = (params) => {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
};

function show(title, ...content) {
  document.title = `${title} · automation-host`;
  main.replaceChildren(h("h1", {}, title), ...content.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  main.focus();
}

function problem(e) {
  return h("p", { class: "notice error", role: "alert" }, e.message || String(e));
}

function triggerSummary(t) {
  if (t.type === "cron") return `cron ${t.schedule} (${t.timezone})`;
  if (t.type === "event") return `event ${t.source}: ${t.on.join(", ")}${t.filter ? " if " + t.filter : ""}`;
  return "manual";
}

function state(a) {
  if (a.draft) return h("span", {}, "draft");
  if (a.enabled) return h("span", { class: "yes" }, "enabled");
  return h("span", { class: "no" }, `disabled${a.disabled_reason ? " (" + a.disabled_reason + ")" : ""}`);
}

// --- sign in -----------------------------------------------------------------

function signin(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { id: "key", name: "key", type: "password", autocomplete: "off", required: true });
  const err = h("p", { class: "field-error", id: "key-error", role: "alert" });
  const form = h(
    "form",
    {
      onsubmit: async (ev) => {
        ev.preventDefault();
        sessionStorage.setItem(KEY, input.value.trim());
        try {
          me = await api("GET", "/v1/me");
          location.hash = "#/automations";
          route();
        } catch (e) {
          sessionStorage.removeItem(KEY);
          err.textContent = e.message;
        }
      },
    },
    h("label", { for: "key" }, "API key"),
    input,
    err,
    h("p", { class: "hint" }, "Kept in this browser tab only; every request sends it as the bearer token."),
    h("button", { class: "primary", type: "submit", id: "signin" }, "Sign in"),
  );
  show("Sign in", message ? h("p", { class: "notice" }, message) : null, form);
}

// --- automations ---------------------------------------------------------------

async function automations(params) {
  const filters = { q: params.get("q") || "", tag: params.get("tag") || "", trigger: params.get("trigger") || "" };
  const [page, runs] = await Promise.all([
    api("GET", `/v1/automations${q({ ...filters, limit: 100 })}`),
    api("GET", "/v1/runs?limit=100"),
  ]);
  const last = new Map();
  for (const r of runs.items) if (!last.has(r.automation_id)) last.set(r.automation_id, r);
  const search = h("input", { id: "q", name: "q", value: filters.q, type: "search" });
  const tag = h("input", { id: "tag", name: "tag", value: filters.tag });
  const trigger = h(
    "select",
    { id: "trigger", name: "trigger" },
    ["", "cron", "event", "manual"].map((t) => h("option", { value: t, selected: t === filters.trigger }, t || "any")),
  );
  const form = h(
    "form",
    {
      class: "row",
      role: "search",
      onsubmit: (ev) => {
        ev.preventDefault();
        location.hash = `#/automations${q({ q: search.value, tag: tag.value, trigger: trigger.value })}`;
      },
    },
    h("div", {}, h("label", { for: "q" }, "Name contains"), search),
    h("div", {}, h("label", { for: "tag" }, "Tag"), tag),
    h("div", {}, h("label", { for: "trigger" }, "Trigger"), trigger),
    h("button", { type: "submit" }, "Filter"),
  );
  const rows = page.items.map((a) => {
    const r = last.get(a.id);
    return h(
      "tr",
      {},
      h("td", {}, link(`#/automations/${a.id}`, a.name)),
      h("td", {}, triggerSummary(a.trigger)),
      h("td", {}, state(a)),
      h("td", {}, r ? [status(r.status), " ", when(r.created_at)] : "—"),
      h("td", { class: "optional" }, when(a.next_fire_at)),
      h("td", { class: "optional" }, a.filter_errors.count ? `${a.filter_errors.count}: ${a.filter_errors.last_error}` : "0"),
    );
  });
  show(
    "Automations",
    canDo("write") ? h("p", {}, h("a", { href: "#/automations/new", id: "new-automation" }, "New automation")) : null,
    form,
    h("p", { class: "hint" }, `${page.total} in all`),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "automations" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Name", "Trigger", "State", "Last run", "Next fire", "Filter errors"].map((t, i) =>
              h("th", { scope: "col", class: i > 3 ? "optional" : null }, t),
            ),
          ),
        ),
        h("tbody", {}, rows),
      ),
    ),
  );
}

async function automation(id) {
  const a = await api("GET", `/v1/automations/${id}`);
  const runs = await api("GET", `/v1/automations/${id}/runs?limit=10`);
  const schedule = a.trigger.type === "cron" ? await api("GET", `/v1/automations/${id}/schedule?count=5`) : null;
  const note = h("p", { role: "status", id: "action-status" });
  const act = async (label, fn) => {
    try {
      await fn();
      note.textContent = `${label}: done`;
    } catch (e) {
      note.textContent = `${label}: ${e.message}`;
    }
  };
  const actions = h("div", { class: "actions" });
  if (canDo("write")) {
    actions.append(
      h(
        "button",
        {
          id: "toggle",
          type: "button",
          onclick: () =>
            act(a.enabled ? "Disable" : "Enable", async () => {
              await api("PATCH", `/v1/automations/${id}`, { enabled: !a.enabled });
              route();
            }),
        },
        a.enabled ? "Disable" : "Enable",
      ),
    );
  }
  if (canDo("operate")) {
    actions.append(
      h(
        "button",
        {
          id: "dispatch",
          class: "primary",
          type: "button",
          onclick: () =>
            act("Dispatch", async () => {
              const r = await api("POST", `/v1/automations/${id}/dispatch`, {});
              location.hash = `#/runs/${r.id}`;
            }),
        },
        "Dispatch now",
      ),
    );
  }
  if (canDo("write")) {
    actions.append(
      h(
        "button",
        {
          id: "delete",
          class: "danger",
          type: "button",
          onclick: () => {
            if (!confirm(`Delete ${a.name}? Its pending runs are cancelled and it never fires again.`)) return;
            act("Delete", async () => {
              await api("DELETE", `/v1/automations/${id}`);
              location.hash = "#/automations";
            });
          },
        },
        "Delete",
      ),
    );
  }
  show(
    a.name,
    h(
      "dl",
      {},
      h("dt", {}, "State"),
      h("dd", { id: "state" }, state(a)),
      a.disabled_detail ? [h("dt", {}, "Why"), h("dd", {}, a.disabled_detail)] : null,
      h("dt", {}, "Trigger"),
      h("dd", {}, triggerSummary(a.trigger)),
      h("dt", {}, "Executor"),
      h("dd", {}, a.executor.plugin),
      h("dt", {}, "Filter errors"),
      h("dd", {}, a.filter_errors.count ? `${a.filter_errors.count}, last: ${a.filter_errors.last_error}` : "none"),
      h("dt", {}, "Last triggered"),
      h("dd", {}, when(a.last_triggered_at)),
    ),
    actions,
    note,
    schedule
      ? [h("h2", {}, "Next fire times"), h("ul", { id: "next-fires" }, schedule.items.map((f) => h("li", {}, f.local)))]
      : null,
    h("h2", {}, "Recent runs"),
    runsTable(runs.items),
    h("h2", {}, "Definition"),
    h("pre", {}, JSON.stringify(a, null, 2)),
  );
}

function newAutomation() {
  const field = (id, label, input, hint) => [
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint" }, hint) : null,
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }),
  ];
  const name = h("input", { id: "name", name: "name", required: true });
  const schedule = h("input", { id: "schedule", name: "schedule", value: "*/5 * * * *", required: true });
  const timezone = h("input", { id: "timezone", name: "timezone", value: "UTC", required: true });
  const script = h("textarea", { id: "script", name: "script", required: true }, "echo hello");
  const fires = h("ul", { id: "preview", "aria-live": "polite" });
  const general = h("p", { class: "field-error", id: "form-error", role: "alert" });
  const errorOf = (id) => document.getElementById(`${id}-error`);
  let timer = null;
  const preview = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      errorOf("schedule").textContent = "";
      errorOf("timezone").textContent = "";
      try {
        const s = await api("GET", `/v1/schedule${q({ schedule: schedule.value, timezone: timezone.value, count: 5 })}`);
        fires.replaceChildren(...s.items.map((f) => h("li", {}, f.local)));
      } catch (e) {
        fires.replaceChildren();
        errorOf(e.code === "invalid_timezone" ? "timezone" : "schedule").textContent = e.message;
      }
    }, 250);
  };
  schedule.addEventListener("input", preview);
  timezone.addEventListener("input", preview);
  const form = h(
    "form",
    {
      id: "automation-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        for (const id of ["name", "schedule", "timezone", "script"]) errorOf(id).textContent = "";
        general.textContent = "";
        try {
          const a = await api("POST", "/v1/automations", {
            name: name.value,
            trigger: { type: "cron", schedule: schedule.value, timezone: timezone.value },
            preset: { name: "script", config: { interpreter: "sh", script: script.value } },
          });
          location.hash = `#/automations/${a.id}`;
        } catch (e) {
          // The API names the field; show its message there.
          const m = /^(trigger\.)?(name|schedule|timezone|preset\.config\.script)\b/.exec(e.message);
          const at = e.code === "invalid_cron" ? "schedule" : e.code === "invalid_timezone" ? "timezone" : m ? m[2].replace("preset.config.", "") : null;
          (at && errorOf(at) ? errorOf(at) : general).textContent = e.message;
        }
      },
    },
    field("name", "Name", name),
    field("schedule", "Cron schedule", schedule, "5 fields (6 with seconds first), or @hourly, @daily…; checked as you type"),
    h("p", { class: "hint" }, "Next five fire times:"),
    fires,
    field("timezone", "Time zone", timezone, "An IANA name such as Europe/Paris"),
    field("script", "Script (sh, run by the local sandbox)", script),
    general,
    h("button", { class: "primary", type: "submit", id: "create" }, "Create"),
  );
  show("New cron automation", form);
  preview();
}

// --- runs ------------------------------------------------------------------------

function runsTable(items) {
  const duration = (r) =>
    r.started_at && r.finished_at ? `${((new Date(r.finished_at) - new Date(r.started_at)) / 1000).toFixed(1)} s` : "—";
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "runs" },
      h("thead", {}, h("tr", {}, ["Run", "Status", "Trigger", "Created", "Duration"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        items.map((r) =>
          h(
            "tr",
            {},
            h("td", {}, link(`#/runs/${r.id}`, r.id.slice(-12))),
            h("td", {}, status(r.status)),
            h("td", {}, r.trigger.kind),
            h("td", {}, when(r.created_at)),
            h("td", {}, duration(r)),
          ),
        ),
      ),
    ),
  );
}

async function runs(params) {
  const st = params.get("status") || "";
  const page = await api("GET", `/v1/runs${q({ status: st, limit: 100 })}`);
  const select = h(
    "select",
    { id: "status", name: "status", onchange: (ev) => (location.hash = `#/runs${q({ status: ev.target.value })}`) },
    ["", "pending", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"].map((s) =>
      h("option", { value: s, selected: s === st }, s ? `${s} (${page.status_counts[s] || 0})` : "any"),
    ),
  );
  show("Runs", h("div", { class: "row" }, h("div", {}, h("label", { for: "status" }, "Status"), select)), runsTable(page.items));
}

let follow = null;

async function run(id) {
  const draw = async () => {
    const r = await api("GET", `/v1/runs/${id}`);
    const logs = await api("GET", `/v1/runs/${id}/logs`);
    const final = !["pending", "running"].includes(r.status);
    const actions = h("div", { class: "actions" });
    if (canDo("operate") && !final) {
      actions.append(h("button", { id: "cancel", type: "button", onclick: async () => { await api("POST", `/v1/runs/${id}/cancel`, {}); draw(); } }, "Cancel"));
    }
    if (canDo("operate") && final) {
      actions.append(
        h("button", { id: "rerun", type: "button", onclick: async () => { const n = await api("POST", `/v1/runs/${id}/rerun`, {}); location.hash = `#/runs/${n.id}`; } }, "Re-run"),
      );
    }
    show(
      `Run ${id.slice(-12)}`,
      h(
        "dl",
        {},
        h("dt", {}, "Status"),
        h("dd", { id: "run-status" }, status(r.status)),
        h("dt", {}, "Why"),
        h("dd", {}, `${r.status_detail.reason} (by ${r.status_detail.by}, ${when(r.status_detail.at)})`),
        h("dt", {}, "Automation"),
        h("dd", {}, link(`#/automations/${r.automation_id}`, r.automation_id)),
        h("dt", {}, "Trigger"),
        h("dd", {}, r.trigger.kind),
        r.progress ? [h("dt", {}, "Progress"), h("dd", {}, `${r.progress.percent != null ? r.progress.percent + "% " : ""}${r.progress.phase}`)] : null,
        r.error ? [h("dt", {}, "Error"), h("dd", { class: "no" }, r.error)] : null,
        h("dt", {}, "Exit code"),
        h("dd", {}, logs.exit_code ?? "—"),
      ),
      actions,
      h("h2", {}, `Output (${logs.source})`),
      h("pre", { id: "stdout" }, logs.stdout || ""),
      logs.stderr ? [h("h2", {}, "Standard error"), h("pre", { id: "stderr" }, logs.stderr)] : null,
      r.plugin_log.length ? [h("h2", {}, "Plugin log"), h("pre", {}, r.plugin_log.map((l) => `${l.call} ${l.level}: ${l.message}`).join("\n"))] : null,
    );
    // Still going: look again (live output comes from the host running it).
    if (!final) follow = setTimeout(() => draw().catch((e) => main.append(problem(e))), 1000);
  };
  await draw();
}

// --- events ------------------------------------------------------------------------

async function events(params) {
  const source = params.get("source") || "";
  const page = await api("GET", `/v1/events${q({ source, limit: 100 })}`);
  const input = h("input", { id: "source", name: "source", value: source });
  show(
    "Events",
    h(
      "form",
      { class: "row", onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/events${q({ source: input.value })}`; } },
      h("div", {}, h("label", { for: "source" }, "Source"), input),
      h("button", { type: "submit" }, "Show"),
    ),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "events" },
        h("thead", {}, h("tr", {}, ["Delivery", "Source", "Event key", "Status", "Received"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          page.items.map((d) =>
            h(
              "tr",
              {},
              h("td", {}, link(`#/events/${d.id}`, d.delivery_id || d.id.slice(-12))),
              h("td", {}, d.source),
              h("td", {}, d.event_key || "—"),
              h("td", {}, d.status),
              h("td", {}, when(d.received_at)),
            ),
          ),
        ),
      ),
    ),
  );
}

async function event(id) {
  const d = await api("GET", `/v1/events/${id}`);
  const res = d.result || { matched: [], not_matched: [] };
  show(
    `Delivery ${d.delivery_id || id.slice(-12)}`,
    h("dl", {}, h("dt", {}, "Source"), h("dd", {}, d.source), h("dt", {}, "Event key"), h("dd", {}, d.event_key || "—"), h("dt", {}, "Status"), h("dd", {}, d.status)),
    h("h2", {}, "Matched"),
    res.matched.length
      ? h("ul", { id: "matched" }, res.matched.map((m) => h("li", {}, link(`#/automations/${m.automation_id}`, m.automation_id), " → run ", link(`#/runs/${m.run_id}`, m.run_id.slice(-12)))))
      : h("p", { id: "matched" }, "No automation."),
    h("h2", {}, "Not matched"),
    res.not_matched.length
      ? h("ul", { id: "not-matched" }, res.not_matched.map((m) => h("li", {}, link(`#/automations/${m.automation_id}`, m.automation_id), `: ${m.reason}`)))
      : h("p", {}, "None."),
    h("h2", {}, "Payload"),
    h("pre", { id: "payload" }, JSON.stringify(d.payload, null, 2)),
    h("p", {}, link(`#/filters?event=${id}`, "Try a filter on this payload")),
  );
}

// --- filters and plugins ---------------------------------------------------------------

async function filters(params) {
  let payload = '{"action": "opened", "pull_request": {"draft": false}}';
  const from = params.get("event");
  if (from) payload = JSON.stringify((await api("GET", `/v1/events/${from}`)).payload, null, 2);
  const expr = h("input", { id: "expression", name: "expression", value: "action == 'opened'" });
  const body = h("textarea", { id: "sample", name: "sample" }, payload);
  const verdict = h("p", { id: "verdict", role: "status", "aria-live": "polite" });
  show(
    "Try a filter",
    h(
      "form",
      {
        id: "filter-form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          verdict.className = "";
          try {
            const r = await api("POST", "/v1/filters/evaluate", { filter: expr.value, payload: JSON.parse(body.value) });
            verdict.textContent = r.matches ? "matches" : "does not match";
          } catch (e) {
            verdict.className = "field-error";
            verdict.textContent = e.message;
          }
        },
      },
      h("label", { for: "expression" }, "JMESPath expression"),
      expr,
      h("label", { for: "sample" }, "Payload (JSON)"),
      body,
      h("div", { class: "actions" }, h("button", { class: "primary", type: "submit", id: "evaluate" }, "Evaluate")),
      verdict,
    ),
  );
}

async function plugins() {
  const list = await api("GET", "/v1/plugins");
  const sandbox = list.some((p) => p.name === "local-sandbox") ? await api("GET", "/v1/plugins/local-sandbox") : null;
  show(
    "Plugins",
    sandbox && sandbox.isolation ? h("p", { class: "notice", id: "isolation" }, `local sandbox isolation: ${sandbox.isolation.level}`) : null,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "plugins" },
        h("thead", {}, h("tr", {}, ["Name", "Kind", "Version", "Digest", "Granted", "From"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          list.map((p) =>
            h(
              "tr",
              {},
              h("td", {}, p.name),
              h("td", {}, p.kind),
              h("td", {}, p.version),
              h("td", {}, h("code", {}, (p.sha256 || "").slice(0, 12))),
              h("td", {}, JSON.stringify(p.granted)),
              h("td", {}, p.source),
            ),
          ),
        ),
      ),
    ),
  );
}

// --- routing --------------------------------------------------------------------------

async function route() {
  clearTimeout(follow);
  const [path, query] = (location.hash.slice(1) || "/automations").split("?");
  const params = new URLSearchParams(query || "");
  if (!sessionStorage.getItem(KEY) || path === "/signin") return signin();
  try {
    if (!me) me = await api("GET", "/v1/me");
    document.getElementById("nav").hidden = false;
    document.getElementById("who").textContent = `${me.name} (${me.scopes.join(", ")})`;
    const parts = path.split("/").filter(Boolean);
    if (parts[0] === "automations" && parts[1] === "new") return newAutomation();
    if (parts[0] === "automations" && parts[1]) return await automation(parts[1]);
    if (parts[0] === "runs" && parts[1]) return await run(parts[1]);
    if (parts[0] === "runs") return await runs(params);
    if (parts[0] === "events" && parts[1]) return await event(parts[1]);
    if (parts[0] === "events") return await events(params);
    if (parts[0] === "filters") return await filters(params);
    if (parts[0] === "plugins") return await plugins();
    return await automations(params);
  } catch (e) {
    if (e.status === 401) return signin("The key was refused; sign in again.");
    show("Something went wrong", problem(e));
  }
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  me = null;
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
route();
