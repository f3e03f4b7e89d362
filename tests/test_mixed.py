"""Per-layer bit-width search: the fp16 pass (Before/Expected), int4 layers through realize, the
ILP against exhaustive search on tables whose answer is known, layer groups on the real CNN, and
`--quantize mixed` end to end: budget honoured by the built artifact, a configuration file that
rebuilds the same artifact, one-line errors."""

import itertools
import json

import numpy as np
import pytest
import tvm
from test_cli import assert_one_line_error, qc
from tvm import relax

from qcompile.backends import host_engine
from qcompile.backends.cpu.run import load_library
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
from qcompile.frontends import load_model
from qcompile.ir import const_value, is_const, main_bindings, op_name
from qcompile.passes import float_passes
from qcompile.quantize import QuantConfig, quantize_module
from qcompile.quantize.annotate import plan
from qcompile.quantize.search import candidates, exhaustive, group_tables, layer_edges, layer_groups, predicted, solve

FASHION = fashion_mnist_cnn_onnx()


@pytest.fixture(scope="module")
def fashion():
    imported = load_model(FASHION, {"image": [100, 1, 28, 28]})
    mod = tvm.transform.Sequential(float_passes())(imported.mod)
    x, y = fashion_mnist("t10k")
    return imported, mod, x[:300], y[:300]


def test_int4_layers_keep_4bit_codes_and_fp16_layers_float16(fashion):
    imported, mod, x, _ = fashion
    names = imported.layer_names
    config = QuantConfig(progress=False, precisions={names[1]: "int4", names[2]: "fp16", names[3]: "fp32"})
    q, report = quantize_module(mod, imported.inputs, [{"image": x[:100]}], config, names, engine=host_engine)
    weights = [(op_name(v), const_value(v.args[1])) for _, v in main_bindings(q)
               if op_name(v) in ("nn.conv2d", "matmul") and is_const(v.args[1])]
    dtypes = [str(w.dtype) for _, w in weights]
    assert dtypes == ["int8", "int8", "float16", "float32", "int8", "int8"]
    codes = weights[1][1]
    assert codes.min() >= -7 and codes.max() <= 7 and np.abs(codes).max() == 7  # 4-bit symmetric, full range
    assert np.abs(weights[0][1]).max() == 127
    assert [r["precision"] for r in report["layers"] if r["op"] in ("conv2d", "matmul")] == \
        ["int8", "int4", "fp16", "fp32", "int8", "int8"]


def test_unknown_layer_or_precision_is_one_line(tmp_path, fashion):
    imported, mod, x, _ = fashion
    np.savez(tmp_path / "calib.npz", image=x[:100])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"precisions": {"no-such-layer": "int4"}}))
    proc = qc("build", FASHION, "--input-shape", "image:100,1,28,28", "--quantize", "int8", "--calib",
              tmp_path / "calib.npz", "--precision-config", bad, "-o", tmp_path / "m.so")
    assert_one_line_error(proc, "no-such-layer")
    bad.write_text(json.dumps({"precisions": {imported.layer_names[0]: "int3"}}))
    proc = qc("build", FASHION, "--input-shape", "image:100,1,28,28", "--quantize", "int8", "--calib",
              tmp_path / "calib.npz", "--precision-config", bad, "-o", tmp_path / "m.so")
    assert_one_line_error(proc, "int3", imported.layer_names[0])
    assert not (tmp_path / "m.so").exists()


def _random_tables(rng, n_layers):
    names = [f"l{i}" for i in range(n_layers)]
    allowed = {n: ("int4", "int8", "fp16", "fp32") for n in names}
    noise = {n: {"int4": rng.uniform(1e-3, 1e-2), "int8": rng.uniform(1e-5, 1e-4), "fp16": 1e-8, "fp32": 0.0} for n in names}
    cost = {n: {"int4": rng.uniform(1, 3), "int8": rng.uniform(1, 3), "fp16": rng.uniform(3, 6), "fp32": rng.uniform(4, 8)}
            for n in names}
    return names, allowed, noise, cost


def test_ilp_matches_exhaustive_search_and_honours_the_budget():
    rng = np.random.default_rng(0)
    for trial in range(6):
        names, allowed, noise, cost = _random_tables(rng, 5)
        groups = [[n] for n in names] if trial % 2 else [names[:2], *[[n] for n in names[2:]]]
        options = group_tables(groups, allowed, noise, cost)
        for budget in [0.0, 5e-5, 3e-4, 5e-3, 2e-2, 1.0]:
            ilp, brute = solve(groups, options, budget), exhaustive(groups, options, budget)
            assert (ilp is None) == (brute is None)
            pn, pc = predicted(ilp, noise, cost)
            assert pn <= budget * (1 + 1e-9)
            assert pc == pytest.approx(predicted(brute, noise, cost)[1], rel=1e-9)
            if groups[0] == names[:2]:
                assert ilp["l0"] == ilp["l1"]


def test_ilp_with_boundary_edges_matches_exhaustive_search():
    """Quantize/dequantize costs on the edges between layers: the ILP's linearisation of
    "integer on one side only" finds the same optimum as enumerating every configuration."""
    rng = np.random.default_rng(1)
    for trial in range(6):
        names, allowed, noise, cost = _random_tables(rng, 5)
        groups = [[n] for n in names] if trial % 2 else [names[:2], *[[n] for n in names[2:]]]
        edges = [(a, b, rng.uniform(0, 3), rng.uniform(0, 3)) for a, b in itertools.combinations(names, 2)
                 if rng.uniform() < 0.5]
        options = group_tables(groups, allowed, noise, cost)
        for budget in [0.0, 5e-5, 3e-4, 5e-3, 2e-2, 1.0]:
            ilp, brute = solve(groups, options, budget, edges), exhaustive(groups, options, budget, edges)
            assert (ilp is None) == (brute is None)
            assert predicted(ilp, noise, cost, edges)[0] <= budget * (1 + 1e-9)
            assert predicted(ilp, noise, cost, edges)[1] == pytest.approx(predicted(brute, noise, cost, edges)[1], rel=1e-9)


def test_boundary_costs_keep_an_integer_chain_whole():
    """a -> b -> c, each cheapest alone as fp32 for b; but b in fp32 between int8 neighbours pays a
    dequantize and a quantize, so with the edges the chain stays int8."""
    noise = {n: {"int8": 1e-4, "fp32": 0.0} for n in "abc"}
    cost = {"a": {"int8": 1.0, "fp32": 4.0}, "b": {"int8": 2.0, "fp32": 1.5}, "c": {"int8": 1.0, "fp32": 4.0}}
    allowed = {n: ("int8", "fp32") for n in "abc"}
    groups = [["a"], ["b"], ["c"]]
    options = group_tables(groups, allowed, noise, cost)
    assert solve(groups, options, 1.0) == {"a": "int8", "b": "fp32", "c": "int8"}
    edges = [("a", "b", 0.5, 0.5), ("b", "c", 0.5, 0.5)]
    assert solve(groups, options, 1.0, edges) == {"a": "int8", "b": "int8", "c": "int8"}


def test_known_answer_and_pareto_front():
    # Two layers: a is cheap to lower, b is sensitive. Budget 0.011: a to int4 (noise 0.01), b int8.
    noise = {"a": {"int4": 0.01, "int8": 0.001, "fp32": 0.0}, "b": {"int4": 0.5, "int8": 0.001, "fp32": 0.0}}
    cost = {"a": {"int4": 1.0, "int8": 2.0, "fp32": 4.0}, "b": {"int4": 1.0, "int8": 2.0, "fp32": 4.0}}
    allowed = {"a": ("int4", "int8", "fp32"), "b": ("int4", "int8", "fp32")}
    groups = [["a"], ["b"]]
    options = group_tables(groups, allowed, noise, cost)
    assert solve(groups, options, 0.011) == {"a": "int4", "b": "int8"}
    assert solve(groups, options, 0.0) == {"a": "fp32", "b": "fp32"}
    assert solve(groups, options, 0.0015) == {"a": "int8", "b": "fp32"} or solve(groups, options, 0.0015) == {"a": "fp32", "b": "int8"}
    front = candidates(groups, options, steps=12)
    costs = [predicted(c, noise, cost)[1] for c in front]
    noises = [predicted(c, noise, cost)[0] for c in front]
    assert costs == sorted(costs, reverse=True) and noises == sorted(noises)  # cheaper only by more noise
    assert {"a": "int4", "b": "int4"} in front


def test_edges_follow_the_fashion_cnn(fashion):
    imported, mod, _, _ = fashion
    p = plan(mod, imported.layer_names)
    names = imported.layer_names
    # conv0 -> conv1 -> conv2 -> (conv3, the residual add) -> conv4 -> gemm, through pools and adds
    assert layer_edges(p, [n.name for n in p.nodes if n.kind == "compute"]) == [
        (names[0], names[1]), (names[1], names[2]), (names[2], names[3]), (names[2], names[4]), (names[3], names[4]),
        (names[4], names[5])]


def test_residual_add_groups_its_producers(fashion):
    imported, mod, _, _ = fashion
    p = plan(mod, imported.layer_names)
    compute = [n.name for n in p.nodes if n.kind == "compute"]
    groups = layer_groups(p, compute)
    names = imported.layer_names
    assert sorted(map(sorted, groups)) == sorted(map(sorted, [[names[0]], [names[1]], [names[2], names[3]], [names[4]], [names[5]]]))


def test_mixed_build_honours_the_budget_and_its_config_rebuilds_the_same_artifact(tmp_path, fashion):
    _, _, x, y = fashion
    np.savez(tmp_path / "data.npz", image=x)
    np.save(tmp_path / "labels.npy", y)
    common = ["--input-shape", "image:100,1,28,28", "--calib", tmp_path / "data.npz"]
    proc = qc("build", FASHION, *common, "--quantize", "mixed", "--labels", tmp_path / "labels.npy",
              "--objective", "size", "--max-accuracy-drop", "1.0", "--search-cache", tmp_path / "cache",
              "-o", tmp_path / "mixed.so")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "mixed.precision.json").read_text())
    assert (tmp_path / "mixed.precision.md").read_text().count("| /") == 6
    assert (tmp_path / "mixed.precision.png").stat().st_size > 10_000
    assert set(config["precisions"].values()) <= {"int4", "int8", "int4w", "fp16", "fp32"}
    assert "int4" in config["precisions"].values()  # a 1-point budget affords 4-bit weights somewhere
    accepted = [c for c in config["checked"] if c["accepted"]]
    assert len(accepted) == 1 and accepted[0]["real_drop"] <= 1.0 and accepted[0]["precisions"] == config["precisions"]

    # the built artifact itself keeps top-1 within the budget of float on the same data
    def top1(path):
        vm = relax.VirtualMachine(load_library(path), tvm.cpu())
        return np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 100])).numpy() for i in range(0, 300, 100)]).argmax(1)

    assert qc("build", FASHION, "--input-shape", "image:100,1,28,28", "-o", tmp_path / "float.so").returncode == 0
    assert qc("build", FASHION, *common, "--quantize", "int8", "-o", tmp_path / "int8.so").returncode == 0
    acc = {k: 100 * np.mean(top1(tmp_path / f"{k}.so") == y) for k in ("float", "mixed", "int8")}
    assert acc["float"] - acc["mixed"] <= 1.0 + 1e-9
    assert (tmp_path / "mixed.so").stat().st_size < (tmp_path / "int8.so").stat().st_size  # 4-bit weights are smaller

    proc = qc("build", FASHION, *common, "--quantize", "int8", "--precision-config", tmp_path / "mixed.precision.json",
              "-o", tmp_path / "again.so")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again.so").read_bytes() == (tmp_path / "mixed.so").read_bytes()


def test_latency_search_times_its_choice_against_uniform_int8(tmp_path, fashion):
    """The latency objective: conversions move from the layers to the edges, and the built
    candidates within budget are timed whole beside uniform int8; the fastest is chosen."""
    from qcompile.builder import prepare
    from qcompile.mixed import search

    _, _, x, y = fashion
    np.savez(tmp_path / "data.npz", image=x)
    prepared = prepare(FASHION, "host", {"image": [100, 1, 28, 28]})
    result, _ = search(prepared, tmp_path / "data.npz", labels=y, max_drop=1.0, objective="latency",
                       base=QuantConfig(progress=False), cache_dir=tmp_path / "cache", progress=False,
                       timed_candidates=2)
    cache = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    intercept, per_element = cache["conversion_us"]["quantize"]
    assert per_element > 0 and intercept >= 0
    for row in result.layers:  # an integer layer's cost no longer carries its own conversions
        assert row["latency"]["int8"] <= cache["latency_us"][row["name"]]["int8"]
    # What holds on every machine: the choice is within the budget on real kernels, and it was timed
    # beside every other built candidate within the budget (uniform int8 among them whenever its
    # real drop is within), and none of them ran faster. Which configuration wins depends on the CPU.
    timed = [c for c in result.checked if "latency_us" in c]
    within = [c for c in result.checked if c["real_drop"] <= 1.0]
    assert timed and [c["precisions"] for c in timed] == [c["precisions"] for c in within]
    int8 = {row["name"]: "int8" for row in result.layers}
    if result.uniform["int8"]["simulated_drop"] <= 1.0:
        assert int8 in [c["precisions"] for c in result.checked]  # the baseline was built and checked
    chosen = next(c for c in result.checked if c["accepted"])
    assert chosen["precisions"] == result.precisions and chosen["real_drop"] <= 1.0
    assert chosen["latency_us"] == min(c["latency_us"] for c in timed)
