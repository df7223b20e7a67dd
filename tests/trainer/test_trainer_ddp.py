"""Data parallel on CPU: two processes (torchrun, gloo) each generate and score their
own groups, average the LoRA gradients, and so end the step with the same LoRA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from accelerate import PartialState
    from divreward.trainer.config import load_config
    from divreward.trainer.loop import load_adapter, train

    out, tiny = sys.argv[1], sys.argv[2]
    cfg = load_config("tiny-cpu", [
        "reward_backend=inprocess", "max_steps=1", "prompts_per_step=1", "eval_every=0",
        "tensorboard=false", "progress=false", f"output_dir={out}", f"tiny_models_dir={tiny}",
    ])
    adapter = load_adapter(cfg, torch.device("cpu"))
    run = train(cfg, adapter=adapter, print_fn=lambda s: None)
    state = PartialState()  # the process group train()'s Accelerator(cpu=True) set up
    lora = {n: p.detach() for n, p in adapter.transformer.named_parameters() if "lora_" in n}
    torch.save({"lora": lora, "history": run.history}, f"{out}/rank{state.process_index}.pt")
    """
)


@pytest.mark.slow
def test_two_process_gloo_run_keeps_the_lora_in_sync(tiny_zoo: Any, tmp_path: Path) -> None:
    from divreward.trainer.models.sd3 import SD3Adapter

    for name in ("pickscore", "clipscore", "dreamsim"):
        tiny_zoo.build(name)
    SD3Adapter.build_tiny(Path(tiny_zoo.root) / "sd3")  # once, before the two ranks load it
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path),
         str(tiny_zoo.root)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln]
    assert proc.returncode == 0, "\n".join(errors[-10:]) or proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["history"][0]["perf/processes"] == 2.0
    lora_b = [k for k in r0["lora"] if "lora_B" in k]
    assert any(r0["lora"][k].abs().sum() > 0 for k in lora_b)  # trained (B starts at 0)
    for k, v in r0["lora"].items():  # the same update on both ranks: gradients averaged
        assert torch.equal(v, r1["lora"][k]), k
