"""The public home of `Callback`, the base class of `+callbacks.<name>._target_=module.Class`:
`from cnntrain.callbacks import Callback` loads only the class (cnntrain/training/events.py)."""

from cnntrain.training.events import Callback

__all__ = ["Callback"]
