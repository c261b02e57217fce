// Draws the page from the JSON in #data: facts, SVG charts, tables, and the tiles of the
// chosen view, a page at a time. No library, nothing fetched: it opens from file://. With
// DATA.edit (a page served by `vithybrid review`) the tiles take label decisions: edit mode.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const PAGE_SIZES = [100, 250, 500];
  const BARS_SHOWN = 30;
  const state = { view: 0, page: 0, pageSize: PAGE_SIZES[1], filter: "", shown: [] };
  // edit mode (a served page: vithybrid review): the label set and who was reviewed
  const EDIT = DATA.edit ? { ...DATA.edit, reviewed: new Set(DATA.edit.reviewed) } : null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function score(value) {
    return value === undefined || value === null ? "" : value.toFixed(3);
  }

  // ---------------------------------------------------------------- header, charts, tables

  function drawHeader() {
    document.getElementById("title").textContent = DATA.title;
    document.getElementById("subtitle").textContent = DATA.subtitle || "";
    const facts = document.getElementById("facts");
    for (const [name, value] of DATA.facts) {
      facts.append(el("div", {}, el("dt", { text: name }), el("dd", { text: value })));
    }
  }

  function barChart(chart) {
    const items = chart.items.slice(0, BARS_SHOWN);
    const width = 640, row = 20, labelWidth = 190, countWidth = 60;
    const height = Math.max(items.length, 1) * row + 4;
    const most = Math.max(1, ...items.map((item) => item[1]));
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    items.forEach(([name, count], i) => {
      const y = i * row + 2;
      const group = svg("g", chart.filters ? { class: "filter" } : {});
      const title = svg("title", {}, `${name}: ${count}`);
      const shortName = name.length > 28 ? name.slice(0, 27) + "…" : name;
      group.append(title, svg("text", { x: labelWidth - 6, y: y + 14, "text-anchor": "end" }, shortName));
      const length = Math.max(1, (count / most) * (width - labelWidth - countWidth));
      const special = name === "(abstained)" ? " abstained" : "";
      group.append(svg("rect", { class: "bar" + special, x: labelWidth, y: y + 3, width: length, height: row - 6, rx: 2 }));
      group.append(svg("text", { x: labelWidth + length + 5, y: y + 14, class: "axis" }, String(count)));
      if (chart.filters) group.addEventListener("click", () => setFilter(name));
      root.append(group);
    });
    const card = el("div", { class: "card chart bars" }, el("h2", { text: chart.title }), root);
    if (chart.items.length > BARS_SHOWN) {
      card.append(el("p", { class: "more", text: `and ${chart.items.length - BARS_SHOWN} more` }));
    }
    return card;
  }

  function histogramChart(chart) {
    const width = 640, height = 220, left = 44, right = 24, bottom = 26, top = 8;
    const counts = chart.counts, most = Math.max(1, ...counts);
    const step = (width - left - right) / counts.length;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const plot = height - bottom - top;
    counts.forEach((count, i) => {
      const h = (count / most) * plot;
      const from = chart.low + ((chart.high - chart.low) * i) / counts.length;
      const to = chart.low + ((chart.high - chart.low) * (i + 1)) / counts.length;
      const bar = svg("rect", { class: "bar", x: left + i * step + 1, y: top + plot - h, width: step - 2, height: h });
      bar.append(svg("title", {}, `${from.toFixed(2)}–${to.toFixed(2)}: ${count}`));
      root.append(bar);
    });
    for (let t = 0; t <= 4; t++) {
      const value = chart.low + ((chart.high - chart.low) * t) / 4;
      root.append(svg("text", { class: "axis", x: left + (t * (width - left - right)) / 4, y: height - 8, "text-anchor": "middle" }, value.toFixed(2)));
    }
    root.append(svg("text", { class: "axis", x: left - 6, y: top + 10, "text-anchor": "end" }, String(most)));
    root.append(svg("text", { class: "axis", x: left - 6, y: top + plot, "text-anchor": "end" }, "0"));
    root.append(svg("line", { x1: left, x2: width - right, y1: top + plot + 0.5, y2: top + plot + 0.5, stroke: "#9aa3b2" }));
    return el("div", { class: "card chart histogram" }, el("h2", { text: chart.title }), root);
  }

  function heatmapChart(chart) {
    const n = chart.rows.length, m = chart.columns.length;
    const cell = Math.max(22, Math.min(48, Math.floor(560 / Math.max(m, 1))));
    const left = 150, top = 110;
    const width = left + m * cell + 10, height = top + n * cell + 10;
    const most = Math.max(1, ...chart.matrix.flat());
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", style: `max-width:${width}px` });
    chart.columns.forEach((name, j) => {
      const x = left + j * cell + cell / 2;
      root.append(svg("text", { x, y: top - 6, transform: `rotate(-45 ${x} ${top - 6})` }, name.slice(0, 18)));
    });
    chart.rows.forEach((name, i) => {
      root.append(svg("text", { x: left - 6, y: top + i * cell + cell / 2 + 4, "text-anchor": "end" }, name.slice(0, 22)));
      chart.matrix[i].forEach((count, j) => {
        const strength = count / most;
        const colour = i === j ? `rgba(47,111,222,${0.08 + 0.92 * strength})` : `rgba(192,57,43,${count ? 0.12 + 0.88 * strength : 0.03})`;
        const rect = svg("rect", { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1, fill: colour, class: "cell" });
        rect.append(svg("title", {}, `${chart.row_title} ${name} → ${chart.column_title} ${chart.columns[j]}: ${count}`));
        root.append(rect);
        if (count) {
          root.append(svg("text", { x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4, "text-anchor": "middle", style: strength > 0.55 ? "fill:#fff" : "" }, String(count)));
        }
      });
    });
    root.append(svg("text", { class: "axis", x: 4, y: 14 }, `rows: ${chart.row_title}, columns: ${chart.column_title}`));
    return el("div", { class: "card chart heatmap" }, el("h2", { text: chart.title }), root);
  }

  function drawCharts() {
    const holder = document.getElementById("charts");
    const draw = { bars: barChart, histogram: histogramChart, heatmap: heatmapChart };
    for (const chart of DATA.charts) holder.append(draw[chart.kind](chart));
  }

  function drawTables() {
    const holder = document.getElementById("tables");
    for (const spec of DATA.tables) {
      const head = el("tr", {}, ...spec.columns.map((name) => el("th", { text: name })));
      const body = spec.rows.map((row) =>
        el("tr", {}, ...row.map((value, i) => {
          const column = spec.columns[i];
          const number = typeof value === "number" || /^[-–]?[\d.,]+$|^–$/.test(value);
          const cls = number ? "number" : column === "error" ? "error" : column === "path" ? "path" : "";
          const text = typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : value === null ? "–" : String(value);
          return el("td", { class: cls, text });
        })));
      const card = el("div", { class: "card table", "data-title": spec.title },
        el("h2", { text: spec.title }), el("table", {}, el("thead", {}, head), el("tbody", {}, ...body)));
      if (spec.note) card.append(el("p", { class: "note", text: spec.note }));
      holder.append(card);
    }
  }

  // ---------------------------------------------------------------- tiles

  function tileNode(index) {
    const tile = DATA.tiles[index];
    const name = tile.path.split(/[\\/]/).pop() || tile.path;
    let picture;
    if (tile.thumb) {
      picture = el("img", { src: tile.thumb, loading: "lazy", decoding: "async", alt: name });
    } else {
      picture = el("div", { class: "placeholder", text: tile.error || tile.reason || "no image" });
    }
    const label = tile.title === undefined ? (tile.error ? "failed" : null) : tile.title;
    let kind = tile.kind || "";
    if (EDIT && EDIT.reviewed.has(index)) kind += " reviewed";
    if (EDIT && (tile.title ?? null) !== (EDIT.original[index] ?? null)) kind += " changed";
    const node = el("figure", { class: `tile ${kind}`, tabindex: "0", "data-index": index, title: tile.path },
      el("div", { class: "thumb" }, picture),
      el("figcaption", {},
        label === null ? null : el("div", { class: "label", text: label }),
        tile.detail ? el("div", { class: "detail", text: tile.detail }) : null,
        el("div", { class: "name", text: name })));
    node.addEventListener("click", () => openViewer(index));
    // in edit mode Enter accepts the label (the edit keys, below); a click still opens the view
    // (its default action would press the viewer's close button, focused by then)
    node.addEventListener("keydown", (event) => { if (event.key === "Enter" && !EDIT) { event.preventDefault(); openViewer(index); } });
    return node;
  }

  // The reusable part: [{name, kind, count, indices}] -> headed grids of tiles.
  function renderGroups(container, groups) {
    container.replaceChildren();
    for (const group of groups) {
      const section = el("section", { class: `group ${group.kind || ""}`, "data-group": group.name });
      if (group.name) {
        section.append(el("h3", {}, el("span", { class: "name", text: group.name }),
          el("span", { class: "count", text: `${group.count} image${group.count === 1 ? "" : "s"}` })));
      }
      section.append(el("div", { class: "tiles" }, ...group.indices.map(tileNode)));
      container.append(section);
    }
  }

  function matches(tile, needle) {
    if (!needle) return true;
    return (tile.title || "").toLowerCase().includes(needle)
      || tile.path.toLowerCase().includes(needle)
      || (tile.group || "").toLowerCase().includes(needle);
  }

  function filtered() {
    const needle = state.filter.trim().toLowerCase();
    const order = DATA.views.length ? DATA.views[state.view].order : [];
    return needle ? order.filter((i) => matches(DATA.tiles[i], needle)) : order;
  }

  function pager(holder, pages) {
    holder.replaceChildren();
    if (pages <= 1) return;
    const go = (page) => { state.page = page; render(); };
    holder.append(
      el("button", { class: "previous", text: "‹ Previous", disabled: state.page === 0 ? "" : false, onclick: () => go(state.page - 1) }),
      el("span", { class: "position", text: `page ${state.page + 1} of ${pages}` }),
      el("button", { class: "next", text: "Next ›", disabled: state.page >= pages - 1 ? "" : false, onclick: () => go(state.page + 1) }),
      el("select", { "aria-label": "tiles per page", onchange: (event) => { state.pageSize = Number(event.target.value); go(0); } },
        ...PAGE_SIZES.map((size) => el("option", { value: size, selected: size === state.pageSize ? "" : false, text: `${size} per page` }))));
  }

  function render() {
    const shown = filtered();
    state.shown = shown;
    const pages = Math.max(1, Math.ceil(shown.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    const slice = shown.slice(state.page * state.pageSize, (state.page + 1) * state.pageSize);
    // group sizes count every shown tile, not just this page's
    const sizes = new Map();
    for (const i of shown) { const g = DATA.tiles[i].group || ""; sizes.set(g, (sizes.get(g) || 0) + 1); }
    const grouped = !DATA.views.length || DATA.views[state.view].grouped !== false;
    const groups = [];
    for (const i of slice) {
      const tile = DATA.tiles[i], name = grouped ? tile.group || "" : "";
      if (!groups.length || groups[groups.length - 1].name !== name) {
        const kind = name && (tile.kind === "failed" || tile.kind === "abstained") ? tile.kind : "";
        groups.push({ name, kind, count: sizes.get(tile.group || ""), indices: [] });
      }
      groups[groups.length - 1].indices.push(i);
    }
    const container = document.getElementById("groups");
    renderGroups(container, groups);
    const total = DATA.views.length ? DATA.views[state.view].order.length : 0;
    if (!shown.length) container.append(el("p", { class: "empty", text: total ? "No image matches." : "No images." }));
    document.getElementById("shown").textContent = state.filter.trim()
      ? `${shown.length} of ${total} shown` : `${total} images`;
    pager(document.getElementById("pager-top"), pages);
    pager(document.getElementById("pager-bottom"), pages);
  }

  function drawViews() {
    const nav = document.getElementById("views");
    DATA.views.forEach((view, i) => {
      nav.append(el("button", { role: "tab", "aria-selected": String(i === state.view), text: `${view.name} (${view.order.length})`,
        onclick: () => {
          state.view = i; state.page = 0;
          for (const [j, button] of [...nav.children].entries()) button.setAttribute("aria-selected", String(j === i));
          document.getElementById("view-note").textContent = view.note || "";
          render();
        } }));
    });
    document.getElementById("view-note").textContent = DATA.views.length ? DATA.views[0].note || "" : "";
    let timer = null;
    const input = document.getElementById("filter");
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.filter = input.value; state.page = 0; render(); }, 120);
    });
  }

  function setFilter(text) {
    const input = document.getElementById("filter");
    input.value = text; state.filter = text; state.page = 0;
    render();
    document.getElementById("gallery").scrollIntoView({ behavior: "smooth" });
  }

  // ---------------------------------------------------------------- the larger view

  function openViewer(index) {
    const tile = DATA.tiles[index];
    const body = document.getElementById("viewer-body");
    const source = tile.image || tile.thumb;
    const large = el("div", { class: "large" });
    if (source) {
      const image = el("img", { src: source, alt: tile.path });
      // an original the browser cannot show (moved since): fall back to the thumbnail
      if (tile.image && tile.thumb) image.addEventListener("error", () => { image.src = tile.thumb; }, { once: true });
      large.append(image);
    } else {
      large.append(el("div", { class: "placeholder", text: tile.error || tile.reason || "no image" }));
    }
    const facts = el("div", { class: "facts" },
      el("h2", { text: tile.title === undefined ? (tile.error ? "failed" : "") : tile.title }),
      el("p", { class: "path", text: tile.path }));
    if (tile.detail) facts.append(el("p", { class: "detail", text: tile.detail }));
    if (tile.error) facts.append(el("p", { class: "error", text: tile.error }));
    if (tile.reason && !tile.error) facts.append(el("p", { class: "error", text: `no thumbnail: ${tile.reason}` }));
    if (tile.top_k && tile.top_k.length) {
      facts.append(el("table", { class: "topk" }, el("tbody", {}, ...tile.top_k.map(([label, value]) =>
        el("tr", {}, el("td", { text: label }), el("td", { class: "number", text: score(value) }),
          el("td", { class: "meter" }, el("span", { style: `width:${Math.round((value || 0) * 100)}%` })))))));
    }
    body.replaceChildren(large, facts);
    const dialog = document.getElementById("viewer");
    if (!dialog.open) dialog.showModal();
  }

  function setUpViewer() {
    const dialog = document.getElementById("viewer");
    document.getElementById("close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
    document.addEventListener("keydown", (event) => {
      if (!dialog.open || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
      const shown = state.shown, current = Number(dialog.dataset.index);
      const at = shown.indexOf(current) + (event.key === "ArrowRight" ? 1 : -1);
      if (at >= 0 && at < shown.length) { dialog.dataset.index = shown[at]; openViewer(shown[at]); }
    });
    const open = openViewer;
    openViewer = (index) => { dialog.dataset.index = index; open(index); };
  }

  // ---------------------------------------------------------------- edit mode (vithybrid review)
  // Number keys 1-9 or typing (type-ahead over the label set) then Enter give the focused tile a
  // label; Enter alone accepts the label shown; arrows move. Each decision is POSTed to the
  // server, which has it on disk before it answers: the tile changes only then.

  const edit = { typed: "", busy: 0 };

  function focusTile(index) {
    const at = state.shown.indexOf(index);
    if (at < 0) return;
    const page = Math.floor(at / state.pageSize);
    if (page !== state.page) { state.page = page; render(); }
    const node = document.querySelector(`#groups .tile[data-index="${index}"]`);
    if (node) { node.focus({ preventScroll: true }); node.scrollIntoView({ block: "nearest" }); }
    state.focus = index;
  }

  function move(step) {
    const at = state.shown.indexOf(state.focus);
    const to = Math.min(Math.max(at + step, 0), state.shown.length - 1);
    if (to >= 0) focusTile(state.shown[to]);
  }

  function perRow() {
    const node = document.querySelector(`#groups .tile[data-index="${state.focus}"]`);
    if (!node) return 1;
    const tiles = [...node.parentNode.children];
    return Math.max(1, tiles.filter((tile) => tile.offsetTop === tiles[0].offsetTop).length);
  }

  function matching(typed) {
    const needle = typed.toLowerCase();
    if (!needle) return [];
    const starts = EDIT.labels.filter((label) => label.toLowerCase().startsWith(needle));
    const within = EDIT.labels.filter((label) => !label.toLowerCase().startsWith(needle) && label.toLowerCase().includes(needle));
    return starts.concat(within);
  }

  function drawEdit(message) {
    const panel = document.getElementById("edit");
    panel.hidden = false;
    const keys = EDIT.labels.slice(0, EDIT.keys).map((label, i) =>
      el("button", { class: "key", "data-label": label, onclick: () => decide(state.focus, label) },
        el("kbd", { text: String(i + 1) }), " " + label));
    const found = matching(edit.typed);
    const typed = el("div", { class: "typed" },
      el("span", { class: "prompt", text: edit.typed ? `typed: ${edit.typed}` : "type a label…" }),
      edit.typed ? el("span", { class: found.length ? "match" : "nomatch",
        text: found.length ? `Enter: ${found[0]}${found.length > 1 ? ` (+${found.length - 1})` : ""}` : "no such label" }) : null);
    const progress = el("div", { class: "progress", text: `${EDIT.reviewed.size} of ${DATA.tiles.length} reviewed` });
    panel.replaceChildren(el("div", { class: "keys" }, ...keys), typed, progress);
    if (message) panel.append(el("div", { class: "message", text: message }));
  }

  async function decide(index, label) {
    if (index === undefined || index === null || !label) return;
    const tile = DATA.tiles[index];
    edit.busy += 1;
    let message = "";
    try {
      const answer = await fetch(EDIT.api, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${EDIT.token}` },
        body: JSON.stringify({ path: tile.path, label }),
      });
      const body = await answer.json();
      if (!answer.ok) throw new Error(body.error || answer.statusText);
      tile.title = body.label;
      EDIT.reviewed.add(index);
      const node = document.querySelector(`#groups .tile[data-index="${index}"]`);
      if (node) {
        const fresh = tileNode(index);
        const focused = document.activeElement === node;
        node.replaceWith(fresh);
        if (focused) fresh.focus({ preventScroll: true });
      }
    } catch (error) {
      message = `not saved: ${error.message}`;
    } finally {
      edit.busy -= 1;
    }
    drawEdit(message);
  }

  function editKey(event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.closest && target.closest("input, select, textarea, dialog")) return;
    if (document.getElementById("viewer").open) return;
    const key = event.key;
    const arrows = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow(), ArrowDown: perRow() };
    if (key in arrows) { event.preventDefault(); move(arrows[key]); return; }
    const index = state.focus;
    if (key === "Enter") {
      event.preventDefault();
      const label = edit.typed ? matching(edit.typed)[0] : DATA.tiles[index].title;
      if (!label) { drawEdit(edit.typed ? "no such label" : "no label to accept: type one"); return; }
      edit.typed = "";
      decide(index, label);
      move(1);
    } else if (key === "Escape") {
      edit.typed = ""; drawEdit();
    } else if (key === "Backspace") {
      event.preventDefault(); edit.typed = edit.typed.slice(0, -1); drawEdit();
    } else if (!edit.typed && /^[1-9]$/.test(key) && Number(key) <= EDIT.keys) {
      event.preventDefault();
      decide(index, EDIT.labels[Number(key) - 1]);
      move(1);
    } else if (key.length === 1 && (edit.typed || key !== " ")) {
      event.preventDefault(); edit.typed += key; drawEdit();
    }
  }

  function setUpEdit() {
    document.addEventListener("focusin", (event) => {
      const node = event.target.closest && event.target.closest("#groups .tile");
      if (node) state.focus = Number(node.dataset.index);
    });
    document.addEventListener("keydown", editKey);
    drawEdit();
    focusTile(EDIT.start);
  }

  drawHeader();
  drawCharts();
  drawTables();
  drawViews();
  setUpViewer();
  render();
  if (EDIT) setUpEdit();
  window.vithybridPage = { data: DATA, state, renderGroups, setFilter, edit: EDIT };
})();
