"""`cnntrain-summary [overrides…]`: the layer table of the model a config would train."""

from cnntrain.cli.common import ArgumentParser, fail, preflight
from cnntrain.config.resolvers import register_resolvers
from cnntrain.core.errors import UserError
from cnntrain.data import input_spec
from cnntrain.models import build_model, data_defaults
from cnntrain.reporting.console import console
from cnntrain.reporting.layer_table import layers_table, summarize_layers

DESCRIPTION = """The layer table of the model that `cnntrain KEY=VALUE…` would train, without
training or reading data: each layer's output shape, parameters (trainable or frozen), receptive
field and multiply-adds, e.g. `cnntrain-summary model=resnet model.depth=56`."""


def main() -> None:
    """`cnntrain-summary [overrides…]`: the layer table of the model the config would train."""
    parser = ArgumentParser(prog="cnntrain-summary", description=DESCRIPTION)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    register_resolvers()
    cfg = preflight([*args.overrides, "paths.output_dir=unused"])
    try:
        spec, _ = input_spec(cfg, data_defaults(cfg.model) or {})
        model = build_model(cfg.model, spec)
    except UserError as e:
        fail(str(e))
    console.print(layers_table(summarize_layers(model, (spec.channels, spec.height, spec.width))))


if __name__ == "__main__":
    main()
