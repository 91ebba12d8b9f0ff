"""torchvision's and timm's models as users push them: by name, through checkpoints (theirs and ours),
pruning around what torch-pruning cannot map, and the CLI end to end. torchvision is a host dependency
and timm a dev one: they import here, so nothing is skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm  # noqa: F401 - imported here so a broken timm fails the module, not a skip
import torch
import torchvision
from safetensors.torch import save_file

from edgekit.host.config import deploy_toml, load_config
from edgekit.host.errors import CheckFailed, ConfigError
from edgekit.host.optimize.export.onnx_export import export_onnx, verify_onnx
from edgekit.host.optimize.prune.structured import build_graph
from edgekit.host.train.checkpoint import load_model, save_checkpoint
from edgekit.host.train.data import _write_batch, load_dataset
from edgekit.host.train.models import create_model
from edgekit.host.train.project import chance_level, near_chance

from .conftest import kill_agents, run_cli
from .test_models import randomize_bn
from .test_user_models import prune

ROOT = Path(__file__).resolve().parent.parent
INPUTS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_package_asks_for_ranges_and_our_venv_is_the_lock():
    """A user's torch/torchvision must satisfy edgekit as they are (no `==`, torch 2.1 on); constraints.txt is
    exactly what this venv runs, so `make install` rebuilds it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in ("host", "device")
                                              for r in project["optional-dependencies"][extra]]
    assert not [r for r in requirements if "==" in r or "<" in r], requirements
    assert "torch>=2.1" in requirements and any(r.startswith("torchvision>=") for r in requirements)
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"torch", "torchvision", "timm", "torch-pruning"} <= set(pins)
    for name, version in pins.items():
        installed = re.sub(r"\+.*", "", metadata.version(name))  # torch reports its local build, +cu130
        assert installed == version, (name, installed, version)


def test_models_by_name_get_the_arguments_their_factory_takes():
    assert create_model("torchvision.models:mnasnet0_5", num_classes=7).eval()(INPUTS).shape == (2, 7)
    assert create_model("torchvision:squeezenet1_1", num_classes=3).eval()(INPUTS).shape == (2, 3)
    assert create_model("timm:resnet18", num_classes=5, in_channels=1).eval()(torch.zeros(2, 1, 32, 32)).shape \
        == (2, 5)
    with pytest.raises(ConfigError, match=r"model.width = 0.5 cannot be applied: its factory does not take it"):
        create_model("torchvision.models:resnet18", width=0.5)
    with pytest.raises(ConfigError, match=r"input.shape\[0\] = 1 cannot be applied"):
        create_model("torchvision.models:resnet18", in_channels=1)
    with pytest.raises(ConfigError, match="timm has no model 'resnet18x'; close: "):
        create_model("timm:resnet18x")
    with pytest.raises(ConfigError, match="cannot import it"):
        create_model("torchvision.models:no_such_net")


def test_checkpoints_keep_module_versions_and_users_own_files_load(tmp_path):
    """MNASNet reads its module version on load: edgekit's checkpoint lost the state_dict's ``_metadata`` and
    the push ended in `internal error (ValueError: version should be set to 1 or 2 instead of None)`."""
    arch = "torchvision.models:mnasnet0_5"
    model = randomize_bn(create_model(arch))
    with torch.no_grad():
        expected = model(INPUTS)
    state = model.state_dict()
    save_checkpoint(tmp_path / "ours.pt", model, {"arch": arch})
    torch.save(state, tmp_path / "bare.pt")
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "parallel.pt")
    torch.save({k: v for k, v in state.items()}, tmp_path / "no_versions.pt")  # a plain dict: _metadata gone
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "user.safetensors")
    for name in ("ours.pt", "bare.pt", "wrapped.pt", "parallel.pt", "no_versions.pt", "user.safetensors"):
        loaded, _ = load_model(tmp_path / name, arch, 10, 1.0, 3)
        with torch.no_grad():
            assert torch.equal(loaded(INPUTS), expected), name
    torch.save(model, tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match=r"not a loadable weights-only checkpoint .*save model.state_dict\(\)"):
        load_model(tmp_path / "pickled.pt", arch, 10, 1.0, 3)
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(ConfigError, match="no state_dict in it \\(keys: epoch\\)"):
        load_model(tmp_path / "empty.pt", arch, 10, 1.0, 3)


def test_shufflenet_is_pruned_around_the_channel_shuffle_torch_pruning_cannot_map(tmp_path):
    """torch-pruning divides by zero mapping torchvision's channel shuffle (and fails on the concat's split
    after it): the model was refused whole. Now those groups stay whole, named, and the rest is pruned."""
    model = randomize_bn(torchvision.models.shufflenet_v2_x0_5(num_classes=10))
    before = sum(p.numel() for p in model.parameters())
    messages: list[str] = []
    steps = prune(model, "shufflenet_v2", messages)
    protected = steps[-1].protected
    assert protected and all("torch-pruning cannot map" in reason for reason in protected.values()), protected
    assert any(name.endswith("branch2.5") for name in protected)  # the conv feeding the concat + shuffle
    assert any(m.startswith("left ") and "stage" in m for m in messages)
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before
    export_onnx(model, tmp_path / "m.onnx", [3, 32, 32])
    assert verify_onnx(model, tmp_path / "m.onnx", INPUTS.numpy()) < 1e-3


def test_a_group_whose_channel_indices_explode_through_reshapes_stays_whole_and_named(monkeypatch):
    """torch-pruning's flatten mapping multiplies channel indices by the pixels at each reshape: through
    Swin's window partitions one group's lists grew past 24 GiB and the OS killed the push. Bounded, such a
    group is left whole with its reason and the rest is pruned (here the bound is lowered so that a plain
    flatten of 16 channels × 32×32 pixels crosses it)."""
    from edgekit.host.optimize.prune import structured

    monkeypatch.setattr(structured, "MAX_INDICES", 1000)
    conv = lambda: (torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())  # noqa: E731
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                *conv(), *conv(), torch.nn.Flatten(), torch.nn.Linear(16 * 32 * 32, 10))
    steps = prune(randomize_bn(model), "flatten")
    assert "grow past 1000" in steps[-1].protected.get("6", ""), steps[-1].protected  # the conv before the flatten
    assert model[0].out_channels == 8 and model[6].out_channels == 16
    assert model(INPUTS).shape == (len(INPUTS), 10)


@pytest.mark.parametrize("size_in, size_out", [((1, 1), (7, 7)), ((5, 7), (3, 2)), ((10, 10), (4, 4)),
                                               ((6, 6), (None, 4))])
def test_adaptive_pool_as_matrices_is_the_pool(size_in, size_out):
    from edgekit.host.optimize.export.pools import PoolByMatrices, _output_size

    pool = torch.nn.AdaptiveAvgPool2d(size_out)
    x = torch.randn(2, 3, *size_in)
    assert torch.allclose(PoolByMatrices(size_in, _output_size(pool, size_in))(x), pool(x), atol=1e-6)


def test_a_vgg_style_pool_the_exporter_refuses_is_exported_and_the_model_left_as_it_was(tmp_path):
    """VGG's AdaptiveAvgPool2d((7, 7)) on a 1×1 map (torchvision's VGG at 32×32) made the exporter refuse the
    model after its whole training; now it exports, ONNX Runtime agrees with torch, and the user's model
    keeps its pool."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=16, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d((7, 7)), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 7 * 7, 10)).eval()
    model(INPUTS)  # a 2×2 map: 7 is not a factor of 2
    export_onnx(model, tmp_path / "m.onnx", [3, 32, 32])
    assert verify_onnx(model, tmp_path / "m.onnx", INPUTS.numpy()) < 1e-5
    assert isinstance(model[2], torch.nn.AdaptiveAvgPool2d)
    assert "MatMul" in {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}


def test_a_training_set_one_over_a_multiple_of_the_batch_trains_models_with_1x1_maps():
    """65 images at batch 64 leave a last batch of one: BatchNorm on ResNet-18's 1×1 maps (32×32 input) cannot
    normalise it in training, and the training crashed (an internal error in `edgekit train`)."""
    from edgekit.host.train.data import Split
    from edgekit.host.train.loop import train

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 255, (65, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 65))
    losses: list[float] = []
    model = create_model("torchvision.models:resnet18", 10)
    assert train(model, split, [0.5] * 3, [0.25] * 3, epochs=1, batch_size=64, lr=0.01,
                 progress=lambda epoch, epochs, loss: losses.append(loss)) == 1
    assert len(losses) == 1 and np.isfinite(losses[0])


def test_timm_models_prune_and_export(tmp_path):
    model = randomize_bn(create_model("timm:resnet18", num_classes=10))
    before = sum(p.numel() for p in model.parameters())
    steps = prune(model, "timm")
    assert steps[-1].protected == {} and sum(p.numel() for p in model.parameters()) < 0.5 * before
    export_onnx(model, tmp_path / "m.onnx", [3, 32, 32])
    assert verify_onnx(model, tmp_path / "m.onnx", INPUTS.numpy()) < 1e-3


def test_a_model_torch_pruning_cannot_trace_at_all_is_one_line_naming_why():
    class Dynamic(torch.nn.Module):  # the graph depends on data torch-pruning's trace cannot follow
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("traced with a fake tensor")

    with pytest.raises(ConfigError, match=r"cannot trace this model \(RuntimeError: traced with a fake tensor\), "
                                          r"so no layer can be pruned; set prune.enabled = false"):
        build_graph(Dynamic(), torch.zeros(1, 3, 32, 32))


def test_near_chance_is_judged_against_the_commonest_class():
    balanced = np.repeat(np.arange(10), 10)
    assert chance_level(balanced) == pytest.approx(0.1)
    assert chance_level(np.array([0] * 8 + [1] * 2)) == pytest.approx(0.8)
    warning = near_chance(0.11, balanced, "trained")
    assert warning and "near chance (10.0%)" in warning and "train.lr" in warning and "train.epochs" in warning
    assert near_chance(0.5, balanced, "trained") is None
    assert near_chance(0.82, np.array([0] * 8 + [1] * 2), "trained")  # 82% on an 80/20 split is nothing


def test_init_writes_the_chain_with_a_jetson_block_that_loads_when_uncommented(tmp_path):
    assert run_cli("init", str(tmp_path / "p"), cwd=tmp_path).returncode == 0
    text = (tmp_path / "p" / "deploy.toml").read_text()
    config = load_config(tmp_path / "p" / "deploy.toml")
    assert config.prune.enabled and config.prune.ratio == 0.5 and config.quantize.enabled
    assert config.devices["local"].precision == "auto"
    assert "# [devices.jetson]" in text
    (tmp_path / "p" / "deploy.toml").write_text(text.replace("# [devices", "[devices").replace("# host", "host")
                                                .replace("# user", "user").replace("# backend", "backend")
                                                .replace("# precision", "precision"))
    jetson = load_config(tmp_path / "p" / "deploy.toml").devices["jetson"]
    assert (jetson.backend, jetson.precision, jetson.kind) == ("tensorrt", "auto", "ssh")


def test_a_model_built_for_another_image_size_is_one_line_before_training(tmp_path, digits_dir):
    """torchvision's ViT asserts its 224×224 input: at the digits' 32×32 that assertion was an internal error."""
    (tmp_path / "deploy.toml").write_text(deploy_toml(
        project={"name": "vit"}, model={"arch": "torchvision.models:vit_b_16", "checkpoint": "model.pt"},
        data={"path": str(digits_dir)}, train={"epochs": 1}, devices={"local": {"kind": "local"}}))
    result = run_cli("train", cwd=tmp_path, env=dict(os.environ, EDGEKIT_HOME=str(tmp_path / "home")))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert re.fullmatch(r"error: model 'torchvision.models:vit_b_16' does not run on images of input.shape = "
                        r"\[3, 32, 32\] \(AssertionError: Wrong image height! Expected 224 but got 32!\); set "
                        r"input.shape to the size it was built for .*\n", result.stderr), result.stderr
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_a_torchvision_model_trains_and_pushes_through_the_cli(tmp_path, digits_dir):
    """mnasnet0_5 (the push that ended in an internal error) by name, trained, pruned, INT8, on the local
    device; the training's warning is there exactly when its top-1 is near chance. One epoch, no fine-tuning:
    what is tested is the chain on a torchvision model, not its accuracy."""
    shutil.copytree(digits_dir, tmp_path / "data")
    train = load_dataset("cifar", tmp_path / "data", (32, 32)).train  # 320 of the training images: one quick epoch
    _write_batch(tmp_path / "data" / "data_batch_1", train.images[:320], train.labels[:320], "training batch 1 of 1")
    (tmp_path / "deploy.toml").write_text(deploy_toml(
        project={"name": "mnasnet"}, model={"arch": "torchvision.models:mnasnet0_5", "checkpoint": "model.pt"},
        data={"path": "data"}, input={"batch_sizes": [1, 8]}, train={"epochs": 1, "lr": 0.05, "augment": ["crop"]},
        optimize={"reference_samples": 32}, quantize={"images": 64},
        prune={"enabled": True, "finetune_epochs": 0, "allow_accuracy_drop": True},
        benchmark={"warmup_s": 0.05, "duration_s": 0.2, "min_iterations": 5, "rounds": 1},
        devices={"local": {"kind": "local", "backend": "onnxruntime", "precision": "int8"}}))
    env = dict(os.environ, EDGEKIT_HOME=str(tmp_path / "home"))
    try:
        trained = run_cli("train", "--json", cwd=tmp_path, env=env)
        assert trained.returncode == 0, trained.stderr
        meta = json.loads(trained.stdout)
        assert ("near chance" in trained.stderr) == (meta["warning"] is not None)
        labels = load_dataset("cifar", tmp_path / "data", (32, 32)).test.labels
        assert (meta["warning"] is None) == (near_chance(meta["top1"], labels, "trained") is None)
        pushed = run_cli("push", "local", "--json", cwd=tmp_path, env=env)
        assert pushed.returncode == 0 and "Traceback" not in pushed.stderr, pushed.stderr
        report = json.loads(pushed.stdout)["report"]
        assert report["validation"]["passed"]
        assert report["host"]["pruning"]["protected"] == {}
    finally:
        kill_agents(tmp_path / "home")


def test_slow_momentum_batchnorm_is_settled_after_a_digits_length_training():
    """MobileNetV3's momentum 0.01 over 15 epochs of the digits (345 steps): its running statistics had
    replaced their initial values but averaged over most of the training, and its held-out top-1 sat at
    chance (10 %) until they were re-estimated (99 %). Layers at PyTorch's default momentum stand as trained."""
    from edgekit.host.train.loop import slow_batchnorms

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    assert len(slow_batchnorms(model, 345)) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert slow_batchnorms(model, 20_000) == []  # an ImageNet-length training: its own statistics stand
    assert slow_batchnorms(torchvision.models.resnet18(), 345) == []

def test_slow_batchnorm_statistics_are_settled_after_a_short_training(digits_dir):
    """MNASNet's BatchNorm momentum is 0.0003 (MobileNetV3's 0.01): after a short training its running
    statistics were still mostly the initial 0/1, eval mode blew the activations up and held-out top-1 was at
    chance (and the export check then blamed the exporter). They are now the training images' own."""
    from edgekit.host.train.loop import settle_batchnorm, slow_batchnorms

    assert slow_batchnorms(torchvision.models.resnet18(), 100) == []  # momentum 0.1: settled by itself
    model = torchvision.models.mnasnet0_5(num_classes=10)
    assert len(slow_batchnorms(model, 100)) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    split = load_dataset("cifar", digits_dir, (32, 32)).train
    split = type(split)(split.images[:96], split.labels[:96])
    mean, std = [40.0] * 3, [80.0] * 3
    first = model.layers[1]  # the first BatchNorm: its input (the stem conv's) does not depend on any statistics
    seen: list[torch.Tensor] = []
    handle = first.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert settle_batchnorm(model, split, mean, std, 32, 100, torch.device("cpu")) == len(slow_batchnorms(model, 100))
    handle.remove()
    inputs = torch.cat(seen)
    assert torch.allclose(first.running_mean, inputs.mean((0, 2, 3)), atol=1e-4)
    assert not torch.allclose(first.running_mean, torch.zeros_like(first.running_mean), atol=1e-2)
    assert first.momentum == pytest.approx(0.0003) and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_diverged_logits_are_named_not_blamed_on_the_export(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 10)).eval()
    export_onnx(model, tmp_path / "m.onnx", [3, 32, 32])
    with torch.no_grad():
        model[3].weight.add_(1.0)  # torch now differs from the file
    with pytest.raises(CheckFailed, match="the export is wrong"):
        verify_onnx(model, tmp_path / "m.onnx", INPUTS.numpy())
    with torch.no_grad():
        model[3].weight.mul_(1e9)
    with pytest.raises(CheckFailed, match=r"logits reach .*its training diverged; lower train.lr"):
        verify_onnx(model, tmp_path / "m.onnx", INPUTS.numpy())


def test_layers_feeding_googlenets_auxiliary_heads_stay_whole_so_fine_tuning_runs():
    """GoogLeNet's aux heads run only in train mode, outside the graph traced in eval mode: pruning the
    inception blocks under them left the heads expecting 512 channels and fine-tuning raised."""
    model = create_model("torchvision.models:googlenet", num_classes=10)
    steps = prune(model, "googlenet")
    protected = steps[-1].protected
    fed = {reason.split(",")[0] for reason in protected.values() if "runs only in training" in reason}
    assert fed == {"feeds aux1", "feeds aux2"}, protected
    assert all(name.startswith(("inception4a.", "inception4d.")) for name, reason in protected.items()
               if "runs only in training" in reason)
    logits, aux2, aux1 = model.train()(INPUTS)
    assert logits.shape == aux1.shape == aux2.shape == (2, 10)
