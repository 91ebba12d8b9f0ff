"""Pruning to a latency target: the latency model's grid and prediction, the greedy width search, the
latency job's plan, and the job itself run by a real agent process on ONNX Runtime (cached the second time)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from edgekit.device.contract.latency import LatencyPlanError, parse_plan
from edgekit.device.contract.manifest import MANIFEST, SIGNATURE, canonical_bytes, parse_manifest
from edgekit.device.contract.protocol import LATENCY_MODEL
from edgekit.host.optimize.prune.latency import (
    BASELINE,
    FLAT,
    GroupSpace,
    LatencyModel,
    Layer,
    fit_line,
    grid,
    group_space,
    layer_onnx,
    layer_variants,
    resolve_target,
    search_spaces,
    search_widths,
    uniform_widths,
    variant_id,
    whole_widths,
)
from edgekit.host.optimize.prune.sensitivity import magnitude_costs

from .conftest import AGENT

# the tiny test project's groups have 4-16 channels: on an AVX-512 device (16-float blocks) every one would be
# held whole, so the tests of the search itself keep round_to's steps on every machine
NO_DEVICE_ALIGNMENT = "align_to_device = false\n"


def two_groups(width: int = 32) -> tuple[list[Layer], dict[str, GroupSpace]]:
    """A stem at 32×32 (expensive per channel) feeding a 16×16 layer (cheap per channel), then a classifier."""
    layers = [Layer("stem", "conv", 3, width, None, "a", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (32, 32)),
              Layer("mid", "conv", width, width, "a", "b", (3, 3), (2, 2), (1, 1), (1, 1), 1, False, (32, 32)),
              Layer("fc", "linear", width, 10, "b", None)]
    spaces = {"a": group_space("a", width, 8, 1, 0.9), "b": group_space("b", width, 8, 1, 0.9)}
    return layers, spaces


def synthetic_table(layers: list[Layer], spaces: dict[str, GroupSpace], per_mac: float = 1e-6,
                    call_ms: float = 0.05) -> dict[str, float]:
    """Layer time ∝ MACs plus a per-call overhead; whole models pay one overhead, not one per layer."""
    def macs(layer: Layer, cin: int, cout: int) -> float:
        if layer.kind == "linear":
            return cin * cout
        out = layer.size[0] // layer.stride[0] * layer.size[1] // layer.stride[1]
        return cin * cout * layer.kernel[0] * layer.kernel[1] * out

    table = {ident: call_ms + per_mac * macs(layer, cin, cout)
             for ident, (layer, cin, cout) in layer_variants(layers, spaces).items()}
    for ident, widths in whole_widths(spaces).items():
        table[ident] = call_ms + sum(per_mac * macs(layer, *layer.widths(widths)) for layer in layers)
    table[BASELINE] = table["whole:1.0"]
    return table


def test_grid_honours_round_to_and_max_layer_ratio():
    space = group_space("g", 64, 8, 1, 0.75)
    assert space.floor == 16 and space.unit == 8
    widths = grid(space, 64)
    assert widths[0] == 16 and widths[-1] == 64 and all(w % 8 == 0 for w in widths)
    assert grid(None, 10) == [10]
    grouped = group_space("g", 48, 8, 3, 0.9)  # channel groups of 3: steps of lcm(8, 3) = 24
    assert grouped.unit == 24 and all(w % 24 == 0 for w in grid(grouped, 48))


def test_the_fit_maps_the_layer_sum_to_whole_models_and_prediction_interpolates():
    layers, spaces = two_groups()
    table = synthetic_table(layers, spaces)
    model = LatencyModel(layers, spaces, table)
    for ident, widths in whole_widths(spaces).items():  # the calibration points themselves
        assert model.predict(widths) == pytest.approx(table[ident], rel=1e-6)
    between = {"a": 20, "b": 12}  # off the grid: bilinear between grid points, exact for a bilinear cost
    expected = synthetic_table(layers, {"a": GroupSpace("a", 20, 20, 1), "b": GroupSpace("b", 12, 12, 1)})
    assert model.predict(between) == pytest.approx(expected["whole:1.0"], rel=0.02)
    assert fit_line([(1.0, 3.0), (2.0, 2.0)]) == (1.0, 1.0)  # noise made the slope negative: offset only


def test_greedy_search_meets_the_target_cutting_where_time_is_spent():
    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    full = model.predict(model.full())
    flat = magnitude_costs({name: [1.0] * 32 for name in spaces}, spaces)  # equal cost: latency alone decides
    found = search_widths(model, flat, full / 2)
    assert found.reached and found.predicted_ms <= full / 2
    assert all(w % 8 == 0 and w >= spaces[n].floor for n, w in found.widths.items())
    # group a sets the 32×32 layers' widths: a channel there saves ~4× what one of b saves
    assert found.widths["a"] < found.widths["b"]
    uniform = uniform_widths(model, full / 2)
    assert uniform.reached and uniform.widths["a"] == uniform.widths["b"]
    wider = {name: width + 8 for name, width in uniform.widths.items()}  # the widest uniform widths that meet it
    assert model.predict(wider) > full / 2
    # accuracy steers it too: make a's channels precious and b is cut first
    precious = magnitude_costs({"a": [100.0] * 32, "b": [0.01] * 32}, spaces)
    assert search_widths(model, precious, full * 0.9).widths["a"] == 32
    # measured costs (curves at a few widths) steer it the same way
    curves = {"a": [(32, 0.0), (16, 5.0), (8, 9.0)], "b": [(32, 0.0), (16, 0.1), (8, 0.3)]}
    assert search_widths(model, curves, full * 0.9).widths["a"] == 32


def test_an_unreachable_target_stops_at_the_floors_and_says_so():
    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    found = search_widths(model, {}, 1e-6)
    assert not found.reached
    floors = model.predict({name: space.floor for name, space in spaces.items()})
    assert found.predicted_ms == pytest.approx(model.predict(found.widths))
    assert floors <= found.predicted_ms <= floors * (1 + FLAT)  # as fast as the floors, within noise
    assert found.path[-2][1] > floors * (1 + FLAT) or len(found.path) == 1  # no cut it kept was worth making


def test_a_layer_timed_faster_when_wider_does_not_lure_the_search_below_the_floors():
    """A small layer's time on a busy device is mostly noise: one variant read fast at a middle width must not
    make widths there predict faster than every group at its floor (RegNetY-400MF's checks: 0.29 ms predicted,
    0.51 measured)."""
    layers, spaces = two_groups()
    table = synthetic_table(layers, spaces)
    floors = {name: space.floor for name, space in spaces.items()}
    honest = LatencyModel(layers, spaces, table).predict(floors)
    middle = {"a": 16, "b": 16}
    for ident in list(table):  # the stem and the middle layer read at a tenth of their time at width 16
        if ident.startswith(("conv:k3x3s1x1", "conv:k3x3s2x2")) and ident.endswith(("|16", "|16|16")):
            table[ident] *= 0.1
    noisy = LatencyModel(layers, spaces, table)
    assert noisy.predict(middle) >= noisy.predict(floors) >= honest * 0.8  # no dip below the floors
    for layer in layers:  # each layer's time never falls as either width grows
        ins, outs = noisy.grids[layer.name]
        times = [[noisy.table[variant_id(layer, i, o)] for i in ([o] if layer.depthwise else ins)] for o in outs]
        assert all(row == sorted(row) for row in times)
        assert all(list(col) == sorted(col) for col in zip(*times))
    assert LatencyModel(layers, spaces, noisy.table).table == noisy.table  # fitting twice changes nothing
    clean = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    assert clean.table == synthetic_table(layers, spaces)  # an honest table is left as measured
    found = search_widths(noisy, {}, 1e-6)
    assert found.predicted_ms >= noisy.predict(floors) * (1 - 1e-9)


def test_target_speedup_is_relative_to_the_baseline():
    assert resolve_target(None, 2.0, 3.0) == 1.5
    assert resolve_target(1.2, None, 3.0) == 1.2
    with pytest.raises(ValueError):
        resolve_target(None, 2.0, None)


def test_plan_checks_every_field_and_the_files_it_names():
    files = {"lat-a.onnx": object()}
    good = {"graph": "g", "batch": 1, "max_seconds": 10, "iterations": 3, "variants": {"v": "lat-a.onnx"}}
    parsed = parse_plan(good, files)
    assert parsed["variants"] == {"v": {"model.onnx": "lat-a.onnx"}} and parsed["mode"] == "layers"
    assert parsed["race"] is False and parse_plan({**good, "race": True}, files)["race"] is True
    forms = {**good, "variants": {"v": {"model.onnx": "lat-a.onnx", "model.int8.cpu.onnx": "lat-a.onnx"}}}
    assert parse_plan(forms, files)["variants"]["v"]["model.int8.cpu.onnx"] == "lat-a.onnx"
    for bad in ({**good, "variants": {"v": "other.onnx"}}, {**good, "batch": 0}, {**good, "max_seconds": 1e9},
                {**good, "graph": ""}, {**good, "variants": {}}, None, {**good, "mode": "guess"},
                {**good, "variants": {"v": {"model.exe": "lat-a.onnx"}}}, {**good, "variants": {"v": {}}},
                {**good, "race": "yes"}):
        with pytest.raises(LatencyPlanError):
            parse_plan(bad, files)


def publish_latency_job(root: Path, key, variants: dict, plan_extra: dict, precision: str = "fp32",
                        backend: str = "onnxruntime") -> str:
    """A signed latency_model job written into a spool the way the host's client does (blobs, then queue);
    a variant is one file's bytes or {model kind: bytes}."""
    import hashlib

    from edgekit.device.agent.spool import Spool
    from edgekit.device.contract.manifest import sha256_file
    from edgekit.host.ship.keys import sign

    spool = Spool(root).ensure()
    entries, plan = [], {}

    def store(payload: bytes) -> str:
        name = f"lat-{hashlib.sha256(payload).hexdigest()[:16]}.onnx"
        tmp = root / name
        tmp.write_bytes(payload)
        sha = sha256_file(tmp)
        tmp.rename(spool.blob(sha))
        entries.append({"name": name, "sha256": sha, "size": len(payload)})
        return name

    for ident, payload in variants.items():
        plan[ident] = store(payload) if isinstance(payload, bytes) else {k: store(v) for k, v in payload.items()}
    manifest = {"schema_version": 1, "kind": LATENCY_MODEL, "model": "m",
                "input": {"name": "input", "shape": [3, 8, 8], "batch_sizes": [2]},
                "target": {"backend": backend, "precision": precision, "build": {"threads": 1}},
                "files": sorted({e["name"]: e for e in entries}.values(), key=lambda e: e["name"]),
                "latency": {"graph": "g1", "batch": 2, "iterations": 2, "max_seconds": 120, "variants": plan,
                            **plan_extra}}
    parse_manifest(manifest)
    payload = canonical_bytes(manifest)
    job = f"job-{time.time_ns()}"
    spool.publish(job, payload, sign(key, payload))
    return job


def run_agent_once(root: Path) -> None:
    subprocess.run([AGENT, "serve", "--root", str(root), "--once", "--poll", "0.05"], check=True, timeout=300,
                   capture_output=True)


@pytest.mark.slow
def test_a_check_is_timed_on_every_runtime_the_race_would_build_and_the_fastest_counts(tmp_path):
    """The final model's race keeps the fastest runtime, and which that is changes with the widths: a check
    timed on the table's runtime alone pruned torchvision's ResNet-18 for OpenVINO while ONNX Runtime shipped
    it, four times faster than the target asked."""
    pytest.importorskip("openvino")
    from edgekit.device.agent.spool import Spool
    from edgekit.host.ship.keys import load_or_create_key, public_line

    root = tmp_path / "agent"
    key = load_or_create_key(tmp_path / "host")
    Spool(root).ensure()
    (root / "trusted_keys").write_text(public_line(key) + "\n")
    conv = Layer("c", "conv", 8, 8, "a", "a", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (8, 8))
    check = "whole:check:0123456789abcdef"
    variants = {BASELINE: layer_onnx(conv, 8, 16), check: layer_onnx(conv, 8, 8)}
    job = publish_latency_job(root, key, variants, {"race": True}, backend="auto")
    run_agent_once(root)
    report = Spool(root).report(job)
    assert report["status"] == "done", report
    times = report["raced"][check]
    assert {"onnxruntime fp32", "openvino fp32"} <= set(times) and all(ms > 0 for ms in times.values())
    assert report["ms"][check] == min(times.values())
    assert f"{report['backend']} {report['precision']}" in times  # the table's own pair among them
    again = publish_latency_job(root, key, variants, {"race": True}, backend="auto")  # the check cached there ...
    run_agent_once(root)
    second = Spool(root).report(again)
    assert second["measured"] == 0 and set(second["raced"][check]) == set(times)  # ... is timed again beside them
    assert second["ms"][check] == min(second["raced"][check].values())
    plain = publish_latency_job(root, key, variants, {}, backend="auto")  # no race: the table's pair only
    run_agent_once(root)
    assert "raced" not in Spool(root).report(plain)


@pytest.mark.slow
def test_the_agent_measures_a_latency_model_once_and_refuses_unsigned_jobs(tmp_path):
    from edgekit.device.agent.spool import Spool
    from edgekit.host.ship.keys import load_or_create_key, public_line

    root = tmp_path / "agent"
    key = load_or_create_key(tmp_path / "host")
    Spool(root).ensure()
    (root / "trusted_keys").write_text(public_line(key) + "\n")
    conv = Layer("c", "conv", 8, 8, "a", "a", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (8, 8))
    variants = {variant_id(conv, 8, w): layer_onnx(conv, 8, w) for w in (8, 16)}
    first = publish_latency_job(root, key, variants, {})
    run_agent_once(root)
    spool = Spool(root)
    report = spool.report(first)
    assert report["status"] == "done", report
    assert report["measured"] == 2 and set(report["ms"]) == set(variants) and all(v > 0 for v in report["ms"].values())
    second = publish_latency_job(root, key, variants, {})
    run_agent_once(root)
    again = spool.report(second)
    assert again["status"] == "done" and again["measured"] == 0 and again["ms"] == report["ms"]
    events = (spool.job_dir(second) / "events.jsonl").read_text()
    assert "nothing to measure" in events and "variants measured" not in events

    bounded = publish_latency_job(root, key, variants, {"graph": "g3", "max_seconds": 1e-6})
    run_agent_once(root)
    cut = spool.report(bounded)
    assert cut["status"] == "failed" and "needs more than its bound" in cut["error"], cut
    assert "\n" not in cut["error"] and cut["current"] is None

    forged = publish_latency_job(root, key, variants, {"graph": "g2"})
    queued = root / "queue" / forged
    manifest = json.loads((queued / MANIFEST).read_text())
    manifest["latency"]["iterations"] = 1000  # changed after signing
    (queued / MANIFEST).write_bytes(canonical_bytes(manifest))
    assert (queued / SIGNATURE).exists()
    run_agent_once(root)
    refused = spool.report(forged)
    assert refused["status"] == "failed" and "signature" in refused["error"].lower(), refused


def test_target_keys_are_checked_in_one_line(tmp_path):
    from edgekit.host.config import ConfigError, deploy_toml, load_config
    from edgekit.host.ship.latency import check_target

    def config_with(**prune):
        (tmp_path / "deploy.toml").write_text(deploy_toml(
            project={"name": "p"}, model={"arch": "resnet20", "checkpoint": "m.pt"}, data={"path": "data"},
            input={"batch_sizes": [1, 8]}, prune={"enabled": True, **prune}))
        return load_config(tmp_path / "deploy.toml")

    with pytest.raises(ConfigError, match="keep one of them"):
        config_with(target_latency_ms=1.0, target_speedup=2.0)
    config = config_with(target_latency_ms=1.0, target_batch=32)
    assert config.prune.latency_target
    with pytest.raises(ConfigError, match="target_batch = 32 is not among input.batch_sizes"):
        check_target(config, config.device("local"), "local")
    config = config_with(target_latency_ms=1.0, target_batch=8)
    for precision in ("int8", "auto", "fp32"):  # INT8 and auto are measured as shipped: no refusal
        check_target(config, config.device("local").model_copy(update={"precision": precision}), "local")
    implicit = config.device("local").model_copy(update={"precision": "int8", "int8_mode": "implicit"})
    with pytest.raises(ConfigError, match="int8_mode = \"implicit\"") as refused:
        check_target(config, implicit, "local")
    assert "\n" not in str(refused.value)
    assert not config_with(ratio=0.5).prune.latency_target


def test_the_measured_latency_decides_whether_the_target_was_met():
    from edgekit.host.ship.push import latency_outcome

    latency = {"target_ms": 2.0, "predicted_ms": 1.9, "batch": 1}
    rows = [{"step": "prune", "note": "target 2 ms at b1 on local, predicted 1.9 ms"}]

    def report(median: float) -> dict:
        return {"status": "done", "host": {"pruning": {"latency": latency}},
                "benchmarks": [{"batch": 1, "latency_ms": {"median": median}}]}

    met = latency_outcome(rows, report(2.2))
    assert met["met"] and met["model_error"] == pytest.approx(1.9 / 2.2 - 1)
    assert "measured 2.2 ms" in rows[0]["note"]
    missed = latency_outcome(rows, report(2.4))
    assert not missed["met"] and "missed" in missed["verdict"]
    assert latency_outcome(rows, {"status": "failed"}) is None
    # precision = "auto": the table was measured at the precision the unpruned model's race favoured; the final
    # model's race is checked against it
    latency.update(backend="onnxruntime", precision="int8")
    same = latency_outcome(rows, dict(report(2.0), backend="onnxruntime", precision="int8"))
    assert same["modelled_as_shipped"] and "another engine" not in same["verdict"]
    other = latency_outcome(rows, dict(report(2.0), backend="onnxruntime", precision="fp32"))
    assert not other["modelled_as_shipped"] and "measured on onnxruntime int8" in other["verdict"]
    assert "picked onnxruntime fp32" in other["verdict"]


def test_a_missed_target_is_a_budget_failure_on_the_device():
    from edgekit.device.contract.budget import budget_failures, target_limit

    budget = target_limit(2.0, 8)
    benches = [{"batch": 1, "latency_ms": {"median": 9.0}}, {"batch": 8, "latency_ms": {"median": 2.2}}]
    assert budget_failures(budget, benches, {}) == []  # batch 1 is not the target's; 2.2 is within 15 %
    benches[1]["latency_ms"]["median"] = 2.4
    (line,) = budget_failures(budget, benches, {})
    assert "batch 8" in line and "misses the pruning target 2.000 ms" in line


def test_a_speedup_target_is_judged_against_the_baseline_timed_beside_the_model_not_an_earlier_minute():
    """The device slowed 1.6x between the latency model's baseline (2 ms: target 1 ms for 2x) and the final job:
    the model's 1.5 ms is 2.1x over the baseline timed beside it, which the report shows, so the target is met;
    a model at 1.3x beside its baseline misses it whatever its milliseconds say."""
    from edgekit.device.contract.budget import budget_failures, target_limit
    from edgekit.host.ship.bundle import latency_budget
    from edgekit.host.ship.push import latency_outcome

    budget = target_limit(1.0, 1, speedup=2.0)
    slow_phase = [{"batch": 1, "latency_ms": {"median": 1.5}, "speedup": 2.1}]
    assert budget_failures(budget, slow_phase, {}) == []
    fast_phase = [{"batch": 1, "latency_ms": {"median": 0.9}, "speedup": 1.3}]
    (line,) = budget_failures(budget, fast_phase, {})
    assert "1.30x over the baseline timed beside it misses the pruning target 2.00x" in line
    assert budget_failures(budget, [{"batch": 1, "latency_ms": {"median": 1.2}}], {})  # no baseline timed: ms
    assert budget_failures(target_limit(1.0, 1), slow_phase, {})  # a milliseconds target stays milliseconds

    info = {"target_ms": 1.0, "predicted_ms": 0.95, "batch": 1, "target_speedup": 2.0}
    assert latency_budget({"pruning": {"latency": info}}) == budget  # what the host signs into the manifest
    outcome = latency_outcome([], {"status": "done", "host": {"pruning": {"latency": info}}, "benchmarks": slow_phase})
    assert outcome["met"] and "2x over the baseline" in outcome["verdict"] and "measured 2.10x" in outcome["verdict"]
    outcome = latency_outcome([], {"status": "done", "host": {"pruning": {"latency": info}}, "benchmarks": fast_phase})
    assert not outcome["met"] and "missed" in outcome["verdict"]


def test_the_closest_within_the_accuracy_budget_is_the_furthest_judged_within_not_the_last_tried():
    from edgekit.host.optimize.prune.latency import closest_on_path

    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    found = search_widths(model, {}, 1e-6)  # unreachable: the walk goes down to the floors
    path = found.path
    assert path[0][0] == model.full() and path[-1][0] == found.widths and len(path) == found.steps + 1
    assert all(later[1] <= earlier[1] for earlier, later in zip(path, path[1:]))  # each step saves time

    def top1(widths: dict) -> float:  # accuracy falls with every channel removed
        return 0.9 - 0.004 * sum(spaces[n].width - w for n, w in widths.items())

    budget = 0.1
    exhaustive = max(i for i, (widths, _) in enumerate(path) if 0.9 - top1(widths) <= budget + 1e-12)
    assert 0 < exhaustive < len(path) - 1  # the budget's edge is inside the walk
    judged = []

    def within(index: int) -> bool:
        judged.append(index)
        return 0.9 - top1(path[index][0]) <= budget + 1e-12

    index, tried = closest_on_path(len(path), within, len(path) - 1, probes=8)
    assert index == exhaustive and tried == judged
    assert len(tried) <= math.ceil(math.log2(len(path)))
    # with fewer probes: the furthest point judged within, which is not the last tried when that one failed
    index, tried = closest_on_path(len(path), within, len(path) - 1, probes=2)
    passing = [i for i in tried if within(i)]
    assert index == (max(passing) if passing else 0) and index <= exhaustive
    with pytest.raises(ValueError):
        closest_on_path(len(path), within, 0, 3)


def test_a_target_missed_within_the_budget_fails_in_one_line_with_the_closest_latency_and_top1():
    from edgekit.host.errors import CheckFailed
    from edgekit.host.optimize.prune.stage import check_latency_target

    latency = {"target_ms": 1.0, "batch": 1, "device": "jetson", "backend": "onnxruntime", "precision": "int8",
               "reached": True, "predicted_ms": 0.98, "max_accuracy_drop": 0.01, "closest": None}
    check_latency_target(latency, 0.9, 0.85, 500)  # met within the budget: nothing to say
    latency["closest"] = {"predicted_ms": 1.7, "top1": 0.893, "unpruned": False, "accuracy_limited": True,
                          "probes": [{"predicted_ms": 1.3, "top1": 0.86}, {"predicted_ms": 1.7, "top1": 0.893}]}
    with pytest.raises(CheckFailed) as failed:
        check_latency_target(latency, 0.9, 0.85, 500)
    line = str(failed.value)
    assert "\n" not in line and "1.7 ms" in line and "89.30%" in line and "max_accuracy_drop = 0.01" in line
    latency.update(reached=False, closest={"predicted_ms": 2.5, "top1": 0.895, "unpruned": False,
                                           "accuracy_limited": False, "probes": []})
    with pytest.raises(CheckFailed, match=r"out of reach: the closest is 2.5 ms .* top-1 89.50%"):
        check_latency_target(latency, 0.9, 0.895, 500)


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "trt_profile_two_groups.json"


def profiled_two_groups() -> tuple[list[Layer], dict[str, GroupSpace], dict, dict, list]:
    """The two-group model of the tests above, its layers named as ``describe_layers`` names them and its ONNX
    nodes as torch's exporter does (the wrapper's ``model.`` before every weight), with the recorded
    (synthetic: see its note) TensorRT profiles of its whole models at every profiled level."""
    from edgekit.host.optimize.prune.layer_profile import node_layers, parse_exported_profile

    recorded = json.loads(FIXTURE.read_text())
    layers, spaces = two_groups()
    profiles = {ident: parse_exported_profile(json.dumps(rows)) for ident, rows in recorded["profiles"].items()}
    nodes, order = node_layers(chain_graph(recorded["onnx_nodes"]), layers)
    return layers, spaces, profiles, nodes, order


def chain_graph(nodes: list) -> object:
    """An ONNX model of (name, op, weight) nodes in a chain, each weight an initializer."""
    import numpy as np
    from onnx import helper, numpy_helper

    made, weights, tensor = [], [], "input"
    for index, (name, op, weight) in enumerate(nodes):
        inputs = [tensor] + ([weight] if weight else [])
        weights += [numpy_helper.from_array(np.zeros((1, 1), np.float32), weight)] if weight else []
        tensor = f"t{index}"
        made.append(helper.make_node(op, inputs, [tensor], name=name))
    return helper.make_model(helper.make_graph(made, "chain", [], [], weights))


def test_tensorrt_layer_times_go_to_the_layers_their_names_cover():
    from edgekit.host.optimize.prune.layer_profile import PROFILE_LEVELS, attribute, level_widths, macs

    layers, spaces, profiles, nodes, order = profiled_two_groups()
    assert set(profiles) == {f"whole:{level}" for level in PROFILE_LEVELS}
    full = profiles["whole:1.0"]
    weights = {layer.name: macs(layer, layer.cin, layer.cout) for layer in layers}
    per_layer, rest = attribute(full, nodes, order, weights)
    stem, mid, foreign = (next(ms for name, ms in full.items() if name.startswith(prefix))
                          for prefix in ("/model/stem/Conv +", "/model/mid/Conv +", "{ForeignNode"))
    assert per_layer == {"stem": stem, "mid": mid, "fc": foreign}  # the range reaches only fc
    reformat = next(ms for name, ms in full.items() if name.startswith("Reformatting"))
    assert rest == pytest.approx(reformat)  # a copy that names the stem is nobody's layer time
    # one Myelin layer over both convs: split by their MACs
    fused = {"{ForeignNode[/model/stem/Conv.../model/mid/Conv]}": 1.0}
    split, _ = attribute(fused, nodes, order, weights)
    assert split["stem"] / split["mid"] == pytest.approx(weights["stem"] / weights["mid"])
    assert "fc" not in split and sum(split.values()) == pytest.approx(1.0)
    # node names are matched whole: "/model/stem/Conv_1" is not "/model/stem/Conv"
    assert attribute({"/model/stem/Conv_1 + /model/pool/GlobalAveragePool": 1.0}, nodes, order, weights) == ({}, 1.0)
    assert set(level_widths(spaces)) == set(profiles)


def test_a_latency_model_from_tensorrt_profiles_predicts_what_the_layers_cost():
    from edgekit.host.optimize.prune.layer_profile import level_widths, macs, profile_table

    layers, spaces, profiles, nodes, order = profiled_two_groups()
    table = profile_table(layers, spaces, profiles, nodes, order)
    assert set(table) == set(layer_variants(layers, spaces))  # every id the predictor reads

    def truth(widths: dict) -> float:  # the note of the recording: 0.002 ms + 1e-7 ms per MAC per layer
        return sum(0.002 + 1e-7 * macs(layer, *layer.widths(widths)) for layer in layers)

    extra = 0.003 + 0.01  # pooling inside the ForeignNode (given to fc), and the reformat (nobody's)
    for ident, widths in level_widths(spaces).items():
        table[ident] = truth(widths) + extra
    table[BASELINE] = table["whole:1.0"]
    model = LatencyModel(layers, spaces, table)
    for widths in ({"a": 24, "b": 8}, {"a": 8, "b": 32}, {"a": 16, "b": 24}):  # off the profiled diagonal
        assert model.predict(widths) == pytest.approx(truth(widths) + extra, rel=0.05), widths
    found = search_widths(model, {}, model.predict(model.full()) / 2)
    assert found.reached and found.widths["a"] < found.widths["b"]  # cuts where the profile says time goes


def exported_whole(tmp_path: Path, arch: str) -> tuple[list[Layer], dict[str, GroupSpace], Path]:
    """A zoo model's layers as the search names them and its unpruned whole model as the latency job sends it."""
    import torch

    from edgekit.host.config import deploy_toml, load_config
    from edgekit.host.optimize.prune.latency import describe_layers
    from edgekit.host.optimize.prune.structured import PruneSpec, prunable
    from edgekit.host.ship.latency import whole_onnx
    from edgekit.host.train.models import create_model

    (tmp_path / "deploy.toml").write_text(deploy_toml(project={"name": arch}, data={"path": "data"}, model={
        "arch": arch, "num_classes": 10, "checkpoint": "runs/none.pt"}))
    config = load_config(tmp_path / "deploy.toml")
    model = create_model(arch, 10, 1.0).eval()
    example = torch.zeros(1, *config.input.shape)
    spec = PruneSpec(enabled=True)
    graph, protect, _, groups = prunable(model, spec, example, example, lambda _: None)
    spaces = search_spaces(groups, spec.round_to, spec.max_layer_ratio)
    path = tmp_path / f"{arch}.onnx"
    path.write_bytes(whole_onnx(model, protect, {}, config, tmp_path))
    return describe_layers(model, graph, groups, example), spaces, path


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2"])
def test_a_runtime_profile_of_a_whole_model_lands_on_its_layers(tmp_path, arch, runtime):
    """The runtime's own per-node profile of the exported model, as the agent reads it, is given to the layers
    the search prunes: every Conv/Gemm gets time, and what nobody owns (pooling, layout copies) is small."""
    import onnx

    from edgekit.device.backends import get_backend
    from edgekit.device.benchmark import Plan
    from edgekit.host.optimize.prune.layer_profile import attribute, macs, node_layers

    layers, _, path = exported_whole(tmp_path, arch)
    nodes, order = node_layers(onnx.load(str(path)), layers)
    assert set(nodes.values()) == {layer.name for layer in layers}  # the exporter's "model." prefix is read through
    backend = get_backend(runtime)
    (tmp_path / "engine").mkdir()
    meta = backend.build(path, tmp_path / "engine", {"precision": "fp32", "batch_sizes": [1]}, lambda _: None)
    engine = backend.load(tmp_path / "engine", meta)
    try:
        result = engine.benchmark(1, Plan(warmup_s=0.0, duration_s=0.0, min_iterations=3, cv_warn_percent=1e9),
                                  profile_layers=True)
    finally:
        engine.close()
    profile = result["layers_ms"]
    assert len(result["samples_ms"]) >= 3 and profile and all(ms >= 0 for ms in profile.values())
    per_layer, rest = attribute(profile, nodes, order, {layer.name: macs(layer, layer.cin, layer.cout)
                                                        for layer in layers})
    assert set(per_layer) == {layer.name for layer in layers}
    assert rest < 0.2 * sum(profile.values()), sorted(profile.items(), key=lambda item: -item[1])[:5]


def test_onnx_runtime_trace_to_node_times():
    from edgekit.device.backends.base import median_per_layer
    from edgekit.device.backends.onnxruntime import node_times

    def event(name: str, dur: int, cat: str = "Node") -> dict:
        return {"cat": cat, "name": name, "dur": dur, "args": {"op_name": "FusedConv"}}

    trace = [event("model_run", 900, "Session"), event("a_fence_before", 0)]
    trace += [event("a_kernel_time", dur) for dur in (500, 100, 120, 140)]  # the first run: allocations
    trace += [event("b_nchwc_kernel_time", dur) for dur in (50, 10, 10, 30)]
    runs = node_times(trace)
    assert runs == {"a": [0.5, 0.1, 0.12, 0.14], "b_nchwc": [0.05, 0.01, 0.01, 0.03]}
    assert median_per_layer(runs, runs_done=4) == {"a": pytest.approx(0.12), "b_nchwc": pytest.approx(0.01)}
    assert median_per_layer({"a": [0.04]}, runs_done=9) == {"a": pytest.approx(0.04)}  # fewer runs than skipped


def test_runtime_renamed_nodes_map_to_the_layer_they_were():
    """ONNX Runtime's passes rename what they rewrite ("<tensor>_nchwc", "<node>_token_12"), and the residual add
    after a conv runs fused into it: those times belong to that conv's layer, a skip connection's source's not."""
    from edgekit.host.optimize.prune.layer_profile import attribute, node_layers

    layers, _ = two_groups()
    model = chain_graph([("/model/stem/Conv", "Conv", "model.stem.weight"), ("/model/relu/Relu", "Relu", ""),
                         ("/model/mid/Conv", "Conv", "model.mid.weight")])
    add = onnx_node("Add", ["t2", "t1"], ["sum"], "/model/Add")  # mid's output + the relu's (also read by mid)
    model.graph.node.append(add)
    nodes, order = node_layers(model, layers)
    assert nodes["/model/Add"] == "mid" and nodes["sum"] == "mid"
    profile = {"/model/relu/Relu_output_0_nchwc": 0.0, "t1_nchwc": 1.0, "/model/mid/Conv_token_7": 2.0, "sum": 4.0,
               "ReorderOutput": 8.0}
    assert attribute(profile, nodes, order, {"stem": 1.0, "mid": 1.0}) == ({"stem": 1.0, "mid": 6.0}, 8.0)
    # a weight renamed on the way (BatchNorm folded on the graph): the node's scopes name the module
    folded = chain_graph([("/model/features/features.1/block/block.0/block.0.0/Conv", "Conv",
                           "/model/features/features.1/block/block.0/block.0.0/Conv.folded_weight")])
    deep = Layer("features.1.block.0.0", "conv", 3, 32, None, "a", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (32, 32))
    assert set(node_layers(folded, [deep])[0].values()) == {"features.1.block.0.0"}


def onnx_node(op: str, inputs: list, outputs: list, name: str) -> object:
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name)


def test_a_variant_is_timed_in_the_file_the_runtime_builds_at_its_precision():
    from edgekit.device.contract.latency import variant_file

    form = {"model.onnx": "f", "model.int8.cpu.onnx": "u8s8", "model.int8.cpu.avx2.onnx": "seven",
            "model.int8.qdq.onnx": "qdq"}
    vnni = {"flags_read": True, "u8s8_saturates": False}
    assert variant_file(form, "onnxruntime", "fp32", cpu=vnni) == "f"
    assert variant_file(form, "onnxruntime", "int8", cpu=vnni) == "u8s8"
    assert variant_file(form, "openvino", "int8", cpu={"flags_read": True, "u8s8_saturates": True}) == "seven"
    assert variant_file(form, "tensorrt", "int8") == "qdq"
    assert variant_file({"model.onnx": "f", "model.int8.cpu.onnx": "u8s8"}, "onnxruntime", "int8") == "u8s8"


def int8_forms(tmp_path: Path, payload: bytes, shape: tuple) -> dict[str, bytes]:
    """The float variant and its CPU INT8 forms, written by the host's own code (cheap calibration)."""
    import numpy as np

    from edgekit.host.ship.latency import Forms, variant_files

    kinds = frozenset({"model.onnx", "model.int8.cpu.onnx", "model.int8.cpu.avx2.onnx"})
    files: dict[str, Path] = {}
    rng = np.random.default_rng(0)
    entry = variant_files(tmp_path / "host", payload, Forms(False, kinds), files,
                          lambda: rng.standard_normal(shape).astype(np.float32))
    return {kind: files[name].read_bytes() for kind, name in entry.items()}


@pytest.mark.slow
def test_int8_and_auto_latency_models_are_measured_on_int8_files_by_a_real_agent(tmp_path):
    import onnx

    from edgekit.device.agent.spool import Spool
    from edgekit.host.ship.keys import load_or_create_key, public_line

    (tmp_path / "host").mkdir()
    conv = Layer("c", "conv", 8, 8, "a", "a", (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (8, 8))
    variants = {variant_id(conv, 8, w): int8_forms(tmp_path, layer_onnx(conv, 8, w), (4, 8, 8, 8)) for w in (8, 16)}
    for forms in variants.values():  # the INT8 forms are INT8 models, not the float one renamed
        ops = {node.op_type for node in onnx.load_from_string(forms["model.int8.cpu.onnx"]).graph.node}
        assert "QuantizeLinear" in ops and forms["model.int8.cpu.onnx"] != forms["model.int8.cpu.avx2.onnx"]
    whole = int8_forms(tmp_path, layer_onnx(conv, 8, 16, seed=1), (4, 8, 8, 8))
    variants.update({"whole:1.0": whole, BASELINE: whole})
    root = tmp_path / "agent"
    key = load_or_create_key(tmp_path / "keys")
    Spool(root).ensure()
    (root / "trusted_keys").write_text(public_line(key) + "\n")
    spool = Spool(root)

    int8 = publish_latency_job(root, key, variants, {"graph": "g-int8"}, precision="int8")
    run_agent_once(root)
    report = spool.report(int8)
    assert report["status"] == "done" and report["precision"] == "int8", report
    assert set(report["ms"]) == set(variants) and all(v > 0 for v in report["ms"].values())

    auto = publish_latency_job(root, key, variants, {"graph": "g-auto"}, precision="auto")
    run_agent_once(root)
    raced = spool.report(auto)
    assert raced["status"] == "done" and raced["precision_requested"] == "auto", raced
    assert raced["precision"] in ("int8", "fp32") and raced["measured"] == len(variants)
    assert "auto: the unpruned model's median" in (spool.job_dir(auto) / "events.jsonl").read_text()
    again = publish_latency_job(root, key, variants, {"graph": "g-auto"}, precision="auto")
    run_agent_once(root)
    second = spool.report(again)
    assert second["measured"] == 0 and second["precision"] == raced["precision"]
    assert "auto:" not in (spool.job_dir(again) / "events.jsonl").read_text()  # no second race either


@pytest.mark.slow
def test_a_target_out_of_reach_within_the_budget_fails_the_push_before_any_upload(project):
    """End to end through the CLI on the local device at its default precision ("auto"): the latency model is
    measured (on the precision the race favours), the search and the closest-within-budget probes run, and the
    push stops in one line before a model is uploaded."""
    from edgekit.device.agent.spool import Spool
    from edgekit.device.contract.protocol import LATENCY_MODEL

    from .conftest import run_cli

    with (project / "deploy.toml").open("a") as toml:
        toml.write("\n[prune]\nenabled = true\ntarget_speedup = 50.0\ntarget_batch = 1\nmax_accuracy_drop = 0.0\n"
                   "finetune_epochs = 1\nsparsity_epochs = 0\nlatency_budget_s = 600\n" + NO_DEVICE_ALIGNMENT +
                   '\n[devices.local]\nkind = "local"\nprecision = "auto"\n')
    failed = run_cli("push", "local", cwd=project)
    assert failed.returncode == 1, failed.stderr[-2000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert "prune target" in line and "ms at batch 1 on local" in line, line
    assert ("closest within the budget is" in line and "fine-tuned probe" in line) or "out of reach" in line, line
    assert "Traceback" not in failed.stderr
    saved = json.loads(next((project / ".edgekit" / "latency").glob("local-*.json")).read_text())
    # the race's pick: OpenVINO's default precision (bf16/f16, "fp16") wins it on some CPUs and loads
    assert saved["precision_requested"] == "auto" and saved["precision"] in ("int8", "fp32", "fp16"), saved["precision"]
    spool = Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")
    kinds = {json.loads((spool.jobs / job / "report.json").read_text()).get("kind") for job in
             [p.name for p in spool.jobs.iterdir()]}
    assert kinds == {LATENCY_MODEL} and spool.current("tiny") is None  # only the latency job ever ran there


def test_widths_are_searched_in_the_channel_vectors_the_device_packs():
    """A width between two of the runtime's vector sizes is padded to the next one on the device: the search
    steps in them (with round_to), per runtime, precision and CPU, and a group of one vector stays whole;
    nothing is assumed of a CPU that reports no flags."""
    from types import SimpleNamespace

    from edgekit.device.contract.runtimes import channel_multiple
    from edgekit.host.config import DeviceSection
    from edgekit.host.ship.latency import status_multiple

    assert channel_multiple(["onnxruntime"], ["fp32"], ["avx2", "avx512f"]) == 16
    assert channel_multiple(["openvino"], ["int8"], ["avx2"]) == 8
    assert channel_multiple(["onnxruntime"], ["int8"], ["neon", "asimddp"]) == 1  # ARM: no blocked layout
    assert channel_multiple(["tensorrt"], ["int8", "fp16", "fp32"], []) == 32  # CHW32
    assert channel_multiple(["tensorrt"], ["fp16"], []) == 8 and channel_multiple(["tensorrt"], ["fp32"], []) == 1
    jetson = DeviceSection(kind="local", root="/nonexistent", backend="tensorrt", precision="auto")
    trt = {"backends": {"tensorrt": {"available": True}}, "cpu": {"isa": ["neon", "asimd"]}}
    assert status_multiple(jetson, trt, int8=True) == 32
    assert status_multiple(jetson, trt, int8=False) == 8  # auto without INT8 files races FP16 and FP32 only
    xeon = DeviceSection(kind="local", root="/nonexistent", backend="auto", precision="int8")
    cpu = {"backends": {"onnxruntime": {"available": True}}, "cpu": {"isa": ["avx2", "avx512f", "avx512_vnni"]}}
    assert status_multiple(xeon, cpu, int8=True) == 16
    assert status_multiple(xeon, {"backends": cpu["backends"]}, int8=True) == 1  # no CPU reported: no claim

    groups = [SimpleNamespace(name=name, width=width, ch_groups=1) for name, width in (("a", 64), ("b", 16))]
    spaces = search_spaces(groups, round_to=8, max_layer_ratio=0.9, multiple=16)
    assert spaces["a"].unit == 16 and grid(spaces["a"], 64) == [16, 32, 48, 64]
    assert spaces["b"].floor == spaces["b"].width == 16  # one vector: cut to 8, it is padded back to 16
    assert search_spaces(groups, round_to=8, max_layer_ratio=0.9)["b"].unit == 8


def test_the_variants_come_in_the_forms_the_device_will_build_at_its_precision():
    from edgekit.host.config import DeviceSection
    from edgekit.host.ship.latency import variant_forms

    vnni = {"flags_read": True, "u8s8_saturates": False}
    cpu_status = {"backends": {"onnxruntime": {"available": True}}, "cpu": vnni}
    auto = DeviceSection(kind="local", root="/nonexistent", backend="auto", precision="auto")
    forms = variant_forms(auto, cpu_status)
    assert not forms.profile and forms.kinds == {"model.onnx", "model.int8.cpu.onnx"}  # layers timed (the default)
    assert variant_forms(auto, cpu_status, method="profile").profile  # prune.latency_model = "profile"
    assert variant_forms(auto, cpu_status, int8=False).kinds == {"model.onnx"}  # quantize.enabled = false
    with_openvino = {"backends": {"onnxruntime": {"available": True}, "openvino": {"available": True}}, "cpu": vnni}
    assert variant_forms(auto, with_openvino, method="profile").profile  # both CPU runtimes have a profiler
    unknown_cpu = variant_forms(auto.model_copy(update={"precision": "int8"}), None)  # no status: both CPU kinds
    assert {"model.int8.cpu.onnx", "model.int8.cpu.avx2.onnx"} <= unknown_cpu.kinds
    jetson = DeviceSection(kind="local", root="/nonexistent", backend="tensorrt", precision="int8")
    trt10 = variant_forms(jetson, {"backends": {"tensorrt": {"available": True, "version": "10.3.0"}}})
    assert trt10.profile and trt10.kinds == {"model.onnx", "model.int8.qdq.onnx"}
    trt11 = variant_forms(jetson, {"backends": {"tensorrt": {"available": True, "version": "11.0.0"}}})
    assert trt11.kinds == {"model.onnx", "model.int8.qdq.onnx", "model.int8.qdq.fp16.onnx"}  # strongly typed
    on_auto = variant_forms(auto, {"backends": {"tensorrt": {"available": True, "version": "10.3.0"},
                                                "onnxruntime": {"available": True}}})
    assert on_auto.profile  # auto takes TensorRT where it is: its profile, not layer variants


# -- the closed loop: chosen widths measured whole, the model corrected -------------------------------------
def test_the_correction_is_exact_at_measured_widths_local_between_and_held_beyond():
    from edgekit.host.optimize.prune.latency import Check, correction

    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    assert model.predict(model.full()) == model.uncorrected(model.full())  # nothing measured: the table's
    narrow, wide = {"a": 8, "b": 16}, {"a": 24, "b": 32}
    checked = model.with_checks([Check(narrow, 2.0 * model.uncorrected(narrow)),
                                 Check(wide, 1.2 * model.uncorrected(wide))])
    assert checked.predict(narrow) == pytest.approx(2.0 * model.uncorrected(narrow))
    assert checked.predict(wide) == pytest.approx(1.2 * model.uncorrected(wide))
    between = {"a": 16, "b": 24}
    ratio = checked.predict(between) / model.uncorrected(between)
    assert 1.2 < ratio < 2.0  # interpolated between the two measured ratios
    assert checked.predict(model.full()) / model.uncorrected(model.full()) == pytest.approx(1.2)  # held beyond
    assert correction(1.0, []) == 1.0


def test_when_to_search_again():
    from edgekit.host.optimize.prune.latency import search_again

    assert not search_again(1.0, 1.0, 1.04)  # within 5 % of the target and 10 % of the prediction
    assert search_again(1.0, 1.0, 1.08)  # over the target by more than 5 %
    assert search_again(1.0, 0.98, 0.8)  # under the target, but the prediction is 22 % off: pruned too far
    assert not search_again(1.0, 0.85, 0.8)


def test_the_closed_loop_moves_a_table_off_by_half_onto_the_target():
    """The device's table was measured at half its real speed plus an overhead it missed: the first widths
    chosen miss the target by far; the measured points correct the model and the last round meets it."""
    from edgekit.host.optimize.prune.latency import CHECK_OVER, CHECK_ROUNDS, closed_loop

    layers, spaces = two_groups()
    table = synthetic_table(layers, spaces)
    device = LatencyModel(layers, spaces, table)
    wrong = LatencyModel(layers, spaces, {k: 0.5 * v for k, v in table.items()})
    measured: list[dict] = []

    def measure(widths: dict) -> float:
        measured.append(widths)
        return device.predict(widths) + 0.02

    target = 0.6 * (device.predict(device.full()) + 0.02)
    rounds = []
    loop, checks = closed_loop(wrong, {}, target, measure, rounds.append)
    assert 2 <= len(rounds) <= CHECK_ROUNDS and len(measured) == len(rounds) == len(checks)
    first = rounds[0]
    assert first.measured_ms > target * 1.5 and first.predicted_ms < first.measured_ms / 1.5 and first.again
    assert loop.met and loop.measured_ms <= target * (1 + CHECK_OVER)
    assert loop.widths in measured and not rounds[-1].again
    assert abs(rounds[-1].predicted_ms - rounds[-1].measured_ms) < abs(first.predicted_ms - first.measured_ms)
    # searching again with what was measured chooses widths measured already: nothing new is timed
    before = len(measured)
    again, _ = closed_loop(wrong.with_checks(checks), {}, target, measure, lambda _: None)
    assert again.met and len(measured) == before


def test_the_closed_loop_lands_on_the_target_when_the_fastest_runtime_changes_with_the_widths():
    """The table is one runtime's; the device's race ships whichever runs the widths fastest, and narrow models
    run three times faster on another (torchvision's ResNet-18: ONNX Runtime against the table's OpenVINO). The
    loop must not stop at widths measured far under the target, pruned for speed nobody asked for."""
    from edgekit.host.optimize.prune.latency import CHECK_OVER, TARGET_SLACK, closed_loop

    layers, spaces = two_groups(128)  # steps of 8 in 128: fine enough to land within CHECK_OVER
    table = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    full = table.predict(table.full())

    def measure(widths: dict) -> float:  # the other runtime: slower whole, 3x faster narrow (crossing at 0.75)
        ms = table.predict(widths)
        return min(ms, max(0.05 * full, 1.4 * ms - 0.3 * full))

    for fraction in (0.5, 0.4, 0.3):
        target = fraction * full
        loop, _ = closed_loop(table, {}, target, measure, lambda _: None)
        assert loop.met and target * (1 - TARGET_SLACK) <= loop.measured_ms <= target * (1 + CHECK_OVER), (
            fraction, [(r.predicted_ms / target, r.measured_ms / target) for r in loop.rounds])


def test_after_its_rounds_a_missed_target_keeps_the_closest_measured():
    from edgekit.host.optimize.prune.latency import CHECK_ROUNDS, closed_loop

    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    times = iter([3.0, 2.0, 2.5, 2.8])  # a device whose time does not follow the widths (noise, another load)
    loop, _ = closed_loop(model, {}, model.predict(model.full()) * 0.5, lambda _: next(times), lambda _: None)
    assert len(loop.rounds) <= CHECK_ROUNDS and not loop.rounds[-1].again and not loop.met and loop.measured_ms == 2.0


def test_the_frontier_spans_the_search_and_uniform_widths_at_one_predicted_latency():
    from edgekit.host.optimize.prune.latency import BY_CHANNEL_COST, channel_cost_shape, frontier
    from edgekit.host.optimize.prune.sensitivity import UNMEASURED

    layers, spaces = two_groups()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    target = model.predict(model.full()) * 0.5
    flat = magnitude_costs({name: [1.0] * 32 for name in spaces}, spaces)
    options = frontier(model, flat, target)
    assert list(options)[0] == 1.0 and options[1.0].widths == search_widths(model, flat, target).widths
    assert options[0.0].widths == uniform_widths(model, target).widths
    assert all(found.reached and found.predicted_ms <= target for found in options.values())
    # each blend is the widest of its shape: one unit more on every group misses the target
    for found in options.values():
        wider = {n: min(spaces[n].width, w + spaces[n].unit) for n, w in found.widths.items()}
        assert wider == found.widths or model.predict(wider) > target
    # identical widths are offered once
    assert len({tuple(sorted(f.widths.items())) for f in options.values()}) == len(options)
    # by channel cost: b's channels (a 16×16 output) cost less time than a's (the 32×32 stem's), so b keeps more
    shape = channel_cost_shape(model)
    assert shape["b"] == 1.0 and 0 < shape["a"] < 1
    shaped = frontier(model, flat, target, (BY_CHANNEL_COST,))[BY_CHANNEL_COST]
    assert shaped.reached and shaped.predicted_ms <= target and shaped.widths["b"] > shaped.widths["a"]
    # a group the costs could not measure (not maskable) stays whole in every candidate, not only the search's
    unmaskable = dict(flat, a=[(32, 0.0), (0, UNMEASURED)])
    assert all(found.widths["a"] == 32 for found in frontier(model, unmaskable, target * 1.9).values())


def inverted_residuals() -> tuple[list[Layer], dict[str, GroupSpace]]:
    """A MobileNetV2 in small: a stem stream ``s`` a block adds back into, expansions ``e`` and ``f`` (each with
    its depthwise conv), a projection ``p`` that narrows 192 to 64 for a head ``h`` that widens it again."""
    def conv(name: str, cin: int, cout: int, src: Optional[str], dst: str, size: int, dw: bool = False) -> Layer:
        k = (3, 3) if dw or src is None else (1, 1)
        pad = (1, 1) if k == (3, 3) else (0, 0)
        return Layer(name, "conv", cin, cout, src, dst, k, (1, 1), pad, (1, 1), cout if dw else 1, dw, (size, size))

    layers = [conv("stem", 3, 32, None, "s", 32), conv("b1.expand", 32, 96, "s", "e", 32),
              conv("b1.dw", 96, 96, "e", "e", 32, dw=True), conv("b1.project", 96, 32, "e", "s", 32),
              conv("b2.expand", 32, 192, "s", "f", 16), conv("b2.dw", 192, 192, "f", "f", 16, dw=True),
              conv("b2.project", 192, 64, "f", "p", 16), conv("head", 64, 256, "p", "h", 8),
              Layer("fc", "linear", 256, 10, "h", None)]
    spaces = {name: group_space(name, width, 8, 1, 0.9)
              for name, width in {"s": 32, "e": 96, "f": 192, "p": 64, "h": 256}.items()}
    return layers, spaces


def test_the_lean_inside_candidate_cuts_expansions_and_keeps_what_blocks_exchange():
    """Expansions (one conv writes them at least as wide as it reads) are told from what blocks exchange: the
    stream several convs add into and the projection that narrows; the trial's shape cuts the expansions more."""
    from edgekit.host.optimize.prune.latency import BLENDS, LEAN_INSIDE, blend_name, depth_shape, expansions, frontier

    layers, spaces = inverted_residuals()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    assert expansions(model) == {"e", "f", "h"}
    assert depth_shape(model) == {"s": 1.0, "p": 1.0, "e": 0.5, "f": 0.5, "h": 0.5}
    by_depth = depth_shape(model, tilt=1.5, ratio=1.0)  # the benchmark's family: later groups keep more
    assert [by_depth[n] for n in ("s", "e", "f", "p", "h")] == sorted(by_depth.values()) and by_depth["h"] == 1.0
    target = model.predict(model.full()) * 0.4
    flat = magnitude_costs({name: [1.0] * space.width for name, space in spaces.items()}, spaces)
    shaped = frontier(model, flat, target, (LEAN_INSIDE,))[LEAN_INSIDE]
    kept = {name: shaped.widths[name] / space.width for name, space in spaces.items()}
    assert shaped.reached and shaped.predicted_ms <= target
    assert min(kept["s"], kept["p"]) > max(kept["e"], kept["f"], kept["h"])  # streams and projections keep most
    assert len({blend_name(blend) for blend in BLENDS}) == len(BLENDS)  # the trial's line tells them apart


def test_the_trial_is_told_which_candidate_holds_uniform_widths_even_when_another_blend_found_them():
    """Close to the full latency the search's own widths are uniform ones: ``frontier`` lists them once, as the
    search's, and the trial must still see them named "uniform", the default its guard falls back to."""
    from edgekit.host.optimize.prune.latency import BLENDS, blend_name, frontier, trial_blend

    layers, spaces = inverted_residuals()
    model = LatencyModel(layers, spaces, synthetic_table(layers, spaces))
    flat = magnitude_costs({name: [1.0] * space.width for name, space in spaces.items()}, spaces)
    target = model.predict(model.full()) * 0.93
    options = frontier(model, flat, target)
    assert 0.0 not in options and len(options) > 1  # uniform widths were found first, as another blend
    seen: list[list[str]] = []

    def keep_default(candidates: list[dict], names: list[str]) -> int:
        seen.append(names)
        return names.index("uniform")

    kept = trial_blend(model, flat, target, keep_default)
    assert "uniform" in seen[0] and options[kept].widths == frontier(model, flat, target, (0.0,))[0.0].widths
    assert len(seen[0]) == len(options) and set(seen[0]) <= {blend_name(b) for b in BLENDS}


def test_the_closed_loop_keeps_the_candidate_the_trial_prefers_in_every_round():
    """A trial that prefers uniform widths: every round searches that blend, and the widths measured are uniform."""
    from edgekit.host.optimize.prune.latency import closed_loop

    layers, spaces = two_groups()
    table = synthetic_table(layers, spaces)
    model = LatencyModel(layers, spaces, {k: 0.7 * v for k, v in table.items()})  # off: more than one round
    device = LatencyModel(layers, spaces, table)
    flat = magnitude_costs({name: [1.0] * 32 for name in spaces}, spaces)
    offered: list[list[dict]] = []

    def prefer_uniform(candidates: list[dict], names: list[str]) -> int:
        offered.append(candidates)
        assert len(names) == len(candidates) and names[0] == "search" and "uniform" in names
        return next(i for i, widths in enumerate(candidates) if len(set(widths.values())) == 1)

    target = device.predict(device.full()) * 0.5
    loop, _ = closed_loop(model, flat, target, device.predict, lambda _: None, trial=prefer_uniform)
    assert len(offered) == 1 and len(offered[0]) >= 2  # one trial per target, not per round
    assert len(loop.rounds) >= 2 and all(r.blend == 0.0 for r in loop.rounds)
    assert all(len(set(r.widths.values())) == 1 for r in loop.rounds) and loop.met
    # without a trial the search's own widths are measured (a cuts deeper than b here)
    plain, _ = closed_loop(model, flat, target, device.predict, lambda _: None)
    assert plain.rounds[0].blend == 1.0 and plain.widths["a"] < plain.widths["b"]


def test_a_table_timed_slow_does_not_skip_the_trial_it_waits_for_the_corrected_model():
    """The table says the target is below every width's floor (timed while the device ran 3x slower); the first
    measurement corrects it, and the trial then chooses among candidates that meet the target, for the round
    shipped, whose blend the stage table names."""
    from edgekit.host.optimize.prune.latency import closed_loop, kept_blend

    layers, spaces = two_groups(128)
    table = synthetic_table(layers, spaces)
    slow = LatencyModel(layers, spaces, {k: 3.0 * v for k, v in table.items()})
    device = LatencyModel(layers, spaces, table)
    flat = magnitude_costs({name: [1.0] * 128 for name in spaces}, spaces)
    target = 0.5 * slow.predict({name: space.floor for name, space in spaces.items()})  # the device's floor: ⅓
    assert not search_widths(slow, flat, target).reached
    offered: list[list[dict]] = []

    def prefer_uniform(candidates: list[dict], names: list[str]) -> int:
        offered.append(candidates)
        return names.index("uniform")

    loop, _ = closed_loop(slow, flat, target, device.predict, lambda _: None, trial=prefer_uniform)
    assert len(offered) == 1 and len(offered[0]) >= 2 and loop.met
    assert loop.rounds[0].blend == 1.0 and loop.rounds[-1].blend == 0.0
    assert len(set(loop.widths.values())) == 1 and kept_blend(loop.to_json()) == 0.0


def test_a_trial_fine_tune_prefers_the_pruning_that_keeps_the_signal(digits_dir):
    """Real fine-tunes on real digits: a trained ResNet-20 whose last residual stream is cut to one channel
    against one cut evenly to half; the trial keeps the even one and leaves the model it cuts from as it was."""
    import numpy as np
    import torch

    from edgekit.host.optimize.prune.structured import build_graph, channel_scores, importance, prune_groups
    from edgekit.host.optimize.prune.trial import TrialSetup, trial
    from edgekit.host.outputs import output_layers
    from edgekit.host.train.data import Split, channel_stats, load_cifar
    from edgekit.host.train.loop import train
    from edgekit.host.train.models import create_model

    data = load_cifar(digits_dir)
    mean, std = channel_stats(data.train)
    model = create_model("resnet20", 10, 0.5)
    train(model, data.train, mean, std, epochs=2, batch_size=64, lr=0.05, seed=0)
    model.eval()
    example = torch.zeros(1, 3, 32, 32)
    protect = output_layers(model, example)  # the classifier's 10 outputs stay
    groups = prune_groups(build_graph(model, example), model, protect)
    scores = {g.name: channel_scores(importance("magnitude", 2), g) for g in groups}
    full = {g.name: g.width for g in groups}
    stream = max(full, key=lambda name: (full[name], "shortcut" in name))  # the last stage's residual stream
    starved = dict(full, **{stream: 1})
    even = {name: max(1, width // 2) for name, width in full.items()}
    setup = TrialSetup(model, example, protect, scores, Split(data.train.images[:600], data.train.labels[:600]),
                       Split(data.test.images[:200], data.test.labels[:200]), mean, std,
                       {"batch_size": 32, "lr": 0.05, "seed": 0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said: list[str] = []
    assert trial(setup, said.append)([starved, even], ["search", "halfway"]) == 1 and said[-1].endswith("kept halfway")
    assert said[0].startswith("trial: fine-tuning 2 candidate") and "held-out loss" in said[1]
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in before.items())
    assert np.isfinite(float(said[1].split("loss ")[1].split(" ")[0]))


def test_the_trial_keeps_uniform_widths_unless_another_is_clearly_better():
    """A lower held-out loss is kept only when it is lower by more than the held-out images' noise (paired, per
    image); a gap inside it keeps uniform widths, and the trial's line says why."""
    import random

    from edgekit.host.optimize.prune.trial import MARGIN, Tried, choose, paired_gap

    rng = random.Random(0)
    uniform = [rng.uniform(0.1, 2.0) for _ in range(200)]
    noisy = [loss + rng.gauss(-0.01, 0.3) for loss in uniform]  # 0.01 lower on average, noise 0.3 an image
    clear = [loss - 0.1 + rng.gauss(0, 0.05) for loss in uniform]

    def tried(losses: list[float]) -> Tried:
        return Tried(sum(losses) / len(losses), 0.5, losses)

    gap, error = paired_gap(noisy, uniform)
    assert gap > -MARGIN * error and paired_gap(clear, uniform)[0] < -MARGIN * paired_gap(clear, uniform)[1]
    names = ["search", "uniform", "lean inside"]
    kept, why = choose([tried([x + 0.5 for x in uniform]), tried(uniform), tried(noisy)], names)
    assert tried(noisy).loss < tried(uniform).loss and kept == 1
    assert "lean inside's loss" in why and "200 held-out" in why
    assert choose([tried([x + 0.5 for x in uniform]), tried(uniform), tried(clear)], names) == (2, "")
    assert choose([tried(noisy), tried(uniform)], ["search", "halfway"]) == (0, "")  # no uniform offered
    assert choose([tried(noisy), Tried(float("inf"), 0.0)], ["search", "uniform"]) == (0, "")  # uniform failed


def test_the_push_trials_on_the_prune_stages_split_and_settings(project):
    """The trial a push runs (``ship.latency.trial_setup``): the prune stage's held-out split and optimiser, the
    project's trained model, and its choice among real candidates of that model."""
    import torch

    from edgekit.host.config import load_config
    from edgekit.host.optimize.load import load_trained, normalization
    from edgekit.host.optimize.prune.structured import PruneSpec, prunable
    from edgekit.host.optimize.prune.trial import trial
    from edgekit.host.ship.latency import push_trial, search_scores, trial_setup
    from edgekit.host.train.data import normalize
    from edgekit.host.train.project import load_data

    with (project / "deploy.toml").open("a") as toml:
        toml.write("\n[prune]\nenabled = true\ntarget_latency_ms = 1.0\nvalidation_fraction = 0.2\nlr = 0.02\n")
    config = load_config(project / "deploy.toml")
    data = load_data(config)
    model, _ = load_trained(config)
    mean, std = normalization(config, data)
    spec = PruneSpec(**config.prune.model_dump())
    example = torch.zeros(1, *config.input.shape)
    images = torch.from_numpy(normalize(data.train.images[:32], mean, std))
    _, protect, _, groups = prunable(model.eval(), spec, example, images, lambda _: None)
    setup = trial_setup(config, data, model, protect, search_scores(model, spec, groups, protect, images,
                                                                    data.train.labels[:32]), mean, std)
    assert len(setup.validation) == int(len(data.train) * 0.2) and len(setup.fitting) + len(setup.validation) == len(
        data.train)
    assert setup.train_options["lr"] == 0.02 and setup.train_options["batch_size"] == config.train.batch_size
    full = {g.name: g.width for g in groups}
    floors = {name: 1 for name in full}  # every group to one channel: nothing left to recover with
    said: list[str] = []
    assert trial(setup, said.append)([floors, full], ["search", "uniform"]) == 1
    assert "(search → uniform)" in said[-1] and said[-1].endswith("kept uniform")
    chosen = push_trial(config, data, model, protect, lambda: setup.scores, mean, std, said.append)  # as a push does
    assert chosen([full, floors], ["search", "uniform"]) == 0 and said[-1].endswith("kept search")


@pytest.mark.slow
def test_the_closed_loop_corrects_a_wrong_table_on_a_real_agent_and_a_second_push_measures_nothing(project):
    """End to end through the CLI on the local device: its cached table is made wrong by 4x (as a table measured
    on a quieter device would be), so the first widths chosen miss; the whole model at them is measured, the
    model corrected and the search run again; the shipped model meets the agent's budget (target + 15 %). A
    second push reuses the measured widths: no check job is published."""
    from edgekit.device.agent.spool import Spool
    from edgekit.host.config import load_config
    from edgekit.host.ship.latency import latency_model_file

    from .conftest import run_cli

    with (project / "deploy.toml").open("a") as toml:
        toml.write("\n[prune]\nenabled = true\ntarget_latency_ms = 1000.0\ntarget_batch = 1\n"
                   "allow_accuracy_drop = true\nfinetune_epochs = 1\nsparsity_epochs = 0\nlatency_budget_s = 600\n"
                   + NO_DEVICE_ALIGNMENT +
                   '\n[devices.local]\nkind = "local"\nprecision = "fp32"\nbackend = "onnxruntime"\n')
    path = latency_model_file(load_config(project / "deploy.toml"), "local", lambda _: None, lambda _: None)
    true = json.loads(path.read_text())["table"]
    # within reach whatever the load (this tiny model is overhead-bound: its widths barely change its time): four
    # times the full model's time, so the agent's budget (+15 %) holds through a 4.6x slowdown on a shared machine,
    # while the quartered table still misses and forces a correction (at 1.1x a clean-clone run failed: the
    # shipped model's median was 0.377 ms, 2.3x the 0.164 ms measured minutes before)
    target = 4.0 * true["whole:1.0"]
    path.unlink()
    device = Spool(Path(os.environ["EDGEKIT_HOME"]) / "local-device")
    for cached in (device.root / "latency").glob("*.json"):
        stored = json.loads(cached.read_text())
        if "ms" in stored:  # the agent's table at a quarter: off by 4x, more than this machine flips (2.5x)
            stored["ms"] = {ident: ms if ident.startswith("whole:check") else ms * 0.25
                            for ident, ms in stored["ms"].items()}
            cached.write_text(json.dumps(stored))
    text = (project / "deploy.toml").read_text()
    (project / "deploy.toml").write_text(text.replace("latency_ms = 1000.0", f"latency_ms = {target:.6g}"))
    pushed = run_cli("push", "local", cwd=project)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    shown = pushed.stdout + pushed.stderr
    assert "latency check 1/4" in shown and "re-searching" in shown, shown[-3000:]
    saved = json.loads(next((project / ".edgekit" / "latency").glob("local-*.json")).read_text())
    loop = saved["checked"][f"{target:.6g}"]
    first, last = loop["rounds"][0], loop["rounds"][-1]
    # the wrong table, caught (by less than 2x when the load moved between the table's timing and this one)
    assert first["measured_ms"] > 1.2 * first["predicted_ms"] and first["again"]
    assert len(loop["rounds"]) >= 2 and not last["again"]
    assert len({r["blend"] for r in loop["rounds"]}) == 1  # the trial's choice (when it had one) held every round
    assert loop["met"] and loop["measured_ms"] <= target * 1.15
    assert abs(last["measured_ms"] - last["predicted_ms"]) < abs(first["measured_ms"] - first["predicted_ms"])
    jobs = {p.name for p in device.jobs.iterdir()}
    (report,) = [r for r in map(device.report, jobs) if r.get("kind") != "latency_model"]
    assert report["status"] == "done"  # the agent's budget (target + 15 %) was checked on the shipped model
    (shipped,) = [b for b in report["benchmarks"] if b["batch"] == 1]
    assert shipped["latency_ms"]["median"] <= target * 1.15

    again = run_cli("push", "local", cwd=project)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "latency check 1/4" not in again.stdout + again.stderr
    new = [device.report(job) for job in {p.name for p in device.jobs.iterdir()} - jobs]
    measuring = [r for r in new if r.get("kind") == "latency_model"]
    assert all(r["measured"] == 0 and not any(i.startswith("whole:check") for i in r["ms"]) for r in measuring)


def test_a_profiled_latency_model_on_onnx_runtime_through_a_real_agent(project):
    """prune.latency_model = "profile" on the local device: the agent profiles a few whole models (no layer
    variant is sent) and the host reads every layer variant's time off their profiles."""
    from edgekit.device.contract.protocol import DEVICE_INFO
    from edgekit.host.config import load_config
    from edgekit.host.optimize.prune.latency import load_model_file
    from edgekit.host.optimize.prune.layer_profile import PROFILE_LEVELS
    from edgekit.host.ship.latency import latency_model_file, status_multiple

    with (project / "deploy.toml").open("a") as toml:
        toml.write("\n[prune]\nenabled = true\ntarget_latency_ms = 1000.0\ntarget_batch = 1\n"
                   'latency_model = "profile"\nallow_accuracy_drop = true\n'
                   '\n[devices.local]\nkind = "local"\nprecision = "fp32"\nbackend = "onnxruntime"\n')
    said: list[str] = []
    config = load_config(project / "deploy.toml")
    path = latency_model_file(config, "local", said.append, lambda _: None)
    model, saved = load_model_file(path)
    assert saved["mode"] == "profile" and saved["backend"] == "onnxruntime"
    # the widths step in the channels this machine's CPU packs (prune.align_to_device, on by default)
    info = json.loads((Path(os.environ["EDGEKIT_HOME"]) / "local-device" / DEVICE_INFO).read_text())
    multiple = status_multiple(config.device("local"), info, config.quantize.enabled)
    assert all(space.unit % multiple == 0 or space.floor == space.width for space in model.spaces.values())
    assert any("runtime packs" in line for line in said) == (8 % multiple != 0)
    assert set(saved["profiles"]) >= {f"whole:{level}" for level in PROFILE_LEVELS}
    assert any("whole models to profile" in line for line in said)
    assert set(layer_variants(model.layers, model.spaces)) <= set(saved["table"])
    assert all(saved["table"][ident] > 0 for ident in layer_variants(model.layers, model.spaces))
    # the line through the whole models lands among them. Not near the full one's own time: one reading of it
    # moves 2.5x on this shared machine (0.147 and 0.377 ms in two runs of this test a minute apart)
    wholes = [saved["table"][f"whole:{level}"] for level in PROFILE_LEVELS]
    assert min(wholes) / 2 <= model.uncorrected(model.full()) <= max(wholes) * 2
    # a whole model the closed loop measured later (this machine may have changed speed since) is what the
    # corrected prediction says at those widths
    assert all(model.predict(check.widths) == pytest.approx(check.measured_ms) for check in model.checks)


def test_a_target_missed_after_the_check_rounds_fails_with_the_closest_measured_and_the_table_shows_rounds():
    from edgekit.host.errors import CheckFailed
    from edgekit.host.optimize.prune.stage import check_latency_target, latency_note

    rounds = [{"index": 1, "widths": {"a": 8}, "predicted_ms": 0.9, "measured_ms": 1.6, "again": True},
              {"index": 2, "widths": {"a": 8}, "predicted_ms": 1.0, "measured_ms": 1.4, "again": False}]
    check = {"target_ms": 1.0, "widths": {"a": 8}, "predicted_ms": 1.0, "measured_ms": 1.4, "met": False,
             "rounds": rounds}
    latency = {"target_ms": 1.0, "batch": 1, "device": "local", "backend": "onnxruntime", "precision": "fp32",
               "reached": False, "predicted_ms": 1.0, "max_accuracy_drop": 0.01, "check": check,
               "widths": {"a": 8}, "full": {"a": 32},
               "closest": {"predicted_ms": 1.0, "top1": 0.91, "unpruned": False, "accuracy_limited": False,
                           "probes": []}}
    with pytest.raises(CheckFailed) as failed:
        check_latency_target(latency, 0.92, 0.91, 300)
    line = str(failed.value)
    assert "\n" not in line and "2 latency check(s)" in line and "closest measured is 1.4 ms" in line, line
    assert "91.00%" in line
    note = latency_note(latency)
    assert "0.9→1.6 ms" in note and "1→1.4 ms" in note and "a 32→8" in note and "trial" not in note
    for blend, words in ((0.0, "uniform widths kept by the trial"), (0.5, "0.5 of the way from uniform"),
                         (-1.0, "shaped by each group's latency per channel"),
                         (-2.0, "candidate no longer offered"), (-3.0, "; widths narrower inside")):
        check["rounds"] = [dict(r, blend=blend) for r in rounds]
        assert words in latency_note(latency)
