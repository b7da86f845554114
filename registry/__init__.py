"""ModelDrop registry server: model versions, conversion, signing and delivery."""

__version__ = "0.1.0"
