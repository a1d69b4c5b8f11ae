"""Decision-tree replacement of bounded depth on the pixels (scikit-learn's CART, Gini).

``size`` = the number of nodes (internal nodes and leaves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.tree import DecisionTreeClassifier
from torch import nn

from eisbench.replace.core import as_shape, check_input, pixel_name, register, targets


@dataclass(frozen=True)
class TreeRule:
    """A fitted tree over the flattened pixels of images of ``shape``."""

    tree: Any  # sklearn DecisionTreeClassifier
    shape: tuple[int, int, int]
    depth: int

    @property
    def size(self) -> int:
        return int(self.tree.tree_.node_count)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.shape)
        out = self.tree.predict(x.flatten(1).float().numpy())
        return torch.as_tensor(np.asarray(out), dtype=torch.long)

    def describe(self) -> str:
        t = self.tree.tree_
        leaves = int((t.children_left == -1).sum())
        if t.node_count == 1:
            return f"always {int(self.tree.classes_[t.value[0].argmax()])} (a single leaf)"
        root = f"{pixel_name(int(t.feature[0]), self.shape)} <= {float(t.threshold[0]):.3f}"
        return (f"depth-{self.tree.get_depth()} tree with {t.node_count} nodes ({leaves} "
                f"leaves), first split {root}")


@register("tree", size_param="depth", grid=(1, 2, 3, 4, 6, 8, 10, 12), unit="nodes",
          summary="decision tree of bounded depth on pixels")
def tree(model: nn.Module, x: torch.Tensor, *, generator: torch.Generator,
         device: str | torch.device = "cpu", depth: int = 4,
         min_samples_leaf: int = 1) -> TreeRule:
    """Distil ``model`` on images x (N, C, H, W) into a tree of depth at most ``depth``.

    Ties between equally good splits are broken by a seed drawn from ``generator``.
    """
    if depth < 1 or min_samples_leaf < 1:
        raise ValueError(f"need depth >= 1 and min_samples_leaf >= 1, got {depth}, "
                         f"{min_samples_leaf}")
    y, _ = targets(model, x, device=device)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    clf = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=min_samples_leaf,
                                 random_state=seed)
    clf.fit(x.flatten(1).float().numpy(), y.numpy())
    return TreeRule(tree=clf, shape=as_shape(x), depth=depth)
