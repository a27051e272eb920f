// voxgate flow builder: list, open, edit (graph + forms, or raw JSON), validate, save, draft with AI.
// The flow format is described in docs/flows.md; the server validates fully on save (HTTP 422).

import { api, el, initApiKeyBox, svg, toast, truncate } from "/static/common.js";

const $ = (id) => document.getElementById(id);

const ui = {
  list: $("flow-list"),
  newFlow: $("new-flow"),
  save: $("save-flow"),
  validate: $("validate-flow"),
  tryIt: $("try-flow"),
  errors: $("flow-errors"),
  errorsSource: $("errors-source"),
  graph: $("graph"),
  json: $("json-editor"),
  jsonApply: $("json-apply"),
  jsonFormat: $("json-format"),
  graphPane: $("graph-pane"),
  jsonPane: $("json-pane"),
  tabGraph: $("tab-graph"),
  tabJson: $("tab-json"),
  title: $("flow-title"),
  dirty: $("dirty"),
  version: $("flow-version"),
  inspector: $("inspector"),
  addType: $("add-node-type"),
  addNode: $("add-node"),
  settings: $("flow-settings"),
  draftDescription: $("draft-description"),
  draftButton: $("draft-flow"),
  draftCancel: $("draft-cancel"),
  draftStatus: $("draft-status"),
  draftElapsed: $("draft-elapsed"),
};

const state = {
  flows: [], // GET /v1/flows
  doc: null, // the flow being edited
  storedId: null, // its id on the server (null: never saved)
  dirty: false,
  selected: null, // index into doc.nodes, or null for the flow settings
  issues: [], // [{node, field, code, message, level?}]
  tab: "graph",
  jsonEdited: false,
  voices: [],
};

// ---------------------------------------------------------------------------------------------
// The format (docs/flows.md)

const NODE_TYPES = ["say", "collect", "llm", "branch", "http", "dtmf_menu", "transfer", "end"];
const COLLECT_KINDS = ["number", "yes_no", "date", "time", "choice", "text", "regex"];
const HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const DIGITS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "*", "#"];
const FLOW_ID_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const NODE_ID_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;

// Form fields per node type: [key, kind, options]. Kinds: text, textarea, number, select, bool, edge,
// json, and the list editors choices, cases, exits, options.
const FIELDS = {
  say: [["text", "textarea", { required: true, hint: "A template: {{ variable }}" }], ["next", "edge", { required: true }]],
  collect: [
    ["prompt", "textarea", { required: true }],
    ["kind", "select", { required: true, choices: COLLECT_KINDS }],
    ["variable", "text", { required: true, hint: "Where the answer is stored" }],
    ["choices", "choices", { when: (n) => n.kind === "choice" }],
    ["pattern", "text", { when: (n) => n.kind === "regex", hint: "Python regular expression; the first group is stored" }],
    ["retry_prompt", "textarea", { hint: "Said after an answer that was not understood (default: the prompt)" }],
    ["max_retries", "number", { placeholder: "2" }],
    ["llm_fallback", "bool", { label: "Ask the LLM to restate answers the rules miss", default: true }],
    ["next", "edge", { required: true }],
    ["on_failure", "edge", { required: true, label: "on_failure (too many misunderstood answers)" }],
  ],
  llm: [
    ["instructions", "textarea", { required: true, rows: 6 }],
    ["opening", "textarea", { hint: "Said when the node is entered (optional)" }],
    ["exits", "exits", {}],
    ["max_turns", "number", { placeholder: "6" }],
    ["on_max_turns", "edge", { hint: "Without it the call ends after max_turns" }],
    ["max_tokens", "number", { placeholder: "160" }],
  ],
  branch: [["cases", "cases", {}], ["default", "edge", { required: true }]],
  http: [
    ["method", "select", { choices: HTTP_METHODS, placeholder: "GET" }],
    ["url", "text", { required: true, hint: "A template; the host must be on the server's allowlist" }],
    ["headers", "json", { hint: 'JSON object, e.g. {"Authorization": "Bearer {{ secrets.KEY }}"}' }],
    ["body", "json", { hint: "JSON sent as the body; strings are templates" }],
    ["save", "json", { hint: 'variable → dotted path, e.g. {"booking_id": "data.id"}' }],
    ["timeout_s", "number", { placeholder: "5" }],
    ["retries", "number", { placeholder: "1" }],
    ["next", "edge", { required: true }],
    ["on_error", "edge", { required: true }],
  ],
  dtmf_menu: [
    ["prompt", "textarea", { required: true }],
    ["options", "options", {}],
    ["max_retries", "number", { placeholder: "2" }],
    ["on_failure", "edge", { required: true }],
  ],
  transfer: [
    ["target", "text", { required: true, hint: "+15555550142 or sip:desk@pbx.example.com" }],
    ["handoff", "textarea", { hint: "Said before the transfer" }],
  ],
  end: [["text", "textarea", { hint: "Goodbye (optional)" }], ["reason", "text", { placeholder: "completed" }]],
};

const TEMPLATES = {
  say: { text: "Hello!", next: "" },
  collect: { prompt: "What is your name?", kind: "text", variable: "name", next: "", on_failure: "" },
  llm: { instructions: "You are a helpful assistant.", exits: [{ name: "done", description: "the caller is done", next: "" }] },
  branch: { cases: [{ when: { "==": [{ var: "answer" }, true] }, next: "" }], default: "" },
  http: { method: "GET", url: "https://api.example.com/", next: "", on_error: "" },
  dtmf_menu: { prompt: "Press 1 for sales, 2 for support.", options: [{ digit: "1", label: "sales", next: "" }], on_failure: "" },
  transfer: { target: "+15555550100", handoff: "Please hold." },
  end: { text: "Goodbye!", reason: "completed" },
};

/** The edges of a node: [{key, label, target, kind}] in a stable order. */
function nodeEdges(node) {
  const edges = [];
  const add = (key, label, target, kind = "") => {
    if (typeof target === "string" && target) edges.push({ key, label, target, kind });
  };
  add("next", "", node.next);
  (Array.isArray(node.cases) ? node.cases : []).forEach((c, i) => add(`cases[${i}].next`, `case ${i + 1}`, c && c.next));
  (Array.isArray(node.exits) ? node.exits : []).forEach((x, i) => add(`exits[${i}].next`, (x && x.name) || `exit ${i + 1}`, x && x.next));
  (Array.isArray(node.options) ? node.options : []).forEach((o, i) => add(`options[${i}].next`, `key ${(o && o.digit) ?? "?"}`, o && o.next));
  add("default", "default", node.default);
  add("on_max_turns", "max turns", node.on_max_turns, "failure");
  add("on_failure", "failure", node.on_failure, "failure");
  add("on_error", "error", node.on_error, "failure");
  return edges;
}

/** Every place a node id is referenced: [{obj, key}] so references can be renamed or cleared. */
function edgeSlots(node) {
  const slots = [];
  for (const key of ["next", "default", "on_max_turns", "on_failure", "on_error"]) if (key in node) slots.push({ obj: node, key });
  for (const list of ["cases", "exits", "options"]) {
    if (Array.isArray(node[list])) for (const item of node[list]) if (item && typeof item === "object") slots.push({ obj: item, key: "next" });
  }
  return slots;
}

function nodes() {
  return state.doc && Array.isArray(state.doc.nodes) ? state.doc.nodes : [];
}

function nodeIds() {
  return nodes().map((n) => n && n.id).filter((id) => typeof id === "string" && id);
}

function snippet(node) {
  const text = node.text || node.prompt || node.opening || node.instructions || node.url || node.target || node.reason || "";
  return truncate(String(text).replace(/\s+/g, " "), 26);
}

// ---------------------------------------------------------------------------------------------
// Local checks (structure only; the server checks templates, variables and secrets on save)

function localIssues(doc) {
  const issues = [];
  const add = (node, field, code, message) => issues.push({ node, field, code, message });
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) return [{ node: null, field: "", code: "schema", message: "the flow must be a JSON object" }];
  if (typeof doc.id !== "string" || !FLOW_ID_RE.test(doc.id)) add(null, "id", "schema", "id must be a slug: lower-case letters, digits, - and _ (starting with a letter or digit)");
  if (typeof doc.name !== "string" || !doc.name.trim()) add(null, "name", "schema", "name is required");
  const list = Array.isArray(doc.nodes) ? doc.nodes : [];
  if (!Array.isArray(doc.nodes) || !list.length) add(null, "nodes", "schema", "a flow needs at least one node");
  const index = new Map();
  list.forEach((node, i) => {
    if (!node || typeof node !== "object") return add(null, `nodes[${i}]`, "schema", "a node must be an object");
    const id = node.id;
    if (typeof id !== "string" || !NODE_ID_RE.test(id)) add(id || null, `nodes[${i}].id`, "schema", "node id must be letters, digits, _ . - (at most 64)");
    else if (index.has(id)) add(id, `nodes[${i}].id`, "duplicate_node", `another node is already called '${id}'`);
    else index.set(id, i);
    if (!NODE_TYPES.includes(node.type)) return add(id || null, `nodes[${i}].type`, "schema", `unknown node type '${node.type}'`);
    for (const [key, , opts] of FIELDS[node.type]) {
      const value = node[key];
      if (opts.required && (value === undefined || value === null || value === "")) add(id, `nodes[${i}].${key}`, "schema", `${key} is required`);
    }
    if (node.type === "collect" && node.kind === "choice" && !(Array.isArray(node.choices) && node.choices.length)) add(id, `nodes[${i}].choices`, "missing_choices", "a choice question needs choices");
    if (node.type === "collect" && node.kind === "regex" && !node.pattern) add(id, `nodes[${i}].pattern`, "missing_pattern", "a regex question needs a pattern");
    if (node.type === "branch" && !(Array.isArray(node.cases) && node.cases.length)) add(id, `nodes[${i}].cases`, "schema", "a branch needs at least one case");
    if (node.type === "dtmf_menu") {
      const seen = new Set();
      (node.options || []).forEach((o, j) => {
        if (seen.has(o.digit)) add(id, `nodes[${i}].options[${j}].digit`, "duplicate_digit", `key ${o.digit} is used twice`);
        seen.add(o.digit);
      });
    }
    if (node.type === "llm") {
      const seen = new Set();
      (node.exits || []).forEach((x, j) => {
        if (x.name === "stay") add(id, `nodes[${i}].exits[${j}].name`, "reserved_exit", "'stay' is reserved");
        else if (seen.has(x.name)) add(id, `nodes[${i}].exits[${j}].name`, "duplicate_exit", `exit '${x.name}' is used twice`);
        seen.add(x.name);
      });
    }
    for (const slot of edgeSlots(node)) {
      const target = slot.obj[slot.key];
      if (typeof target === "string" && target && !list.some((n) => n && n.id === target)) add(id, `nodes[${i}]`, "unknown_node", `no node with id '${target}'`);
      if (slot.obj !== node && !target) add(id, `nodes[${i}]`, "schema", "every case, exit and option needs a next node");
    }
  });
  if (!doc.start) add(null, "start", "schema", "start is required");
  else if (!index.has(doc.start)) add(null, "start", "unknown_start", `start node '${doc.start}' does not exist`);
  else {
    // Reachability from start, and a way out (end, transfer, or an llm node without on_max_turns) from each node.
    const reach = new Set([doc.start]);
    const queue = [doc.start];
    while (queue.length) {
      const node = list[index.get(queue.shift())];
      for (const e of nodeEdges(node)) {
        if (index.has(e.target) && !reach.has(e.target)) {
          reach.add(e.target);
          queue.push(e.target);
        }
      }
    }
    const exits = new Set(list.filter((n) => n && (n.type === "end" || n.type === "transfer" || (n.type === "llm" && !n.on_max_turns))).map((n) => n.id));
    let changed = true;
    while (changed) {
      changed = false;
      for (const n of list) {
        if (!n || exits.has(n.id)) continue;
        if (nodeEdges(n).some((e) => exits.has(e.target))) {
          exits.add(n.id);
          changed = true;
        }
      }
    }
    list.forEach((n, i) => {
      if (!n || typeof n.id !== "string" || index.get(n.id) !== i) return;
      if (!reach.has(n.id)) add(n.id, `nodes[${i}]`, "unreachable", "no path from start leads here");
      else if (!exits.has(n.id)) add(n.id, `nodes[${i}]`, "no_exit", "no path from here reaches an end or transfer");
    });
  }
  return issues;
}

/** The node an issue belongs to (by id, or by the nodes[i] index in its field). */
function issueNodeIndex(issue) {
  const list = nodes();
  if (issue.node) {
    const i = list.findIndex((n) => n && n.id === issue.node);
    if (i >= 0) return i;
  }
  const m = /^nodes\[(\d+)\]/.exec(issue.field || "");
  return m && Number(m[1]) < list.length ? Number(m[1]) : null;
}

/** Normalise an error answer's detail into issues. */
function detailIssues(result) {
  const detail = result.data && result.data.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) =>
      d && typeof d === "object" && "code" in d
        ? d
        : { node: null, field: Array.isArray(d && d.loc) ? d.loc.join(".") : "", code: (d && d.type) || "invalid", message: (d && d.msg) || JSON.stringify(d) },
    );
  }
  return [{ node: null, field: "", code: `http_${result.status}`, message: result.error }];
}

// ---------------------------------------------------------------------------------------------
// Flow list

async function loadList() {
  const result = await api("/v1/flows");
  if (!result.ok) {
    ui.list.replaceChildren(el("li", { class: "notice error small" }, `Could not list flows: ${result.error}`));
    return;
  }
  state.flows = result.data.flows || [];
  renderList();
}

function renderList() {
  if (!state.flows.length) {
    ui.list.replaceChildren(el("li", { class: "muted small" }, "No stored flows yet."));
    return;
  }
  ui.list.replaceChildren(
    ...state.flows.map((f) =>
      el("li", {},
        el("button", { type: "button", class: f.id === state.storedId ? "active" : "", onclick: () => openFlow(f.id), dataset: { flowId: f.id } },
          el("span", { class: "name" }, f.name || f.id),
          el("span", { class: "sub" }, `${f.id}${f.version ? ` · v${f.version}` : ""}`))),
    ),
  );
}

function confirmDiscard() {
  return !state.dirty || confirm("Discard the unsaved changes to this flow?");
}

async function openFlow(id) {
  if (!confirmDiscard()) return;
  const result = await api(`/v1/flows/${encodeURIComponent(id)}`);
  if (!result.ok) {
    toast(`Could not open ${id}: ${result.error}`, "error");
    return;
  }
  setDoc(result.data, id);
  history.replaceState(null, "", `?id=${encodeURIComponent(id)}`);
}

function newFlow() {
  if (!confirmDiscard()) return;
  let n = 1;
  while (state.flows.some((f) => f.id === `new-flow-${n}`)) n++;
  setDoc(
    {
      id: `new-flow-${n}`,
      name: "New flow",
      start: "greet",
      variables: {},
      settings: {},
      nodes: [
        { id: "greet", type: "say", text: "Hi, thanks for calling.", next: "bye" },
        { id: "bye", type: "end", text: "Goodbye!", reason: "completed" },
      ],
    },
    null,
  );
  state.dirty = true;
  state.selected = null;
  history.replaceState(null, "", location.pathname);
  render();
}

function setDoc(doc, storedId, issues = []) {
  state.doc = doc;
  state.storedId = storedId;
  state.dirty = false;
  state.selected = null;
  state.issues = issues;
  state.jsonEdited = false;
  ui.errorsSource.textContent = "";
  if (state.tab === "json") ui.json.value = JSON.stringify(doc, null, 2);
  render();
}

// ---------------------------------------------------------------------------------------------
// Rendering

function render() {
  renderHeader();
  renderGraph();
  renderInspector();
  renderIssues();
  renderList();
}

function markDirty() {
  state.dirty = true;
  renderHeader();
}

function renderHeader() {
  const open = Boolean(state.doc);
  ui.title.textContent = open ? state.doc.name || state.doc.id || "Untitled flow" : "No flow open";
  ui.dirty.classList.toggle("hidden", !state.dirty);
  const stored = state.storedId && state.flows.find((f) => f.id === state.storedId);
  ui.version.classList.toggle("hidden", !open);
  ui.version.textContent = !open ? "" : stored ? `v${stored.version}` : "not saved";
  for (const b of [ui.save, ui.validate, ui.addNode, ui.addType, ui.settings]) b.disabled = !open;
  ui.tryIt.disabled = !state.storedId;
  ui.tryIt.title = state.storedId ? `Open the playground with ${state.storedId}` : "Save the flow first";
}

const BOX_W = 184;
const BOX_H = 62;
const GAP_X = 92;
const GAP_Y = 30;
const PAD = 28;

function layout(list, start) {
  const firstIndex = new Map();
  list.forEach((n, i) => n && typeof n.id === "string" && !firstIndex.has(n.id) && firstIndex.set(n.id, i));
  const depth = new Map(); // index -> column
  const columns = [];
  const place = (i, d) => {
    depth.set(i, d);
    (columns[d] ||= []).push(i);
  };
  if (firstIndex.has(start)) {
    const queue = [firstIndex.get(start)];
    place(queue[0], 0);
    while (queue.length) {
      const i = queue.shift();
      for (const e of nodeEdges(list[i])) {
        const j = firstIndex.get(e.target);
        if (j !== undefined && !depth.has(j)) {
          place(j, depth.get(i) + 1);
          queue.push(j);
        }
      }
    }
  }
  const loose = columns.length;
  list.forEach((_, i) => !depth.has(i) && place(i, loose));
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const pos = new Map();
  columns.forEach((col, c) => {
    const offset = ((rows - col.length) * (BOX_H + GAP_Y)) / 2;
    col.forEach((i, r) => pos.set(i, { x: PAD + c * (BOX_W + GAP_X), y: PAD + offset + r * (BOX_H + GAP_Y), col: c }));
  });
  return { pos, firstIndex, width: PAD * 2 + columns.length * (BOX_W + GAP_X) - GAP_X, height: PAD * 2 + rows * (BOX_H + GAP_Y) - GAP_Y };
}

const TYPE_COLOURS = { say: "#3ccfb4", collect: "#3ccfb4", llm: "#3ccfb4", dtmf_menu: "#3ccfb4", branch: "#8fa5bb", http: "#8fa5bb", transfer: "#6b7a89", end: "#6b7a89" };

function renderGraph() {
  if (!state.doc) {
    ui.graph.replaceChildren(el("div", { class: "empty", style: "padding:80px 20px" }, el("strong", {}, "No flow open"), "Pick one on the left or start a new one."));
    return;
  }
  const list = nodes();
  const { pos, firstIndex, width, height } = layout(list, state.doc.start);
  const errorsByNode = new Map();
  for (const issue of state.issues) {
    if (issue.level === "info") continue;
    const i = issueNodeIndex(issue);
    if (i !== null) errorsByNode.set(i, (errorsByNode.get(i) || 0) + 1);
  }
  const extraBottom = 90; // room for edges that go back to earlier columns
  const W = Math.max(width, 300);
  const H = height + extraBottom;
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Flow graph" });
  root.append(
    svg("defs", {},
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#5d6b78" })),
      svg("marker", { id: "arrow-hl", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#3ccfb4" })),
    ),
  );
  const background = svg("rect", { x: 0, y: 0, width: W, height: H, fill: "transparent" });
  background.addEventListener("click", () => select(null));
  root.append(background);

  const edgeLayer = svg("g", {});
  const labelLayer = svg("g", {});
  root.append(edgeLayer);
  list.forEach((node, i) => {
    if (!node || !pos.has(i)) return;
    const a = pos.get(i);
    const edges = nodeEdges(node);
    edges.forEach((e, k) => {
      const j = firstIndex.get(e.target);
      const hl = state.selected === i || state.selected === j;
      const cls = `gedge${e.kind === "failure" ? " failure" : ""}${hl ? " hl" : ""}`;
      const marker = hl ? "url(#arrow-hl)" : "url(#arrow)";
      const sy = a.y + (BOX_H * (k + 1)) / (edges.length + 1);
      if (j === undefined) {
        // Dangling edge: points at a node that does not exist.
        const x1 = a.x + BOX_W;
        edgeLayer.append(svg("g", { class: "gedge failure" }, svg("path", { d: `M${x1},${sy} h36`, stroke: "#f06a6a", "marker-end": marker })));
        labelLayer.append(svg("g", { class: "gedge" }, svg("text", { x: x1 + 40, y: sy + 4, fill: "#f06a6a" }, `✕ ${e.target}`)));
        return;
      }
      const b = pos.get(j);
      let d;
      let mid;
      if (b.col > a.col) {
        const x1 = a.x + BOX_W;
        const x2 = b.x;
        const ty = b.y + BOX_H / 2;
        const dx = Math.max(36, (x2 - x1) / 2);
        d = `M${x1},${sy} C${x1 + dx},${sy} ${x2 - dx},${ty} ${x2},${ty}`;
        mid = bezierMid([x1, sy], [x1 + dx, sy], [x2 - dx, ty], [x2, ty]);
      } else if (i === j) {
        const x1 = a.x + BOX_W;
        d = `M${x1},${sy} C${x1 + 50},${sy - 10} ${x1 + 40},${a.y + BOX_H + 30} ${a.x + BOX_W / 2},${a.y + BOX_H}`;
        mid = [x1 + 34, a.y + BOX_H + 8];
      } else {
        // Back (or same-column) edge: leave from the bottom, come back into the target's bottom.
        const x1 = a.x + BOX_W / 2 + 20;
        const y1 = a.y + BOX_H;
        const x2 = b.x + BOX_W / 2 - 20;
        const y2 = b.y + BOX_H;
        const dip = Math.max(y1, y2) + 40 + (k % 3) * 14;
        d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
        mid = bezierMid([x1, y1], [x1, dip], [x2, dip], [x2, y2]);
      }
      edgeLayer.append(svg("g", { class: cls }, svg("path", { d, "marker-end": marker })));
      if (e.label) labelLayer.append(svg("g", { class: cls }, svg("text", { x: mid[0], y: mid[1] - 3, "text-anchor": "middle" }, e.label)));
    });
  });

  list.forEach((node, i) => {
    if (!pos.has(i)) return;
    const { x, y } = pos.get(i);
    const n = node && typeof node === "object" ? node : {};
    const errors = errorsByNode.get(i) || 0;
    const isStart = n.id === state.doc.start && firstIndex.get(n.id) === i;
    const g = svg("g", { class: `gnode${state.selected === i ? " selected" : ""}${errors ? " has-error" : ""}`, transform: `translate(${x},${y})`, tabindex: 0, role: "button", "aria-label": `Node ${n.id}`, "data-node": n.id ?? "" },
      svg("rect", { class: "box", width: BOX_W, height: BOX_H, rx: 8 }),
      svg("rect", { width: 4, height: BOX_H - 16, x: 0, y: 8, rx: 2, fill: TYPE_COLOURS[n.type] || "#f06a6a" }),
      svg("text", { class: "type", x: 12, y: 17, fill: TYPE_COLOURS[n.type] || "#f06a6a" }, `${n.type || "?"}${isStart ? "  · START" : ""}`),
      svg("text", { class: "id", x: 12, y: 35 }, truncate(n.id || "(no id)", 22)),
      svg("text", { class: "snippet", x: 12, y: 52 }, snippet(n)),
    );
    if (errors) g.append(svg("text", { class: "err", x: BOX_W - 8, y: 17, "text-anchor": "end" }, `⚠ ${errors}`));
    g.addEventListener("click", (ev) => {
      ev.stopPropagation();
      select(i);
    });
    g.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        select(i);
      }
    });
    root.append(g);
  });
  root.append(labelLayer);
  ui.graph.replaceChildren(root);
}

function bezierMid(p0, p1, p2, p3) {
  return [(p0[0] + 3 * p1[0] + 3 * p2[0] + p3[0]) / 8, (p0[1] + 3 * p1[1] + 3 * p2[1] + p3[1]) / 8];
}

function select(index) {
  if (state.tab === "json" && !applyJson()) return;
  state.selected = index;
  renderGraph();
  renderInspector();
}

function renderIssues() {
  ui.errors.replaceChildren(
    ...state.issues.map((issue) => {
      const i = issueNodeIndex(issue);
      const item = el("li", { class: issue.level || "" },
        el("code", {}, issue.code || "error"), " ", issue.message || "",
        el("span", { class: "where" }, [issue.node ? `node ${issue.node}` : "", issue.field].filter(Boolean).join(" · ") || "flow"));
      if (issue.level !== "info") {
        item.addEventListener("click", () => {
          if (state.tab === "json") setTab("graph");
          select(i);
        });
      }
      return item;
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// Inspector: the selected node's form, or the flow's own fields

function renderInspector() {
  if (!state.doc) {
    ui.inspector.replaceChildren(el("p", { class: "muted" }, "Open a flow from the list, start a new one, or draft one from a description."));
    return;
  }
  const node = state.selected !== null ? nodes()[state.selected] : null;
  if (!node || typeof node !== "object") {
    state.selected = null;
    ui.inspector.replaceChildren(flowForm());
  } else {
    ui.inspector.replaceChildren(nodeForm(node, state.selected));
  }
}

function changed({ graph = true, inspector = false } = {}) {
  markDirty();
  if (graph) renderGraph();
  if (inspector) renderInspector();
}

/** Set or (for empty values) remove a key. */
function put(obj, key, value) {
  if (value === undefined || value === "" || value === null) delete obj[key];
  else obj[key] = value;
}

function issuesFor(index, key) {
  return state.issues.filter((s) => s.level !== "info" && issueNodeIndex(s) === index && new RegExp(`^nodes\\[${index}\\]\\.${key}\\b`).test(s.field || ""));
}

function field(label, control, { hint, required, problems = [] } = {}) {
  return el("label", { class: "field" },
    el("span", {}, label, required ? el("span", { style: "color:var(--accent)" }, " *") : ""),
    control,
    hint ? el("div", { class: "field-hint" }, hint) : "",
    problems.map((p) => el("div", { class: "field-hint", style: "color:var(--danger)" }, p.message)));
}

/** A form control bound to get/set. */
function control(kind, opts, get, set) {
  const value = get();
  switch (kind) {
    case "textarea":
      return el("textarea", { rows: opts.rows || 3, value: value ?? "", placeholder: opts.placeholder || "", oninput: (ev) => set(ev.target.value) });
    case "number":
      return el("input", { type: "number", value: value ?? "", placeholder: opts.placeholder || "", step: "any", oninput: (ev) => set(ev.target.value === "" ? undefined : Number(ev.target.value)) });
    case "bool": {
      const box = el("input", { type: "checkbox", checked: value === undefined ? opts.default !== false : Boolean(value), onchange: (ev) => set(ev.target.checked) });
      return box;
    }
    case "select": {
      const select = el("select", { onchange: (ev) => set(ev.target.value || undefined) },
        opts.required ? "" : el("option", { value: "" }, opts.placeholder ? `default (${opts.placeholder})` : "—"),
        opts.choices.map((c) => el("option", { value: c }, c)));
      if (value !== undefined && !opts.choices.includes(value)) select.append(el("option", { value }, String(value)));
      select.value = value ?? "";
      return select;
    }
    case "edge": {
      const ids = nodeIds();
      const select = el("select", { onchange: (ev) => set(ev.target.value || undefined, true) },
        el("option", { value: "" }, opts.required ? "— choose a node —" : "— none —"),
        ids.map((id) => el("option", { value: id }, id)));
      if (value && !ids.includes(value)) select.append(el("option", { value }, `${value} (missing)`));
      select.value = value || "";
      return select;
    }
    case "json": {
      const area = el("textarea", { class: "code", rows: opts.rows || 3, value: value === undefined ? "" : JSON.stringify(value, null, 1), spellcheck: false });
      area.addEventListener("change", () => {
        const text = area.value.trim();
        if (!text) {
          area.style.borderColor = "";
          return set(undefined);
        }
        try {
          set(JSON.parse(text));
          area.style.borderColor = "";
        } catch (err) {
          area.style.borderColor = "var(--danger)";
          toast(`Not valid JSON: ${err.message}`, "error");
        }
      });
      return area;
    }
    case "csv":
      return el("input", { type: "text", value: Array.isArray(value) ? value.join(", ") : "", placeholder: opts.placeholder || "comma separated", oninput: (ev) => {
        const parts = ev.target.value.split(",").map((s) => s.trim()).filter(Boolean);
        set(parts.length ? parts : undefined);
      } });
    default:
      return el("input", { type: "text", value: value ?? "", placeholder: opts.placeholder || "", oninput: (ev) => set(ev.target.value) });
  }
}

function nodeForm(node, index) {
  const idInput = el("input", { type: "text", value: node.id ?? "" });
  idInput.addEventListener("change", () => renameNode(index, idInput.value.trim()));
  const form = el("div", { class: "stack" },
    el("div", { class: "card-head", style: "margin-bottom:0" },
      el("h2", {}, `${node.type || "unknown"} node`),
      el("div", { class: "row" },
        state.doc.start === node.id ? el("span", { class: "badge accent" }, "start") : el("button", { type: "button", class: "small ghost", onclick: () => { state.doc.start = node.id; changed({ inspector: true }); } }, "Make start"),
        el("button", { type: "button", class: "small danger", onclick: () => deleteNode(index) }, "Delete"))),
    field("Id", idInput, { required: true, problems: issuesFor(index, "id") }),
  );
  const spec = FIELDS[node.type];
  if (!spec) {
    form.append(el("div", { class: "notice error small" }, `Unknown node type '${node.type}'. Fix it in the JSON tab.`));
    return form;
  }
  for (const [key, kind, opts] of spec) {
    if (opts.when && !opts.when(node)) continue;
    const label = opts.label || key;
    const problems = issuesFor(index, key);
    if (kind === "choices") form.append(choicesEditor(node, problems));
    else if (kind === "cases") form.append(listEditor(node, "cases", "Cases (first that holds wins)", [["when", "json", { label: "when (JSONLogic)", rows: 2 }], ["next", "edge", { required: true }]], () => ({ when: { "==": [{ var: "x" }, 1] }, next: "" }), problems));
    else if (kind === "exits") form.append(listEditor(node, "exits", "Exits", [["name", "text", {}], ["description", "text", { placeholder: "when to take it" }], ["phrases", "csv", { placeholder: "trigger phrases, comma separated" }], ["next", "edge", { required: true }]], () => ({ name: `exit_${(node.exits || []).length + 1}`, description: "", next: "" }), problems));
    else if (kind === "options") form.append(listEditor(node, "options", "Options", [["digit", "select", { choices: DIGITS, required: true }], ["label", "text", { placeholder: "spoken alternatives, comma separated" }], ["next", "edge", { required: true }]], () => ({ digit: DIGITS.find((d) => !(node.options || []).some((o) => o.digit === d)) || "1", label: "", next: "" }), problems));
    else if (kind === "bool") {
      form.append(el("label", { class: "check" }, control(kind, opts, () => node[key], (v) => { node[key] = v; changed(); }), label));
    } else {
      const ctl = control(kind, opts, () => node[key], (v, structural) => {
        put(node, key, v);
        changed({ inspector: Boolean(structural) || key === "kind" });
      });
      form.append(field(label, ctl, { hint: opts.hint, required: opts.required, problems }));
    }
  }
  return form;
}

function listEditor(node, key, title, itemFields, makeItem, problems) {
  const items = Array.isArray(node[key]) ? node[key] : [];
  const box = el("div", {}, el("span", { class: "field-label" }, title));
  items.forEach((item, j) => {
    const sub = el("div", { class: "subitem" },
      el("div", { class: "row" }, el("span", { class: "muted small grow" }, `#${j + 1}`),
        el("button", { type: "button", class: "small ghost", title: "Remove", onclick: () => { items.splice(j, 1); changed({ inspector: true }); } }, "✕")));
    for (const [k, kind, opts] of itemFields) {
      const ctl = control(kind, opts, () => item[k], (v, structural) => {
        put(item, k, v);
        changed({ inspector: Boolean(structural) });
      });
      sub.append(field(opts.label || k, ctl));
    }
    box.append(sub);
  });
  box.append(
    el("button", { type: "button", class: "small", style: "margin-top:6px", onclick: () => { node[key] = [...items, makeItem()]; changed({ inspector: true }); } }, `+ Add ${key.replace(/s$/, "")}`),
    problems.map((p) => el("div", { class: "field-hint", style: "color:var(--danger)" }, p.message)),
  );
  return box;
}

function choicesEditor(node, problems) {
  const items = Array.isArray(node.choices) ? node.choices : [];
  const box = el("div", {}, el("span", { class: "field-label" }, "Choices"));
  items.forEach((item, j) => {
    const value = typeof item === "string" ? item : item.value;
    const synonyms = typeof item === "object" && Array.isArray(item.synonyms) ? item.synonyms : [];
    const update = (v, syn) => {
      items[j] = syn.length ? { value: v, synonyms: syn } : v;
      changed();
    };
    const valueInput = el("input", { type: "text", value: value ?? "", placeholder: "value" });
    const synInput = el("input", { type: "text", value: synonyms.join(", "), placeholder: "synonyms, comma separated" });
    const sync = () => update(valueInput.value, synInput.value.split(",").map((s) => s.trim()).filter(Boolean));
    valueInput.addEventListener("input", sync);
    synInput.addEventListener("input", sync);
    box.append(el("div", { class: "subitem" },
      el("div", { class: "row" }, valueInput, el("button", { type: "button", class: "small ghost", title: "Remove", onclick: () => { items.splice(j, 1); changed({ inspector: true }); } }, "✕")),
      synInput));
  });
  box.append(
    el("button", { type: "button", class: "small", style: "margin-top:6px", onclick: () => { node.choices = [...items, `option ${items.length + 1}`]; changed({ inspector: true }); } }, "+ Add choice"),
    problems.map((p) => el("div", { class: "field-hint", style: "color:var(--danger)" }, p.message)),
  );
  return box;
}

function flowForm() {
  const doc = state.doc;
  doc.settings = doc.settings && typeof doc.settings === "object" ? doc.settings : {};
  const s = doc.settings;
  const docProblems = (key) => state.issues.filter((x) => x.level !== "info" && !x.node && new RegExp(`^${key}\\b`).test(x.field || ""));
  const text = (key, opts = {}) => field(opts.label || key, control(opts.kind || "text", opts, () => doc[key], (v) => { put(doc, key, v); changed(); renderHeader(); }), { ...opts, problems: docProblems(key) });
  const setting = (key, kind, opts = {}) => field(key, control(kind, opts, () => s[key], (v) => { put(s, key, v); changed({ graph: false }); }), { hint: opts.hint, problems: docProblems(`settings.${key}`) });
  const voiceChoices = state.voices.map((v) => v.id);
  return el("div", { class: "stack" },
    el("div", { class: "card-head", style: "margin-bottom:0" }, el("h2", {}, "Flow settings"), el("span", { class: "muted small" }, `${nodes().length} nodes`)),
    text("id", { required: true, hint: "Lower-case slug; saving under a new id creates a new flow" }),
    text("name", { required: true }),
    text("description", { kind: "textarea", rows: 2 }),
    field("start", control("edge", { required: true }, () => doc.start, (v) => { put(doc, "start", v); changed(); }), { required: true, problems: docProblems("start") }),
    field("variables", control("json", { rows: 4 }, () => doc.variables, (v) => { put(doc, "variables", v); changed({ graph: false }); }), { hint: "JSON object: name → default value", problems: docProblems("variables") }),
    el("h2", { style: "margin-top:18px" }, "Conversation"),
    setting("silence_reprompt_s", "number", { placeholder: "8" }),
    setting("max_reprompts", "number", { placeholder: "2" }),
    setting("max_call_s", "number", { placeholder: "600" }),
    setting("language", "text", { placeholder: "en" }),
    voiceChoices.length ? setting("voice", "select", { choices: voiceChoices, placeholder: "server" }) : setting("voice", "text", { placeholder: "server default" }),
    setting("timezone", "text", { placeholder: "UTC", hint: "IANA zone, e.g. Europe/Paris" }),
  );
}

// ---------------------------------------------------------------------------------------------
// Editing operations

function renameNode(index, newId) {
  const node = nodes()[index];
  const oldId = node.id;
  if (!newId || newId === oldId) return renderInspector();
  if (nodeIds().includes(newId)) {
    toast(`A node is already called '${newId}'.`, "error");
    return renderInspector();
  }
  node.id = newId;
  for (const other of nodes()) for (const slot of edgeSlots(other)) if (slot.obj[slot.key] === oldId) slot.obj[slot.key] = newId;
  if (state.doc.start === oldId) state.doc.start = newId;
  changed({ inspector: true });
}

function addNode() {
  if (state.tab === "json" && !applyJson()) return;
  const type = ui.addType.value;
  const ids = new Set(nodeIds());
  let n = 1;
  while (ids.has(`${type}_${n}`)) n++;
  const node = { id: `${type}_${n}`, type, ...structuredClone(TEMPLATES[type]) };
  if (!Array.isArray(state.doc.nodes)) state.doc.nodes = [];
  // Link it after the selected node when that node has a free `next`.
  const from = state.selected !== null ? nodes()[state.selected] : null;
  if (from && "next" in (TEMPLATES[from.type] || {}) && !from.next) from.next = node.id;
  state.doc.nodes.push(node);
  if (!state.doc.start) state.doc.start = node.id;
  state.selected = state.doc.nodes.length - 1;
  changed({ inspector: true });
}

function deleteNode(index) {
  const node = nodes()[index];
  if (!confirm(`Delete node '${node.id}'? Edges to it are cleared.`)) return;
  state.doc.nodes.splice(index, 1);
  for (const other of nodes()) for (const slot of edgeSlots(other)) if (slot.obj[slot.key] === node.id) slot.obj[slot.key] = "";
  if (state.doc.start === node.id) state.doc.start = nodes()[0] ? nodes()[0].id : "";
  state.selected = null;
  state.issues = state.issues.filter((s) => s.node !== node.id);
  changed({ inspector: true });
  renderIssues();
}

// ---------------------------------------------------------------------------------------------
// JSON tab

function setTab(tab) {
  if (tab === state.tab) return;
  if (tab === "graph" && !applyJson()) return;
  state.tab = tab;
  ui.tabGraph.setAttribute("aria-selected", String(tab === "graph"));
  ui.tabJson.setAttribute("aria-selected", String(tab === "json"));
  ui.graphPane.classList.toggle("hidden", tab !== "graph");
  ui.jsonPane.classList.toggle("hidden", tab !== "json");
  if (tab === "json") {
    ui.json.value = state.doc ? JSON.stringify(state.doc, null, 2) : "";
    state.jsonEdited = false;
    ui.json.focus();
  } else {
    render();
  }
}

/** Take the JSON editor's text as the flow, if it was edited. False when it does not parse. */
function applyJson() {
  if (state.tab !== "json" || !state.jsonEdited) return true;
  let doc;
  try {
    doc = JSON.parse(ui.json.value);
  } catch (err) {
    state.issues = [{ node: null, field: "", code: "invalid_json", message: `The JSON does not parse: ${err.message}` }];
    ui.errorsSource.textContent = "JSON editor";
    renderIssues();
    return false;
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
    state.issues = [{ node: null, field: "", code: "schema", message: "The flow must be a JSON object." }];
    renderIssues();
    return false;
  }
  state.doc = doc;
  state.jsonEdited = false;
  state.selected = null;
  markDirty();
  render();
  return true;
}

// ---------------------------------------------------------------------------------------------
// Validate, save, delete, try

async function validate() {
  if (!state.doc || !applyJson()) return;
  // The server's dry run makes every check saving makes (templates, variables, secrets too);
  // the browser's own structural checks stand in when the server cannot be reached.
  const result = await api("/v1/flows/validate", { method: "POST", body: state.doc });
  if (result.ok && result.data && Array.isArray(result.data.issues)) {
    state.issues = detailIssues({ data: { detail: result.data.issues } });
    ui.errorsSource.textContent = "checked by the server (nothing saved)";
  } else {
    state.issues = localIssues(state.doc);
    ui.errorsSource.textContent = `checked in the browser (${result.error || "server check unavailable"})`;
  }
  render();
  if (state.issues.length) toast(`${state.issues.length} problem${state.issues.length === 1 ? "" : "s"} found.`, "warn");
  else toast("No problems found.", "ok", 2500);
}

async function save() {
  if (!state.doc || !applyJson()) return;
  const doc = state.doc;
  const id = doc.id;
  if (typeof id !== "string" || !id) {
    validate();
    return;
  }
  ui.save.disabled = true;
  ui.save.textContent = "Saving…";
  let existing = state.storedId === id;
  let result = existing
    ? await api(`/v1/flows/${encodeURIComponent(id)}`, { method: "PUT", body: doc })
    : await api("/v1/flows", { method: "POST", body: doc });
  if (!existing && result.status === 409) {
    if (confirm(`A flow called '${id}' already exists. Save this as a new version of it?`)) {
      existing = true;
      result = await api(`/v1/flows/${encodeURIComponent(id)}`, { method: "PUT", body: doc });
    } else {
      toast("Not saved: change the flow id in the flow settings to save it as a new flow.", "warn");
    }
  }
  ui.save.textContent = "Save";
  ui.save.disabled = false;
  if (result.ok) {
    state.storedId = id;
    state.dirty = false;
    state.issues = [];
    ui.errorsSource.textContent = "";
    toast(`Saved ${id}${result.data && result.data.version ? ` as version ${result.data.version}` : ""}.`, "ok", 3000);
    history.replaceState(null, "", `?id=${encodeURIComponent(id)}`);
    await loadList();
    render();
  } else if (result.status === 422) {
    state.issues = detailIssues(result);
    ui.errorsSource.textContent = "from the server; not saved";
    render();
    toast(`Not saved: ${state.issues.length} problem${state.issues.length === 1 ? "" : "s"}.`, "error");
  } else if (result.status !== 409) {
    state.issues = detailIssues(result);
    ui.errorsSource.textContent = "not saved";
    renderIssues();
    toast(`Not saved: ${result.error}`, "error");
  }
}

function tryIt() {
  if (!state.storedId) return;
  if (state.dirty && !confirm("The playground runs the saved version; your unsaved changes are not in it. Open it anyway?")) return;
  window.open(`/?flow=${encodeURIComponent(state.storedId)}`, "_blank", "noopener");
}

// ---------------------------------------------------------------------------------------------
// Draft from a description

let draftAbort = null;

async function draft() {
  const description = ui.draftDescription.value.trim();
  if (description.length < 3) {
    toast("Describe the call first (a sentence or two).", "warn");
    ui.draftDescription.focus();
    return;
  }
  if (!confirmDiscard()) return;
  draftAbort = new AbortController();
  const started = performance.now();
  ui.draftButton.disabled = true;
  ui.draftCancel.classList.remove("hidden");
  ui.draftStatus.classList.remove("hidden");
  const tick = () => {
    const s = Math.round((performance.now() - started) / 1000);
    ui.draftElapsed.textContent = `Drafting… ${s} s (usually 10–60 s)`;
  };
  tick();
  const timer = setInterval(tick, 1000);
  const result = await api("/v1/flows/generate", { method: "POST", body: { description }, signal: draftAbort.signal });
  clearInterval(timer);
  draftAbort = null;
  ui.draftButton.disabled = false;
  ui.draftCancel.classList.add("hidden");
  ui.draftStatus.classList.add("hidden");
  if (result.aborted) return;
  if (!result.ok) {
    toast(`Could not draft a flow: ${result.error}`, "error", 8000);
    return;
  }
  const { flow, valid, repairs = [], issues = [] } = result.data || {};
  if (!flow || typeof flow !== "object") {
    toast("The server returned no draft.", "error");
    return;
  }
  const notes = [
    ...issues.map((x) => ({ ...x })),
    ...repairs.map((text) => ({ node: null, field: "", code: "repair", message: String(text), level: "info" })),
  ];
  setDoc(flow, null, notes);
  state.dirty = true;
  ui.errorsSource.textContent = "draft: review, then save";
  history.replaceState(null, "", location.pathname);
  render();
  toast(valid ? "Draft loaded. Review it, then save." : "Draft loaded with problems: see below.", valid ? "ok" : "warn", 5000);
}

// ---------------------------------------------------------------------------------------------
// Wiring

ui.newFlow.addEventListener("click", newFlow);
ui.save.addEventListener("click", save);
ui.validate.addEventListener("click", validate);
ui.tryIt.addEventListener("click", tryIt);
ui.addNode.addEventListener("click", addNode);
ui.settings.addEventListener("click", () => select(null));
ui.tabGraph.addEventListener("click", () => setTab("graph"));
ui.tabJson.addEventListener("click", () => setTab("json"));
ui.json.addEventListener("input", () => {
  state.jsonEdited = true;
  markDirty();
});
ui.jsonApply.addEventListener("click", () => {
  if (applyJson()) toast("JSON applied.", "ok", 2000);
});
ui.jsonFormat.addEventListener("click", () => {
  try {
    ui.json.value = JSON.stringify(JSON.parse(ui.json.value), null, 2);
  } catch (err) {
    toast(`The JSON does not parse: ${err.message}`, "error");
  }
});
ui.json.addEventListener("keydown", (ev) => {
  if (ev.key === "Tab") {
    ev.preventDefault();
    ui.json.setRangeText("  ", ui.json.selectionStart, ui.json.selectionEnd, "end");
  }
});
ui.draftButton.addEventListener("click", draft);
ui.draftCancel.addEventListener("click", () => draftAbort?.abort());
document.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "s") {
    ev.preventDefault();
    if (state.doc) save();
  }
});
window.addEventListener("beforeunload", (ev) => {
  if (state.dirty) {
    ev.preventDefault();
    ev.returnValue = "";
  }
});

async function init() {
  initApiKeyBox();
  render();
  const voices = api("/v1/voices");
  await loadList();
  const v = await voices;
  if (v.ok) state.voices = v.data.voices || [];
  const wanted = new URLSearchParams(location.search).get("id");
  if (wanted) await openFlow(wanted);
}

init();
