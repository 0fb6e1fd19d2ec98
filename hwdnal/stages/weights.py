"""Stage 1, weights: the dense network trained with the gates off (or loaded from
``--weights``), then kept as dense.pt."""

from __future__ import annotations

import time

import torch
from torch import nn

from hwdnal.errors import UserError, first_line
from hwdnal.stages.context import Progress, StageContext, save_on_cpu
from hwdnal.stages.plain import train_plain
from hwdnal.train import evaluate


def run_weights(ctx: StageContext, progress: Progress) -> nn.Module:
    config = ctx.config
    dense_path = ctx.run_dir.path / "dense.pt"
    if "weights" in progress.finished:
        return ctx.load_network(dense_path)
    started = time.perf_counter()
    model = ctx.new_model()
    if config.weights:
        load_weights(model, config.weights, config.trust_weights_pickle)
        epochs = 0
    else:
        epochs = config.epochs_weights
    if epochs > 0:
        model = train_plain(ctx, model, "weights", epochs, config.lr)
    progress.dense_accuracy = evaluate(model, ctx.data, cluster=ctx.cluster)
    ctx.on_main(lambda: save_on_cpu(dense_path, model))
    ctx.observer.message(f"dense accuracy {progress.dense_accuracy:.4f}")
    ctx.finish_stage(progress, "weights", epochs, started)
    return model


def load_weights(model: nn.Module, path: str, trust_pickle: bool = False) -> None:
    """Load ``--weights``: a state dict, or a dict with a 'model' or 'state_dict' entry.

    The file is read with ``weights_only=True``, so it cannot run code; a whole pickled
    module (which can) is read only with ``trust_pickle`` (``--trust-weights-pickle``).
    """
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a plain pickle's protocol
            loaded = torch.load(path, weights_only=not trust_pickle, map_location="cpu")
    except FileNotFoundError:
        raise UserError(f"--weights {path} does not exist") from None
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"pickled objects ({found.group(1)})" if found else "pickled objects"
        raise UserError(
            f"--weights {path} holds {what}, not only tensors: loading it could run code from "
            "the file; save model.state_dict() instead, or pass --trust-weights-pickle if you "
            "trust the file"
        ) from None
    except Exception as error:
        raise UserError(f"--weights {path} is not a torch checkpoint ({first_line(error)})"
                        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), (dict, nn.Module)):
        loaded = loaded["model"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    try:
        model.load_state_dict(loaded)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(
            f"--weights {path} does not fit this model ({first_line(error)}); pass weights "
            "trained for the same --model, dataset and input size"
        ) from None
