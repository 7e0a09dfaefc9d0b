import torch

from erasure.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _train(model, opt, steps, start=0):
    for s in range(start, start + steps):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_ends_in_identical_weights(tmp_path):
    straight = _model()
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    _train(straight, opt, 10)

    first = _model()
    opt1 = torch.optim.AdamW(first.parameters(), lr=1e-2)
    _train(first, opt1, 4)
    save_checkpoint(tmp_path / "ck", {"m": first}, opt1, step=4)

    resumed = _model()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    step = load_checkpoint(tmp_path / "ck", {"m": resumed}, opt2)["step"]
    _train(resumed, opt2, 10 - step, start=step)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "ck", {"m": m}, None, step=1)
    w = tmp_path / "ck" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:50])
    try:
        load_checkpoint(tmp_path / "ck", {"m": _model()}, None)
    except CheckpointError as exc:
        assert "unreadable" in str(exc)
    else:
        raise AssertionError("corrupt checkpoint loaded")


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    m = _model()
    save_checkpoint(tmp_path / "ck", {"m": m}, None, step=1)
    save_checkpoint(tmp_path / "ck", {"m": m}, None, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert load_checkpoint(tmp_path / "ck", {"m": _model()}, None)["step"] == 2


def test_checkpoint_of_other_shapes_is_one_clear_error(tmp_path):
    # A run folder left by another version of the run (e.g. other embedding rows trained).
    save_checkpoint(tmp_path / "ck", {"m": _model(), "rows": {"r": torch.zeros(4, 3)}}, None, step=1)
    wider = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 2))
    for modules in ({"m": wider, "rows": {"r": torch.zeros(4, 3)}}, {"m": _model(), "rows": {"r": torch.zeros(3, 3)}}):
        try:
            load_checkpoint(tmp_path / "ck", modules, None)
        except CheckpointError as exc:
            assert "shape" in str(exc) and "delete it" in str(exc)
        else:
            raise AssertionError("a checkpoint of other shapes loaded")
