"""The automated judge: views, training, answers, validation, caching and the HTML quiz."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_triggers import tiny_bank

from eisbench.runs.stages import Tensors
from eisbench.runs.store import Store
from eisbench.trojans.judge import (
    JudgeConfig,
    JudgeEncoder,
    Question,
    ask,
    guess,
    judge_stage,
    quiz_html,
    train_judge,
)
from eisbench.trojans.judge_checks import uniformity, validate
from eisbench.trojans.quiz import png_bytes
from eisbench.trojans.stamp import Trigger
from eisbench.trojans.views import BACKGROUND, ViewConfig, layers, render

SHAPE = (1, 8, 8)


MILD = ViewConfig(scale=(0.9, 1.1), p_occlude=0.1, p_blur=0.1, p_difference=0.1)
TINY = JudgeConfig(width=16, embed_dim=32, steps=800, batch_size=64, lr=1e-2, views=MILD)


@pytest.fixture(scope="module")
def judge(digits_small: tuple[torch.Tensor, ...]) -> JudgeEncoder:
    return train_judge({"patch": tiny_bank()}, shape=SHAPE, data=digits_small[0], cfg=TINY)


def test_views_have_the_right_shape_range_and_seed_determinism(
        digits_small: tuple[torch.Tensor, ...]) -> None:
    lay = layers(tiny_bank(), SHAPE)
    idx = torch.tensor([0, 1, 7, BACKGROUND] * 8)

    def draw(seed: int) -> torch.Tensor:
        return render(lay, idx, data=digits_small[0], generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (32, *SHAPE) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(lay.exact, torch.stack([t.image(SHAPE) for t in tiny_bank()]))


def test_judge_picks_the_trigger_itself_and_is_near_chance_on_noise(
        judge: JudgeEncoder, digits_small: tuple[torch.Tensor, ...]) -> None:
    bank = tiny_bank()
    rep = validate(judge, bank=bank, shape=SHAPE, n_trials=4,
                   generator=torch.Generator().manual_seed(0), data=digits_small[2], views=MILD)
    assert rep["exact"]["accuracy"] == 1.0 and rep["exact"]["n"] == 8
    true, noise = rep["true_trigger"], rep["noise"]
    assert true["n"] == 32 and noise["n"] == 64
    assert true["accuracy"] >= 0.6, true  # 8x8 icons, 800 steps: below the 0.95 of MNIST
    assert noise["accuracy"] <= 0.3, noise
    assert true["accuracy"] - noise["accuracy"] >= 0.4
    assert noise["ci"][0] <= noise["accuracy"] <= noise["ci"][1]
    assert sum(noise["choice_shares"]["bank"]) == pytest.approx(1.0)
    un = noise["uniformity"]["per_kind"]
    assert sorted(un) == ["bank (seen noise)", "bank (unseen noise)"]
    assert all(v["n"] == 32 for v in un.values())
    assert max(noise["choice_shares"]["bank"]) <= max(v["largest_share"] for v in un.values())
    json.dumps(rep)  # JSON-able for the record


def test_uniformity_fails_a_biased_judge_and_passes_a_fair_one() -> None:
    """The noise check must be able to fail: a judge that always names one trigger (or
    favours one 3 times in 8) is refused; fair choices pass (at alpha, Bonferroni over kinds);
    the answer does not depend on the order of the kinds."""
    gen = torch.Generator().manual_seed(0)
    fair = {k: torch.bincount(torch.randint(8, (200,), generator=gen), minlength=8).tolist()
            for k in ("patch", "blend")}
    assert uniformity(fair)["uniform"]
    assert not uniformity({**fair, "patch": [200, 0, 0, 0, 0, 0, 0, 0]})["uniform"]
    favoured = torch.multinomial(torch.tensor([3.0] + [5 / 7] * 7), 400, replacement=True,
                                 generator=gen)
    biased = uniformity({**fair, "blend": torch.bincount(favoured, minlength=8).tolist()})
    assert not biased["uniform"] and biased["per_kind"]["blend"]["largest_share"] > 0.3
    assert biased["bar"] == pytest.approx(0.005)
    assert uniformity(dict(reversed(list(fair.items()))))["min_p"] == uniformity(fair)["min_p"]


def test_ask_scores_every_option_and_follows_their_order(judge: JudgeEncoder) -> None:
    bank = tiny_bank()
    imgs = torch.stack([bank[5].image(SHAPE)] * 3)
    ans = ask(judge, images=imgs, options=bank, shape=SHAPE)
    assert ans.choice == 5 and ans.similarities.shape == (8,)
    assert int(ans.similarities.argmax()) == ans.choice
    rev = ask(judge, images=imgs, options=bank[::-1], shape=SHAPE)
    torch.testing.assert_close(rev.similarities, ans.similarities.flip(0))
    judge.train()
    ask(judge, images=imgs, options=bank, shape=SHAPE)
    assert judge.training  # mode kept
    judge.eval()
    with pytest.raises(ValueError, match="images must be"):
        ask(judge, images=imgs[0], options=bank, shape=SHAPE)


def test_judge_stage_is_cached_by_bank_content(tmp_path: Path,
                                               digits_small: tuple[torch.Tensor, ...]) -> None:
    store = Store(tmp_path)
    data = Tensors(digits_small[0][:200], digits_small[1][:200], "digits:train:200")
    cfg = JudgeConfig(width=4, embed_dim=8, steps=3, batch_size=8)
    bank = tiny_bank()
    a, key_a = judge_stage(store, banks={"patch": bank}, shape=SHAPE, data=data, cfg=cfg)
    b, key_b = judge_stage(store, banks={"patch": bank}, shape=SHAPE, data=data, cfg=cfg)
    assert key_a == key_b and b.names == a.names and not b.training
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(a.embed(x), b.embed(x))
    other = [*bank[:7], Trigger(name="icon7", kind="patch", icon=torch.ones(1, 3, 3),
                                alpha=torch.ones(1, 3, 3))]
    _, key_c = judge_stage(store, banks={"patch": other}, shape=SHAPE, data=data, cfg=cfg)
    assert key_c != key_a  # same names, other content


def test_quiz_page_holds_no_answers(tmp_path: Path) -> None:
    bank = tiny_bank()
    g = torch.Generator().manual_seed(0)

    def questions(answers: list[int]) -> list[Question]:
        return [Question(qid=f"q{i}", images=torch.rand(3, *SHAPE, generator=g), options=bank,
                         answer=a) for i, a in enumerate(answers)]

    g.manual_seed(0)
    page, key = quiz_html(questions([2, 5]), tmp_path / "a.html")
    g.manual_seed(0)
    page_b, _ = quiz_html(questions([7, 0]), tmp_path / "b.html")
    text = page.read_text()
    assert text == page_b.read_text()  # the page does not depend on the answers
    assert json.loads(key.read_text()) == {"q0": 2, "q1": 5}
    assert text.count("type='radio'") == 16 and text.count("<fieldset") == 2
    assert not re.search(r"<input[^>]*checked", text)  # nothing preselected
    assert not any(t.name in text for t in bank)
    with pytest.raises(ValueError, match="not among"):
        quiz_html([Question("q", torch.rand(1, *SHAPE), bank, 8)], tmp_path / "c.html")


def test_png_round_trips() -> None:
    import matplotlib.image as mpimg

    img = torch.arange(12, dtype=torch.float32).view(1, 3, 4) / 11
    back = mpimg.imread(io.BytesIO(png_bytes(img)), format="png")  # (3, 4) floats in [0,1]
    torch.testing.assert_close(torch.as_tensor(back), img[0], atol=1 / 255, rtol=0)


def test_ask_abstains_with_a_guess_on_what_it_sees_as_background(judge: JudgeEncoder) -> None:
    bank = tiny_bank()
    grey = torch.full((4, *SHAPE), 0.5)  # a training background: flat grey
    ans = ask(judge, images=grey, options=bank, shape=SHAPE)
    assert ans.abstained and ans.choice == guess(grey, 8)
    assert int(ans.similarities.argmax()) == ans.choice
    assert float(ans.similarities.sum()) == pytest.approx(1e-6)
    shown = ask(judge, images=torch.stack([bank[2].image(SHAPE)] * 3), options=bank,
                shape=SHAPE)
    assert not shown.abstained and shown.choice == 2
