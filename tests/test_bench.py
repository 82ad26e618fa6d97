"""The bench/ scripts still run against the library and print the ratios bench/run_all.sh collects (tiny sizes;
the values are not checked: timings never are in tests). bench/encode.py had silently broken on an API change."""

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
