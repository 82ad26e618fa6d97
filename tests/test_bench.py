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
