"""What cnntrain prints besides log lines: the resolved config as a rich tree, and tables."""

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.tree import Tree

console = Console()


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config: one branch per group, leaves `key: value`."""
    tree = Tree("[bold]config")
    for key, value in OmegaConf.to_container(cfg, resolve=True).items():
        add_branch(tree, key, value)
    return tree


def add_branch(parent: Tree, key: str, value) -> None:
    if isinstance(value, dict):
        branch = parent.add(f"[bold cyan]{key}")
        for k, v in value.items():
            add_branch(branch, k, v)
    else:
        parent.add(
            f"{key}: [green]{value!r}" if isinstance(value, str) else f"{key}: [green]{value}"
        )
