"""stylepipe: reproducible fast neural style transfer (Johnson et al. 2016)."""

__version__ = "0.1.0"
