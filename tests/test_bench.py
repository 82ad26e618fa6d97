"""The bench/ scripts still run against the library and print the ratios bench/run_all.sh collects (tiny sizes;
the values are not checked: timings never are in tests). bench/encode.py had silently broken on an API change."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "encode.py": (["--num_images", "8", "--batch", "4", "--num_steps", "3"], ["encode_overhead"]),
    "sampling.py": (["--batch", "4", "--heun_steps", "3"], ["one_step_vs_teacher_speed", "grown_vs_parent_cost"]),
    "domain.py": (["--num_images", "8", "--batch", "4", "--rounds", "1"],
                  ["domain_images_per_s", "domain_over_inception_speed"]),
    "discriminator.py": (["--networks", "random_conv,tf_efficientnet_lite0,teacher", "--resolutions", "64,224",
                          "--batch", "2", "--iters", "1"],
                         ["d_step_bf16_over_fp32", "g_side_bf16_over_fp32", "d_step_224_over_64", "g_side_over_d_step",
                          "d_step_lite0_over_random_conv", "d_step_teacher_over_random_conv"]),
    "fid.py": (["--num_images", "4", "--batch", "2", "--image_size", "16", "--dim", "64"],
               ["inception_images_per_s", "inception_prepared_over_plain", "frechet_sqrtm_over_eigen"]),
    "precision.py": (["--rounds", "1", "--skip", "unet_forward_imagenet64", "--encode_images", "4", "--encode_steps",
                      "2", "--inception_batch", "2"],
                     [f"bf16_speedup_{case}" for case in ("teacher_train_step", "unet_forward_bundled", "encode",
                                                         "one_step_16px", "one_step_32px", "inception")]),
    "levers.py": (["--rounds", "1", "--batch", "4", "--levers", "channels_last"],
                  ["channels_last_speedup_teacher_train_step", "channels_last_speedup_one_step_forward"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_bench_script_reports_its_ratios(script):
    args, names = CASES[script]
    out = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), "--device", "cpu", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ratios = dict(re.findall(r"^RATIO (\w+): (\S+)", out.stdout, flags=re.M))
    assert sorted(ratios) == sorted(names), out.stdout
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in ratios.values()), ratios


def test_profile_steps_replays_each_recipe_exactly():
    """bench/profile_steps.py turns a recipe's dry-run config back into flags; parsed again they give the same
    config (so the profile is of what the quickstart runs), records such as git_commit left out."""
    import profile_steps

    from pagoda import methods

    for stage, (recipe, method) in profile_steps.RECIPES.items():
        config = profile_steps.recipe_config(recipe, {})
        argv = profile_steps.config_argv(config, methods.get(method)) + ["--dry_run"]
        out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--method", method, *argv],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        replayed = json.loads(out.stdout)
        assert {k: v for k, v in replayed.items() if k != "preset"} == \
            {k: v for k, v in config.items() if k != "preset"}, stage
        assert "--git_commit" not in argv


@pytest.mark.parametrize("op,family", [("aten::mkldnn_convolution", "convolution"),
                                       ("aten::convolution_backward", "convolution"),
                                       ("aten::native_group_norm", "normalisation"),
                                       ("aten::bmm", "matmul / attention"),
                                       ("aten::_foreach_lerp_", "optimizer kernels"),
                                       ("aten::upsample_nearest2d", "resampling"),
                                       ("aten::copy_", "copies / layout"), ("aten::silu", "elementwise / other ops")])
def test_profile_families(op, family):
    import profile_steps

    assert profile_steps.family(op) == family


STAND_IN_UNET = '''"""A stand-in for the official cm/unet.py: the project's network behind the official interface."""
import os

import torch

from pagoda.unet import UNetModel as ProjectUNet

QKVFlashAttention = None  # bench/official.py replaces it by QKVAttention


class QKVAttention:
    def __init__(self, num_heads):
        self.num_heads = num_heads


class UNetModel(ProjectUNet):
    def __init__(self, *, use_fp16, **kwargs):
        super().__init__(**kwargs)

    def forward(self, x, timesteps, y=None):
        offset = float(os.environ.get("STAND_IN_OFFSET", "0"))
        return super().forward(x, torch.exp(timesteps / 250.0), y) + offset
'''


def run_official_bench(checkout, *args, offset="0"):
    env = {k: v for k, v in os.environ.items() if k != "PAGODA_OFFICIAL_CM"}
    if checkout is not None:
        env.update(PAGODA_OFFICIAL_CM=str(checkout), STAND_IN_OFFSET=offset)
    return subprocess.run([sys.executable, os.path.join(REPO, "bench", "official.py"), "--device", "cpu",
                           "--configs", "bundled", "--batch", "2", "--rounds", "1", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_official_bench_names_the_checkout_it_needs(tmp_path):
    out = run_official_bench(None)
    assert out.returncode == 1 and "set PAGODA_OFFICIAL_CM to a checkout of" in out.stderr
    out = run_official_bench(tmp_path)
    assert out.returncode == 1 and f"PAGODA_OFFICIAL_CM={tmp_path} has no cm/unet.py" in out.stderr


def stand_in_checkout(tmp_path):
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "__init__.py").write_text("")
    (tmp_path / "cm" / "unet.py").write_text(STAND_IN_UNET)
    return tmp_path


def test_official_bench_reports_ratios_per_kernel_against_a_stand_in(tmp_path):
    """The stand-in is the project's own network: the bench loads the weights across, agrees, times every kernel."""
    out = run_official_bench(stand_in_checkout(tmp_path), "--kernels", "sdpa,bmm")
    assert out.returncode == 0, out.stderr[-3000:]
    ratios = dict(re.findall(r"^RATIO (\w+): (\S+)", out.stdout, flags=re.M))
    assert sorted(ratios) == [f"official_over_project_{k}_{p}_bundled" for k in ("bmm", "sdpa")
                              for p in ("forward", "train")]
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in ratios.values()), ratios


def test_official_bench_refuses_a_network_that_disagrees(tmp_path):
    out = run_official_bench(stand_in_checkout(tmp_path), offset="0.01")
    assert out.returncode == 1 and "bundled: the project's network does not reproduce the official one" in out.stderr


@pytest.mark.skipif(not os.environ.get("PAGODA_OFFICIAL_CM"), reason="needs PAGODA_OFFICIAL_CM: an official checkout")
def test_official_bench_against_the_official_checkout():
    out = run_official_bench(os.environ["PAGODA_OFFICIAL_CM"])
    assert out.returncode == 0, out.stderr[-3000:]
    ratios = dict(re.findall(r"^RATIO (\w+): (\S+)", out.stdout, flags=re.M))
    assert sorted(ratios) == ["official_over_project_forward_bundled", "official_over_project_train_bundled"]
