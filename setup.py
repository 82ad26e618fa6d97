from setuptools import find_packages, setup

setup(
    name="pagoda",
    version="0.1.0",
    description="Progressive growing of a one-step generator from a low-resolution diffusion teacher (PaGoDA)",
    packages=find_packages(include=["pagoda", "pagoda.*", "evaluations", "evaluations.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "scipy", "pillow", "tqdm", "blobfile", "timm"],
    extras_require={"mpi": ["mpi4py", "mpich"]},
)
