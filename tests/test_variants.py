"""Function.with_options: a variant of a function with its own options and its own pool of runners."""

from __future__ import annotations

import os
import uuid

import cloudpickle
import pytest

import minimodal
from minimodal.exception import FunctionTimeoutError, InvalidError
from tests.conftest import wait_for
from tests.functions import variants


def test_a_variant_runs_in_its_own_runners_with_its_own_timeout_and_secrets(user: str) -> None:
    with variants.app.run():
        base_pid, base_secret = variants.nap.remote(0)
        quick = variants.nap.with_options(timeout=1, secrets=[minimodal.Secret.from_dict({"MM_VARIANT": "quick"})])
        quick_pid, quick_secret = quick.remote(0)
        assert (base_secret, quick_secret) == ("base", "quick")
        assert quick_pid != base_pid, "the variant ran in the base function's runner"
        assert quick.object_id not in (None, variants.nap.object_id)
        with pytest.raises(FunctionTimeoutError):
            quick.remote(3)
        assert variants.nap.remote(1.5)[1] == "base", "the base function lost its timeout or its secret"
        assert variants.nap.with_options(cpu=0.25).remote(0)[1] == "base", "a variant keeps the base's secrets"
        again = variants.nap.with_options(timeout=1, secrets=[minimodal.Secret.from_dict({"MM_VARIANT": "quick"})])
        assert again.spawn(0).get()[1] == "quick"
        assert again.object_id == quick.object_id, "the same option set made a second variant"
        assert [r[1] for r in quick.map([0, 0])] == ["quick", "quick"]


def test_a_variant_spawn_maps_and_survives_pickling_with_its_id(user: str) -> None:
    results = minimodal.Dict.from_name(f"variants-{uuid.uuid4().hex[:8]}", create_if_missing=True).hydrate()
    with variants.app.run():
        variants.record.remote(results.name, -1)
        wide = variants.record.with_options(max_containers=2, memory=256)
        assert wide.spawn_map([results.name] * 4, range(4)) is None
        wait_for(lambda: len(results) == 5, 60, "the spawned inputs to run")
        assert results[-1] not in {results[i] for i in range(4)}, "the variant's inputs ran in the base's runner"
        restored = cloudpickle.loads(cloudpickle.dumps(wide))
        assert restored.object_id == wide.object_id
        restored.remote(results.name, 9)
        assert results[9] in {results[i] for i in range(4)}
    with pytest.raises(InvalidError, match="unknown options"):
        variants.nap.with_options(colour="red")


def test_a_function_looked_up_by_name_has_variants_too(user: str) -> None:
    variants.app.deploy()
    nap = minimodal.Function.from_name("tests-variants", "nap")
    with pytest.raises(FunctionTimeoutError):
        nap.with_options(timeout=1).remote(3)
    assert nap.with_options(timeout=5).with_options(cpu=0.5).remote(0)[1] == "base"


def test_a_function_calls_and_spawn_maps_variants_of_others_from_its_container(user: str) -> None:
    results = minimodal.Dict.from_name(f"variants-{uuid.uuid4().hex[:8]}", create_if_missing=True).hydrate()
    with variants.app.run():
        pid, secret = variants.fan_out.remote(results.name)
        assert secret == "base" and pid != os.getpid()
        wait_for(lambda: len(results) == 3, 60, "the inputs spawned from inside a function to run")
