"""What cnntrain's own config files can set: the keys, the kind of value at each, and the
`_target_`s they name. A config read back from a file (a checkpoint's, a run folder's) is checked
against it before anything is built from it, so that a received file is data, never code."""

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnntrain.core.errors import UserError

# The repository's conf/, through the cnntrain/conf link (a copy of it in an installed wheel).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Groups that watch a run without changing it (trackers, callbacks): a config read back from a
# file never builds them (they are dropped; a resumed run reads its trackers' names alone).
WATCHING_GROUPS = ("logger", "callbacks")
SCALARS = (str, int, float, bool, type(None))
# What every command reading a saved config builds from it: the network.
BUILT_FROM = "model"


@dataclass
class Node:
    """What the config files put at one key: a value, a mapping (of `keys`), or either."""

    keys: dict[str, "Node"] = field(default_factory=dict)
    mapping: bool = False  # some file puts a mapping here
    value: bool = False  # some file puts a value here (a scalar, or a list of scalars)
    targets: set[str] = field(default_factory=set)  # at a `_target_`: the names files give it

    def add(self, content) -> None:
        """Widen this node by what one file puts here."""
        if isinstance(content, dict):
            self.mapping = True
            for key, child in content.items():
                node = self.keys.setdefault(str(key), Node())
                node.add(child)
                if key == "_target_":
                    node.targets.add(child)
        else:
            self.value = True


@functools.cache
def data_defaults() -> dict:
    """conf/config.yaml's `data:` values: what a `data` config saved before a key existed, or a
    script's partial one, takes for it."""
    return yaml.safe_load((CONF_DIR / "config.yaml").read_text())["data"]


@functools.cache
def config_schema() -> Node:
    """Every key any file of conf/ sets (Hydra's own hydra/ group aside), with the kinds of value
    and the `_target_`s found there. A group's file sets keys under the group's name, unless it
    says `# @package _global_` (experiments, searches); `defaults:` lists are not keys."""
    root = Node()
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).parts
        if group[:1] == ("hydra",):
            continue
        text = path.read_text()
        content = yaml.safe_load(text) or {}
        content.pop("defaults", None)
        content.pop("hydra", None)  # a search's sweeper settings: Hydra's, never saved
        if group and "# @package _global_" not in text:
            for name in reversed(group):
                content = {name: content}
        root.add(content)
    return root


def check_received(config, source: str) -> dict:
    """`config` as read back from `source` (named in the error): a mapping holding only keys
    conf/ sets, a value or a mapping where conf/ has one, resolved values (no `${…}`), and at
    each `_target_` a name conf/ gives it there. Returns it without the WATCHING_GROUPS.
    Anything else is a UserError naming the key."""
    if not isinstance(config, dict):
        raise UserError(f"{source} holds no config mapping; it is not a cnntrain run")
    kept = {key: value for key, value in config.items() if key not in WATCHING_GROUPS}
    if not isinstance(kept.get(BUILT_FROM), dict):
        raise UserError(f"{source} holds no {BUILT_FROM} settings; it is not a cnntrain run")
    problem = first_problem(kept, config_schema(), "")
    if problem:
        raise UserError(
            f"{source}: {problem}; a config read back from a file may hold only the keys and "
            "values cnntrain's own config files set, never code to run (SECURITY.md)"
        )
    return kept


def first_problem(value, node: Node, path: str) -> str | None:
    """What is wrong with `value` at `path` (`node` of the schema), or None."""
    where = path or "the config"
    if isinstance(value, dict):
        if not node.mapping:
            return f"{where} is a mapping where cnntrain sets a value"
        for key, child in value.items():
            name = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or key not in node.keys:
                return f"{name!r} is not a key cnntrain's config files set"
            problem = first_problem(child, node.keys[key], name)
            if problem:
                return problem
        return None
    if not node.value:
        return f"{where} is a value where cnntrain sets a mapping"
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, SCALARS):
            return f"{where} holds a {type(item).__name__} where cnntrain sets plain values"
        if isinstance(item, str) and "${" in item:
            return f"{where}={item!r} is an interpolation (a saved config holds resolved values)"
    if node.targets and (not isinstance(value, str) or value not in node.targets):
        allowed = ", ".join(sorted(node.targets))
        return f"{where}={value!r} is not a class cnntrain builds there (one of {allowed})"
    return None
