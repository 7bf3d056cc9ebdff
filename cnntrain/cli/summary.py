"""`cnntrain-summary [overrides…]`: the layer table of the model a config would train."""

import sys

from cnntrain.cli.common import fail, preflight
from cnntrain.config.resolvers import register_resolvers
from cnntrain.core.errors import UserError
from cnntrain.data import input_spec
from cnntrain.models import build_model, data_defaults
from cnntrain.reporting.console import console
from cnntrain.reporting.layer_table import layers_table, summarize_layers


def main() -> None:
    """`cnntrain-summary [overrides…]`: the layer table of the model the config would train."""
    register_resolvers()
    cfg = preflight([*sys.argv[1:], "paths.output_dir=unused"])
    try:
        spec, _ = input_spec(cfg, data_defaults(cfg.model) or {})
        model = build_model(cfg.model, spec)
    except UserError as e:
        fail(str(e))
    console.print(layers_table(summarize_layers(model, (spec.channels, spec.height, spec.width))))


if __name__ == "__main__":
    main()
