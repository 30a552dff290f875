"""What makes a compressed model a Hugging Face model: ``modeling_lord.py`` (self-contained, copied next to the
weights) and the dense export (``export.py``)."""
