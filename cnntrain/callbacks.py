"""The public home of `Callback`, the base class of `+callbacks.<name>._target_=module.Class`:
`from cnntrain.callbacks import Callback` loads only the class (cnntrain/training/callback.py)."""

from cnntrain.training.callback import Callback

__all__ = ["Callback"]
