"""Restore an APM .nemo at a given TP/PP layout (under torchrun when > 1 process) and save its predictions.

usage: python restore_predict.py MODEL.nemo DATA.jsonl OUT.npy [TP] [PP]
"""

import sys

import numpy as np

from nemo_steerlm.models.apm import AttributePredictionModel


def main() -> None:
    nemo, data, out = sys.argv[1:4]
    tp = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    pp = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    model = AttributePredictionModel.restore_from(
        nemo, {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}
    )
    preds = model.broadcast_from_last_stage(model.predict_dataset(model.regression_dataset(data)))
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        np.save(out, preds)


if __name__ == "__main__":
    main()
