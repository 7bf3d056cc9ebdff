"""Hydra override strings (`key=value`, `+key=value`, `~key`): one reading for every command."""


def override_key(override: str) -> str:
    """`data.root` of `data.root=PATH` (Hydra's +, ++ and ~ prefixes dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str | None:
    """`PATH` of `data.root=PATH`; None for `~key`, which sets nothing."""
    return override.split("=", 1)[1] if "=" in override else None


def is_group_choice(override: str) -> bool:
    """`model=resnet`, `+experiment=smoke`: picks a config file rather than setting a value."""
    key = override_key(override)
    return "." not in key and key != "resume"


def quoted(value: str) -> str:
    """`value` as a Hydra override value, whatever characters it holds."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_overrides(text: str) -> dict[str, str]:
    """`a=1 +b=x c=[1, 2]` → {"a": "1", "b": "x", "c": "[1, 2]"} (values may contain spaces):
    a sweep job's overrides, joined by spaces."""
    settings: dict[str, str] = {}
    key = None
    for token in text.split():
        if "=" in token:
            key = override_key(token)
            settings[key] = override_value(token)
        elif key is not None:  # continues the previous value, split apart at its spaces
            settings[key] += " " + token
    return settings
