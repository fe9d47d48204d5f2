"""A teacher is trained once per (data, teacher config, seed) and reused by every study.

The cache key (:mod:`.keys`) hashes exactly what determines the teacher's weights — the dataset's
name, its content fingerprint (a hash of the image and label tensors and the validation split, so
changed files under the same name never reuse a teacher trained on the old ones), the teacher's
model and training config, the seed — and nothing else: changing the student, the loss or T
reuses the teacher, while changing e.g. the teacher's epochs retrains it.

An entry is trusted only when it proves what it holds (:mod:`.store`): ``key.json`` equals the
expected key, ``entry.json`` (written once training finished) names the sha256 of ``last.pt``, and
the checkpoint itself is a teacher with the expected model spec. Anything else — a foreign
checkpoint copied in, a half-written entry of another config — is moved aside and retrained,
never reused. An interrupted run of the same key resumes from its ``last.pt``.

Concurrent runs serialise on an ``fcntl.flock`` lock next to the entry (:mod:`.lock`): a run that
finds another process training the same teacher waits for it and then reuses its result. The
kernel drops the lock when its holder dies (even by SIGKILL), so a crashed run never leaves a
stale lock.

This package sits below the run builder: :func:`cached_teacher` is handed the functions that
train and load a teacher (``kdlab.pipeline.run_teacher`` and ``load_teacher``), so it imports
nothing from the pipeline, the API, the studies or the CLI.
"""

from .keys import CACHE_FORMAT, teacher_cache_path, teacher_cache_root, teacher_key
from .store import CachedTeacher, LoadTeacher, TrainTeacher, announce_training, cached_teacher, check_teacher_cache

__all__ = ["CACHE_FORMAT", "CachedTeacher", "LoadTeacher", "TrainTeacher", "announce_training", "cached_teacher",
           "check_teacher_cache", "teacher_cache_path", "teacher_cache_root", "teacher_key"]
