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
