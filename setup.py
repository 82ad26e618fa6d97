from setuptools import setup

setup(
    name="pagoda",
    version="0.1.0",
    description="Progressive growing of a one-step generator from a low-resolution diffusion teacher (PaGoDA)",
    packages=["pagoda", "evaluations"],
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "scipy", "pillow", "tqdm", "blobfile", "timm"],
    extras_require={"mpi": ["mpi4py", "mpich"]},
)
