"""What a load step receives: the load's settings and the step's plan, declared once for the lab and for Locust.

The lab offers these settings as ``clouddetect lab run`` options and passes them on the Locust command line; the
locustfile and the load shape declare the same flags from these fields, so the two sides cannot disagree on a
default. Plain Python, no Locust: the lab imports it too.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

from clouddetect.images import default_folder
from clouddetect.settings_fields import flag, setting
from clouddetect.verdicts import DEFAULT_REQUEST_TIMEOUT_S

# Lines the load shape prints for the lab to echo; the two phase lines also tell it when to read the service's
# counters (the hold is what its evidence covers).
PROGRESS_PREFIX = "progress:"
HOLD_STARTED = "holding"
STOPPING = "stopping"
IMAGE_ORDERS = ("sequence", "random")
# Beyond the time its requests may take, what a step's end may take to collect the last counts.
STOP_MARGIN_S = 10.0
# The locustfile's own flags (it also runs on its own); the load shape's flags start with --lab-.
LOCUSTFILE_FLAGS = {"timeout_s": "--request-timeout-s", "images": "--images", "image_order": "--image-order",
                    "wait_s": "--wait-s"}
SHAPE_SETTINGS = ("progress_interval_s", "jump_spawn_rate", "probe_window_s", "hold_windows", "stable_tolerance_pct",
                  "max_extension_s")


@dataclass(frozen=True)
class LoadSettings:
    """How requests are generated and steps judged; the same for every step of an experiment."""

    timeout_s: float = setting(DEFAULT_REQUEST_TIMEOUT_S, "An answer slower than this is a failed request.",
                               low=0, low_open=True)
    images: Path = setting(default_folder(), "Folder of images to send.")
    image_order: str = setting("sequence", "Each user sends the images in folder order, or one at random each time.",
                               choices=IMAGE_ORDERS)
    locust_processes: int = setting(0, "Locust worker processes under one master (0: a single process).", low=0)
    progress_interval_s: float = setting(5.0, "Time between progress lines.", low=0)
    wait_s: float = setting(0.0, "Think time of each user between an answer and its next request (0: back to back).",
                            low=0)
    jump_spawn_rate: float = setting(20.0, "Users started per second when jumping to a level known to be safe.",
                                     low=0, low_open=True)
    probe_window_s: float = setting(5.0, "Window over which the search measures throughput to find saturation.",
                                    low=0, low_open=True)
    hold_windows: int = setting(4, "Windows the hold is split into to judge whether its response times are stable.",
                                low=1)
    stable_tolerance_pct: float = setting(
        10.0, "Most a window's mean response time may differ from the hold's (and the trend may rise).", low=0)
    max_extension_s: float = setting(60.0, "Longest a hold is extended while its response times are not stable.",
                                     low=0)

    @property
    def stop_timeout_s(self) -> float:
        return stop_timeout_s(self.timeout_s)


def stop_timeout_s(timeout_s: float) -> float:
    """How long a stopped user's last request may still take: connecting and answering each have the timeout."""
    return 2 * timeout_s + STOP_MARGIN_S


@dataclass(frozen=True)
class StepPlan:
    """One load step: reach ``users`` (jumping to ``start_users`` first, then at ``spawn_rate``) and hold them."""

    name: str
    users: int = setting(MISSING, "Users to reach and hold.")
    spawn_rate: float = setting(MISSING, "Users started per second.")
    hold_s: float = setting(0.0, "Time to hold the target once reached.")
    start_users: int = setting(0, "Users reached quickly before ramping.")
    # Search only: once saturated, jump to this share of saturation throughput x timeout (0: no jump).
    start_fraction: float = setting(0.0, "Search: once saturated, jump to this share of throughput x timeout.")


STEP_SETTINGS = ("users", "spawn_rate", "hold_s", "start_users", "start_fraction")


def locust_flag(name: str) -> str:
    """The Locust flag of a load setting or step field."""
    return LOCUSTFILE_FLAGS.get(name) or flag("lab_" + name)
