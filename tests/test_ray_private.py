"""The few Ray private APIs the kit uses: each one exists as the kit calls it, and has its reason beside it.

Ray moves fast; these are the likeliest lines to break at a Ray upgrade. This test fails first, at
the import or signature that changed, instead of a deploy failing in a learner's notebook. Every use
in ``labkit/`` carries a ``# Ray private:`` comment on its line or the line above saying why no
public API does the job; the last test keeps it so.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

LABKIT = Path(__file__).resolve().parents[1] / "labkit"
PRIVATE = re.compile(r"ray\._private|serve\._run\b|_get_global_client|serve\._private")


def test_serve_run_can_return_before_the_app_is_healthy():
    # deploy() waits itself, with its own time-out and a message naming the failing replica
    from ray import serve

    assert "_blocking" in inspect.signature(serve._run).parameters


def test_the_serve_controller_client_gives_serve_details():
    # replicas with their actor and node ids, proxies, the proxy location: only in Serve's details
    from ray.serve import context
    from ray.serve._private.client import ServeControllerClient

    assert callable(context._get_global_client)
    assert callable(ServeControllerClient.get_serve_details)


def test_the_gcs_actor_table_is_readable_without_the_dashboard():
    # the public state API (ray.util.state) needs the dashboard, which the embedded cluster does not start
    from ray._private import state

    assert callable(state.actors)


def test_rays_address_file_location():
    from ray._private.utils import get_ray_address_file

    assert get_ray_address_file(None).endswith("ray_current_cluster")


def test_every_private_use_in_labkit_says_why():
    missing = []
    for path in sorted(LABKIT.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if not PRIVATE.search(code):
                continue
            comments = []  # the comment lines right above the use
            for earlier in reversed(lines[:number]):
                if not earlier.strip().startswith("#"):
                    break
                comments.append(earlier)
            if "Ray private:" not in line and not any("Ray private:" in c for c in comments):
                missing.append(f"{path.relative_to(LABKIT.parent)}:{number + 1}: {line.strip()}")
    assert missing == [], "Ray private API used without a '# Ray private:' reason:\n" + "\n".join(missing)
