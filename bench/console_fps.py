"""The console at full size: Starlink's first shell (1,584 satellites) on the globe.

Serves the real page and stream (agent/serve/console.py) for a quiet fleet of a
preset (no agents needed: the frames come from the same physics an agent
uses), opens it in Debian's Chromium (software WebGL, as in CI) and reports:

* frame build time on the server against the physics it is built from
  (``Router.snapshot`` at the same t): the ratio is the console's own cost;
* the page's frame rate and per-frame update time at 1,584 satellites against
  the 24-satellite demo in the same run (same browser, same machine).

Usage: python bench/console_fps.py [--seconds 10] [--presets demo,starlink-s1]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import FileResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent.serve.console import WEB_DIR, ConsoleView, FleetFacts, FrameBuilder, Viewers, frames
from mesh.ground import GroundStation
from mesh.presets import preset
from mesh.world import World

STATIONS = (GroundStation("london", 51.5, -0.12), GroundStation("tokyo", 35.68, 139.69))


def app_for(world: World) -> tuple[Starlette, FrameBuilder]:
    builder = FrameBuilder(world, ConsoleView(world))
    facts, viewers = FleetFacts(world, world.names.name(0)), Viewers()

    async def page(request):
        return FileResponse(WEB_DIR / "index.html")

    async def stream(request):
        viewers.admit()
        return StreamingResponse(frames(builder, facts, viewers), media_type="text/event-stream")

    return Starlette(routes=[Route("/", page), Mount("/console", StaticFiles(directory=WEB_DIR)),
                             Route("/v1/console/stream", stream)]), builder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_thread(app: Starlette, port: int) -> None:
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    threading.Thread(target=trio.run, args=(partial(serve, app, cfg),), daemon=True).start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bench server did not start")


def server_cost(world: World, builder: FrameBuilder, repeats: int = 15) -> dict[str, float]:
    build, physics, size = [], [], 0
    for k in range(repeats):
        wall = time.time() + 1000 * k        # a new t each time: no cache hit on either side
        t0 = time.perf_counter()
        world.router.snapshot(world.orbit_t(wall) + 0.5)
        physics.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        size = len(builder.encoded(wall))
        build.append(time.perf_counter() - t0)
    return {"build_ms": statistics.median(build) * 1e3, "physics_ms": statistics.median(physics) * 1e3,
            "frame_kb": size / 1024}


def browser_rate(url: str, seconds: float) -> dict[str, float]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium",
                              args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        page = b.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("window.orbitmesh.stats.frames >= 2", timeout=60_000)
        fps, upd = [], []
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(1.0)
            st = page.evaluate("window.orbitmesh.stats")
            fps.append(st["fps"])
            upd.append(st.get("update_ms", 0.0))
        drawn = page.evaluate("window.orbitmesh.stats.drawn_sats")
        b.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    return {"fps": statistics.median(fps), "update_ms": statistics.median(upd), "drawn": drawn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--presets", default="demo,starlink-s1")
    args = ap.parse_args()
    rows = {}
    for name in args.presets.split(","):
        world = World.from_config(preset(name).with_start(time.time()), extra_stations=STATIONS)
        app, builder = app_for(world)
        port = free_port()
        serve_in_thread(app, port)
        rows[name] = {**server_cost(world, builder), **browser_rate(f"http://127.0.0.1:{port}/", args.seconds),
                      "sats": world.names.n_sats}
    base = rows[args.presets.split(",")[0]]
    print(f"{'preset':<14}{'sats':>6}{'frame ms':>10}{'physics ms':>12}{'build/physics':>15}{'frame kB':>10}"
          f"{'fps':>7}{'fps ratio':>11}{'update ms':>11}")
    for name, r in rows.items():
        print(f"{name:<14}{r['sats']:>6}{r['build_ms']:>10.2f}{r['physics_ms']:>12.2f}"
              f"{r['build_ms'] / r['physics_ms']:>15.2f}{r['frame_kb']:>10.1f}{r['fps']:>7.1f}"
              f"{r['fps'] / base['fps']:>11.2f}{r['update_ms']:>11.2f}")
        assert r["drawn"] == r["sats"], f"{name}: drew {r['drawn']} of {r['sats']} satellites"


if __name__ == "__main__":
    main()
