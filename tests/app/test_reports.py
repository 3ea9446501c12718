"""pygml.app.reports: the metrics table, the one-row metrics frame, the environment record and the
command-line tools' logging."""

import logging
import sys

import pandas as pd

from pygml.app.reports import environment, log, metrics_frame, metrics_table, setup_logging


def test_metrics_table_is_aligned_in_percent():
    table = metrics_table({"recall@1": 0.81404, "mean_average_precision_at_r": 0.5})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "%"]
    assert set(lines[1]) == {"-"}
    assert lines[2].split() == ["recall@1", "81.40"] and lines[3].split() == ["mean_average_precision_at_r", "50.00"]
    assert len({len(line) for line in lines}) == 1


def test_metrics_frame_is_one_row_of_fractions_in_order():
    metrics = {"recall@1": 0.81404, "recall@2": 0.9, "mean_average_precision_at_r": 0.5, "NMI": 0.25}
    frame = metrics_frame(metrics)
    assert isinstance(frame, pd.DataFrame) and frame.shape == (1, len(metrics))
    assert list(frame.columns) == list(metrics)
    assert frame.iloc[0].to_dict() == metrics


def test_environment_records_versions_and_device():
    env = environment()
    assert {"python", "torch", "torchvision", "torch_geometric", "faiss", "numpy", "platform", "cuda", "threads",
            "commit"} <= set(env)
    import torch

    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["commit"] is None or len(env["commit"]) == 40


def test_setup_logging_adds_one_stderr_handler(capsys):
    logger = logging.getLogger("pygml")
    setup_logging()
    setup_logging()
    ours = [h for h in logger.handlers if getattr(h, "_pygml", False)]
    assert len(ours) == 1 and ours[0].stream is sys.stderr and not logger.propagate
    log.info("hello %s", "there")
    logging.getLogger("pygml.engine").debug("not at INFO")
    captured = capsys.readouterr()
    assert captured.err == "hello there\n" and captured.out == ""
