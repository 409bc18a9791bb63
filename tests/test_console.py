"""The console: frames from real physics (in-process), then the page in Debian's Chromium on a real fleet.

The browser test drives the page as an operator would: it loads with the
token in the URL fragment, draws every satellite, a link cut from the page's
details panel shows as cut and moves a task's route, a task sent from the page
appears in the task list and on the globe, and the browser logs no error.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import trio

from agent.serve.console import (LINK_STATES, REWIRE_AHEAD_S, WEB_DIR, ConsoleView, FleetFacts, FrameBuilder, Viewers,
                           ecef_to_geodetic, frames)
from mesh.ground import GroundStation
from mesh.presets import preset
from mesh.world import World
from tests.conftest import ROOT, TOKEN, local_fleet

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def test_console_url_keeps_the_token_in_the_fragment():
    from agent.ops.console_cli import console_url
    assert console_url("http://127.0.0.1:8100", "a/b+c") == "http://127.0.0.1:8100/#token=a%2Fb%2Bc"
    assert console_url("http://sat-3:8080/", None) == "http://sat-3:8080/"


def test_vendored_files_are_what_npm_delivered():
    manifest = json.loads((WEB_DIR / "vendor" / "SOURCES.json").read_text())
    assert set(manifest["packages"]) == {"three@0.187.0", "three-globe@2.45.2"}
    present = {p.name for p in (WEB_DIR / "vendor").iterdir()} - {"SOURCES.json"}
    assert present == set(manifest["sha256"])
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((WEB_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name
    # the page loads nothing from outside the agent
    for page in ("index.html", "console.js"):
        text = (WEB_DIR / page).read_text()
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text, page


class CutView(ConsoleView):
    """A quiet fleet with one cut, one lossy and one membership-down link."""

    def __init__(self, world, cut, lossy, down):
        super().__init__(world)
        self.cut, self.lossy, self.down = frozenset([cut]), frozenset([lossy]), frozenset([down])

    def cut_pairs(self, wall):
        return self.cut

    def lossy_pairs(self, wall):
        return self.lossy

    def down_pairs(self):
        return self.down


def demo_world():
    cfg = preset("demo").with_start(1_000_000.0)
    stations = tuple(GroundStation(f"gs-{k}", lat, lon) for k, (lat, lon) in
                     enumerate([(51.5, -0.1), (35.7, 139.7), (-33.9, 151.2), (40.7, -74.0), (-23.5, -46.6), (1.3, 103.8)]))
    return World.from_config(cfg, extra_stations=stations), cfg


def test_frame_carries_every_satellite_and_each_link_state():
    world, cfg = demo_world()
    wall = 1_000_100.0
    t = world.orbit_t(wall)
    pairs = [tuple(p) for p in world.router.snapshot(t).pairs.tolist()]
    cut, lossy, down = pairs[0], pairs[1], pairs[2]
    frame = FrameBuilder(world, CutView(world, cut, lossy, down)).frame(wall)
    n = world.names.n_sats
    assert len(frame["pos"]) == 3 * n and len(frame["sunlit"]) == n and len(frame["status"]) == len(world.names)
    np.testing.assert_allclose(np.array(frame["pos"]).reshape(n, 3), world.constellation.positions(t), atol=0.06)
    states = {(a, b): LINK_STATES[s] for a, b, s in frame["links"]}
    assert len(states) == len(pairs)
    assert states[cut] == "cut" and states[lossy] == "lossy" and states[down] == "down"
    later = {tuple(p) for p in world.router.snapshot(t + REWIRE_AHEAD_S).pairs.tolist()}
    for pair, state in states.items():
        if pair not in (cut, lossy, down):
            assert state == ("up" if pair in later else "rewiring"), pair
    assert abs(np.linalg.norm(frame["sun"]) - 1) < 1e-4
    assert frame["ground"] and all(g >= n and s < n for g, s, _ in frame["ground"])
    json.dumps(frame, allow_nan=False)


def test_rewiring_marks_ground_links_that_a_handover_is_about_to_drop():
    world, _ = demo_world()
    builder = FrameBuilder(world, ConsoleView(world))
    seen = {"up": 0, "rewiring": 0}
    for k in range(0, 3000, 20):
        frame = builder.frame(1_000_000.0 + k)
        t = world.orbit_t(1_000_000.0 + k)
        gone_soon = {tuple(p) for p in world.router.snapshot(t + REWIRE_AHEAD_S).ground_pairs.tolist()}
        for g, s, state in frame["ground"]:
            assert LINK_STATES[state] == ("up" if (g, s) in gone_soon else "rewiring")
            seen[LINK_STATES[state]] += 1
    assert seen["up"] > 0 and seen["rewiring"] > 0, seen


def test_geodetic_conversion_matches_known_points():
    lat, lon, h = ecef_to_geodetic(6378.137, 0.0, 0.0)
    assert abs(lat) < 1e-9 and abs(lon) < 1e-9 and abs(h) < 1e-6
    lat, lon, h = ecef_to_geodetic(0.0, 0.0, 6356.752 + 550)
    assert abs(lat - 90) < 1e-6 and abs(h - 550) < 1e-3
    # London at 100 m: forward with the WGS-84 formulas, back through the function
    a, e2 = 6378.137, 6.69437999014e-3
    la, lo, hh = math.radians(51.5), math.radians(-0.12), 0.1
    n = a / math.sqrt(1 - e2 * math.sin(la) ** 2)
    x = (n + hh) * math.cos(la) * math.cos(lo)
    y = (n + hh) * math.cos(la) * math.sin(lo)
    z = (n * (1 - e2) + hh) * math.sin(la)
    got = ecef_to_geodetic(x, y, z)
    assert abs(got[0] - 51.5) < 1e-6 and abs(got[1] + 0.12) < 1e-6 and abs(got[2] - 0.1) < 1e-5


async def test_stream_sends_facts_then_one_shared_frame_per_period():
    world, _ = demo_world()
    builder = FrameBuilder(world, ConsoleView(world))
    facts = FleetFacts(world, "sat-0")
    viewers = Viewers(limit=2)
    assert viewers.admit() and viewers.admit() and not viewers.admit()   # the third viewer is refused
    clock = iter([1_000_000.0, 1_000_000.1, 1_000_001.0])
    gen = frames(builder, facts, viewers, now=lambda: next(clock), period_s=0)
    first = await gen.__anext__()
    assert first.startswith(b"retry: 2000\nevent: fleet\n") and json.loads(first.split(b"data: ")[1])["n_sats"] == 24
    a, b, c = await gen.__anext__(), await gen.__anext__(), await gen.__anext__()
    assert a is b                      # within half a period: the same bytes for every viewer
    assert c != a and c.startswith(b"event: frame\ndata: ")
    await gen.aclose()
    assert viewers.open == 1           # a closed stream frees its place


# -- the page in a real browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def console_fleet(tmp_path_factory, models_dir):
    with local_fleet(tmp_path_factory.mktemp("console"), models_dir, 12, ground=("london",)) as (spec, _, peers, _):
        yield spec, peers


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def console_address(fleet_dir, capsys) -> str:
    """What `orbitmesh console` prints for this fleet."""
    from agent.ops.cli import main
    assert main(["--dir", str(fleet_dir), "console", "--node", "sat-0"]) == 0
    return capsys.readouterr().out.strip()


def open_console(browser, url, errors):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(url)
    page.wait_for_function("window.orbitmesh.stats.frames >= 2 && window.orbitmesh.stats.drawn_sats > 0",
                           timeout=60_000)
    return page


def frame_link_state(page, a, b):
    return page.evaluate("""([a, b]) => {
        const f = window.orbitmesh.fleet, cur = window.orbitmesh.cur;
        const i = f.names.indexOf(a), j = f.names.indexOf(b);
        const l = cur.links.find(([x, y]) => (x === i && y === j) || (x === j && y === i));
        return l ? f.link_states[l[2]] : null; }""", [a, b])


# In the page: each satellite's place on screen (from the positions it drew), whether the
# Earth hides it, and whether the screenshot is satellite-white within 2 px of that place.
SATELLITE_PIXELS = """async (b64) => {
  const img = new Image(); img.src = 'data:image/png;base64,' + b64; await img.decode();
  const cv = document.createElement('canvas'); cv.width = img.width; cv.height = img.height;
  const ctx = cv.getContext('2d'); ctx.drawImage(img, 0, 0);
  const s = window.orbitmesh, cam = s.camera, R = s.earthRadius, out = [];
  const scale = img.width / window.innerWidth;
  for (let i = 0; i < s.fleet.n_sats; i++) {
    const v = s.satPosition(i), c = cam.position;
    const d = v.clone().sub(c), len = d.length(); d.normalize();
    const b = c.dot(d), disc = b * b - (c.lengthSq() - R * R);
    const hidden = disc > 0 && (-b - Math.sqrt(disc)) < len - 1e-3;
    const p = v.clone().project(cam);
    const x = Math.round((p.x + 1) / 2 * window.innerWidth * scale), y = Math.round((1 - p.y) / 2 * window.innerHeight * scale);
    let white = false;
    for (let dx = -2; dx <= 2; dx++) for (let dy = -2; dy <= 2; dy++) {
      const px = ctx.getImageData(x + dx, y + dy, 1, 1).data;
      if (Math.min(px[0], px[1], px[2]) > 180) white = true;
    }
    out.push({ i, x, y, hidden, white });
  }
  return out;
}"""


def task_rows(page):
    return page.evaluate("[...document.querySelectorAll('#task-rows tr')].map(r => r.innerText)")


@pytest.mark.slow
def test_console_page_in_chromium(console_fleet, browser, tmp_path, capsys, monkeypatch):
    spec, peers = console_fleet
    errors: list[str] = []
    monkeypatch.delenv("ORBITMESH_TOKEN", raising=False)       # the token comes from the fleet's file
    url = console_address(spec.directory, capsys)
    assert url == f"{peers['sat-0'].api}/#token={TOKEN}"
    page = open_console(browser, url, errors)
    assert "#token" not in page.url                              # moved out of the address bar
    stats = page.evaluate("window.orbitmesh.stats")
    fleet = page.evaluate("window.orbitmesh.fleet")
    assert fleet["n_sats"] == 12 and fleet["stations"][0]["name"] == "london"
    assert stats["drawn_sats"] == 12 and stats["drawn_links"] >= 12
    # every satellite is drawn where the physics puts it: in a screenshot, the pixel at each
    # satellite's projected place is satellite-white, unless the Earth hides it
    import base64
    png = page.screenshot(path=str(tmp_path / "console.png"))
    seen = page.evaluate(SATELLITE_PIXELS, base64.b64encode(png).decode())
    hidden = [s for s in seen if s["hidden"]]
    shown = [s for s in seen if not s["hidden"]]
    assert len(seen) == 12 and len(shown) >= 4, seen
    assert all(s["white"] for s in shown), shown
    assert page.evaluate("document.getElementById('conn').textContent") == "live"

    # a task sent from the page appears in the list and on the globe
    page.evaluate("window.orbitmeshSelect('sat-7')")
    page.wait_for_selector("#details-body h3")
    assert "sat-7" in page.inner_text("#details-body h3")
    page.click("#send-task")
    page.wait_for_function("window.orbitmesh.cur.tasks.some(t => t.executor === 'sat-7' && t.status === 'succeeded')",
                           timeout=30_000)
    first = page.evaluate("window.orbitmesh.cur.tasks.find(t => t.executor === 'sat-7')")
    assert first["entry"] == "sat-0" and len(first["route"]) >= 2
    assert any("sat-0 → sat-7" in r and "succeeded" in r for r in task_rows(page))
    assert page.evaluate("window.orbitmesh.stats.drawn_tasks") >= 1

    # cut the first link of that route from the page: the frame shows it cut, and the next task avoids it
    names = fleet["names"]
    a, b = names[first["route"][0]], names[first["route"][1]]
    page.evaluate(f"window.orbitmeshSelect('{a}')")
    page.wait_for_selector(f"#details-body h3:has-text('{a}')")
    page.click(f"#details-body button[data-cut='{b}']")
    page.fill("#fault-for", "120")
    page.click("#modal-ok")
    page.wait_for_function(f"""() => {{
        const f = window.orbitmesh.fleet, cur = window.orbitmesh.cur;
        const i = f.names.indexOf('{a}'), j = f.names.indexOf('{b}');
        return cur.links.some(([x, y, s]) => ((x === i && y === j) || (x === j && y === i)) && f.link_states[s] === 'cut');
    }}""", timeout=15_000)
    assert frame_link_state(page, a, b) == "cut"
    page.evaluate("window.orbitmeshSelect('sat-7')")
    page.wait_for_selector("#details-body h3:has-text('sat-7')")
    page.click("#send-task")
    page.wait_for_function("window.orbitmesh.cur.tasks.filter(t => t.executor === 'sat-7' && t.status === 'succeeded').length >= 2",
                           timeout=30_000)
    second = page.evaluate("window.orbitmesh.cur.tasks.find(t => t.executor === 'sat-7')")   # newest first
    assert second["id"] != first["id"]
    hops = set(zip(second["route"], second["route"][1:]))
    ia, ib = names.index(a), names.index(b)
    assert (ia, ib) not in hops and (ib, ia) not in hops, second["route"]

    # pause a node from the page: membership on the globe turns it suspect or dead; resume: alive again
    i3 = names.index("sat-3")
    page.evaluate("window.orbitmeshSelect('sat-3')")
    page.wait_for_selector("#details-body h3:has-text('sat-3')")
    page.click("#details-body button[data-node-action='pause']")
    page.click("#modal-ok")
    page.wait_for_function("document.getElementById('toast').textContent.startsWith('paused sat-3')", timeout=10_000)
    page.wait_for_function(f"window.orbitmesh.cur.status[{i3}] !== 0", timeout=30_000)
    page.click("#details-body button[data-node-action='resume']")
    page.click("#modal-ok")
    page.wait_for_function("document.getElementById('toast').textContent.startsWith('resumed sat-3')", timeout=10_000)
    page.wait_for_function(f"window.orbitmesh.cur.status[{i3}] === 0", timeout=30_000)

    # the fleet's orbital clock from the page (POST /v1/time): paused, the frames' orbital time stops
    # and the header says so; resumed at a speed, it runs again from where it stopped
    page.click("#pause")
    page.click("#modal-ok")
    page.wait_for_function("window.orbitmesh.cur.clock.paused === true", timeout=15_000)
    frozen = page.evaluate("window.orbitmesh.cur.t")
    assert "paused" in page.inner_text("#clock")
    page.wait_for_timeout(1500)
    assert page.evaluate("window.orbitmesh.cur.t") == frozen and page.evaluate("window.orbitmesh.cur.clock.paused")
    page.fill("#speed", "5")
    page.click("#set-speed")
    page.click("#modal-ok")
    page.click("#resume")
    page.click("#modal-ok")
    page.wait_for_function(f"!window.orbitmesh.cur.clock.paused && window.orbitmesh.cur.clock.scale === 5 "
                           f"&& window.orbitmesh.cur.t > {frozen}", timeout=15_000)
    assert page.evaluate("window.orbitmesh.cur.t") - frozen < 5 * 10      # continued, no jump
    assert "5×" in page.inner_text("#clock")

    # a scenario from the page: checked, then run by the agent; its cut shows on the globe
    page.click("#scenario-btn")
    page.fill("#scenario-text", '[[events]]\nat = "0s"\nkind = "cut"\na = "sat-9"\nb = "sat-10"\nfor = "20s"\n')
    page.click("#modal-ok")
    page.wait_for_function("document.getElementById('toast').textContent.startsWith('scenario started: 1 events')",
                           timeout=10_000)
    page.wait_for_function("document.getElementById('scenario-state').textContent.startsWith('scenario done')",
                           timeout=15_000)
    page.wait_for_function("""() => {
        const f = window.orbitmesh.fleet, i = f.names.indexOf('sat-9'), j = f.names.indexOf('sat-10');
        return window.orbitmesh.cur.links.some(([x, y, s]) => x === Math.min(i, j) && y === Math.max(i, j)
                                                             && f.link_states[s] === 'cut'); }""", timeout=15_000)
    assert errors == [], errors
    # a scenario that is not one is refused with the parser's reason (the browser logs the 400 it got)
    page.click("#scenario-btn")
    page.fill("#scenario-text", '[[events]]\nat = "0s"\nkind = "cut"\na = "sat-9"\nb = "sat-99"\n')
    page.click("#modal-ok")
    page.wait_for_function("document.getElementById('toast').textContent.includes('sat-99')", timeout=10_000)
    assert page.evaluate("window.orbitmesh.stats.errors") == 0
    assert errors == ["console.error: Failed to load resource: the server responded with a status of 400 ()"], errors
