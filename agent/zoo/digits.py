"""``digits``: 8x8 handwritten-digit classifier (scikit-learn's bundled data).

Chosen as the first zoo model because it needs no download, trains in well
under a second and gives real inputs/labels for demos.  StandardScaler +
multinomial LogisticRegression (lbfgs): deterministic, ~97% held-out accuracy,
and exports to three plain ONNX-ML ops.
"""

from __future__ import annotations

from pathlib import Path

NAME = "digits"
RECIPE = 1  # bump when anything below changes the produced model
DESCRIPTION = (
    "8x8 grayscale digit classifier (sklearn load_digits, pixel values 0-16). "
    "Input 'input' float32 [N, 64]; outputs 'label' int64 [N] and "
    "'probabilities' float32 [N, 10]."
)
SEED = 0
N_SAMPLES = 16
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # upper bound; skl2onnx picks the minimum needed


def _rename(graph, old: str, new: str) -> None:
    """Rename a tensor everywhere (skl2onnx's final_types would add Cast nodes)."""
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for v in graph.output:
        if v.name == old:
            v.name = new


def build(out_dir: Path) -> dict:
    """Train, export and write ``digits.onnx`` + ``digits.json``; return the manifest."""
    import numpy as np
    import onnx
    import sklearn
    import skl2onnx
    from threadpoolctl import threadpool_limits
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .kit import canonicalize_onnx, base_manifest, write_model

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)  # train on exactly what the ONNX model will see
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, random_state=SEED, stratify=y
    )
    clf = LogisticRegression(C=0.1, max_iter=5000, random_state=SEED)
    pipe = make_pipeline(StandardScaler(), clf)
    # Single-threaded BLAS: reduction order, hence the last float bits, can
    # otherwise depend on the core count of the build machine.
    with threadpool_limits(limits=1):
        pipe.fit(X_tr, y_tr)

    model = convert_sklearn(
        pipe,
        name=NAME,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={LogisticRegression: {"zipmap": False}},  # plain tensor, no seq<map>
        target_opset=TARGET_OPSET,
    )
    _rename(model.graph, "output_label", "label")
    _rename(model.graph, "output_probability", "probabilities")
    canonicalize_onnx(model, NAME, DESCRIPTION)
    onnx.checker.check_model(model)
    model_bytes = model.SerializeToString()

    # Accuracy of the exported model itself, not the sklearn object.
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    labels, _ = sess.run(["label", "probabilities"], {"input": X_te})
    accuracy = float(np.mean(labels == y_te))

    manifest = {
        **base_manifest(model, RECIPE, DESCRIPTION),
        "dataset": {
            "source": "sklearn.datasets.load_digits",
            "train": int(len(y_tr)),
            "test": int(len(y_te)),
            "split_random_state": SEED,
        },
        "accuracy": round(accuracy, 6),
        "toolchain": {
            "sklearn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
        },
        "samples": [
            {"inputs": {"input": [X_te[i].tolist()]}, "label": int(y_te[i])}
            for i in range(N_SAMPLES)
        ],
    }
    return write_model(Path(out_dir), NAME, model_bytes, manifest)
