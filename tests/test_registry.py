import pytest

from gaudi_nb.errors import NotFoundError
from gaudi_nb.registry import Registry


def test_names_are_case_insensitive_with_aliases():
    registry: Registry = Registry("widget")
    registry.register("Alpha", 1, aliases=("a",))
    assert registry.get("alpha") == 1 and registry.get("A") == 1
    assert "ALPHA" in registry and registry.names() == ["alpha"]


def test_a_miss_lists_the_valid_names():
    registry: Registry = Registry("trainer")
    registry.register("transformers", object())
    registry.register("optimum-habana", object())
    with pytest.raises(NotFoundError, match="unknown trainer 'jax': choose one of optimum-habana, transformers"):
        registry.get("jax")


def test_public_api_is_exactly_all():
    import gaudi_nb

    public = {name for name in dir(gaudi_nb) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(gaudi_nb, name)).__name__ == "module"}
    assert public - modules == set(gaudi_nb.__all__) - {"__version__"}
