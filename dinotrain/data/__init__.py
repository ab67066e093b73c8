"""Training and eval data: multi-crop over shards (DALI or torch backend), mixtures, iBOT masks, exact resume.

    from dinotrain.data import build_train_loader, build_eval_loader

(torch and DALI are imported only when a loader runs.)
"""

from dinotrain.data.eval_loader import build_eval_loader
from dinotrain.data.loader import TrainLoader, build_train_loader
from dinotrain.data.shard_index import DataError

__all__ = ["DataError", "TrainLoader", "build_eval_loader", "build_train_loader"]
