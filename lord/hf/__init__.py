"""What a saved checkpoint ships: ``modeling_lord.py``, self-contained (standard library, torch, transformers and
safetensors only) and copied next to the weights. It sits below ``lord.checkpoint`` (which writes and reads
checkpoints), ``lord.model_card`` (their ``README.md``) and ``lord.export`` (the dense export), none of which a
checkpoint carries."""
