#!/usr/bin/env bash
# Vendor the console's JavaScript and Earth textures from the npm registry into
# agent/serve/web/vendor/ (committed: agents serve them offline, no CDN at run time).
# Re-run after changing a pin below; it rewrites SOURCES.json (file hashes that
# tests/test_console.py checks) from what npm delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
THREE=three@0.187.0              # WebGL renderer + OrbitControls (MIT)
THREE_GLOBE=three-globe@2.45.2   # only for its Earth images (package MIT; NASA Blue/Black Marble, public domain)
out=agent/serve/web/vendor
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$THREE" "$THREE_GLOBE" >/dev/null)
mkdir -p "$work/three" "$work/globe"
tar xzf "$work"/three-0*.tgz -C "$work/three"
tar xzf "$work"/three-globe-*.tgz -C "$work/globe"
rm -rf "$out"; mkdir -p "$out"
cp "$work/three/package/build/three.module.js" "$work/three/package/build/three.core.js" \
   "$work/three/package/examples/jsm/controls/OrbitControls.js" "$out/"
cp "$work/three/package/LICENSE" "$out/LICENSE.three.txt"
cp "$work/globe/package/example/img/earth-day.jpg" "$work/globe/package/example/img/earth-night.jpg" "$out/"
cp "$work/globe/package/LICENSE" "$out/LICENSE.three-globe.txt"
python3 - "$out" "$THREE" "$THREE_GLOBE" "$work" <<'PY'
import hashlib, json, pathlib, subprocess, sys
out, three, globe, work = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def integrity(spec):
    return subprocess.run(["npm", "view", spec, "dist.integrity"], capture_output=True, text=True,
                          check=True, cwd=work).stdout.strip()
files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.name != "SOURCES.json"}
doc = {"packages": {three: integrity(three), globe: integrity(globe)},
       "note": "three: build/three.module.js, build/three.core.js, examples/jsm/controls/OrbitControls.js; "
               "three-globe: example/img/earth-day.jpg, earth-night.jpg (NASA Blue Marble / Black Marble, public domain)",
       "sha256": files}
(out / "SOURCES.json").write_text(json.dumps(doc, indent=1) + "\n")
PY
echo "vendored into $out:"; ls -la "$out"
