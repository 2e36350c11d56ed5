"""Publishing a checkpoint by renames: complete folders only, the newest ``keep`` kept."""

from actors.checkpoints import publish_checkpoint


def _write(folder, text):
    folder.mkdir(parents=True)
    (folder / "weights").write_text(text)


def test_publish_keeps_the_newest_and_replaces_a_rewritten_step(tmp_path):
    for step in (1, 2, 3):
        _write(tmp_path / f".tmp-step-{step:06d}", f"w{step}")
        publish_checkpoint(tmp_path / f".tmp-step-{step:06d}", tmp_path / f"step-{step:06d}", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]
    _write(tmp_path / ".tmp-step-000003", "again")
    publish_checkpoint(tmp_path / ".tmp-step-000003", tmp_path / "step-000003", keep=2)
    assert (tmp_path / "step-000003" / "weights").read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002", "step-000003"]


def test_leftovers_of_a_killed_publish_are_cleared_and_never_picked(tmp_path):
    _write(tmp_path / "step-000001", "w1")
    _write(tmp_path / ".step-000002.trash", "half-deleted")  # a kill between the renames
    _write(tmp_path / ".tmp-step-000002", "w2")
    publish_checkpoint(tmp_path / ".tmp-step-000002", tmp_path / "step-000002", keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000002"]
