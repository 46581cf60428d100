"""funclens: is the compressed model still the same function as the original?"""

__version__ = "0.1.0"
