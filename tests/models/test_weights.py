"""pygml.models.weights: the one reader of weight files (.pth, wrapped dicts, DataParallel's ``module.``
prefix, .safetensors) and the one check that a state dict fits a module before it is loaded."""

import pytest
import torch
from torch import nn

from pygml.models import WeightsMismatchError, fit_state_dict, load_weights, read_weights


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in _net().state_dict().items()}


@pytest.mark.parametrize("wrap", [
    lambda s: s,
    lambda s: {"state_dict": s, "epoch": 3},
    lambda s: {"model": s, "optimizer": {}},
    lambda s: {f"module.{k}": v for k, v in s.items()},
    lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
], ids=["plain", "state_dict", "model", "module_prefix", "wrapped_and_prefixed"])
def test_read_weights_unwraps_and_drops_the_module_prefix(tmp_path, wrap):
    state = _state()
    torch.save(wrap(state), tmp_path / "w.pth")
    read = read_weights(tmp_path / "w.pth", "the test net")
    assert read.keys() == state.keys()
    for key in state:
        assert torch.equal(read[key], state[key]), key


def test_read_weights_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = _state()
    safetensors.save_file(state, str(tmp_path / "w.safetensors"))
    read = read_weights(tmp_path / "w.safetensors", "the test net")
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_read_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=rf"weights for the test net not found at {missing}") as info:
        read_weights(missing, "the test net")
    assert "never downloads" in str(info.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"could not read the weights file {junk} for the test net"):
        read_weights(junk, "the test net")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict of tensors"):
        read_weights(tmp_path / "list.pth", "the test net")


def test_fit_state_dict_loads_a_state_that_fits():
    net, state = _net(), _state()
    fit_state_dict(net, state, "test")
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    del state["1.num_batches_tracked"]  # optional by default: keeps its value
    fit_state_dict(_net(), state, "test")


def test_fit_state_dict_mismatches_name_the_source_and_the_keys():
    state = _state()
    missing = {k: v for k, v in state.items() if k != "2.bias"}
    with pytest.raises(WeightsMismatchError, match=r"weights in w\.pth does not fit Sequential: 1 missing keys "
                                                   r"\(e\.g\. \['2\.bias'\]\), 0 unexpected"):
        fit_state_dict(_net(), missing, "weights in w.pth")
    extra = {**state, "head.weight": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError,
                       match=r"0 missing keys .* 1 unexpected keys \(e\.g\. \['head\.weight'\]\)"):
        fit_state_dict(_net(), extra, "test")
    shaped = {**state, "0.weight": torch.zeros(5, 3)}
    with pytest.raises(WeightsMismatchError, match=r"0 missing keys .* 1 of another shape "
                                                   r"\(e\.g\. \[\"0\.weight: \(5, 3\) vs the model's \(4, 3\)\"\]\)"):
        fit_state_dict(_net(), shaped, "test")


def test_a_failed_fit_leaves_the_module_untouched():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = _state()
    state["2.weight"] = torch.zeros(7, 7)
    with pytest.raises(WeightsMismatchError):
        fit_state_dict(net, state, "test")
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was loaded from a state that does not fit"


def test_fit_state_dict_key_map_optional_and_error_type():
    state = {f"net.{k}": v for k, v in _state().items()}
    state["classifier.weight"] = torch.zeros(10, 2)

    def key_map(key, value):
        if key.startswith("classifier."):
            return None
        return key.removeprefix("net."), value

    net = _net()
    fit_state_dict(net, state, "test", key_map=key_map)
    assert torch.equal(net.state_dict()["2.weight"], state["net.2.weight"])

    class Mine(ValueError):
        pass

    without_stats = {k: v for k, v in _state().items() if "running" not in k}
    with pytest.raises(Mine, match="2 missing keys"):
        fit_state_dict(_net(), without_stats, "test", error=Mine)
    fit_state_dict(_net(), without_stats, "test", optional=("running_mean", "running_var", "num_batches_tracked"))


def test_load_weights_reads_maps_and_ignores_prefixes(tmp_path):
    state = _state()
    torch.save({"state_dict": {**{f"module.{k}": v for k, v in state.items()}, "head.weight": torch.zeros(1)}},
               tmp_path / "w.pth")
    net = _net()
    with pytest.raises(WeightsMismatchError, match=rf"weights in {tmp_path / 'w.pth'} does not fit .*head\.weight"):
        load_weights(net, tmp_path / "w.pth", "the test net")
    load_weights(net, tmp_path / "w.pth", "the test net", ignore_prefixes=("head.",))
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)
