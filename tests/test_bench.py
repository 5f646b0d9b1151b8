"""scripts/bench.py: the train-bf16 section's autocast against torch's own, the gpu-decoder
section's FLOP count against torch's, and a CPU smoke run of that section on a tiny random decoder."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_forward_is_the_autocast_forward_with_float32_outputs():
    """What the train-bf16 section does to both toolkits' models, against torch.autocast itself."""
    bench = _bench_module()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    inputs = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(inputs).float()
    full_precision = model(inputs)
    bench.bf16_forward(model, "cpu")
    outputs = model(inputs)
    assert outputs.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(outputs, expected)
    assert not torch.equal(outputs, full_precision)  # the forward did run in bfloat16


def test_decoder_training_flops_are_torchs_count_of_the_matmuls_less_the_causally_masked_half():
    """FlopCounterMode counts every matmul of a forward pass (eager attention: both attention
    products over the full square); the bench counts the weights' products and the causal half
    of the attention ones, and 3x that for training."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48
    )
    config._attn_implementation = "eager"
    model = Qwen3Model(config).eval()
    length = 10
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 50, (1, length)))
    masked_half = config.num_hidden_layers * 2 * length * length * config.num_attention_heads * config.head_dim
    assert _bench_module().decoder_training_flops(config, [length]) == 3 * (counter.get_total_flops() - masked_half)


def test_gpu_decoder_section_runs_on_a_cpu_with_a_tiny_decoder(shared_data, tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPTS / "bench.py"), "--only", "gpu-decoder", "--decoder-size", "tiny", "--decoder-batch", "16",
               "--decoder-mini-batch", "4", "--decoder-max-length", "64", "--decoder-steps", "1", "--data-dir", str(shared_data), "--json", str(out)]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    section = json.loads(out.read_text())["gpu-decoder"]
    assert (section["size"], section["batch"], section["mini_batch"], len(section["real_tokens_per_step"])) == ("tiny", 16, 4, 1)
    for toolkit in ("embedtune", "sentence-transformers"):
        result = section[toolkit]
        assert result["finite"] and len(result["seconds"]) == 1
        assert result["pairs_per_s"] == 16 / result["seconds"][0]
        assert result["real_tokens_per_s"] == section["real_tokens_per_step"][0] / result["seconds"][0]
        assert 0 < result["share_of_peak"] == result["flops_per_s"] / section["peak_flops_per_s"]
    assert "gpu-decoder" in done.stdout and ">= 1.3x" in done.stdout  # the table reports the targets
