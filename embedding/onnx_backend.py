"""The ONNX Runtime backend of the embedding engine (CPU): the sentence-transformers model exported once to ONNX,
optionally int8-quantized, run by onnxruntime: fp32 in length-sorted batches, int8 one text per run.

sentence-transformers' own `backend="onnx"` needs `optimum-onnx`, whose only releases require
transformers < 4.58 while sentence-transformers 6 requires transformers >= 5: pip cannot install both, and
optimum's exporter fails to import with transformers 5. So the export is done here the way optimum does it:
`torch.onnx.export` of the whole sentence-transformers module (transformer, pooling, normalization, so the
graph returns the sentence embedding), then onnxruntime's own dynamic quantizer, the one optimum's
`export_dynamic_quantized_onnx_model` wraps. Nothing is fetched from a model hub: the source is the model
sentence-transformers has already loaded from disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Bump when the export or a variant's recipe changes: cached files of an older recipe are then re-exported.
RECIPE = 1
OPSET = 17


@dataclass(frozen=True)
class Variant:
    """How one ONNX file is made from the fp32 export."""

    name: str
    # onnxruntime's transformer graph optimizer first (attention, skip-layer-norm and GELU fusions; optimum's
    # O2), which makes a file for this machine's ORT version; without it the session optimizes at load time.
    optimize: bool = False
    quantize: bool = False
    per_channel: bool = False
    operators: tuple[str, ...] = ("MatMul",)
    # Nodes left in fp32: a regular expression on node names (e.g. the feed-forward output projections).
    exclude: str = ""
    # The quantized weights' type: "int8", or "uint8" where int8 would saturate (u8s8_saturates).
    weights: str = "int8"


def u8s8_saturates(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU lacks VNNI (AVX-512 VNNI, AVX-VNNI or AMX). Without it onnxruntime multiplies uint8
    activations by int8 weights with AVX2's vpmaddubsw, which adds pairs in 16 bits and saturates: on an
    AVX2-only AMD EPYC, int8 weights lost 0.007 dense nDCG@10 against torch fp32 on dbpedia-5k and msmarco-5k
    (2026-12-06), outside the quality bound; 7-bit int8 weights (optimum's AVX2 recipe) lost 0.006 on
    cranfield; uint8 weights (uint8 x uint8, which onnxruntime widens to 16 bits first, its documented remedy)
    stayed within 0.004 on every set. Where the flags cannot be read, the safe answer."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return True
    return not re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags)


# onnxruntime's dynamic-quantization operators (its IntegerOpsRegistry), as optimum's AutoQuantizationConfig uses.
INTEGER_OPS = ("Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization")

VARIANTS: dict[str, Variant] = {
    "onnx": Variant("onnx"),
    "onnx-opt": Variant("onnx-opt", optimize=True),
    # Dynamic int8 as optimum's avx512_vnni configuration makes it: every integer operator (the embedding
    # tables too), weights symmetric and per output channel, run one text at a time (OnnxEncoder). Per channel
    # and alone is what keeps it within the quality bound: per tensor lost 0.013 nDCG@10 on cranfield even
    # alone, and batches of 16 lost 0.009 (ragtrace_tools/bench/onnx_backends.py, docs/benchmarks.md).
    # uint8 weights where the CPU has no VNNI: the file's name (its recipe) says which.
    "onnx-int8": Variant(
        "onnx-int8",
        quantize=True,
        per_channel=True,
        operators=INTEGER_OPS,
        weights="uint8" if u8s8_saturates() else "int8",
    ),
}


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort the texts longest first (stable), so each batch pads to nearly its own length."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def restore_order(sorted_rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The rows of a length-sorted result back in the caller's order."""
    rows = np.empty_like(sorted_rows)
    rows[order] = sorted_rows
    return rows


def _source_key(model_dir: str, model_name: str) -> str:
    """Identifies the source model by its files' names and sizes, and the recipe and exporter versions."""
    exporters = "|".join(version(p) for p in ("torch", "onnx", "onnxruntime"))
    digest = hashlib.sha256(f"{model_name}|{RECIPE}|{OPSET}|{exporters}".encode())
    directory = Path(model_dir)
    if directory.is_dir():
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                digest.update(f"{path.relative_to(directory)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def cache_path(cache_dir: Path, model_dir: str, model_name: str, variant: Variant) -> Path:
    """<cache>/<model>-<source key>/<variant>-<recipe key>.onnx: a changed model, exporter or recipe is a new file."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.rsplit("/", 1)[-1])
    recipe = hashlib.sha256(json.dumps(asdict(variant), sort_keys=True).encode()).hexdigest()[:8]
    folder = cache_dir.expanduser() / f"{slug}-{_source_key(model_dir, model_name)}"
    return folder / f"{variant.name}-{recipe}.onnx"


def ensure_exported(model: Any, cache_dir: Path, model_dir: str, model_name: str, variant: Variant) -> Path:
    """The variant's ONNX file in the cache, exported (and quantized) first if it is not there yet. Files are
    written under a temporary name and renamed, so processes starting together never read a partial file."""
    target = cache_path(cache_dir, model_dir, model_name, variant)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = cache_path(cache_dir, model_dir, model_name, VARIANTS["onnx"])
    if not fp32.is_file():
        log.info("exporting %s to ONNX: %s", model_name, fp32)
        _atomic(fp32, lambda path: export_fp32(model, path))
        fp32.with_suffix(".json").write_text(json.dumps({"model": model_name, **asdict(VARIANTS["onnx"])}))
    source = fp32
    if variant.optimize:
        source = cache_path(cache_dir, model_dir, model_name, VARIANTS["onnx-opt"])
        if not source.is_file():
            log.info("optimizing the ONNX graph of %s: %s", model_name, source)
            _atomic(source, lambda path: optimize(fp32, path, model))
    if variant.quantize:
        log.info("quantizing %s (%s): %s", model_name, variant.name, target)
        _atomic(target, lambda path: quantize(source, path, variant))
    target.with_suffix(".json").write_text(json.dumps({"model": model_name, **asdict(variant)}))
    return target


def _atomic(target: Path, write: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from another user (the image's)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def input_names(tokenizer: Any) -> list[str]:
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    return names or ["input_ids", "attention_mask"]


def export_fp32(model: Any, path: Path) -> None:
    """The whole sentence-transformers module (its modules in order) as one graph: token ids in, the sentence
    embedding out, dynamic in batch and sequence length."""
    import torch

    names = input_names(model.tokenizer)

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            features = dict(zip(names, inputs, strict=True))
            return self.model(features)["sentence_embedding"]  # type: ignore[no-any-return]

    sample = model.tokenizer(["an example sentence", "another one"], padding=True, return_tensors="pt")
    wrapper = SentenceEmbedding().to("cpu").eval()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names} | {"sentence_embedding": {0: "batch"}}
    # The classic attention pattern (matmul, softmax, matmul) that onnxruntime's fusions and quantizer know,
    # rather than SDPA's decomposition; the torch model gets its own attention back afterwards.
    transformer = model[0].auto_model
    attention = transformer.config._attn_implementation
    transformer.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            torch.onnx.export(
                wrapper,
                tuple(sample[name] for name in names),
                str(path),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        transformer.set_attn_implementation(attention)


def optimize(source: Path, target: Path, model: Any) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    config = model[0].auto_model.config
    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=1,
    )
    optimized.save_model_to_file(str(target))


def quantize(source: Path, target: Path, variant: Variant) -> None:
    """onnxruntime's dynamic int8 quantization: int8 weights (symmetric), or uint8 where int8 saturates (the
    variant's `weights`), and uint8 activations scaled per run, full 8-bit range."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(source), load_external_data=False).graph.node]
    exclude = [n for n in nodes if variant.exclude and re.search(variant.exclude, n)]
    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=list(variant.operators),
        per_channel=variant.per_channel,
        reduce_range=False,
        weight_type=QuantType.QUInt8 if variant.weights == "uint8" else QuantType.QInt8,
        nodes_to_exclude=exclude,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


class OnnxEncoder:
    """An onnxruntime session of an exported model, with the model's tokenizer. Texts are tokenized once and sorted
    by token count. An fp32 model runs them in batches, each padded to its own longest, on `threads` intra-op
    threads. A dynamically quantized model runs each text alone (`texts_alone`): its activations are scaled per
    run, so in a batch a text's vector would depend on its batch-mates and on their padding (`make eval` measured
    that at batch 16 as 0.009 nDCG@10 on cranfield); alone, it is the same vector whoever else is being embedded,
    with no padding at all, and `threads` texts run at once, one core each. Either way the rows come back in the
    caller's order."""

    def __init__(
        self,
        path: Path,
        tokenizer: Any,
        max_length: int,
        threads: int = 0,
        spinning: bool = True,
        texts_alone: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.threads = threads or cpu_count()
        self.texts_alone = texts_alone
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Texts alone: each run computes on the thread that calls it, and `threads` callers run at once.
        options.intra_op_num_threads = 1 if texts_alone else self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads keep the cores between batches: the fastest for a stream of batches, a cost to the
        # process's other threads (gRPC, Kafka) when idle. Off, they sleep as soon as a call is done.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._callers = ThreadPoolExecutor(self.threads, "onnx") if texts_alone and self.threads > 1 else None
        self.path = path
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.names = [i.name for i in self.session.get_inputs()]
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=False, return_attention_mask=False
        )["input_ids"]
        order = length_order([len(i) for i in ids])
        size = 1 if self.texts_alone else batch_size
        batches = [[ids[i] for i in order[start : start + size]] for start in range(0, len(texts), size)]
        # Longest first, so the last texts to finish are short ones and the callers end together.
        runs = self._callers.map(self._run, batches) if self._callers and len(batches) > 1 else map(self._run, batches)
        return restore_order(np.vstack(list(runs)), order)

    def _run(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(i) for i in batch)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
            attention_mask[row, : len(tokens)] = 1
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        (vectors,) = self.session.run(None, {name: feed[name] for name in self.names})
        return np.asarray(vectors, dtype=np.float32)
