"""Class-based functions: enter once per container, parameters, methods, with_options, from_name."""

from __future__ import annotations

from pathlib import Path

import pytest

import minimodal
from minimodal.exception import InvalidError, NotFoundError
from tests.conftest import wait_for
from tests.functions import classes


def test_the_enter_hook_runs_once_over_20_calls_in_one_container(user: str) -> None:
    with classes.app.run():
        counter = classes.Counter()
        results = [counter.predict.remote(i) for i in range(10)]
        results += list(counter.predict.map(range(10, 20)))
        results.append(counter.predict.spawn(20).get())
    assert [r[0] for r in results] == [100 + i for i in range(21)]
    assert {r[1] for r in results} == {1}, "enter ran more than once in the container"
    assert len({r[2] for r in results}) == 1, "the calls ran in more than one container"


def test_generator_methods_and_parameters_and_local_calls(user: str) -> None:
    assert classes.Model(size=2).predict.local(5) == 30
    with classes.app.run():
        assert list(classes.Counter().upto.remote_gen(3)) == [0, 1, 2]
        assert classes.Model(size=3).predict.remote(2) == 18
        assert classes.Model().predict.remote(2) == 6
        assert list(classes.Model(size=2).predict.map([1, 2])) == [6, 12]
        with pytest.raises(InvalidError, match="no parameter"):
            classes.Model(colour="red")
        with pytest.raises(AttributeError, match="no @minimodal.method"):
            classes.Model().load  # noqa: B018 - the attribute access is what raises


def test_with_options_runs_the_class_as_another_function_with_those_options(user: str) -> None:
    with classes.app.run():
        fast = classes.Model.with_options(timeout=30, cpu=0.5)
        assert fast(size=1).timeout_option.remote() == 1
        assert fast(size=4).predict.remote(1) == 12
        with pytest.raises(InvalidError, match="unknown options"):
            classes.Model.with_options(colour="red")


def test_the_exit_hook_runs_when_the_container_scales_down(user: str, tmp_path: Path) -> None:
    with classes.app.run():
        assert classes.Model(size=7, mark_dir=str(tmp_path)).predict.remote(1) == 21
        wait_for(lambda: (tmp_path / "exit-7").exists(), 60, "the exit hook to leave its mark")


def test_a_deployed_class_is_called_by_name(user: str) -> None:
    classes.app.deploy()
    Model = minimodal.Cls.from_name("tests-classes", "Model")
    assert Model(size=2).predict.remote(3) == 18
    assert Model.with_options(timeout=20)().predict.remote(1) == 3
    with pytest.raises(InvalidError, match="not a class"):
        minimodal.Cls.from_name("tests-classes", "plain")
    with pytest.raises(NotFoundError):
        minimodal.Cls.from_name("tests-classes", "nope")
