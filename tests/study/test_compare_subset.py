"""kdlab compare on dataset.student_subset: one share for every variant and seed, batched or one by
one, the teacher (and its logits) from the whole training split, the share named in the report."""

from __future__ import annotations

from kdlab.pipeline import prepare_data
from kdlab.recipes import load_recipe
from kdlab.study.compare import compare
from kdlab.teacher_cache import teacher_cache_path

FAST = ["teacher.model.hidden=[32]", "teacher.train.epochs=1", "student.train.epochs=2", "dataset.student_subset.fraction=0.2"]


def test_every_variant_and_seed_trains_on_the_same_share(tmp_path):
    recipe = load_recipe("digits-mlp", FAST + ["distill.crd={negatives: 64}"])
    res = compare(recipe, None, 2, methods="hinton,crd", teacher_cache=tmp_path, progress=False, log=lambda *_: None,
                  profile=False)
    assert res.mode == "partly batched"  # scratch and hinton batched, crd one by one: both paths cut the data
    full = len(prepare_data(recipe).train)
    (note,) = [n for n in res.notes if "student_subset" in n]
    examples = int(note.split(" trained on ")[1].split(" of ")[0].replace(",", ""))
    assert abs(examples - 0.2 * full) <= 5 and f"of the {full:,} training examples" in note
    steps = 2 * -(-examples // recipe.student.train.batch_size)  # 2 epochs over the share, not the whole split
    assert {r.step_losses.shape[0] for r in res.runs.values()} == {steps} and len(res.runs) == 6
    # the teacher: trained and cached on the whole split (the subset-free recipe's cache entry)
    assert teacher_cache_path(load_recipe("digits-mlp", FAST[:-1]), tmp_path).is_dir()
    # crd reads a teacher feature: one store for the study, over the share; hinton reads its logits as the shared table
    store_notes = [n for n in res.notes if n.startswith("teacher signal store")]
    assert len(store_notes) == 1 and "read by 4 student run(s)" in store_notes[0], res.notes
    (store,) = [p for p in (tmp_path / "signals").glob("signals-*") if p.is_dir()]
    assert f'"samples": {examples}' in (store / "meta.json").read_text()
