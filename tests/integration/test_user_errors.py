"""A UserError raised inside a Ray Data task or actor reaches the CLI as itself: found by type, one line."""

import pytest

from embedrank.errors import PlanError, StorageError, UserError, first_line, user_error_in


def fail_in_task(batch):
    raise PlanError("input shard s3://b/x.parquet has no column 'text'; set input.text_column")


class FailingActor:
    def __call__(self, batch):
        raise StorageError("s3://b/out: AccessDenied on bucket 'b': check the credentials")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from embedrank.runtime.cluster import data_context

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    with data_context(verbose=False):
        yield ray
    ray.shutdown()


@pytest.mark.parametrize("stage", ["task", "actor"])
def test_user_error_crosses_ray_data_by_type(ray_local, stage):
    import ray.data

    ds = ray.data.range(4)
    if stage == "task":
        ds = ds.map_batches(fail_in_task)
    else:
        ds = ds.map_batches(FailingActor, compute=ray.data.ActorPoolStrategy(size=1))
    with pytest.raises(Exception) as info:
        ds.take_all()
    found = user_error_in(info.value)
    assert isinstance(found, UserError), f"{type(info.value)}: no UserError among its causes"
    expected = PlanError if stage == "task" else StorageError
    assert isinstance(found, expected)
    line = first_line(found)
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("input shard" if stage == "task" else "s3://b/out")


def test_user_error_in_plain_exceptions():
    try:
        try:
            raise PlanError("the first line\nmore")
        except PlanError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert first_line(user_error_in(exc)) == "the first line"
    assert user_error_in(ValueError("not ours")) is None
