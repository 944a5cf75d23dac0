// drift view: the page's script (inlined by drift.view). Model text only ever goes through textContent.
// Data layout (drift/view.py trajectory_set): strings[] interned; per set prompts[] and trajs[] rows:
//   prompt: [id, gold, question, traj indices, K, solved, ESS, max w, best R, first correct, format errors]
//   traj:   [prompt, traj_id, R, w, first correct, format errors, discounted, repetition, msgs, answers, correct]
// A message is string index * 4 + role (0 system, 1 user, 2 assistant, 3 tool); an answer -1 is none.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const P = { ID: 0, GOLD: 1, Q: 2, T: 3, K: 4, SOLVED: 5, ESS: 6, MAXW: 7, BESTR: 8, FIRST: 9, FMT: 10 };
  const T = { P: 0, ID: 1, R: 2, W: 3, FIRST: 4, FMT: 5, DISC: 6, REP: 7, MSGS: 8, ANS: 9, OK: 10 };
  let D = null;
  let S = [];
  const state = { tab: "results", set: 0, sort: "order", tsort: "w", allfail: false, solved: false, fmt: false,
    q: "", page: 0, open: -1, a: 0, b: 1, cfilter: "diff", cpage: 0, copen: "" };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent, ...kids) { for (const k of kids) parent.appendChild(k); return parent; }
  function child(parent, kid) { return parent.appendChild(kid); }
  function fmt(x, d = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  async function load() {
    const block = $("drift-data");
    if (block.type === "application/json") return JSON.parse(block.textContent);
    const text = atob(block.textContent.trim());
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  // -- state <-> URL hash (so a view can be linked, and tested with --dump-dom) --------------------
  // the values a link may give the state's choices (anything else keeps the default)
  const CHOICES = { tab: ["results", "trajectories", "weights", "compare"],
    sort: ["order", "maxw", "ess", "bestR", "worstR", "first", "fmt"], tsort: ["w", "R", "first", "id"],
    cfilter: ["diff", "a", "b", "all"] };
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    for (const [k, v] of h) {
      if (!Object.hasOwn(state, k) || (Object.hasOwn(CHOICES, k) && !CHOICES[k].includes(v))) continue;
      const cur = state[k];
      state[k] = typeof cur === "boolean" ? v === "1" : typeof cur === "number" ? Number(v) || 0 : v;
    }
  }
  function writeHash() {
    const h = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v !== false && v !== "" && v !== -1) h.set(k, v === true ? "1" : v);
    history.replaceState(null, "", "#" + h.toString());
  }

  // -- tabs and controls ------------------------------------------------------------------------------
  function showTab(name) {
    state.tab = name;
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === name);
    for (const s of document.querySelectorAll(".tab")) s.classList.toggle("on", s.id === name);
  }
  function fillSets(select, value) {
    clear(select);
    D.sets.forEach((s, i) => add(select, Object.assign(el("option", null, s.name + " (" + s.trajs.length + ")"), { value: i })));
    select.value = String(value);
  }
  function bind(id, key, after, prop = "value") {
    const node = $(id);
    node[prop] = prop === "checked" ? state[key] : String(state[key]);
    node.addEventListener(node.type === "search" ? "input" : "change", () => {
      const v = node[prop];
      state[key] = typeof state[key] === "number" ? Number(v) : v;
      after();
      writeHash();
    });
  }

  // -- one trajectory ---------------------------------------------------------------------------------
  function why(set, t) {
    const p = set.params;
    const answers = t[T.ANS].filter((a) => a >= 0);
    const distinct = new Set(answers).size;
    const parts = [t[T.FIRST] ? fmt(t[T.DISC]) + " (solved at turn " + t[T.FIRST] + ": γ^(t−1) = " + p.gamma + "^" + (t[T.FIRST] - 1) + ")"
      : "0 (never solved)"];
    if (t[T.FMT]) parts.push("− " + fmt(p.format_penalty * t[T.FMT]) + " (format: " + p.format_penalty + " × " + t[T.FMT] + " unparsable)");
    if (answers.length) parts.push("− " + fmt(t[T.REP]) + " (repetition: λ(1 − U/N) = " + p.lam + " × (1 − " + distinct + "/" + answers.length + "))");
    const computed = t[T.DISC] - p.format_penalty * t[T.FMT] - t[T.REP];
    let text = "R = " + parts.join(" ") + " = " + fmt(computed);
    if (Math.abs(computed - t[T.R]) > 1e-4) text += "  (the file's return is " + fmt(t[T.R]) + ")";
    return text;
  }
  function trajCard(set, ti, sumW) {
    const t = set.trajs[ti];
    const card = el("div", "traj" + (t[T.FIRST] ? " solved" : ""));
    const head = el("div");
    add(head, el("b", null, "traj " + t[T.ID]), el("span", null, "  R = " + fmt(t[T.R]) + "   w = " + fmt(t[T.W])
      + (sumW > 0 && t[T.W] !== null ? " (" + fmt(100 * t[T.W] / sumW, 1) + "% of the prompt's weight)" : "")
      + "   " + (t[T.FIRST] ? "solved at turn " + t[T.FIRST] : "unsolved")
      + (t[T.FMT] ? "   " + t[T.FMT] + " format error(s)" : "")));
    add(card, head, el("div", "why", why(set, t)));
    const msgs = t[T.MSGS];
    let turn = 0;
    let box = null;
    for (const m of msgs) {
      const role = m & 3;
      const text = S[m >> 2];
      if (role === 2) {
        box = child(card, el("div", "turn"));
        const ans = t[T.ANS][turn];
        const ok = t[T.OK][turn] === "1";
        add(box, el("span", "tag", "turn " + (turn + 1) + " "),
          el("span", ok ? "ok" : "bad", ok ? "✓ correct" : "✗ wrong"),
          el("span", ans === undefined || ans < 0 ? "warn" : null, ans === undefined || ans < 0
            ? "   no parsable answer" : "   answer: " + S[ans]),
          el("pre", null, text));
        turn += 1;
      } else if (box) {
        add(box, el("div", "feedback", (role === 3 ? "tool: " : "feedback: ") + text));
      }
    }
    return card;
  }
  function promptHead(set, pi) {
    const p = set.prompts[pi];
    const head = el("div", "qhead");
    add(head, el("b", null, p[P.ID]), el("span", "muted", "   gold: " + (p[P.GOLD] === null ? "–" : p[P.GOLD])
      + "   " + p[P.SOLVED] + "/" + p[P.K] + " solved   ESS " + fmt(p[P.ESS], 2) + " of " + p[P.K]
      + "   (" + set.name + ")"));
    add(head, el("pre", null, S[p[P.Q]]));
    return head;
  }
  function trajectories(set, pi, into) {
    const p = set.prompts[pi];
    const key = { w: (t) => -(t[T.W] ?? -1), R: (t) => -t[T.R], first: (t) => t[T.FIRST] || 1e9, id: (t) => t[T.ID] }[state.tsort];
    const idx = p[P.T].slice().sort((i, j) => key(set.trajs[i]) - key(set.trajs[j]));
    const sumW = idx.reduce((s, i) => s + (set.trajs[i][T.W] || 0), 0);
    add(into, promptHead(set, pi));
    for (const i of idx) add(into, trajCard(set, i, sumW));
  }

  // -- the prompt list ----------------------------------------------------------------------------------
  const searchIndex = new Map();
  function haystack(set, si, pi) {
    if (!searchIndex.has(si)) searchIndex.set(si, []);
    const cache = searchIndex.get(si);
    if (cache[pi] === undefined) {
      const p = set.prompts[pi];
      const parts = [p[P.ID], p[P.GOLD] ?? "", S[p[P.Q]]];
      for (const ti of p[P.T]) {
        for (const m of set.trajs[ti][T.MSGS]) if ((m & 3) !== 0) parts.push(S[m >> 2]);
        for (const a of set.trajs[ti][T.ANS]) if (a >= 0) parts.push(S[a]);
      }
      cache[pi] = parts.join("\n").toLowerCase();
    }
    return cache[pi];
  }
  function selected() {
    const set = D.sets[state.set];
    const q = state.q.trim().toLowerCase();
    let rows = set.prompts.map((_, i) => i).filter((i) => {
      const p = set.prompts[i];
      if (state.allfail && p[P.SOLVED] > 0) return false;
      if (state.solved && p[P.SOLVED] === 0) return false;
      if (state.fmt && p[P.FMT] === 0) return false;
      return !q || haystack(set, state.set, i).includes(q);
    });
    const key = { maxw: (p) => -(p[P.MAXW] ?? 0), ess: (p) => p[P.ESS], bestR: (p) => -p[P.BESTR], worstR: (p) => p[P.BESTR],
      first: (p) => p[P.FIRST] || 1e9, fmt: (p) => -p[P.FMT] }[state.sort];
    if (key) rows = rows.sort((i, j) => key(set.prompts[i]) - key(set.prompts[j]) || i - j);
    return rows;
  }
  function pager(into, page, total, size, go) {
    const pages = Math.max(1, Math.ceil(total / size));
    const bar = child(into, el("div", "pager"));
    const prev = el("button", null, "‹ prev");
    const next = el("button", null, "next ›");
    prev.disabled = page <= 0;
    next.disabled = page >= pages - 1;
    prev.onclick = () => go(page - 1);
    next.onclick = () => go(page + 1);
    add(bar, prev, el("span", "muted", "page " + (page + 1) + " of " + pages + " (" + total + " prompts)"), next);
  }
  function row(cells, cls, onclick) {
    const r = el("div", "prow" + (cls ? " " + cls : ""));
    for (const c of cells) add(r, el("span", null, c));
    if (onclick) r.onclick = onclick;
    return r;
  }
  function renderList() {
    const set = D.sets[state.set];
    const list = clear($("t-list"));
    if (!set) return add(list, el("p", "muted", "No trajectory file among the inputs."));
    const rows = selected();
    const size = D.page_size;
    state.page = Math.min(state.page, Math.max(0, Math.ceil(rows.length / size) - 1));
    pager(list, state.page, rows.length, size, (pg) => { state.page = pg; renderList(); writeHash(); });
    add(list, row(["prompt", "solved", "ESS", "max w", "best R"], "head"));
    for (const pi of rows.slice(state.page * size, (state.page + 1) * size)) {
      const p = set.prompts[pi];
      const r = row([p[P.ID], p[P.SOLVED] + "/" + p[P.K], fmt(p[P.ESS], 2), fmt(p[P.MAXW], 2), fmt(p[P.BESTR], 2)],
        pi === state.open ? "sel" : "", () => { state.open = pi; renderList(); renderDetail(); writeHash(); });
      r.dataset.prompt = pi;
      add(list, r);
    }
  }
  function renderDetail() {
    const box = clear($("t-detail"));
    const set = D.sets[state.set];
    if (!set || state.open < 0 || state.open >= set.prompts.length) return add(box, el("p", "muted", "Pick a prompt."));
    trajectories(set, state.open, box);
  }

  // -- weights at a glance ----------------------------------------------------------------------------
  function histogram(title, h) {
    const box = el("div", "hist");
    add(box, el("b", null, title));
    if (!h.counts.length) return add(box, el("p", "muted", "none"));
    const top = Math.max(...h.counts);
    const bars = child(box, el("div", "bars"));
    bars.style.height = "120px";
    h.counts.forEach((c, i) => {
      const b = child(bars, el("div"));
      b.style.height = (100 * c / top) + "%";
      b.title = fmt(h.edges[i]) + " – " + fmt(h.edges[i + 1]) + ": " + c;
    });
    add(box, el("div", "muted", fmt(h.edges[0]) + " … " + fmt(h.edges[h.edges.length - 1]) + "   (tallest bar " + top + ")"));
    return box;
  }
  function renderWeights() {
    const body = clear($("w-body"));
    const set = D.sets[state.set];
    if (!set) return add(body, el("p", "muted", "No trajectory file among the inputs."));
    const ps = set.prompts;
    const allFail = ps.filter((p) => p[P.SOLVED] === 0).length;
    const essRatio = ps.reduce((s, p) => s + p[P.ESS] / p[P.K], 0) / Math.max(ps.length, 1);
    add(body, el("p", null, set.trajs.length + " trajectories, " + ps.length + " prompts, " + allFail + " all-fail; mean ESS/K "
      + fmt(essRatio) + ".  Weights " + (set.stored.weight ? "from the file" : "computed") + " with scheme " + set.params.scheme
      + ", β = " + set.params.beta + ", γ = " + set.params.gamma + ", λ = " + set.params.lam + ", format penalty "
      + set.params.format_penalty + "  (" + set.source + ")"));
    add(body, add(el("div", "hists"), histogram("returns", set.hist.return), histogram("weights", set.hist.weight),
      histogram("Kish ESS per prompt", set.hist.ess)));
    add(body, el("h3", null, "Prompts whose weight sits on the fewest trajectories (lowest ESS/K)"));
    const order = ps.map((_, i) => i).sort((i, j) => ps[i][P.ESS] / ps[i][P.K] - ps[j][P.ESS] / ps[j][P.K]).slice(0, 30);
    const list = child(body, el("div", "list"));
    add(list, row(["prompt", "solved", "ESS", "max w", "weights (sorted)"], "head wrow"));
    for (const pi of order) {
      const p = ps[pi];
      const ws = p[P.T].map((i) => set.trajs[i][T.W] || 0).sort((a, b) => b - a);
      const top = Math.max(...ws, 1e-12);
      const bars = el("span", "bars");
      for (const w of ws) bars.appendChild(el("div")).style.height = (100 * w / top) + "%";
      const r = row([p[P.ID], p[P.SOLVED] + "/" + p[P.K], fmt(p[P.ESS], 2), fmt(p[P.MAXW], 2)], "wrow", () => {
        state.open = pi; showTab("trajectories"); renderList(); renderDetail(); writeHash();
      });
      add(r, bars);
      add(list, r);
    }
  }

  // -- two runs side by side --------------------------------------------------------------------------
  function renderCompare() {
    const summary = clear($("c-summary"));
    const list = clear($("c-list"));
    const detail = clear($("c-detail"));
    const A = D.sets[state.a];
    const B = D.sets[state.b];
    if (!A || !B || state.a === state.b) return add(summary, el("p", "muted", "Pick two different trajectory sets."));
    const inB = new Map(B.prompts.map((p, i) => [p[P.ID], i]));
    const shared = A.prompts.map((p, i) => [i, inB.get(p[P.ID])]).filter(([, j]) => j !== undefined);
    const solved = ([i, j]) => [A.prompts[i][P.SOLVED] > 0, B.prompts[j][P.SOLVED] > 0];
    const counts = { both: 0, a: 0, b: 0, neither: 0 };
    for (const pair of shared) {
      const [sa, sb] = solved(pair);
      counts[sa && sb ? "both" : sa ? "a" : sb ? "b" : "neither"] += 1;
    }
    add(summary, el("p", null, shared.length + " shared prompts: both solved " + counts.both + ", only A (" + A.name + ") "
      + counts.a + ", only B (" + B.name + ") " + counts.b + ", neither " + counts.neither + "."));
    const keep = { diff: (sa, sb) => sa !== sb, a: (sa, sb) => sa && !sb, b: (sa, sb) => sb && !sa, all: () => true }[state.cfilter];
    const rows = shared.filter((pair) => keep(...solved(pair)));
    const size = D.page_size;
    pager(list, state.cpage, rows.length, size, (pg) => { state.cpage = pg; renderCompare(); writeHash(); });
    add(list, row(["prompt", "A solved", "B solved"], "head"));
    for (const [i, j] of rows.slice(state.cpage * size, (state.cpage + 1) * size)) {
      const id = A.prompts[i][P.ID];
      add(list, row([id, A.prompts[i][P.SOLVED] + "/" + A.prompts[i][P.K], B.prompts[j][P.SOLVED] + "/" + B.prompts[j][P.K]],
        id === state.copen ? "sel" : "", () => { state.copen = id; renderCompare(); writeHash(); }));
      if (id === state.copen) {
        trajectories(A, i, child(detail, el("div")));
        trajectories(B, j, child(detail, el("div")));
      }
    }
  }

  async function main() {
    readHash();
    D = await load();
    S = D.strings;
    showTab(state.tab);
    for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => { showTab(b.dataset.tab); writeHash(); };
    fillSets($("t-set"), state.set);
    fillSets($("w-set"), state.set);
    fillSets($("c-a"), state.a);
    fillSets($("c-b"), Math.min(state.b, D.sets.length - 1));
    const trajs = () => { state.page = 0; renderList(); renderDetail(); };
    const both = () => { $("w-set").value = $("t-set").value = String(state.set); state.open = -1; trajs(); renderWeights(); };
    bind("t-set", "set", both);
    bind("w-set", "set", both);
    bind("t-sort", "sort", trajs);
    bind("t-tsort", "tsort", renderDetail);
    bind("f-allfail", "allfail", trajs, "checked");
    bind("f-solved", "solved", trajs, "checked");
    bind("f-fmt", "fmt", trajs, "checked");
    bind("t-search", "q", trajs);
    const cmp = () => { state.cpage = 0; renderCompare(); };
    bind("c-a", "a", cmp);
    bind("c-b", "b", cmp);
    bind("c-filter", "cfilter", cmp);
    renderList();
    renderDetail();
    renderWeights();
    renderCompare();
    const n = D.sets.reduce((s, x) => s + x.trajs.length, 0);
    const ms = Math.round(performance.now());
    $("status").textContent = n + " trajectories in " + D.sets.length + " set(s); ready " + ms + " ms after opening";
    document.body.dataset.ready = "1";
    document.body.dataset.renderMs = String(ms);
  }
  main().catch((e) => {
    $("status").textContent = "could not read the embedded data: " + e;
    document.body.dataset.ready = "error";
  });
})();
