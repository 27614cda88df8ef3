// Squid Mesh visual editor. The document is a workflow spec (JSON); every change is sent to
// the server, which validates it with the library's editor API and answers with problems,
// the graph preview and the diff against the registered version. Nothing is validated here.
"use strict";
(function () {
  const bootEl = document.getElementById("editor-boot");
  if (!bootEl) return;
  const boot = JSON.parse(bootEl.textContent);
  const base = document.body.dataset.base || "";
  const csrf = document.body.dataset.csrf || "";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 160, H = 46;
  let doc = boot.document;
  let selected = null; // {type: "node", id} or {type: "edge", index}
  let connectFrom = null;
  let connecting = false;
  let problems = [];
  let registeredName = boot.version ? doc.name : null;
  const $ = (id) => document.getElementById(id);

  doc.steps = doc.steps || [];
  doc.triggers = doc.triggers || [];
  doc.editor = doc.editor || {};
  doc.editor.nodes = doc.editor.nodes || {};

  function nodeMeta(id) {
    const nodes = doc.editor.nodes;
    nodes[id] = nodes[id] || {};
    return nodes[id];
  }
  function position(id, i) {
    const m = nodeMeta(id);
    if (!m.position) m.position = { x: 30 + (i % 4) * 210, y: 30 + Math.floor(i / 4) * 90 };
    return m.position;
  }
  function stepIndex(name) {
    return doc.steps.findIndex((s) => s.name === name);
  }
  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  function problemsAt(prefix) {
    return problems.filter((p) => p.path === prefix || p.path.startsWith(prefix + "/"));
  }

  function draw() {
    const nodes = $("nodes"), edges = $("edges");
    nodes.replaceChildren();
    edges.replaceChildren();
    doc.steps.forEach((s, i) => {
      const p = position(s.name, i);
      const bad = problemsAt("/steps/" + i);
      const g = el("g", {
        class: "ed-node" + (bad.length ? " has-problem" : "") + (selected && selected.type === "node" && selected.id === s.name ? " selected" : "") + (connectFrom === s.name ? " connect-from" : ""),
        "data-node-id": s.name,
        "data-problems": String(bad.length),
        transform: `translate(${p.x},${p.y})`,
      }, nodes);
      el("rect", { width: W, height: H, rx: 8 }, g);
      const t = el("text", { x: 10, y: 19, class: "node-name" }, g);
      t.textContent = s.name;
      const d = el("text", { x: 10, y: 36, class: "node-detail" }, g);
      d.textContent = s.action || (s.builtin ? "builtin:" + s.builtin.kind : "(no action)");
      if (bad.length) {
        const title = el("title", {}, g);
        title.textContent = bad.map((b) => b.message).join("\n");
      }
      g.addEventListener("mousedown", (ev) => startDrag(ev, s.name));
      g.addEventListener("click", (ev) => { ev.stopPropagation(); clickNode(s.name); });
    });
    (doc.transitions || []).forEach((t, i) => {
      const a = stepIndex(t.from), b = stepIndex(t.to);
      if (a < 0) return;
      const pa = position(t.from, a);
      const pb = b >= 0 ? position(t.to, b) : { x: pa.x + W + 60, y: pa.y };
      const x1 = pa.x + W, y1 = pa.y + H / 2, x2 = pb.x, y2 = pb.y + H / 2;
      const mid = (x1 + x2) / 2;
      const bad = problemsAt("/transitions/" + i);
      const path = el("path", {
        d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
        class: "ed-edge on-" + (t.on || "ok") + (bad.length ? " has-problem" : "") + (selected && selected.type === "edge" && selected.index === i ? " selected" : ""),
        "data-edge-id": `${t.from}:${t.on || "ok"}:${t.to}`,
        "marker-end": "url(#ed-arrow)",
      }, edges);
      path.addEventListener("click", (ev) => { ev.stopPropagation(); selected = { type: "edge", index: i }; draw(); });
      if (t.to === "complete") {
        const c = el("text", { x: x2 - 10, y: y2 + 4, class: "node-detail" }, edges);
        c.textContent = "end";
      }
    });
    (doc.steps || []).forEach((s) => (s.after || []).forEach((dep) => {
      const a = stepIndex(dep), b = stepIndex(s.name);
      if (a < 0 || b < 0) return;
      const pa = position(dep, a), pb = position(s.name, b);
      el("path", { d: `M ${pa.x + W} ${pa.y + H / 2} L ${pb.x} ${pb.y + H / 2}`, class: "ed-edge dependency", "data-edge-id": `${dep}:dependency:${s.name}`, "marker-end": "url(#ed-arrow)" }, edges);
    }));
    $("wf-name").value = doc.name || "";
    drawProblems();
  }

  function drawProblems() {
    const ul = $("problems");
    ul.replaceChildren();
    for (const p of problems) {
      const li = document.createElement("li");
      li.dataset.path = p.path;
      li.dataset.code = p.code;
      li.textContent = `${p.path || "(document)"}: ${p.message} (${p.code})`;
      ul.appendChild(li);
    }
    if (!problems.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "No problems.";
      ul.appendChild(li);
    }
    document.querySelectorAll("[data-path]").forEach((f) => {
      if (f.tagName === "LI") return;
      const bad = problems.filter((p) => p.path === f.dataset.path || p.path.startsWith(f.dataset.path + "/"));
      f.classList.toggle("has-problem", bad.length > 0);
      f.title = bad.map((b) => b.message).join("\n");
    });
  }

  let drag = null;
  function startDrag(ev, id) {
    if (connecting) return;
    const p = position(id, stepIndex(id));
    drag = { id, x: ev.clientX, y: ev.clientY, ox: p.x, oy: p.y, moved: false };
    ev.preventDefault();
  }
  window.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    const p = nodeMeta(drag.id).position;
    p.x = Math.max(0, Math.round(drag.ox + ev.clientX - drag.x));
    p.y = Math.max(0, Math.round(drag.oy + ev.clientY - drag.y));
    drag.moved = true;
    draw();
  });
  window.addEventListener("mouseup", () => {
    if (drag && drag.moved) changed();
    drag = null;
  });

  function clickNode(id) {
    if (connecting) {
      if (!connectFrom) {
        connectFrom = id;
      } else if (connectFrom !== id) {
        doc.transitions = doc.transitions || [];
        doc.transitions.push({ from: connectFrom, on: $("connect-on").value, to: id });
        connectFrom = null;
        setConnecting(false);
        changed();
      }
      draw();
      return;
    }
    selected = { type: "node", id };
    draw();
    stepForm();
  }
  function setConnecting(on) {
    connecting = on;
    connectFrom = null;
    $("connect").setAttribute("aria-pressed", String(on));
    $("connect").classList.toggle("active", on);
  }

  function field(label, path, input) {
    const l = document.createElement("label");
    l.className = "field";
    l.textContent = label + " ";
    input.dataset.path = path;
    l.appendChild(input);
    return l;
  }
  function input(value, onchange, attrs) {
    const i = document.createElement("input");
    Object.assign(i, attrs || {});
    if (i.type === "checkbox") i.checked = !!value; else i.value = value == null ? "" : value;
    i.addEventListener("change", () => onchange(i.type === "checkbox" ? i.checked : i.value));
    return i;
  }

  function renameStep(s, name) {
    const old = s.name;
    if (!name || name === old) return;
    s.name = name;
    (doc.transitions || []).forEach((t) => { if (t.from === old) t.from = name; if (t.to === old) t.to = name; });
    doc.steps.forEach((o) => { if (o.after) o.after = o.after.map((a) => (a === old ? name : a)); });
    doc.editor.nodes[name] = doc.editor.nodes[old] || {};
    delete doc.editor.nodes[old];
    selected = { type: "node", id: name };
  }

  function stepForm() {
    const box = $("step-form");
    box.replaceChildren();
    if (!selected || selected.type !== "node") return;
    const i = stepIndex(selected.id);
    if (i < 0) return;
    const s = doc.steps[i];
    const at = "/steps/" + i;
    box.appendChild(field("Name", at + "/name", input(s.name, (v) => { renameStep(s, v.trim()); changed(); stepForm(); }, { id: "step-name", maxLength: 128 })));
    const kind = document.createElement("select");
    kind.id = "step-kind";
    const choices = [["action", "WebAssembly action"]].concat(boot.builtins.map((b) => ["builtin:" + b, "built-in " + b]));
    for (const [v, label] of choices) {
      const o = document.createElement("option");
      o.value = v; o.textContent = label;
      kind.appendChild(o);
    }
    kind.value = s.builtin ? "builtin:" + s.builtin.kind : "action";
    kind.addEventListener("change", () => {
      if (kind.value === "action") { delete s.builtin; s.action = s.action || (boot.actions[0] && boot.actions[0].key) || ""; }
      else {
        delete s.action;
        const k = kind.value.slice(8);
        s.builtin = { kind: k };
        if (k === "log") s.builtin.message = s.name;
        if (k === "wait") s.builtin.duration_ms = 1000;
      }
      changed(); stepForm();
    });
    box.appendChild(field("Runs", at + "/builtin/kind", kind));
    if (!s.builtin) {
      const sel = document.createElement("select");
      sel.id = "step-action";
      const none = document.createElement("option");
      none.value = ""; none.textContent = "(choose an approved action)";
      sel.appendChild(none);
      const keys = boot.actions.map((a) => a.key);
      if (s.action && !keys.includes(s.action)) keys.push(s.action);
      for (const k of keys) {
        const o = document.createElement("option");
        o.value = k; o.textContent = k;
        sel.appendChild(o);
      }
      sel.value = s.action || "";
      sel.addEventListener("change", () => { s.action = sel.value; changed(); stepForm(); });
      box.appendChild(field("Action", at + "/action", sel));
      const a = boot.actions.find((x) => x.key === s.action);
      if (a) {
        const pre = document.createElement("pre");
        pre.className = "schema";
        pre.textContent = (a.summary ? a.summary + "\n" : "") + "input: " + JSON.stringify(a.input_schema, null, 1) + "\noutput: " + JSON.stringify(a.output_schema, null, 1);
        box.appendChild(pre);
      }
    } else if (s.builtin.kind === "log") {
      box.appendChild(field("Message", at + "/builtin/message", input(s.builtin.message, (v) => { s.builtin.message = v; changed(); }, { id: "step-message" })));
    } else if (s.builtin.kind === "wait") {
      box.appendChild(field("Wait (ms)", at + "/builtin/duration_ms", input(s.builtin.duration_ms, (v) => { s.builtin.duration_ms = Number(v); changed(); }, { type: "number", id: "step-wait" })));
    }
    const inputText = document.createElement("textarea");
    inputText.id = "step-input";
    inputText.rows = 3;
    inputText.value = s.input === undefined ? "" : JSON.stringify(s.input);
    inputText.placeholder = '["order_id"] or {"amount_cents": ["validation", "total_cents"]}';
    inputText.addEventListener("change", () => {
      const t = inputText.value.trim();
      if (!t) { delete s.input; changed(); return; }
      try { s.input = JSON.parse(t); inputText.classList.remove("has-problem"); changed(); }
      catch (e) { inputText.classList.add("has-problem"); inputText.title = "not JSON: " + e.message; }
    });
    box.appendChild(field("Input (JSON)", at + "/input", inputText));
    box.appendChild(field("Output key", at + "/output", input(s.output, (v) => { if (v.trim()) s.output = v.trim(); else delete s.output; changed(); }, { id: "step-output" })));
    box.appendChild(field("Retries (max attempts)", at + "/retry", input(s.retry ? s.retry.max_attempts : "", (v) => { if (Number(v) > 0) s.retry = Object.assign(s.retry || {}, { max_attempts: Number(v) }); else delete s.retry; changed(); }, { type: "number", min: 1, id: "step-retry" })));
    box.appendChild(field("Irreversible", at + "/irreversible", input(s.irreversible, (v) => { if (v) s.irreversible = true; else delete s.irreversible; changed(); }, { type: "checkbox", id: "step-irreversible" })));
    drawProblems();
  }

  function startForm() {
    const form = $("start-form");
    form.replaceChildren();
    const trig = (doc.triggers || []).find((t) => (t.type || "manual") === "manual");
    if (!trig) { form.textContent = "No manual trigger."; return; }
    for (const f of trig.payload || []) {
      const type = f.type || "string";
      const attrs = { name: f.name, id: "payload-" + f.name, required: f.required !== false && f.default === undefined };
      if (type === "integer" || type === "float") Object.assign(attrs, { type: "number", step: type === "integer" ? "1" : "any" });
      if (type === "boolean") attrs.type = "checkbox";
      const i = input(f.default, () => {}, attrs);
      i.dataset.type = type;
      const l = document.createElement("label");
      l.className = "field";
      l.textContent = `${f.name} (${type}) `;
      l.appendChild(i);
      form.appendChild(l);
    }
  }
  function payloadFromForm() {
    const out = {};
    for (const i of $("start-form").querySelectorAll("input")) {
      const t = i.dataset.type;
      if (t === "boolean") { out[i.name] = i.checked; continue; }
      if (i.value === "") continue;
      if (t === "integer" || t === "float") out[i.name] = Number(i.value);
      else if (t === "map" || t === "list") { try { out[i.name] = JSON.parse(i.value); } catch (_) { out[i.name] = i.value; } }
      else out[i.name] = i.value;
    }
    return out;
  }

  async function call(op, body) {
    const r = await fetch(`${base}/editor/api/${op}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let json = null;
    try { json = await r.json(); } catch (_) { json = { error: { message: "the server answered " + r.status } }; }
    return { ok: r.ok, status: r.status, json };
  }

  let pending = null;
  let seq = 0;
  function changed() {
    clearTimeout(pending);
    pending = setTimeout(validate, 250);
    $("validity").textContent = "checking…";
    $("validity").dataset.state = "checking";
    $("payload-fields").value = JSON.stringify((doc.triggers[0] || {}).payload || [], null, 1);
    startForm();
    draw();
  }
  async function validate() {
    const mine = ++seq;
    const r = await call("validate", { document: doc });
    if (mine !== seq) return;
    if (!r.ok) {
      problems = (r.json.error && r.json.error.problems) || [];
      $("validity").textContent = (r.json.error && r.json.error.message) || "the check failed";
      $("validity").dataset.state = "error";
    } else {
      problems = r.json.problems || [];
      $("validity").textContent = r.json.valid ? "valid" : `${problems.length} problem(s)`;
      $("validity").dataset.state = r.json.valid ? "valid" : "invalid";
      $("diff").textContent = r.json.diff ? JSON.stringify(r.json.diff, null, 1) : "(not registered yet)";
    }
    draw();
    if (selected && selected.type === "node") stepForm();
  }

  $("wf-name").addEventListener("change", () => { doc.name = $("wf-name").value.trim(); changed(); });
  $("add-step").addEventListener("click", () => {
    let n = doc.steps.length + 1;
    while (stepIndex("step_" + n) >= 0) n++;
    const name = "step_" + n;
    const step = boot.actions.length ? { name, action: boot.actions[0].key } : { name, builtin: { kind: "log", message: name } };
    doc.steps.push(step);
    position(name, doc.steps.length - 1);
    selected = { type: "node", id: name };
    changed();
    stepForm();
  });
  $("connect").addEventListener("click", () => { setConnecting(!connecting); draw(); });
  $("remove").addEventListener("click", () => {
    if (!selected) return;
    if (selected.type === "edge") doc.transitions.splice(selected.index, 1);
    else {
      const id = selected.id;
      doc.steps = doc.steps.filter((s) => s.name !== id);
      doc.transitions = (doc.transitions || []).filter((t) => t.from !== id && t.to !== id);
      doc.steps.forEach((s) => { if (s.after) s.after = s.after.filter((a) => a !== id); });
      delete doc.editor.nodes[id];
    }
    if (doc.transitions && !doc.transitions.length) delete doc.transitions;
    selected = null;
    stepForm();
    changed();
  });
  document.addEventListener("keydown", (ev) => {
    if ((ev.key === "Delete" || ev.key === "Backspace") && selected && !/INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) $("remove").click();
  });
  $("canvas").addEventListener("click", () => { selected = null; draw(); stepForm(); });
  $("payload-fields").addEventListener("change", () => {
    try {
      const v = JSON.parse($("payload-fields").value || "[]");
      if (!doc.triggers.length) doc.triggers.push({ name: "manual", type: "manual" });
      doc.triggers[0].payload = v;
      $("payload-fields").classList.remove("has-problem");
      changed();
    } catch (e) {
      $("payload-fields").classList.add("has-problem");
      $("payload-fields").title = "not JSON: " + e.message;
    }
  });
  $("register").addEventListener("click", async () => {
    const out = $("register-result");
    const r = await call("register", { document: doc });
    if (r.ok) {
      registeredName = r.json.workflow;
      out.textContent = r.json.changed ? `Registered ${r.json.workflow} version ${r.json.version}.` : `Unchanged: ${r.json.workflow} version ${r.json.version} is this document.`;
      out.dataset.state = "registered";
      out.dataset.version = r.json.version;
      validate();
    } else {
      const e = r.json.error || {};
      out.textContent = `${e.message || "refused"} (${e.code || r.status})`;
      out.dataset.state = "refused";
      if (e.problems && e.problems.length) { problems = e.problems; draw(); }
    }
  });
  $("start").addEventListener("click", async () => {
    const out = $("start-result");
    const r = await call("start", { workflow: registeredName || doc.name, payload: payloadFromForm() });
    out.replaceChildren();
    if (!r.ok) {
      const e = r.json.error || {};
      out.textContent = `${e.message || "refused"} (${e.code || r.status})` + (e.problems || []).map((p) => ` ${p.path}: ${p.message}`).join(";");
      out.dataset.state = "refused";
      return;
    }
    const a = document.createElement("a");
    a.href = r.json.href;
    a.id = "started-run";
    a.textContent = "run " + r.json.run_id.slice(0, 8);
    const st = document.createElement("span");
    st.id = "started-status";
    st.textContent = " starting";
    out.append(a, st);
    out.dataset.state = "started";
    for (let i = 0; i < 240; i++) {
      await new Promise((res) => setTimeout(res, 500));
      const page = await fetch(r.json.href, { credentials: "same-origin" });
      const text = await page.text();
      const m = /id="run" data-run-id="[^"]+" data-status="([a-z]+)"/.exec(text);
      if (!m) continue;
      st.textContent = " " + m[1];
      st.dataset.status = m[1];
      if (["completed", "failed", "cancelled"].includes(m[1])) break;
    }
  });
  if (!boot.can_act) {
    for (const id of ["register", "start"]) {
      $(id).disabled = true;
      $(id).title = "Sign in with a token that may act.";
    }
  }
  changed();
})();
