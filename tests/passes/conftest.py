import pytest


@pytest.fixture
def rewritten(monkeypatch):
    """The GraphModules ``backend.rewrite`` returns during the test, in order (the eager lowering runs every node of
    them, so what a pass erased must be gone from these)."""
    from dvdq_compile import backend

    seen = []
    real = backend.rewrite

    def spy(*a, **kw):
        g = real(*a, **kw)
        seen.append(g)
        return g

    monkeypatch.setattr(backend, "rewrite", spy)
    return seen
