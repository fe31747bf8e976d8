import math

import pytest
import torch

from gpuprof.bench import check, CheckFailed, measure_point, relative_error, rotation_sets
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.harness import TimingOptions
from gpuprof.ops import OPS, get_op
from gpuprof.ops.base import Launch, Op, Work

QUICK = TimingOptions(warmup_ms=0, max_time_s=0.05, min_reps=3)


class Scale(Op):
    """y = 2x, with deliberately broken implementations to check that checks catch them."""

    kernel = "scale"
    impls = ("good", "skips-last", "wrong", "unsupported", "raises")
    shape_keys = ("n",)

    def work(self, shape, dtype):
        return Work(bytes=8 * shape["n"], flops=shape["n"])

    def input_bytes(self, shape, dtype):
        return 8 * shape["n"]

    def make_inputs(self, shape, dtype, device, generator):
        return {"x": torch.randn(shape["n"], generator=generator)}

    def launch(self, impl, inputs):
        x = inputs["x"]
        out = torch.empty_like(x)
        if impl == "unsupported":
            raise Unsupported("scale/unsupported cannot run this shape.")

        def run():
            if impl == "raises":
                raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
            n = x.numel() - (1 if impl == "skips-last" else 0)
            out[:n] = x[:n] * (2.001 if impl == "wrong" else 2)
            return out

        return Launch(run=run, out=out)

    def reference(self, inputs):
        return inputs["x"].double() * 2

    def tolerance(self, dtype):
        return 1e-6


@pytest.mark.parametrize(
    "impl, status, error",
    [
        ("good", "ok", None),
        ("skips-last", "error", "unwritten"),
        ("wrong", "error", "relative error"),
        ("unsupported", "unsupported", "cannot run"),
        ("raises", "error", "RuntimeError: CUDA error: an illegal memory access was encountered"),
    ],
)
def test_measure_point_outcomes(impl, status, error):
    p = measure_point(Scale(), impl, {"n": 257}, "fp32", device="cpu", options=QUICK, peaks={"copy_gbps": 1.0})
    assert p["status"] == status
    if error:
        assert error in p["error"] and "\n" not in p["error"]
    else:
        assert p["time_us"] > 0 and p["gbps"] > 0 and p["pct_copy_bw"] is not None and p["max_rel_err"] < 1e-6
    assert p["bytes"] == 8 * 257 and p["kernel"] == "scale" and p["n"] == 257


def test_relative_error():
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(ref, ref) == 0
    assert relative_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert relative_error(torch.tensor([3.0, math.nan]), ref) == math.inf
    with pytest.raises(CheckFailed, match="shape"):
        relative_error(torch.zeros(3), ref)


def test_relative_error_per_row_is_the_worst_row():
    """A 10% error in a small row hides under a large row's norm unless each row is judged on its own."""
    ref = torch.tensor([[100.0, 0.0], [3.0, 4.0]])
    out = torch.tensor([[100.0, 0.0], [3.0, 4.5]])
    assert relative_error(out, ref) < 0.005
    assert relative_error(out, ref, per_row=True) == pytest.approx(0.1)
    zero_row = torch.tensor([[100.0, 0.0], [0.0, 0.0]])  # a zero reference row: the absolute error
    assert relative_error(out, zero_row, per_row=True) == pytest.approx(math.hypot(3, 4.5))


class TwoRows(Scale):
    """y = 2x over two rows of very different size; "wrong" is off by 5% in the small row only."""

    def make_inputs(self, shape, dtype, device, generator):
        return {"x": torch.tensor([[1000.0, 1000.0], [1.0, 1.0]])}

    def launch(self, impl, inputs):
        out = torch.empty_like(inputs["x"])

        def run():
            out.copy_(inputs["x"] * 2)
            if impl == "wrong":
                out[1] *= 1.05
            return out

        return Launch(run=run, out=out)

    def tolerance(self, dtype):
        return 1e-2


@pytest.mark.parametrize("per_row, passes", [(False, True), (True, False)])
def test_check_judges_the_worst_row_where_the_op_asks(per_row, passes):
    op = TwoRows()
    op.error_per_row = per_row
    inputs = op.make_inputs({"n": 2}, "fp32", "cpu", None)
    if passes:
        assert check(op, "wrong", inputs, "fp32") < 1e-2
    else:
        with pytest.raises(CheckFailed, match="relative error 0.05"):
            check(op, "wrong", inputs, "fp32")


def test_attention_is_checked_per_sequence():
    assert get_op("attention").error_per_row and not get_op("gemv").error_per_row


@pytest.mark.parametrize(
    "input_bytes, l2, sets", [(10, 0, 1), (200, 100, 1), (150, 100, 2), (30, 100, 10), (1, 100, 1)]
)
def test_rotation_sets(input_bytes, l2, sets):
    assert rotation_sets(input_bytes, l2) == sets


@pytest.mark.parametrize("kernel, shape, dtype", [
    ("copy", {"n": 1000}, "bf16"),
    ("read", {"n": 70001}, "fp16"),
    ("read", {"n": 3}, "fp32"),
    ("matmul", {"m": 17, "n": 33, "k": 65}, "fp32"),
    ("matmul", {"m": 16, "n": 16, "k": 128}, "bf16"),
])
def test_builtin_ops_pass_their_checks(kernel, shape, dtype, device):
    op = get_op(kernel)
    inputs = op.make_inputs(shape, dtype, device, torch.Generator(device=device).manual_seed(1))
    assert check(op, op.impls[0], inputs, dtype) <= op.tolerance(dtype)


def test_work_counts():
    assert get_op("copy").work({"n": 10}, "bf16") == Work(bytes=40, flops=0)
    assert get_op("read").work({"n": 10}, "fp32") == Work(bytes=40, flops=10)
    assert get_op("matmul").work({"m": 2, "n": 3, "k": 4}, "fp16") == Work(bytes=(8 + 12 + 6) * 2, flops=48)


@pytest.mark.parametrize("kernel", sorted(OPS))
def test_every_op_completes_a_bare_shape_or_names_what_it_needs(kernel):
    op = OPS[kernel]
    try:
        shape = op.shape()
    except GpuprofError as e:
        assert str(e).startswith(f"{kernel} needs --") and "for example --" in str(e)
    else:
        assert set(shape) == set(op.shape_keys)
