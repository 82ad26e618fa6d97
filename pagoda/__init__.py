"""pagoda: progressive growing of a one-step generator from a low-resolution diffusion teacher."""

__version__ = "0.1.0"
