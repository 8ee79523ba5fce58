"""What Ray ships by value must not name a class that would arrive as a copy.

Ray pickles an actor class's methods by value. cloudpickle then pickles each global a method
names by reference when it can import it again by ``__module__`` and ``__qualname__``, and by
value (a new, unrelated class in the worker) when it cannot. confluent-kafka's exceptions say
``__module__ == "cimpl"``, a module no one can import by that name, so ``except
KafkaException`` in a ConsumerActor method caught nothing in the actor: the broker-restart
fault test failed on a ``_WAIT_COORD`` commit error that passed straight through it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

from confluent_kafka import KafkaException

from ingest.consumer import ConsumerActor


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _importable_by_name(obj: Any) -> bool:
    try:
        target: Any = importlib.import_module(obj.__module__)
    except ImportError:
        return False
    for part in obj.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is obj


def shipped_copies(cls: type) -> dict[str, list[str]]:
    """Per method of ``cls``: the classes and functions it names that a pickle by value of the
    method would re-create as copies instead of importing."""
    found: dict[str, list[str]] = {}
    for name, member in vars(cls).items():
        func = getattr(member, "__func__", member)
        if not isinstance(func, types.FunctionType):
            continue
        names = {n for code in _code_objects(func.__code__) for n in code.co_names}
        for n in sorted(names):
            obj: Any = func.__globals__.get(n)
            shipped = isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType)
            if shipped and not _importable_by_name(obj):
                found.setdefault(name, []).append(f"{n} ({obj.__module__}.{obj.__qualname__})")
    return found


def test_the_consumer_actor_names_nothing_that_ray_would_ship_as_a_copy() -> None:
    metadata = ConsumerActor.__ray_metadata__  # type: ignore[attr-defined]
    actor_class = metadata.modified_class.__ray_actor_class__
    assert shipped_copies(actor_class) == {}


class _Catches:
    def commit(self, consumer: Any) -> None:
        try:
            consumer.commit()
        except KafkaException as exc:
            print(exc)


def test_the_check_flags_a_method_that_catches_confluent_kafkas_exception() -> None:
    assert shipped_copies(_Catches) == {"commit": ["KafkaException (cimpl.KafkaException)"]}


def test_a_pickled_copy_of_confluent_kafkas_exception_does_not_catch_the_real_one() -> None:
    """The mechanism itself, across processes as in Ray: what the check above guards against."""
    script = """
import pickle, sys
from ray import cloudpickle
from confluent_kafka import KafkaException
if sys.argv[1] == "dump":
    sys.stdout.buffer.write(cloudpickle.dumps(KafkaException))
else:
    copy = pickle.loads(sys.stdin.buffer.read())
    try:
        raise KafkaException("real")
    except copy:
        print("caught")
    except KafkaException:
        print("missed")
"""
    dumped = subprocess.run([sys.executable, "-c", script, "dump"], capture_output=True, check=True).stdout
    loaded = subprocess.run(
        [sys.executable, "-c", script, "load"], input=dumped, capture_output=True, check=True
    )
    assert loaded.stdout.decode().strip() == "missed"
