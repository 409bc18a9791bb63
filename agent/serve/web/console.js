// The orbitmesh console: a live globe of the constellation as one agent sees it.
// Frames arrive once a second over Server-Sent Events (/v1/console/stream);
// between frames satellites glide by linear interpolation, so the picture is
// smooth at any frame rate the browser gives.  One draw call per layer
// (satellites, stations, links, task routes), so 1,584 satellites stay cheap.
import * as THREE from "three";
import { OrbitControls } from "/console/vendor/OrbitControls.js";

const KM = 1 / 1000;                      // scene units per km
const EARTH_R = 6371 * KM;
// Colours are written in sRGB (as in the legend) and turned into the renderer's linear space.
const rgb = (hex) => { const c = new THREE.Color(hex); return [c.r, c.g, c.b]; };
const LINK_COLORS = {
  up: rgb("#3fa8ff"), lossy: rgb("#ffb020"), cut: rgb("#ff3040"), down: rgb("#a04060"), rewiring: rgb("#b58cff"),
};
const GROUND_LINK = rgb("#ff8cf0");
const STATUS_COLORS = [rgb("#e8f0ff"), rgb("#ffc640"), rgb("#ff4040")];  // alive, suspect, dead
const TASK_COLORS = { succeeded: rgb("#40ff80"), failed: rgb("#ff5050"), pending: rgb("#ffff40") };
// A digit "0" from the digits model's test set (8×8, 0–16): what "send a task" sends.
const DIGIT_ZERO = [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0];

const state = {
  fleet: null, prev: null, cur: null, prevAt: 0, curAt: 0, selected: null,
  stats: { frames: 0, fps: 0, drawn_sats: 0, drawn_links: 0, drawn_tasks: 0, errors: 0, started: performance.now() },
};
window.orbitmesh = state;                 // for tests and the curious: what the page holds

// -- token -------------------------------------------------------------------------------------
const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) {
  sessionStorage.setItem("orbitmesh-token", hashToken);
  history.replaceState(null, "", location.pathname + location.search);
}
const token = () => sessionStorage.getItem("orbitmesh-token");

async function call(method, path, body, contentType = "application/json") {
  const headers = { "Content-Type": contentType };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const payload = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  const res = await fetch(path, { method, headers, body: payload });
  let doc = null;
  try { doc = await res.json(); } catch { doc = null; }
  if (!res.ok) {
    const why = (doc && (doc.error || doc.detail)) || res.statusText;
    if (res.status === 401) throw new Error(`${why} — set the fleet's token (the token button; \`orbitmesh console\` opens the page with it)`);
    throw new Error(why);
  }
  return doc;
}

function toast(text, cls = "") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = cls;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

function confirmAction(text, extraHtml = "") {
  return new Promise((resolve) => {
    const modal = document.getElementById("modal");
    document.getElementById("modal-text").textContent = text;
    document.getElementById("modal-extra").innerHTML = extraHtml;
    modal.hidden = false;
    const done = (ok) => { modal.hidden = true; resolve(ok); };
    document.getElementById("modal-ok").onclick = () => done(true);
    document.getElementById("modal-cancel").onclick = () => done(false);
  });
}

// -- scene -------------------------------------------------------------------------------------
const container = document.getElementById("globe");
let renderer;
try {
  renderer = new THREE.WebGLRenderer({ antialias: true });
} catch (err) {
  container.textContent = `WebGL is not available in this browser: ${err.message}`;
  throw err;
}
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
renderer.setSize(window.innerWidth, window.innerHeight);
container.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x02040a);
const camera = new THREE.PerspectiveCamera(45, window.innerWidth / window.innerHeight, 0.1, 1000);
camera.position.set(0, 8, 24);
const controls = new OrbitControls(camera, renderer.domElement);
controls.enableDamping = true;
controls.minDistance = EARTH_R * 1.15;
controls.maxDistance = 80;

// Earth-fixed (ECEF) km → scene: x stays, z (north) is up, y becomes −z.  The Earth
// mesh does not turn; satellites and the Sun move around it, as in the ECEF frame.
const toScene = (x, y, z, out, k) => { out[k] = x * KM; out[k + 1] = z * KM; out[k + 2] = -y * KM; };

const loader = new THREE.TextureLoader();
const dayTex = loader.load("/console/vendor/earth-day.jpg");
const nightTex = loader.load("/console/vendor/earth-night.jpg");
dayTex.colorSpace = nightTex.colorSpace = THREE.SRGBColorSpace;
const earthMaterial = new THREE.ShaderMaterial({
  uniforms: { dayTex: { value: dayTex }, nightTex: { value: nightTex }, sunDir: { value: new THREE.Vector3(1, 0, 0) } },
  vertexShader: `
    varying vec2 vUv; varying vec3 vNormal;
    void main() {
      vUv = uv; vNormal = normalize(position);
      gl_Position = projectionMatrix * modelViewMatrix * vec4(position, 1.0);
    }`,
  fragmentShader: `
    uniform sampler2D dayTex; uniform sampler2D nightTex; uniform vec3 sunDir;
    varying vec2 vUv; varying vec3 vNormal;
    void main() {
      float light = dot(normalize(vNormal), normalize(sunDir));
      float day = smoothstep(-0.08, 0.08, light);          // a soft terminator (twilight band)
      vec3 dayColor = texture2D(dayTex, vUv).rgb * (0.35 + 0.65 * max(light, 0.0));
      vec3 nightColor = texture2D(nightTex, vUv).rgb * 0.9 + vec3(0.01, 0.015, 0.03);
      gl_FragColor = vec4(mix(nightColor, dayColor, day), 1.0);
      #include <colorspace_fragment>
    }`,
});
const earth = new THREE.Mesh(new THREE.SphereGeometry(EARTH_R, 96, 48), earthMaterial);
scene.add(earth);

function pointsLayer(size) {
  const geom = new THREE.BufferGeometry();
  geom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(3), 3));
  geom.setAttribute("color", new THREE.BufferAttribute(new Float32Array(3), 3));
  const pts = new THREE.Points(geom, new THREE.PointsMaterial({ size, sizeAttenuation: false, vertexColors: true }));
  pts.frustumCulled = false;
  scene.add(pts);
  return pts;
}
function linesLayer(opacity) {
  const geom = new THREE.BufferGeometry();
  geom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(6), 3));
  geom.setAttribute("color", new THREE.BufferAttribute(new Float32Array(6), 3));
  const lines = new THREE.LineSegments(geom, new THREE.LineBasicMaterial({ vertexColors: true, transparent: true, opacity }));
  lines.frustumCulled = false;
  scene.add(lines);
  return lines;
}
// Grow a layer's buffers to hold `n` vertices (doubling), then draw `n`.
function ensure(obj, n) {
  const geom = obj.geometry;
  if (geom.attributes.position.count < n) {
    const cap = Math.max(n, 2 * geom.attributes.position.count);
    geom.setAttribute("position", new THREE.BufferAttribute(new Float32Array(cap * 3), 3));
    geom.setAttribute("color", new THREE.BufferAttribute(new Float32Array(cap * 3), 3));
  }
  geom.setDrawRange(0, n);
  geom.attributes.position.needsUpdate = geom.attributes.color.needsUpdate = true;
  return [geom.attributes.position.array, geom.attributes.color.array];
}

const sats = pointsLayer(4);
const stations = pointsLayer(7);
const links = linesLayer(0.9);
const routes = linesLayer(1.0);
const movers = pointsLayer(8);
const selection = pointsLayer(13);

// -- data --------------------------------------------------------------------------------------
let satXYZ = new Float32Array(0);         // scene coordinates now (interpolated)
let stationXYZ = new Float32Array(0);

function onFleet(fleet) {
  state.fleet = fleet;
  document.getElementById("fleet-name").textContent = `${fleet.fleet} · ${fleet.n_sats} satellites · ${fleet.stations.length} ground stations`;
  document.getElementById("me").textContent = fleet.me;
  satXYZ = new Float32Array(fleet.n_sats * 3);
  stationXYZ = new Float32Array(fleet.stations.length * 3);
  fleet.stations.forEach((s, k) => {
    const lat = s.lat * Math.PI / 180, lon = s.lon * Math.PI / 180, r = 6378.137;
    toScene(r * Math.cos(lat) * Math.cos(lon), r * Math.cos(lat) * Math.sin(lon), r * Math.sin(lat), stationXYZ, 3 * k);
  });
  const [p, c] = ensure(stations, fleet.stations.length);
  p.set(stationXYZ);
  for (let k = 0; k < fleet.stations.length; k++) c.set(GROUND_LINK, 3 * k);
}

function onFrame(frame) {
  if (!state.fleet) return;
  const now = performance.now();
  const scene3 = new Float32Array(frame.pos.length);
  for (let k = 0; k < frame.pos.length; k += 3) toScene(frame.pos[k], frame.pos[k + 1], frame.pos[k + 2], scene3, k);
  frame.xyz = scene3;
  state.prev = state.cur || frame; state.prevAt = state.cur ? state.curAt : now;
  state.cur = frame; state.curAt = now;
  state.stats.frames += 1;
  if (state.stats.frames === 1) {              // start looking down at the node that serves the page
    satXYZ.set(scene3);
    const me = nodeVector(state.fleet.names.indexOf(state.fleet.me));
    if (me.lengthSq() > 0) camera.position.copy(me.normalize().multiplyScalar(camera.position.length()));
  }
  const s = frame.sun;
  earthMaterial.uniforms.sunDir.value.set(s[0], s[2], -s[1]);
  paintHeader(frame);
  paintTasks(frame);
  if (state.selected && state.stats.frames % 5 === 0) showDetails(state.selected, false);
}

function paintHeader(frame) {
  const counts = [0, 0, 0];
  frame.status.forEach((c) => { counts[c] += 1; });
  const byState = {};
  frame.links.forEach((l) => { const n = state.fleet.link_states[l[2]]; byState[n] = (byState[n] || 0) + 1; });
  const clock = frame.clock || {};
  const speed = clock.paused ? "paused" : `${clock.scale}×`;
  document.getElementById("clock").textContent = `t = ${frame.t.toFixed(0)} s (${speed})`;
  document.getElementById("counts").textContent =
    `alive ${counts[0]} · suspect ${counts[1]} · dead ${counts[2]} · links ${frame.links.length}` +
    Object.entries(byState).filter(([k]) => k !== "up").map(([k, v]) => ` · ${k} ${v}`).join("");
  const conn = document.getElementById("conn");
  conn.textContent = "live"; conn.className = "ok";
}

function paintTasks(frame) {
  const rows = frame.tasks.map((t) => {
    const cls = t.status === "succeeded" ? "ok" : t.status === "failed" ? "bad" : "warn";
    const ms = t.ms === null ? "…" : `${t.ms.toFixed(1)} ms`;
    return `<tr><td title="${esc(t.id)}">…${esc(t.id.slice(-8))}</td><td>${esc(t.model)}</td><td>${esc(t.entry)} → ${esc(t.executor)}</td>` +
           `<td class="${cls}">${t.status}</td><td>${ms}</td><td>${Math.max(0, t.route.length - 1)} hops</td></tr>`;
  });
  document.getElementById("task-rows").innerHTML = rows.join("");
}

// -- per animation frame -------------------------------------------------------------------------
let fpsCount = 0, fpsAt = performance.now();

function interpolate(now) {
  const { prev, cur } = state;
  if (!cur) return;
  const span = Math.max(1, state.curAt - state.prevAt);
  const a = Math.min(1, Math.max(0, (now - state.curAt) / span));
  const p = prev.xyz.length === cur.xyz.length ? prev.xyz : cur.xyz;
  for (let k = 0; k < cur.xyz.length; k++) satXYZ[k] = p[k] + (cur.xyz[k] - p[k]) * a;
}

function drawSats() {
  const cur = state.cur, n = state.fleet.n_sats;
  const [p, c] = ensure(sats, n);
  p.set(satXYZ);
  for (let i = 0; i < n; i++) c.set(STATUS_COLORS[cur.status[i]] || STATUS_COLORS[0], 3 * i);
  state.stats.drawn_sats = n;
}

function nodeVector(i) {
  const a = new Float32Array(3);
  nodeXYZ(i, a, 0);
  return new THREE.Vector3(a[0], a[1], a[2]);
}

function nodeXYZ(i, out, k) {
  const n = state.fleet.n_sats;
  const src = i < n ? satXYZ : stationXYZ, j = i < n ? i : i - n;
  out[k] = src[3 * j]; out[k + 1] = src[3 * j + 1]; out[k + 2] = src[3 * j + 2];
}

function drawLinks() {
  const cur = state.cur, names = state.fleet.link_states;
  const total = cur.links.length + cur.ground.length;
  const [p, c] = ensure(links, 2 * total);
  let v = 0;
  for (const [a, b, s] of cur.links) {
    nodeXYZ(a, p, 3 * v); nodeXYZ(b, p, 3 * v + 3);
    const col = LINK_COLORS[names[s]];
    c.set(col, 3 * v); c.set(col, 3 * v + 3); v += 2;
  }
  for (const [g, s, st] of cur.ground) {
    nodeXYZ(g, p, 3 * v); nodeXYZ(s, p, 3 * v + 3);
    const col = names[st] === "rewiring" ? LINK_COLORS.rewiring : GROUND_LINK;
    c.set(col, 3 * v); c.set(col, 3 * v + 3); v += 2;
  }
  state.stats.drawn_links = total;
}

function drawTasks(now) {
  const tasks = state.cur.tasks.filter((t) => t.route.length > 1);
  const segs = tasks.reduce((s, t) => s + t.route.length - 1, 0);
  const [p, c] = ensure(routes, 2 * segs);
  const [mp, mc] = ensure(movers, tasks.length);
  let v = 0, m = 0;
  const a = new Float32Array(3), b = new Float32Array(3);
  for (const t of tasks) {
    const col = TASK_COLORS[t.status] || TASK_COLORS.pending;
    for (let h = 0; h + 1 < t.route.length; h++) {
      nodeXYZ(t.route[h], p, 3 * v); nodeXYZ(t.route[h + 1], p, 3 * v + 3);
      c.set(col, 3 * v); c.set(col, 3 * v + 3); v += 2;
    }
    // a marker runs the route once every 2 s while the task is in flight, and rests at its end after
    const hops = t.route.length - 1;
    const f = t.finished === null ? ((now / 2000) % 1) * hops : hops;
    const h = Math.min(hops - 1, Math.floor(f)), u = f - h;
    nodeXYZ(t.route[h], a, 0); nodeXYZ(t.route[h + 1], b, 0);
    for (let d = 0; d < 3; d++) mp[3 * m + d] = a[d] + (b[d] - a[d]) * u;
    mc.set(col, 3 * m); m += 1;
  }
  state.stats.drawn_tasks = tasks.length;
}

function drawSelection() {
  const [p, c] = ensure(selection, state.selected === null ? 0 : 1);
  if (state.selected === null) return;
  nodeXYZ(state.fleet.names.indexOf(state.selected), p, 0);
  c.set(rgb("#33ffff"), 0);
}

function animate(now) {
  requestAnimationFrame(animate);
  controls.update();
  if (state.cur && state.fleet) {
    const t0 = performance.now();
    interpolate(now);
    drawSats(); drawLinks(); drawTasks(now); drawSelection();
    state.stats.update_ms = 0.9 * (state.stats.update_ms || 0) + 0.1 * (performance.now() - t0);
  }
  renderer.render(scene, camera);
  fpsCount += 1;
  if (now - fpsAt >= 1000) { state.stats.fps = fpsCount * 1000 / (now - fpsAt); fpsCount = 0; fpsAt = now; }
}
requestAnimationFrame(animate);

window.addEventListener("resize", () => {
  camera.aspect = window.innerWidth / window.innerHeight;
  camera.updateProjectionMatrix();
  renderer.setSize(window.innerWidth, window.innerHeight);
});

// -- the stream ------------------------------------------------------------------------------------
function connect() {
  const es = new EventSource("/v1/console/stream");
  es.addEventListener("fleet", (e) => onFleet(JSON.parse(e.data)));
  es.addEventListener("frame", (e) => onFrame(JSON.parse(e.data)));
  es.onerror = () => {
    const conn = document.getElementById("conn");
    conn.textContent = "reconnecting…"; conn.className = "warn";
  };
}
connect();

// -- picking and details ------------------------------------------------------------------------
const raycaster = new THREE.Raycaster();
let downAt = null;
renderer.domElement.addEventListener("pointerdown", (e) => { downAt = [e.clientX, e.clientY]; });
renderer.domElement.addEventListener("pointerup", (e) => {
  if (!downAt || Math.hypot(e.clientX - downAt[0], e.clientY - downAt[1]) > 4 || !state.fleet) return;
  const ndc = new THREE.Vector2((e.clientX / window.innerWidth) * 2 - 1, -(e.clientY / window.innerHeight) * 2 + 1);
  const name = pick(ndc);
  if (name) showDetails(name, true);
});

// The node nearest the click on screen (within 10 px), not hidden behind the Earth.
function pick(ndc) {
  const n = state.fleet.n_sats, total = state.fleet.names.length;
  const best = { d: 10, name: null };
  const w = window.innerWidth, h = window.innerHeight;
  raycaster.setFromCamera(ndc, camera);
  const hit = raycaster.intersectObject(earth)[0];
  for (let i = 0; i < total; i++) {
    const v = nodeVector(i);
    const dist = v.distanceTo(camera.position);
    if (hit && dist > hit.distance + 0.05) continue;
    const s = v.project(camera);
    const d = Math.hypot((s.x - ndc.x) * w / 2, (s.y - ndc.y) * h / 2);
    if (d < best.d) { best.d = d; best.name = state.fleet.names[i]; }
  }
  return best.name;
}
window.orbitmeshSelect = (name) => showDetails(name, true);   // for tests: what a click on `name` does
state.camera = camera;
state.earthRadius = EARTH_R;
state.satPosition = nodeVector;

const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

async function showDetails(name, fresh) {
  state.selected = name;
  let d;
  try { d = await call("GET", `/v1/console/node/${encodeURIComponent(name)}`); } catch (err) { toast(err.message, "bad"); return; }
  if (state.selected !== name) return;
  const st = d.state || {};
  const pos = d.position;
  const rows = [
    ["status", `${d.status} (incarnation ${d.incarnation})`],
    ["position", `${pos.lat_deg.toFixed(2)}°, ${pos.lon_deg.toFixed(2)}°, ${pos.alt_km.toFixed(0)} km`],
  ];
  if (d.sunlit !== null) rows.push(["sunlit", d.sunlit ? "yes" : "no (eclipse)"]);
  if (st.battery !== undefined) rows.push(["battery", `${Math.round(st.battery * 100)} %${st.low ? " (low)" : ""}`]);
  if (st.backlog !== undefined) rows.push(["queue", `${st.backlog} per worker (${st.workers} workers)`]);
  if (st.models) rows.push(["models", st.models.join(", ") || "none"]);
  if (d.faults.length) rows.push(["faults", d.faults.map((f) => `${f.kind} ${f.a || ""}–${f.b || ""}`).join("; ")]);
  const linkRows = d.links.map((l) => {
    const dropped = l.dropped ? Object.values(l.dropped).reduce((x, y) => x + y, 0) : 0;
    const extra = l.frames_sent !== undefined
      ? ` · ${l.up ? "up" : "not up"} · sent ${l.frames_sent} · dropped ${dropped} · late ${l.late_frames}` : "";
    const btns = l.kind === "laser"
      ? `<button data-cut="${esc(l.node)}">cut</button><button data-lossy="${esc(l.node)}">lossy</button>` : "";
    return `<tr><td>${esc(l.node)}</td><td>${l.latency_ms.toFixed(2)} ms${extra}</td><td>${btns}</td></tr>`;
  });
  document.getElementById("details-body").innerHTML =
    `<h3>${esc(d.node)} <small>${d.kind}</small></h3>` +
    `<table>${rows.map(([k, v]) => `<tr><td>${k}</td><td>${esc(v)}</td></tr>`).join("")}</table>` +
    `<div class="actions">${["kill", "pause", "resume", "restart"].map((a) => `<button class="danger" data-node-action="${a}">${a}</button>`).join("")}</div>` +
    `<b>links</b> (as ${esc(d.served_by)} sees them)<table class="links">${linkRows.join("")}</table>`;
  const panel = document.getElementById("details");
  panel.hidden = false;
  if (fresh) panel.scrollTop = 0;
}

document.getElementById("close-details").onclick = () => { document.getElementById("details").hidden = true; state.selected = null; };

document.getElementById("details-body").addEventListener("click", async (e) => {
  const el = e.target, me = state.selected;
  if (el.dataset.cut || el.dataset.lossy) {
    const other = el.dataset.cut || el.dataset.lossy;
    const lossy = Boolean(el.dataset.lossy);
    const extra = `<label>for (s) <input id="fault-for" type="number" value="60" min="1"></label>` +
      (lossy ? `<label>loss (%) <input id="fault-loss" type="number" value="20" min="0" max="100"></label>` : "");
    if (!await confirmAction(`${lossy ? "Degrade" : "Cut"} the laser link ${me} – ${other}?`, extra)) return;
    const spec = { kind: lossy ? "loss" : "cut", a: me, b: other, duration_s: Number(document.getElementById("fault-for").value) };
    if (lossy) spec.loss = Number(document.getElementById("fault-loss").value) / 100;
    try { const f = await call("POST", "/v1/chaos", spec); toast(`fault ${f.id}: ${spec.kind} ${me}–${other}`); } catch (err) { toast(err.message, "bad"); }
  } else if (el.dataset.nodeAction) {
    const action = el.dataset.nodeAction;
    if (!await confirmAction(`${action} ${me}?`)) return;
    try { const r = await call("POST", "/v1/console/node-chaos", { node: me, action }); toast(r.result); } catch (err) { toast(err.message, "bad"); }
  }
});

// -- tasks, time and the token --------------------------------------------------------------------
document.getElementById("send-task").onclick = async () => {
  const body = { model: "digits", inputs: { input: [DIGIT_ZERO] } };
  if (state.selected) body.target = state.selected;
  try { const t = await call("POST", "/v1/tasks", body); toast(`task ${t.task_id} entered ${t.entry}, runs on ${t.executor}`); } catch (err) { toast(err.message, "bad"); }
};

async function setTime(body, what) {
  if (!await confirmAction(`${what} the orbital clock of the whole fleet?`)) return;
  try { await call("POST", "/v1/time", body); toast(`clock: ${what}`); } catch (err) { toast(err.message, "bad"); }
}
document.getElementById("set-speed").onclick = () => {
  const speed = Number(document.getElementById("speed").value);
  setTime({ speed }, `run at ${speed}× real time`);
};
document.getElementById("pause").onclick = () => setTime({ pause: true }, "pause");
document.getElementById("resume").onclick = () => setTime({ resume: true }, "resume");

// A scenario: the same TOML timeline as `orbitmesh chaos scenario` (docs/chaos.md).
const SCENARIO_EXAMPLE = `seed = 7
[[events]]
at = "0s"
kind = "cut"
link = "random"
for = "30s"
[[events]]
at = "5s"
kind = "loss"
link = "random"
loss = "20%"
for = "30s"
`;
async function watchScenario() {
  const el = document.getElementById("scenario-state");
  for (;;) {
    let s;
    try { s = await call("GET", "/v1/console/scenario"); } catch { return; }
    el.textContent = s.running ? `scenario: ${s.log.length} of ${s.events} events` :
      s.error ? `scenario failed: ${s.error}` : `scenario done (${s.events} events)`;
    el.className = s.error ? "bad" : s.running ? "warn" : "ok";
    if (!s.running) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}
document.getElementById("scenario-btn").onclick = async () => {
  const ok = await confirmAction("Run this chaos scenario on the fleet?",
    `<textarea id="scenario-text" rows="14" spellcheck="false">${esc(SCENARIO_EXAMPLE)}</textarea>`);
  if (!ok) return;
  try {
    const r = await call("POST", "/v1/console/scenario", document.getElementById("scenario-text").value, "text/plain");
    toast(`scenario started: ${r.events} events over ${r.length_s} s`);
    watchScenario();
  } catch (err) { toast(err.message, "bad"); }
};

document.getElementById("token-btn").onclick = async () => {
  const ok = await confirmAction("The fleet's API token (.fleet/token; kept in this tab only):",
    `<input id="token-input" type="password" autocomplete="off" value="${esc(token() || "")}">`);
  if (ok) sessionStorage.setItem("orbitmesh-token", document.getElementById("token-input").value.trim());
};

window.addEventListener("error", () => { state.stats.errors += 1; });
