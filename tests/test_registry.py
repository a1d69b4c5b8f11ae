from __future__ import annotations

import pytest

from eisbench.core.registry import MetaKey, Registry, UnknownNameError


def test_duplicate_name_raises() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)


def test_unknown_name_suggests_closest() -> None:
    reg: Registry[int] = Registry("model")
    for n in ("cnn-small", "cnn-deep", "mlp"):
        reg.register(n)(0)
    with pytest.raises(UnknownNameError, match="did you mean 'cnn-small'"):
        reg.get("cnn-smal")
    assert reg.names() == ["cnn-deep", "cnn-small", "mlp"]
    assert "mlp" in reg and len(reg) == 3


def _tools() -> Registry[int]:
    return Registry("tool", schema={"family": MetaKey(str, choices=("patch", "mask")),
                                    "side": MetaKey((float, type(None)), default=None),
                                    "steps": MetaKey(int)})


def test_metadata_is_stored_beside_the_item_with_defaults() -> None:
    reg = _tools()
    reg.register("a", family="patch", side=0.25, steps=10)(1)
    reg.register("b", family="mask", steps=20)(2)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"]
    assert dict(reg.meta("b")) == {"family": "mask", "side": None, "steps": 20}
    assert reg.names(family="patch") == ["a"] and reg.names(family="mask", steps=10) == []
    with pytest.raises(TypeError):
        reg.meta("a")["steps"] = 5  # type: ignore[index]
    with pytest.raises(UnknownNameError, match="did you mean 'a'"):
        reg.meta("aa")
    with pytest.raises(TypeError, match="did you mean 'steps'"):
        reg.names(step=10)


@pytest.mark.parametrize(("meta", "error", "message"), [
    ({"family": "patch", "step": 10}, TypeError, "unknown metadata key 'step'.*'steps'"),
    ({"family": "patch"}, TypeError, "must declare the metadata 'steps'"),
    ({"family": "patch", "steps": "10"}, TypeError, "'steps' must be int"),
    ({"family": "patch", "steps": True}, TypeError, "'steps' must be int"),
    ({"family": "blob", "steps": 10}, ValueError, "must be one of 'patch', 'mask'"),
])
def test_bad_metadata_fails_at_registration(meta: dict[str, object], error: type[Exception],
                                            message: str) -> None:
    reg = _tools()
    with pytest.raises(error, match=message):
        reg.register("a", **meta)
    assert "a" not in reg


def test_a_registry_without_schema_takes_no_metadata() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    assert dict(reg.meta("a")) == {}
    with pytest.raises(TypeError, match="unknown metadata key 'x'"):
        reg.register("b", x=1)


def test_every_registry_is_populated() -> None:
    from eisbench.attacks import ATTACKS
    from eisbench.construct import CONSTRUCTIONS
    from eisbench.data import DATASETS
    from eisbench.evaluation import CHECKS, SUITES
    from eisbench.experiments import EXPERIMENTS
    from eisbench.models import MODELS
    from eisbench.training import TRAINING_METHODS as METHODS

    assert {"pgd", "fgsm"} <= set(ATTACKS.names())
    assert {"mlp", "cnn-small", "cnn-deep", "cnn-madry", "resnet-small"} <= set(MODELS.names())
    assert {"standard", "pgd-at", "fast-at"} <= set(METHODS.names())
    assert {"representation", "wrong-label"} <= set(CONSTRUCTIONS.names())
    assert {"mnist", "fashion-mnist", "digits", "cifar10", "tsipras"} <= set(DATASETS.names())
    assert {"features-vs-bugs", "ilyas"} <= set(EXPERIMENTS.names())
    assert {"apgd", "apgd-t", "fmn", "square"} <= set(ATTACKS.names())
    assert {"standard", "fast"} <= set(SUITES.names()) and len(CHECKS) == 12


def test_every_experiment_honours_the_cli_contract() -> None:
    import dataclasses

    from eisbench.experiments import EXPERIMENTS

    assert {"features-vs-bugs", "goh-leakage", "goh-linear", "wallace"} <= set(EXPERIMENTS.names())
    for name in EXPERIMENTS.names():
        exp = EXPERIMENTS.get(name)
        for cfg in (exp.quick, exp.full):  # the fields `eisbench run` sets
            assert dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
            dataclasses.replace(cfg, device="cpu", dataset="digits", data_root=None, seeds=(0,))
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(cfg, "seeds", (1,))  # noqa: B010
        assert callable(exp.run) and callable(exp.report) and exp.summary
