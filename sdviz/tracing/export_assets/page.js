// sdviz's exported run: the denoising player and the cross-attention explorer, from the JSON embedded in the page.
// No library, no network. Read top to bottom: helpers, the header, the player, the explorer, the keyboard.
// `window.sdvizPage` exposes the state and the map computation (the tests and the benchmark read them).
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("sdviz-data").textContent);
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------------------------------
  // Helpers
  // ---------------------------------------------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function bytes(b64) {
    const s = atob(b64);
    const a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    return a;
  }

  function loadImage(uri) {
    const img = new Image();
    img.src = uri;
    return img.decode().then(() => img);
  }

  function fmt(x) {
    return Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(3) : x.toPrecision(4);
  }

  const LUT = bytes(D.lut); // 256 RGB triples: the colour map

  // 1-D bilinear resampling as torch's interpolate(mode="bilinear", align_corners=False): output i reads the input at
  // (i + 0.5) * n_in / n_out - 0.5, clamped at 0 and at the last input.
  function bilinear(nIn, nOut) {
    const i0 = new Int32Array(nOut), i1 = new Int32Array(nOut), w = new Float64Array(nOut);
    for (let i = 0; i < nOut; i++) {
      const src = Math.max((i + 0.5) * (nIn / nOut) - 0.5, 0);
      i0[i] = Math.min(Math.floor(src), nIn - 1);
      i1[i] = Math.min(i0[i] + 1, nIn - 1);
      w[i] = src - i0[i];
    }
    return { i0, i1, w };
  }

  // (h, w) -> (H, W), added into `out`
  function upsampleAdd(src, h, w, out, H, W) {
    const ys = bilinear(h, H), xs = bilinear(w, W);
    for (let y = 0; y < H; y++) {
      const r0 = ys.i0[y] * w, r1 = ys.i1[y] * w, fy = ys.w[y];
      for (let x = 0; x < W; x++) {
        const fx = xs.w[x], a = xs.i0[x], b = xs.i1[x];
        const top = src[r0 + a] * (1 - fx) + src[r0 + b] * fx;
        const bottom = src[r1 + a] * (1 - fx) + src[r1 + b] * fx;
        out[y * W + x] += top * (1 - fy) + bottom * fy;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The header
  // ---------------------------------------------------------------------------------------------------------------

  $("prompt").textContent = D.prompt;
  const steps = D.player ? D.player.steps.length : D.attention.steps.length;
  $("meta").textContent =
    `seed ${D.seed} · ${D.sampler} · cfg ${D.cfg} · ${D.player ? steps + " steps · " : ""}` +
    `${D.size[1]}x${D.size[0]} · model ${D.model}` + (D.negative ? ` · negative prompt: "${D.negative}"` : "");
  if (D.note) {
    $("note").textContent = D.note[0].toUpperCase() + D.note.slice(1) + ".";
    $("note").hidden = false;
  }

  const ready = [];
  const frameTimes = []; // ms per frame change (Performance API), for the benchmark

  // ---------------------------------------------------------------------------------------------------------------
  // The player
  // ---------------------------------------------------------------------------------------------------------------

  const player = { step: 0, timer: null, canvases: {}, images: {}, stepMaps: new Map() };
  const CAPTIONS = {
    x_t: "x_t, the noisy latent (preview)",
    x0: "predicted x0 (preview)",
    decoded: "predicted x0, VAE decode",
    eps: "predicted noise eps (guided)",
    guidance: "guidance: eps_cond − eps_uncond",
  };

  if (D.player) {
    const P = D.player;
    $("player").hidden = false;
    const slider = $("step");
    slider.max = P.steps.length - 1;
    for (const kind of Object.keys(CAPTIONS)) {
      if (!P.frames[kind]) continue;
      const fig = el("figure", { class: "panel-" + kind });
      fig.append(el("figcaption", {}, CAPTIONS[kind]));
      const canvas = el("canvas", { "data-panel": kind });
      fig.append(canvas);
      $("frames").append(fig);
      player.canvases[kind] = canvas;
      ready.push(
        Promise.all(P.frames[kind].map(loadImage)).then((imgs) => {
          player.images[kind] = imgs;
          canvas.width = imgs[0].naturalWidth;
          canvas.height = imgs[0].naturalHeight;
        })
      );
    }
    const fig = el("figure", { class: "schedule" });
    fig.append(el("figcaption", {}, "the noise schedule: alpha_bar_t (black), SNR (green, log), t in red"));
    player.schedule = el("canvas", { width: 300, height: 170, "data-panel": "schedule" });
    fig.append(player.schedule);
    $("frames").append(fig);
    player.chart = scheduleChart(P.curve, P.steps.map((s) => s.t));

    slider.addEventListener("input", () => show(Number(slider.value)));
    $("play").addEventListener("click", () => (player.timer ? pause() : play()));
  }

  // The schedule drawn once into an off-screen canvas; `marker` paints t on a copy.
  function scheduleChart(curve, ts) {
    const W = 300, H = 170, left = 34, right = 34, top = 8, bottom = 22;
    const base = el("canvas", { width: W, height: H });
    const g = base.getContext("2d");
    const T = curve.length;
    const x = (t) => left + (t / (T - 1)) * (W - left - right);
    const snr = curve.map((a) => Math.log10(a / (1 - a)));
    const lo = Math.min(...snr), hi = Math.max(...snr);
    const yAb = (a) => top + (1 - a) * (H - top - bottom);
    const ySnr = (s) => top + ((hi - s) / (hi - lo || 1)) * (H - top - bottom);
    g.fillStyle = "#fff";
    g.fillRect(0, 0, W, H);
    g.strokeStyle = "#999";
    g.strokeRect(left, top, W - left - right, H - top - bottom);
    g.fillStyle = "#999";
    for (const t of ts) g.fillRect(x(t), H - bottom - 4, 1, 4); // the sampled timesteps
    const line = (ys, colour) => {
      g.strokeStyle = colour;
      g.lineWidth = 1.4;
      g.beginPath();
      ys.forEach((y, t) => (t ? g.lineTo(x(t), y) : g.moveTo(x(t), y)));
      g.stroke();
    };
    line(curve.map(yAb), "#000");
    line(snr.map(ySnr), "#2ca02c");
    g.font = "10px sans-serif";
    g.fillStyle = "#000";
    g.fillText("1", left - 10, top + 8);
    g.fillText("0", left - 10, H - bottom);
    g.fillText("t = 0", left, H - 6);
    g.fillText(String(T - 1), W - right - 22, H - 6);
    g.fillStyle = "#2ca02c";
    g.fillText("1e" + hi.toFixed(0), W - right + 3, top + 8);
    g.fillText("1e" + lo.toFixed(0), W - right + 3, H - bottom);
    return {
      draw(ctx, t) {
        ctx.drawImage(base, 0, 0);
        const tt = Math.min(Math.max(t, 0), T - 1);
        ctx.fillStyle = "#d62728";
        ctx.fillRect(x(tt) - 1, top, 2, H - top - bottom);
        for (const [y, c] of [[yAb(curve[tt]), "#000"], [ySnr(snr[tt]), "#2ca02c"]]) {
          ctx.beginPath();
          ctx.arc(x(tt), y, 4, 0, 2 * Math.PI);
          ctx.fillStyle = c;
          ctx.fill();
          ctx.strokeStyle = "#fff";
          ctx.stroke();
        }
      },
    };
  }

  function show(i) {
    const P = D.player;
    const t0 = performance.now();
    i = Math.max(0, Math.min(P.steps.length - 1, i));
    player.step = i;
    for (const [kind, canvas] of Object.entries(player.canvases)) {
      const img = player.images[kind] && player.images[kind][i];
      if (img) canvas.getContext("2d").drawImage(img, 0, 0);
    }
    const s = P.steps[i];
    $("step").value = i;
    $("step-out").textContent = `${i} / ${P.steps.length - 1}`;
    $("readout").textContent =
      `step ${i} / ${P.steps.length - 1}   t = ${s.t}   sigma_t = ${fmt(s.sigma)}   ` +
      `alpha_bar_t = ${fmt(s.alpha_bar)}   SNR = ${fmt(s.snr)}` +
      `  (eps and guidance: grey = 0, full colour at ±${P.scales.eps}` +
      (P.scales.guidance !== undefined ? ` / ±${P.scales.guidance})` : ")");
    player.chart.draw(player.schedule.getContext("2d"), s.t);
    if (player.attention) stepAttention(i);
    // read one pixel of every canvas back, so that the drawing is done (not deferred) when the time is taken
    for (const c of [...Object.values(player.canvases), player.schedule, player.attention])
      if (c) c.getContext("2d").getImageData(0, 0, 1, 1);
    frameTimes.push(performance.now() - t0);
  }

  function play() {
    player.timer = setInterval(() => {
      if (player.step < D.player.steps.length - 1) show(player.step + 1);
      else if ($("loop").checked) show(0);
      else pause();
    }, 125);
    $("play").innerHTML = "&#10074;&#10074; Pause";
    $("play").setAttribute("aria-label", "pause");
  }

  function pause() {
    clearInterval(player.timer);
    player.timer = null;
    $("play").innerHTML = "&#9654; Play";
    $("play").setAttribute("aria-label", "play");
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The explorer
  // ---------------------------------------------------------------------------------------------------------------

  const A = D.attention;
  const ex = { tokens: false, entry: null, pixel: null, maps: null, mapsKey: "", picture: null, keys: [] };

  if (A) {
    $("explorer").hidden = false;
    // Running sums over the step slots of each key: prefix[(s * H + h) * T * n + c * n + i], s = 0..S
    for (const k of A.keys) {
      const sums = new Float32Array(bytes(k.sums).buffer);
      const n = k.grid[0] * k.grid[1], H = k.heads, S = k.counts.length;
      const block = H * (sums.length / (S * H * n)) * n;
      const prefix = new Float64Array((S + 1) * block);
      for (let s = 0; s < S; s++)
        for (let j = 0; j < block; j++) prefix[(s + 1) * block + j] = prefix[s * block + j] + sums[s * block + j];
      const counts = [0];
      k.counts.forEach((c, s) => counts.push(counts[s] + c));
      ex.keys.push({ key: k.key, grid: k.grid, n, H, T: block / (H * n), block, prefix, counts });
    }
    const first = A.steps[0], last = A.steps[A.steps.length - 1];
    for (const id of ["from", "to"]) {
      $(id).min = first;
      $(id).max = last;
      $(id).disabled = !A.per_step;
    }
    $("from").value = first;
    $("to").value = last;
    const where = [["all", "all layers"]];
    const grids = [...new Set(ex.keys.map((k) => k.grid.join("x")))];
    for (const g of grids) where.push(["grid:" + g, g + " layers"]);
    if (A.layers_kept) for (const k of ex.keys) where.push(["key:" + k.key, shortLayer(k.key) + ` (${k.grid.join("x")})`]);
    for (const [v, label] of where) $("where").append(el("option", { value: v }, label));
    $("head").append(el("option", { value: "mean" }, "mean of the heads"));
    for (let h = 0; h < A.heads; h++) $("head").append(el("option", { value: String(h) }, "head " + h));
    $("head").disabled = !A.heads;
    const hints = [];
    if (!A.per_step) hints.push("steps: summed during the run (trace with keep=['step'] to choose a window)");
    if (!A.layers_kept) hints.push("single layers: keep=['layer']");
    if (!A.heads) hints.push("single heads: keep=['head']");
    $("explorer-hint").textContent = hints.join("; ");
    ex.entry = defaultWord();
    buildEntries();
    ready.push(
      loadImage(D.picture).then((img) => {
        ex.picture = img;
        const k = Math.max(1, Math.ceil(384 / Math.max(D.size[0], D.size[1])));
        $("map").width = D.size[1] * k;
        $("map").height = D.size[0] * k;
        if (player.attention) { // the panel's size: a small picture by a whole factor, a large one down to 192
          const longer = Math.max(D.size[0], D.size[1]);
          const f = longer <= 192 ? Math.floor(192 / longer) : 192 / longer;
          player.attention.width = Math.round(D.size[1] * f);
          player.attention.height = Math.round(D.size[0] * f);
        }
      })
    );
    for (const id of ["from", "to", "where", "head", "alpha"]) $(id).addEventListener("input", onControl);
    for (const r of document.querySelectorAll("input[name=scale]")) r.addEventListener("change", () => redraw());
    $("tokens").addEventListener("change", () => {
      ex.tokens = $("tokens").checked;
      const cols = columnsOf(ex.entry, !ex.tokens);
      const match = entries().find((e) => e.columns.length && cols && e.columns[0] === cols[0]);
      ex.entry = (match || entries()[0]).name;
      buildEntries();
      redraw();
    });
    $("map").addEventListener("click", (e) => {
      const r = $("map").getBoundingClientRect();
      const [G0, G1] = A.grid;
      const y = Math.min(G0 - 1, Math.max(0, Math.floor(((e.clientY - r.top) / r.height) * G0)));
      const x = Math.min(G1 - 1, Math.max(0, Math.floor(((e.clientX - r.left) / r.width) * G1)));
      ex.pixel = [y, x];
      redraw();
    });
    if (D.player && A.per_step) {
      const fig = el("figure", { class: "panel-attention" });
      fig.append(el("figcaption", { id: "attention-caption" }, ""));
      player.attention = el("canvas", { "data-panel": "attention", width: 192, height: 192 });
      fig.append(player.attention);
      $("frames").insertBefore(fig, player.schedule.parentNode);
    }
    const bar = $("bar").getContext("2d");
    for (let i = 0; i < 256; i++) {
      bar.fillStyle = `rgb(${LUT[3 * i]},${LUT[3 * i + 1]},${LUT[3 * i + 2]})`;
      bar.fillRect(i, 0, 1, 10);
    }
  }

  function shortLayer(name) {
    return name.replace(/^unet\./, "").replace(/\.transformer_blocks\.0\.attn2\.hook_probs$/, "").replace(/\.attn2\.hook_probs$/, "");
  }

  function entries() {
    return ex.tokens ? A.tokens : A.words;
  }

  function columnsOf(name, tokens) {
    const e = (tokens ? A.tokens : A.words).find((x) => x.name === name);
    return e ? e.columns : null;
  }

  function defaultWord() {
    const stop = new Set(["a", "an", "the", "of", "on", "in", "at", "to", "and", "with", "is", "are", "its"]);
    const w = A.words.find((x) => !stop.has(x.name)) || A.words[0];
    return w.name;
  }

  function buildEntries() {
    const box = $("entries");
    box.replaceChildren();
    box.setAttribute("aria-label", ex.tokens ? "tokens" : "words");
    for (const e of entries()) {
      const b = el("button", { type: "button", "aria-pressed": String(e.name === ex.entry), "data-entry": e.name }, e.name);
      b.addEventListener("click", () => {
        ex.entry = e.name;
        for (const x of box.children) x.setAttribute("aria-pressed", String(x.dataset.entry === e.name));
        redraw();
      });
      box.append(b);
    }
  }

  function onControl(e) {
    if (e && (e.target.id === "from" || e.target.id === "to")) {
      const a = Number($("from").value), b = Number($("to").value);
      if (a > b) (e.target.id === "from" ? $("to") : $("from")).value = e.target.value;
    }
    redraw();
  }

  function selection() {
    return {
      lo: Number($("from").value),
      hi: Number($("to").value),
      where: $("where").value,
      head: $("head").value,
    };
  }

  // The map of a group of token columns for a choice: the chosen sums over the window's steps, each resolution
  // upsampled bilinearly to the map grid, divided by the number of single-head maps: Trace.word_map's numbers.
  function computeMaps(groups, sel) {
    const [G0, G1] = A.grid;
    let a = 0, b = 1;
    if (A.per_step) {
      const slots = [];
      A.steps.forEach((s, i) => { if (s >= sel.lo && s <= sel.hi) slots.push(i); });
      if (!slots.length) throw new Error(`no recorded step in ${sel.lo}..${sel.hi}`);
      a = slots[0];
      b = slots[slots.length - 1] + 1;
    }
    const chosen = ex.keys.filter((k) =>
      sel.where === "all" || sel.where === "grid:" + k.grid.join("x") || sel.where === "key:" + k.key);
    const out = groups.map(() => new Float64Array(G0 * G1));
    const perGrid = new Map(); // grid -> one accumulator per group
    let weight = 0;
    for (const k of chosen) {
      const heads = sel.head === "mean" ? [...Array(k.H).keys()] : [Number(sel.head)];
      weight += (k.counts[b] - k.counts[a]) * (sel.head === "mean" && A.heads ? k.H : 1);
      const g = k.grid.join("x");
      if (!perGrid.has(g)) perGrid.set(g, { grid: k.grid, acc: groups.map(() => new Float64Array(k.n)) });
      const accs = perGrid.get(g).acc;
      groups.forEach((cols, e) => {
        const acc = accs[e];
        for (const h of heads)
          for (const c of cols) {
            const hi = b * k.block + (h * k.T + c) * k.n, lo = a * k.block + (h * k.T + c) * k.n;
            for (let i = 0; i < k.n; i++) acc[i] += (k.prefix[hi + i] - k.prefix[lo + i]) / cols.length;
          }
      });
    }
    if (!weight) throw new Error("nothing of the cross-attention was recorded for this choice");
    for (const { grid, acc } of perGrid.values()) groups.forEach((_, e) => upsampleAdd(acc[e], grid[0], grid[1], out[e], G0, G1));
    for (const m of out) for (let i = 0; i < m.length; i++) m[i] /= weight;
    return out;
  }

  function currentMaps() {
    const sel = selection();
    const key = JSON.stringify([ex.tokens, sel]);
    if (ex.mapsKey !== key) {
      const list = entries();
      const maps = computeMaps(list.map((e) => e.columns), sel);
      ex.maps = new Map(list.map((e, i) => [e.name, maps[i]]));
      ex.mapsKey = key;
    }
    return ex.maps;
  }

  // A map over the picture: the picture (blocky), the map through the colour map (smooth) at opacity `alpha`.
  function overlay(ctx, m, lo, hi, alpha) {
    const [G0, G1] = A.grid;
    const heat = el("canvas", { width: G1, height: G0 });
    const hctx = heat.getContext("2d");
    const img = hctx.createImageData(G1, G0);
    for (let i = 0; i < m.length; i++) {
      const v = hi > lo ? (m[i] - lo) / (hi - lo) : 0;
      const j = Math.max(0, Math.min(255, Math.round(v * 255)));
      img.data[4 * i] = LUT[3 * j];
      img.data[4 * i + 1] = LUT[3 * j + 1];
      img.data[4 * i + 2] = LUT[3 * j + 2];
      img.data[4 * i + 3] = 255;
    }
    hctx.putImageData(img, 0, 0);
    const { width, height } = ctx.canvas;
    ctx.imageSmoothingEnabled = width < ex.picture.naturalWidth; // blocky pixels when enlarged, smooth when reduced
    ctx.globalAlpha = 1;
    ctx.drawImage(ex.picture, 0, 0, width, height);
    ctx.imageSmoothingEnabled = true;
    ctx.globalAlpha = alpha;
    ctx.drawImage(heat, 0, 0, width, height);
    ctx.globalAlpha = 1;
  }

  // The player's panel of the explorer's word at the player's step (each step to its own min..max), when the trace
  // kept the steps apart; a step whose attention was not recorded shows the picture faded.
  function stepAttention(i) {
    const canvas = player.attention, ctx = canvas.getContext("2d");
    $("attention-caption").textContent = `attention of "${ex.entry}" at this step`;
    if (!ex.picture || !A.steps.includes(i)) {
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 0.35;
      if (ex.picture) ctx.drawImage(ex.picture, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
      return;
    }
    const key = JSON.stringify([ex.tokens, ex.entry, i]);
    if (!player.stepMaps.has(key)) {
      if (player.stepMaps.size > 4 * A.steps.length) player.stepMaps.clear();
      const cols = entries().find((e) => e.name === ex.entry).columns;
      const m = computeMaps([cols], { lo: i, hi: i, where: "all", head: "mean" })[0];
      let lo = Infinity, hi = -Infinity;
      for (let k = 0; k < m.length; k++) { lo = Math.min(lo, m[k]); hi = Math.max(hi, m[k]); }
      player.stepMaps.set(key, [m, lo, hi]);
    }
    const [m, lo, hi] = player.stepMaps.get(key);
    overlay(ctx, m, lo, hi, 0.55);
  }

  function redraw() {
    if (!A || !ex.picture) return;
    const t0 = performance.now();
    let maps;
    try {
      maps = currentMaps();
    } catch (err) {
      $("map-caption").textContent = err.message;
      return;
    }
    const m = maps.get(ex.entry);
    if (player.attention) stepAttention(player.step);
    const shared = document.querySelector("input[name=scale]:checked").value === "shared";
    let lo = Infinity, hi = -Infinity;
    for (const x of shared ? maps.values() : [m]) for (let i = 0; i < x.length; i++) { lo = Math.min(lo, x[i]); hi = Math.max(hi, x[i]); }
    const canvas = $("map"), ctx = canvas.getContext("2d");
    overlay(ctx, m, lo, hi, Number($("alpha").value));
    const [G0, G1] = A.grid;
    $("lo").textContent = fmt(lo);
    $("hi").textContent = fmt(hi);
    $("map-caption").textContent =
      (shared ? `colour scale shared by all ${maps.size} ${ex.tokens ? "tokens" : "words"}` : "colour scale: this map's min to max") +
      "; mean attention probability";
    if (ex.pixel) {
      const [y, x] = ex.pixel;
      const cy = ((y + 0.5) * canvas.height) / G0, cx = ((x + 0.5) * canvas.width) / G1;
      for (const [colour, r, t] of [["#000", 9, 2], ["#fff", 8, 1]]) {
        ctx.fillStyle = colour;
        ctx.fillRect(cx - r, cy - t, 2 * r + 1, 2 * t + 1);
        ctx.fillRect(cx - t, cy - r, 2 * t + 1, 2 * r + 1);
      }
      rank(maps, y, x);
    }
    ctx.getImageData(0, 0, 1, 1);
    ex.lastMs = performance.now() - t0;
  }

  function rank(maps, y, x) {
    const i = y * A.grid[1] + x;
    const ranked = [...maps.entries()].map(([k, m]) => [k, m[i]]).sort((p, q) => q[1] - p[1]);
    ex.ranked = ranked;
    const top = ranked[0][1] > 0 ? ranked[0][1] : 1;
    const table = el("table", { class: "sdviz-ranking" });
    ranked.forEach(([k, v], j) => {
      const tr = el("tr", { "data-entry": k, "data-value": String(v) });
      tr.append(el("td", {}, String(j + 1)), el("td", {}, k), el("td", { class: "v" }, v.toFixed(4)));
      const bar = el("div", { class: "bar", style: `width:${Math.max(1, Math.round((90 * v) / top))}px` });
      const td = el("td");
      td.append(bar);
      tr.append(td);
      table.append(tr);
    });
    const [G0, G1] = A.grid;
    const head = el("div", {});
    head.append(el("b", {}, `pixel (y=${y}, x=${x})`), ` of the ${G0}x${G1} map: ${ex.tokens ? "tokens" : "words"} by attention there`);
    $("ranking").replaceChildren(head, table);
  }

  // ---------------------------------------------------------------------------------------------------------------
  // The keyboard: arrows step, space plays and pauses, Home / End
  // ---------------------------------------------------------------------------------------------------------------

  document.addEventListener("keydown", (e) => {
    if (!D.player || e.altKey || e.ctrlKey || e.metaKey) return;
    const t = e.target, tag = t.tagName;
    if (tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && t.type !== "range")) return;
    if (tag === "INPUT" && t.type === "range" && t.id !== "step" && e.key !== " ") return; // the explorer's sliders
    const n = D.player.steps.length;
    const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 };
    if (e.key in moves) show(player.step + moves[e.key]);
    else if (e.key === "Home") show(0);
    else if (e.key === "End") show(n - 1);
    else if (e.key === " " && tag !== "BUTTON") player.timer ? pause() : play();
    else return;
    e.preventDefault();
  });

  Promise.all(ready).then(() => {
    if (D.player) show(0);
    redraw();
    document.body.dataset.ready = "1";
  });

  window.sdvizPage = {
    data: D, show, play, pause, frameTimes,
    state: () => ({ step: player.step, playing: !!player.timer, entry: ex.entry, pixel: ex.pixel, ranked: ex.ranked,
                    mapMs: ex.lastMs }),
    // the map of named entries for a choice: {lo, hi, where: "all" | "grid:16x16" | "key:NAME", head: "mean" | h}
    maps: (names, sel, tokens) => {
      const list = tokens ? A.tokens : A.words;
      const groups = names.map((n) => list.find((e) => e.name === n).columns);
      return computeMaps(groups, Object.assign(selection(), sel || {})).map((m) => Array.from(m));
    },
  };
})();
