"""xbc's examples: model builders (``models.py``, installed as ``xbc.examples.models`` for
``xbc bench``), the example model ``tiny_cnn.onnx`` and the scripts that build it, sweep and
export models. The scripts run from a source checkout: ``python examples/NAME.py``."""
