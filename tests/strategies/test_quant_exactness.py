"""SD and SSD stay exact to a quantized target: the target as executed (int4 weights) is the
target. Chi-square against the enumerated distribution of that executed target, and greedy
equality with AR, on the tiny pair with the draft quantized too."""

import pytest

from exactness import chi_square_pvalue, engine_logits, exact_distribution, sample_continuations, write_tiny_pair
from saguaro import LLM, SamplingParams
from saguaro.engine.runner import ModelRunner
from saguaro.loading.loader import load_model

PROMPT = [3, 5, 7, 3, 5, 7, 3]
N_TOKENS = 3
SAMPLES = 20_000
ALPHA = 1e-3
T1 = SamplingParams(temperature=1.0)
T07 = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)
QUANT = dict(dtype="float32", quantize_target="int4", quantize_draft="int4")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_tiny_pair(tmp_path_factory.mktemp("quant_exactness"))


@pytest.fixture(scope="module")
def executed(folders):
    """The enumerated distribution of the int4 target as Saguaro runs it."""
    runner = ModelRunner(load_model(folders[0], dtype="float32", quantize="int4").decoder)

    def get(params):
        return exact_distribution(folders[0], PROMPT, N_TOKENS, params.temperature, params.top_k, params.top_p,
                                  logits_fn=lambda rows: engine_logits(runner, rows))

    return get


def test_the_quantized_target_is_a_different_model(folders, executed):
    """Otherwise the chi-square below could not tell the executed target from the float one."""
    float_dist = exact_distribution(folders[0], PROMPT, N_TOKENS, 1.0)
    quant_dist = executed(T1)
    tv = 0.5 * sum(abs(float_dist.get(c, 0) - quant_dist.get(c, 0)) for c in set(float_dist) | set(quant_dist))
    assert tv > 0.02


@pytest.mark.parametrize("mode, params", [("sd", T1), ("ssd", T07)])
def test_sampling_is_exact_to_the_executed_target(folders, executed, mode, params):
    llm = LLM(target=folders[0], draft=folders[1], mode=mode, k=2, **QUANT)
    try:
        assert llm.quantization == "int4"
        counts = sample_continuations(llm, PROMPT, N_TOKENS, params, SAMPLES, batch=2_000)
    finally:
        llm.close()
    p = chi_square_pvalue(counts, executed(params))
    print(f"chi-square p = {p:.4g}")
    assert p > ALPHA


@pytest.mark.parametrize("mode", ["sd", "ssd"])
def test_greedy_equals_ar_on_the_quantized_target(folders, mode):
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [PROMPT, [1, 2], [6, 6, 6, 4]]
    ar = LLM(target=folders[0], **QUANT)
    spec = LLM(target=folders[0], draft=folders[1], mode=mode, k=3, **QUANT)
    try:
        expected = [r.token_ids for r in ar.generate(prompts, greedy)]
        results = spec.generate(prompts, greedy)
        assert [r.token_ids for r in results] == expected
        assert sum(r.metrics.speculation.accepted for r in results) > 0
    finally:
        spec.close()
