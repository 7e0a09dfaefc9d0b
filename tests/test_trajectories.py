import pytest
import torch

from erasure.models import load_pipeline
from erasure.trajectories import partial_trajectories


@pytest.fixture(scope="module")
def parts(tiny_pipeline_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir))

    def eps(x, t, emb):
        return pipe.unet(x, t, emb).sample

    ids = pipe.tokenizer(["a cat", ""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
    return eps, dict(pipe.scheduler.config), emb[:1], emb[1:]


def test_batched_lockstep_equals_one_by_one(parts):
    eps, cfg, cond, uncond = parts
    stops = torch.tensor([0, 3, 1, 5])
    noise = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    xb, tb = partial_trajectories(eps, cfg, cond, uncond, stops, (4, 8, 8), num_steps=10, noise=noise)
    for i, k in enumerate(stops.tolist()):
        xi, ti = partial_trajectories(eps, cfg, cond, uncond, torch.tensor([k]), (4, 8, 8), num_steps=10,
                                      noise=noise[i:i + 1])
        # float32 batched and single-row kernels differ in the last bits (values reach ~50 here)
        assert torch.allclose(xb[i], xi[0], rtol=1e-4, atol=1e-4), i
        assert tb[i] == ti[0]
    assert torch.equal(xb[0], noise[0])  # zero steps: the starting noise, at the first timestep
    assert tb[0] > tb[2] > tb[1] > tb[3]  # more steps, lower timestep
    assert not torch.equal(xb[3], noise[3])


def test_same_generator_seed_same_trajectories(parts):
    eps, cfg, cond, uncond = parts
    stops = torch.tensor([2, 4])
    a = partial_trajectories(eps, cfg, cond, uncond, stops, (4, 8, 8), num_steps=6,
                             generator=torch.Generator().manual_seed(3))
    b = partial_trajectories(eps, cfg, cond, uncond, stops, (4, 8, 8), num_steps=6,
                             generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_stops_out_of_range(parts):
    eps, cfg, cond, uncond = parts
    with pytest.raises(ValueError, match="stops must lie"):
        partial_trajectories(eps, cfg, cond, uncond, torch.tensor([10]), (4, 8, 8), num_steps=10)


def test_several_stops_per_trajectory_read_the_same_trajectory(parts):
    """stops of shape (n, s): each trajectory is read at its s stops, as s one-stop runs from the same
    noise would be, for the cost of running it to its last stop."""
    eps, cfg, cond, uncond = parts
    evaluated = []

    def counting(x, t, emb):
        evaluated.append(len(x))
        return eps(x, t, emb)

    stops = torch.tensor([[1, 4, 0], [5, 2, 2]])
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    x, t = partial_trajectories(counting, cfg, cond, uncond, stops, (4, 8, 8), num_steps=8, noise=noise)
    assert x.shape == (6, 4, 8, 8) and t.shape == (6,)
    assert sum(evaluated) == 2 * (4 + 5)  # each trajectory runs to its last stop once (CFG: 2 rows per sample)
    for row, (i, k) in enumerate([(0, 1), (0, 4), (0, 0), (1, 5), (1, 2), (1, 2)]):
        xi, ti = partial_trajectories(eps, cfg, cond, uncond, torch.tensor([k]), (4, 8, 8), num_steps=8,
                                      noise=noise[i:i + 1])
        assert torch.allclose(x[row], xi[0], rtol=1e-4, atol=1e-4), row
        assert t[row] == ti[0]
