import logging

import pytest
import torch
from PIL import Image

import speedups
import models


def test_tiny_checkpoints_load_through_from_pretrained(tiny_models):
    captioner, answerer = tiny_models
    for model in (captioner, answerer):
        assert model.device.type == "cpu"
        assert model.dtype == torch.float32
        assert not model.model.training


def test_model_input_equals_the_processors_own_pixel_values(tiny_models):
    for model in tiny_models:
        for size in [(613, 419), (32, 32), (7, 300)]:
            image = Image.effect_noise(size, 60).convert("RGB")
            plain = model.processor(images=[image], return_tensors="pt")["pixel_values"]
            assert torch.equal(torch.from_numpy(model.model_input(image)), plain)


def test_caption_is_text(tiny_models):
    captioner, _ = tiny_models
    caption = captioner.caption(Image.new("RGB", (64, 48), "red"))
    assert isinstance(caption, str)
    assert len(captioner.processor.tokenizer(caption)["input_ids"]) <= 12 + 2


def test_conditional_caption_keeps_the_prompt(tiny_models):
    captioner, _ = tiny_models
    caption = captioner.caption(Image.new("RGB", (64, 48), "red"), "a photography of")
    assert caption.startswith("a photography of")


def test_answer_is_text(tiny_models):
    _, answerer = tiny_models
    answer = answerer.answer(Image.new("RGB", (20, 90), "blue"), "what color is it?")
    assert isinstance(answer, str)


def test_generation_settings_reach_generate(tiny_blip):
    captioner = models.Captioner.from_pretrained(tiny_blip["caption"], "cpu", dict(num_beams=1, max_length=4))
    inputs = captioner.processor(images=Image.new("RGB", (8, 8)), return_tensors="pt")
    tokens = captioner.model.generate(**inputs, **captioner.generation)
    assert tokens.shape[1] <= 4


def test_same_image_same_caption(tiny_models):
    captioner, _ = tiny_models
    image = Image.new("RGB", (50, 50), "green")
    assert captioner.caption(image) == captioner.caption(image.copy())


def test_in_passing_thread_gives_the_result_or_the_error_from_a_thread_that_ends():
    import threading

    ran_in = []
    assert models.in_passing_thread(lambda: ran_in.append(threading.current_thread()) or 42) == 42
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()
    with pytest.raises(KeyError, match="missing"):
        models.in_passing_thread(lambda: {}["missing"])


def test_pick_device():
    assert models.pick_device("cpu").type == "cpu"
    assert models.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_model_that_cannot_load_is_unavailable_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        model = models.load(models.Captioner, str(tmp_path / "missing"), "CAPTION_MODEL", "cpu", {})
    assert not model.ready
    assert "CAPTION_MODEL" in model.message and str(tmp_path / "missing") in model.message
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "CAPTION_MODEL" in errors[0].getMessage()


def test_few_row_linear_gives_linear_values_for_any_row_count():
    torch.manual_seed(0)
    for bias in (True, False):
        plain = torch.nn.Linear(48, 40, bias=bias)
        few = torch.nn.Linear(48, 40, bias=bias)
        few.load_state_dict(plain.state_dict())
        speedups.choose_linears(few, list(range(1, 30)), "on")
        assert type(few) is speedups.FewRowLinear
        for shape in ((1, 48), (3, 1, 48), (2, 2, 48), (5, 48), (3, 7, 48)):
            inputs = torch.randn(shape)
            got = few(inputs)
            assert got.shape == (*shape[:-1], 40)
            torch.testing.assert_close(got, plain(inputs), rtol=1e-5, atol=1e-5)


def decoder_like() -> torch.nn.Module:
    """Linear layers of three shapes, one shape twice, as a decoder has them."""
    return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 64), torch.nn.Linear(64, 16),
                               torch.nn.Linear(16, 16, bias=False))


def test_the_product_measured_faster_is_chosen_for_each_row_count():
    # An injected timer, so that nothing is timed: W·xᵀ costs 1 for up to 6 rows and 3 beyond, x·Wᵀ always 2.
    asked = []

    def timer(weights, rows, transposed):
        asked.append((tuple(weights[0][0].shape), len(weights), rows, transposed))
        return (1.0 if rows <= 6 else 3.0) if transposed else 2.0

    module = decoder_like()
    choices = speedups.choose_linears(module, [3, 6, 9, 12], "auto", timer=timer)
    assert {choice.shape: choice.transposed for choice in choices} == {
        (16, 16): {3, 6}, (16, 64): {3, 6}, (64, 16): {3, 6}}
    assert len(asked) == 3 * 4 * 2  # each distinct shape once, each row count, both products
    assert ((16, 16), 2, 3, True) in asked  # the two 16->16 layers are timed together, as one step passes them
    assert all(type(layer) is speedups.FewRowLinear and layer.transposed_rows == {3, 6} for layer in module)
    assert speedups.described(choices).startswith("16->16: W·xᵀ at 3,6 rows")


@pytest.mark.parametrize("slower, expected", [(True, torch.nn.Linear), (False, speedups.FewRowLinear)])
def test_a_product_slower_at_every_row_count_is_never_chosen(slower, expected):
    module = decoder_like()
    speedups.choose_linears(module, [3, 6], "auto", timer=lambda weights, rows, transposed:
                            2.0 if transposed == slower else 1.0)
    assert {type(layer) for layer in module} == {expected}


@pytest.mark.parametrize("mode, expected", [("on", speedups.FewRowLinear), ("off", torch.nn.Linear)])
def test_the_setting_forces_either_product_without_measuring(mode, expected):
    def timer(*_):
        raise AssertionError("nothing is measured when the setting forces a product")

    module = decoder_like()
    speedups.choose_linears(module, [3, 6], mode, timer=timer)
    assert {type(layer) for layer in module} == {expected}
    speedups.choose_linears(module, [3, 6], "off" if mode == "on" else "on", timer=timer)  # and back
    assert {type(layer) for layer in module} == {torch.nn.Linear, speedups.FewRowLinear} - {expected}


def test_the_real_timer_measures_both_products():
    weights = [(torch.randn(32, 16), torch.randn(32)), (torch.randn(32, 16), None)]
    for transposed in (True, False):
        seconds = speedups.time_product(weights, 3, transposed, sample_seconds=0.0001, samples=3)
        assert 0 < seconds < 1


def test_from_pretrained_gives_the_cpu_decoders_few_row_linears(tiny_models):
    for model in (wrapper.model for wrapper in tiny_models):
        decoder = [type(layer) for layer in model.text_decoder.modules() if isinstance(layer, torch.nn.Linear)]
        assert decoder and set(decoder) == {speedups.FewRowLinear}
        assert speedups.FewRowLinear not in {type(layer) for layer in model.vision_model.modules()}


def test_loading_measures_and_logs_the_choice_in_one_line(tiny_blip, caplog):
    with caplog.at_level(logging.INFO, logger="models"):
        captioner = models.Captioner.from_pretrained(tiny_blip["caption"], "cpu", dict(num_beams=3, max_length=4),
                                                     max_batch=2)
    [line] = [record.getMessage() for record in caplog.records if "decoder" in record.getMessage()]
    assert line.startswith("Captioner decoder, FEW_ROW_LINEAR=auto (") and "W·xᵀ at" in line
    linears = [layer for layer in captioner.model.text_decoder.modules() if isinstance(layer, torch.nn.Linear)]
    assert all(getattr(layer, "transposed_rows", frozenset()) <= {3, 6} for layer in linears)
    assert isinstance(captioner.caption(Image.new("RGB", (30, 30), "red")), str)


def test_beam_search_leaves_the_cross_attention_cache_in_place(tiny_models, monkeypatch):
    captioner, answerer = tiny_models
    asked = []
    monkeypatch.setattr(speedups.PerRequestCrossCache, "reorder_cache", lambda self, beam_idx: asked.append(self))
    captioner.caption(Image.new("RGB", (30, 30), "red"))
    answerer.answer(Image.new("RGB", (30, 30), "red"), "what color is it?")
    assert len(asked) > 2  # beam search reached the decoders' cross-attention caches, which keep their rows


def test_the_decoders_attend_with_keys_and_values_once_per_request(tiny_models, monkeypatch):
    captioner, answerer = tiny_models
    shapes = []
    attend = speedups.attend
    monkeypatch.setattr(speedups, "attend", lambda query, keys, *rest: shapes.append((query.shape, keys.shape))
                        or attend(query, keys, *rest))
    inputs = [captioner.model_input(Image.effect_noise((40, 30), 20 + i).convert("RGB")) for i in range(2)]
    captioner.caption_batch(inputs)
    beams = captioner.generation["num_beams"]
    first_query, first_keys = shapes[0]
    assert first_keys[0] == 2 and first_query[0] == 2  # two requests, not 2 x beams rows
    assert first_query[2] == beams  # each request's beams attend together
    shapes.clear()
    image = answerer.contexts([answerer.model_input(Image.new("RGB", (30, 30), "red"))])[0]
    answerer.answer_batch([image, image], ["is it?", "how many cats are there in the picture?"])
    assert {query[0] for query, _ in shapes} == {1}  # questions of two lengths: each alone, over its own states
    assert {keys[3] for _, keys in shapes} == {5, 11}  # (1, heads, head size, length): keys kept transposed


def test_the_vision_encoder_attends_through_the_fused_kernel(tiny_models):
    from transformers.models.blip.modeling_blip import BlipAttention

    for model in tiny_models:
        attentions = [module for module in model.model.vision_model.modules() if isinstance(module, BlipAttention)]
        assert attentions and {type(module) for module in attentions} == {speedups.SdpaVisionAttention}


def test_few_row_linear_takes_auto_on_or_off():
    import settings
    from errors import SettingError

    assert settings.from_environment({"FEW_ROW_LINEAR": " off "})["FEW_ROW_LINEAR"] == "off"
    with pytest.raises(SettingError, match="FEW_ROW_LINEAR='fast': use auto"):
        settings.from_environment({"FEW_ROW_LINEAR": "fast"})
