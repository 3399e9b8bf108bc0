import pytest

import background


@pytest.fixture(scope="session", autouse=True)
def background_builds(request, tmp_path_factory):
    """Start building the slow module fixtures of the selected tests on the second core
    (background.py); at the end, stop (after a build under way, as after a failure)."""
    finish = background.start(request.session.items, tmp_path_factory)
    yield
    finish()
