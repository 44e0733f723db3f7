"""The run log: one file per process."""

import logging

from jdiff import metrics


def test_each_process_logs_to_its_own_file(tmp_path):
    assert metrics.log_file_name(0) == "log.txt"
    assert metrics.log_file_name(3) == "log_process3.txt"
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        metrics.configure_logging(str(tmp_path))
        logging.getLogger("jdiff.test").warning("hello from process 0")
        for handler in root.handlers:
            handler.flush()
        assert "hello from process 0" in (tmp_path / "log.txt").read_text()
    finally:
        for handler in set(root.handlers) - set(before):
            root.removeHandler(handler)
            handler.close()
