"""``teacher.augment``: the teacher's own training batches are augmented (default: not), and the
policy is part of the teacher cache key."""

import pytest
import torch

from kdlab import ConfigError
from kdlab.pipeline import load_teacher, prepare_data, run_teacher
from kdlab.recipes import load_recipe
from kdlab.teacher_cache import cached_teacher, teacher_key

FAST = ["teacher.model.hidden=[16]", "teacher.train.epochs=1", "teacher.train.batch_size=256"]


def _teacher_inputs(recipe, data):
    """The batches the teacher's model saw in training mode during ``run_teacher``."""
    from kdlab import pipeline

    seen, build = [], pipeline.build_role_model

    def hooked(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()) if m.training else None)
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "build_role_model", hooked)
        run_teacher(recipe, data, out=False, progress=False)
    return seen


def test_the_teacher_trains_on_its_own_augmented_batches_only_when_asked():
    plain = load_recipe("digits-mlp", FAST + ["augment={crop: 2, flip: true}"])  # students' section only
    data = prepare_data(plain)
    train_rows = {tuple(r.flatten().tolist()) for r in data.train.x}

    def share_unchanged(batches):
        rows = [tuple(r.flatten().tolist()) for x in batches for r in x]
        return sum(r in train_rows for r in rows) / len(rows)

    assert share_unchanged(_teacher_inputs(plain, data)) == 1.0  # the top-level section leaves the teacher alone
    augmented = load_recipe("digits-mlp", FAST + ["teacher.augment={crop: 2, flip: true}"])
    batches = _teacher_inputs(augmented, data)
    assert len(batches) == -(-len(data.train) // 256)
    # a crop of up to 2 px or a mirror of an 8x8 digit leaves only a few images (offset 0, no flip) unchanged
    assert share_unchanged(batches) < 0.2


def test_the_policy_is_part_of_the_cache_key_and_absent_when_empty(tmp_path):
    base = load_recipe("digits-mlp", FAST)
    data = prepare_data(base)
    empty = load_recipe("digits-mlp", FAST + ["teacher.augment={}"])
    crop = load_recipe("digits-mlp", FAST + ["teacher.augment={crop: 1}"])
    flip = load_recipe("digits-mlp", FAST + ["teacher.augment={crop: 1, flip: true}"])
    keys = [teacher_key(r, data) for r in (base, empty, crop, flip)]
    assert keys[0] == keys[1] and "augment" not in keys[0]["teacher"]  # entries cached before the key existed stay valid
    assert keys[2]["teacher"]["augment"] == {"crop": 1}
    assert len({str(k) for k in keys[1:]}) == 3
    first = cached_teacher(base, data, tmp_path, progress=False, train=run_teacher, load=load_teacher)
    other = cached_teacher(crop, data, tmp_path, progress=False, train=run_teacher, load=load_teacher)
    assert not other.hit and other.path != first.path  # a differently augmented teacher is trained, not reused
    assert cached_teacher(crop, data, tmp_path, progress=False, train=run_teacher, load=load_teacher).hit


@pytest.mark.parametrize("sets, message", [
    (["teacher.augment={crop: -1}"], "teacher.augment.crop: padding in pixels must be an integer >= 0"),
    (["teacher.augment={autoaugment: mnist}"], "teacher.augment.autoaugment: unknown policy 'mnist'"),
    (["teachers=[{model: {name: mlp}, augment: {mixup: -1}}]"], "teachers[0].augment.mixup"),
    (["student.augment={crop: 4}"], "student.augment: the students' batches are augmented by the top-level augment"),
])
def test_a_bad_teacher_augment_section_is_one_line(sets, message):
    with pytest.raises(ConfigError) as info:
        load_recipe("digits-mlp", sets)
    assert message in str(info.value) and "\n" not in str(info.value)
