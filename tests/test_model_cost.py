"""scripts/model_cost.py: parameters and MACs per forward of exports, read from their sidecars alone."""

import pytest
import torch

import model_cost
from pagoda import checkpoint
from pagoda.dimr import DiMR, dimr_config
from pagoda.generator import generator_sidecar


def _export(tmp_path, net, kind="generator"):
    path = str(tmp_path / f"{kind}.pt")
    side = generator_sidecar(net) if kind == "generator" else {"kind": kind, net.SIDECAR_KEY: net.config}
    checkpoint.export_network(net.state_dict(), side, path)
    return path


def test_counts_equal_the_published_layout(tmp_path, capsys):
    torch.manual_seed(0)
    net = DiMR(**dimr_config("p16_2r"))
    path = _export(tmp_path, net)
    cost = model_cost.model_cost(path)
    # p16_2r at 16 px: the counts pinned in tests/test_dimr.py from the layout on the meta device
    assert (cost["parameters"], cost["macs_per_forward"], cost["architecture"]) == (1_019_766, 92_903_424, "dimr")
    model_cost.main(["--models", path, "--out", str(tmp_path / "cost.json")])
    assert "| dimr | 1,019,766 | 92.9 |" in capsys.readouterr().out


def test_a_missing_export_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt: no export with a sidecar there"):
        model_cost.model_cost(str(tmp_path / "nowhere.pt"))
