"""``fedconv export RUN_DIR``: the trained global model for inference on a board.

Writes four artifacts next to each other (default ``RUN_DIR/export/``), each taking float32
images in [0, 1] (N x C x H x W; the dataset's normalisation is inside the model):

- ``model.ts``            TorchScript (``torch.jit.load``, no fedconv needed on the board)
- ``model.onnx``          ONNX (onnxruntime, TensorRT, ...)
- ``model.int8-dynamic.ts``  dense layers int8 (weights), activations quantized on the fly
- ``model.int8-static.ts``   convolutions and dense layers int8, calibrated on training images
  (``--backend x86`` here, ``qnnpack`` for ARM boards such as the Raspberry Pi)

Each artifact is loaded back and measured on this machine: size in MB, accuracy on the
dataset's test set, agreement of its predictions with the float PyTorch model, and the
median latency of one image over ``--runs`` (>= 200) runs on 1 thread. The numbers go to
``export.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedconv import atomic
from fedconv.data.datasets import DatasetError
from fedconv.learning.training import Normalize
from fedconv.runs import run_dir

Predict = Callable[[np.ndarray], np.ndarray]  # float32 [0, 1] images -> logits


def load_run_model(run: Path) -> tuple[dict[str, Any], Any, nn.Module]:
    """The run's config, dataset and model with its final weights (safetensors, no pickle)."""
    from fedconv.learning import task
    from fedconv.simulation import resume

    cfg_path, weights = run / run_dir.CONFIG, run / run_dir.WEIGHTS
    for path in (cfg_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; export needs a completed run directory")
    cfg = resume.saved_config(run)  # the run dir's config, read as resume reads it (errors name the file)
    ds = task.dataset(cfg)
    model = task.initial_model(cfg, ds)
    state = run_dir.load_weights(weights)
    try:
        task.load_global(model, state)
    except (ValueError, RuntimeError) as exc:  # torch lists every mismatch on its own line: keep the first
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        more = f"; and {len(lines) - 2} more" if len(lines) > 2 else ""
        raise run_dir.RunDirError(f"{weights}: does not fit the run's model ({detail}{more})") from None
    return cfg, ds, model.eval()


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch's dynamo ONNX exporter, quietly: the user's output is the table, so its progress
    lines, its note that torchvision's operators are skipped (fedconv uses none) and
    torch.export's deprecation warnings are kept off the console."""
    import logging

    exporter_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), input_names=["image"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                              verbose=False)
    finally:
        exporter_log.setLevel(level)


def _static_int8(model: nn.Module, norm: Normalize, calibration: torch.Tensor, backend: str) -> nn.Module:
    """Post-training static quantization (FX graph mode), calibrated on training images."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        core = prepare_fx(model, get_default_qconfig_mapping(backend), example_inputs=(norm(calibration[:1]),))
        with torch.inference_mode():
            for batch in calibration.split(64):
                core(norm(batch))
        return nn.Sequential(norm, convert_fx(core)).eval()


def _trace(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.inference_mode():
        traced = torch.jit.trace(module, example, check_trace=False)
    torch.jit.save(traced, str(path))


def write_artifacts(model: nn.Module, ds: Any, out: Path, backend: str, calibration_images: int) -> dict[str, Path]:
    """Write the four artifacts; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    norm = Normalize(ds.mean, ds.std)
    float_model = nn.Sequential(norm, model).eval()
    example = torch.rand(1, *ds.input_shape)
    paths = {
        "torchscript": out / "model.ts",
        "onnx": out / "model.onnx",
        "int8-dynamic": out / "model.int8-dynamic.ts",
        "int8-static": out / "model.int8-static.ts",
    }
    _trace(float_model, example, paths["torchscript"])
    _onnx(float_model, example, paths["onnx"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamic = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    _trace(dynamic, example, paths["int8-dynamic"])
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ds.train_y), size=min(calibration_images, len(ds.train_y)), replace=False)
    calibration = torch.from_numpy(np.asarray(ds.train_x[np.sort(pick)], dtype=np.float32) / 255.0)
    import copy

    _trace(_static_int8(copy.deepcopy(model), norm, calibration, backend), example, paths["int8-static"])
    return paths


def loader(name: str, path: Path) -> Predict:
    """Load an artifact back the way a board would, as a numpy-in numpy-out function."""
    if name == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})[0]
    module = torch.jit.load(str(path)).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return predict


def measure(predict: Predict, images: np.ndarray, labels: np.ndarray, reference: np.ndarray | None,
            runs: int, batch: int = 500) -> dict[str, Any]:
    """Accuracy, agreement with the reference predictions, and single-image latency (1 thread)."""
    preds = np.concatenate([
        predict(np.asarray(images[i:i + batch], dtype=np.float32) / 255.0).argmax(1) for i in range(0, len(labels), batch)
    ])
    one = np.asarray(images[:1], dtype=np.float32) / 255.0
    for _ in range(20):
        predict(one)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - t0)
    return {
        "accuracy": float((preds == labels).mean()),
        "agreement_with_float": float((preds == reference).mean()) if reference is not None else 1.0,
        "latency_ms_median": 1000 * statistics.median(times),
        "latency_ms_p90": 1000 * float(np.percentile(times, 90)),
        "predictions": preds,
    }


def export(run: Path, out: Path, runs: int = 200, backend: str | None = None, calibration_images: int = 512) -> dict[str, Any]:
    if runs < 200:
        raise ValueError(f"--runs={runs}: must be >= 200 for a stable median")
    backend = backend or ("qnnpack" if platform.machine() in ("aarch64", "arm64") else "x86")
    torch.set_num_threads(1)
    cfg, ds, model = load_run_model(run)
    paths = write_artifacts(model, ds, out, backend, calibration_images)
    images, labels = ds.test_x, np.asarray(ds.test_y)
    float_model = nn.Sequential(Normalize(ds.mean, ds.std), model).eval()

    def float_predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return float_model(torch.from_numpy(x)).numpy()

    rows: dict[str, dict[str, Any]] = {}
    base = measure(float_predict, images, labels, None, runs)
    reference = base.pop("predictions")
    rows["pytorch-float"] = {"file": None, "size_mb": None, **base}
    for name, path in paths.items():
        result = measure(loader(name, path), images, labels, reference, runs)
        result.pop("predictions")
        rows[name] = {"file": path.name, "size_mb": path.stat().st_size / 1e6, **result}
    report = {
        "run_dir": str(run), "model": cfg["model"]["name"], "dataset": cfg["dataset"]["name"],
        "test_images": int(len(labels)), "latency_runs": runs, "threads": 1, "quantized_backend": backend,
        "input": "float32 N x C x H x W in [0, 1]; normalisation is inside the model",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "artifacts": rows,
    }
    run_dir.write_json(out / "export.json", report)
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"{'artifact':<15} {'MB':>7} {'accuracy':>9} {'agree':>7} {'latency ms (median, 1 thread)':>30}"]
    for name, r in report["artifacts"].items():
        size = f"{r['size_mb']:.3f}" if r["size_mb"] is not None else "-"
        lines.append(f"{name:<15} {size:>7} {r['accuracy']:>9.4f} {r['agreement_with_float']:>7.4f} "
                     f"{r['latency_ms_median']:>30.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedconv export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a completed run directory (config.yaml + model.safetensors)")
    parser.add_argument("--out", type=Path, help="where to write the artifacts (default RUN/export)")
    parser.add_argument("--runs", type=int, default=200, help="timed single-image runs per artifact (>= 200)")
    parser.add_argument("--backend", choices=["x86", "fbgemm", "qnnpack", "onednn"],
                        help="int8 kernels: x86 here, qnnpack for ARM boards (default: this machine's)")
    parser.add_argument("--calibration-images", type=int, default=512)
    args = parser.parse_args(argv)
    if args.calibration_images < 1:
        print(f"error: --calibration-images={args.calibration_images}: must be >= 1", file=sys.stderr)
        return 2
    out = args.out or args.run / "export"
    if args.run.is_dir() and (reason := (("it is a file" if out.exists() and not out.is_dir() else None)
                                         or atomic.unwritable(out))):
        print(f"error: --out {out}: cannot write the artifacts there ({reason})", file=sys.stderr)
        return 2
    try:
        report = export(args.run, args.out or args.run / "export", args.runs, args.backend, args.calibration_images)
    except (FileNotFoundError, ValueError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['model']} on {report['dataset']} ({report['test_images']} test images), {report['machine']}")
    print(table(report))
    print(f"-> {args.out or args.run / 'export'}/export.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
