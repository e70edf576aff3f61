"""Judging answers needs neither OpenCV nor numpy: clients and load generators import it alone."""

import subprocess
import sys

import pytest

from clouddetect.verdicts import response_problem

GOOD = {"id": "a", "objects": [{"label": "cat", "accuracy": 0.78,
                               "rectangle": {"height": 114, "left": 380, "top": 363, "width": 254}}]}

# Importing a blocked module raises ImportError: None in sys.modules is Python's way to forbid one.
IMPORT_WITHOUT_OPENCV = """
import sys
sys.modules["cv2"] = None
sys.modules["numpy"] = None
import clouddetect.verdicts, clouddetect.client, clouddetect.loadtest.checks
print(clouddetect.verdicts.response_problem({"id": "a", "objects": []}, "a"))
"""


def test_clients_judge_answers_without_opencv_or_numpy() -> None:
    done = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_OPENCV], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_the_block_works() -> None:
    blocked = IMPORT_WITHOUT_OPENCV.replace("import clouddetect.verdicts,", "import clouddetect.request_json,")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "import of cv2 halted" in done.stderr


def test_good_answer_has_no_problem() -> None:
    assert response_problem(GOOD, "a") is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"id": "b", "objects": []},
        {"id": "a"},
        {"id": "a", "objects": None},
        {"id": "a", "objects": [{"label": "cat", "accuracy": "0.7", "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 1.5, "rectangle": GOOD["objects"][0]["rectangle"]}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5, "rectangle": {"height": 1, "left": 1, "top": 1}}]},
        {"id": "a", "objects": [{"label": "cat", "accuracy": 0.5,
                                 "rectangle": {"height": 1.5, "left": 1, "top": 1, "width": 2}}]},
    ],
)
def test_broken_answers_are_named(body) -> None:
    assert response_problem(body, "a")
